"""Bad frames on a line, counted and summarised: what the log says about line noise.

A noisy line or a wrong setting makes bad frames by the thousand per second. Each one is
answered (NAK) and counted in the port's health, but a log line per frame buries
everything else (58 MB of log in 30 s of noise were measured). So the log gets:

* the first bad frame after a quiet spell (none for ``every_s``), at once and in detail
  (where it was in the stream, what was wrong), so a single glitch is still visible;
* then at most one line per ``every_s`` for as long as bad frames keep coming, with the
  counts by fault since the previous line;
* and, when most frames that failed their checksum would match another ``checksum`` /
  ``checksum_includes_etx`` setting, that setting, named as the config spells it: a
  meter set up differently from its ``[[drivers]]`` table is the usual cause.

:meth:`FaultSummary.tick` lets the read loop write a due summary while the line has gone
quiet. Time comes from an injected monotonic clock.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from drivers.framing import BadFrame, Checksum, Fault, matching_checksums

# a setting is named only when it explains at least this many, and half, of the failures
MIN_MATCHES = 3

_WORDS = {
    Fault.BAD_CHECKSUM: ("frame failed its checksum", "frames failed their checksum"),
    Fault.BROKEN: ("frame was broken", "frames were broken (no ETX, or too long)"),
    Fault.NOISE: ("frame was noise", "frames were noise (not text)"),
}


class FaultSummary:
    """Bad frames of one port, for the log. Not thread-safe: the port's read loop owns it."""

    def __init__(
        self,
        port: str,
        log: logging.Logger,
        *,
        checksum: Checksum,
        checksum_includes_etx: bool,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self.log = log
        self.includes_etx = checksum_includes_etx
        self.checksum = checksum
        self.every_s = every_s
        self._clock = clock
        self._last_line_at: float | None = None
        self._last_bad_at: float | None = None
        self._counts: Counter[Fault] = Counter()
        self._matches: Counter[tuple[Checksum, bool]] = Counter()

    def add(self, event: BadFrame) -> None:
        """Count one bad frame; log it at once if the line was quiet, else when due."""
        now = self._clock()
        quiet = self._last_bad_at is None or now - self._last_bad_at >= self.every_s
        self._last_bad_at = now
        if quiet:
            self.tick()  # what came before the quiet spell, if still unsaid
        if quiet and not self._counts:
            self.log.info(
                "bad frame on %s at byte %d of the stream: %s (further bad frames are "
                "summarised every %g s)",
                self.port,
                event.offset,
                event.detail,
                self.every_s,
            )
            self._last_line_at = now
            return
        self._counts[event.fault] += 1
        if event.fault is Fault.BAD_CHECKSUM:
            self._matches.update(matching_checksums(event.raw))
        self.tick()

    def tick(self) -> None:
        """Log the summary of the bad frames since the last line, if one is due."""
        if not self._counts or self._last_line_at is None:
            return
        now = self._clock()
        if now - self._last_line_at < self.every_s:
            return
        counts = ", ".join(
            f"{n} {_WORDS[fault][n != 1]}" for fault, n in sorted(self._counts.items())
        )
        line = f"{counts} in the last {now - self._last_line_at:.0f} s on {self.port}"
        hint = self._hint()
        self.log.warning(line + (f"; {hint}" if hint else ""))
        self._last_line_at = now
        self._counts.clear()
        self._matches.clear()

    def _hint(self) -> str | None:
        """The other checksum setting that most failures would match, in words."""
        failed = self._counts[Fault.BAD_CHECKSUM]
        if not self._matches:
            return None
        (kind, includes_etx), n = self._matches.most_common(1)[0]
        if n < max(MIN_MATCHES, (failed + 1) // 2):
            return None
        return describe_setting(kind, includes_etx, self.includes_etx)


def describe_setting(kind: Checksum, includes_etx: bool, configured_includes_etx: bool) -> str:
    """A checksum setting that frames match, as a sentence naming it as the config spells
    it: ``a meter sending SUM checksums would match checksum = "sum"``."""
    setting = f'checksum = "{kind}"'
    if kind == "none":
        return f"a meter sending no checksum would match {setting}"
    over = ""
    if includes_etx != configured_includes_etx:
        setting += f", checksum_includes_etx = {str(includes_etx).lower()}"
        over = " over the payload and ETX" if includes_etx else " over the payload only"
    return f"a meter sending {kind.upper()} checksums{over} would match {setting}"
