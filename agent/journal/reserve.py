"""The disk reserve: room kept on the journal's filesystem so that a full disk still lets
the agent record deliveries and drain its backlog. Imports nothing of the agent."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("agent.journal")
# A disk reserve is this share of the space free at start, and at least enough to record
# a few dozen deliveries (see DiskReserve).
RESERVE_SHARE = 8
MIN_RESERVE_BYTES = 32 * 1024
SALES_ROOM_BYTES = 16 * 1024  # beyond the reserve, room for a few records: take them
# recording one delivery grows the journal by about this much (its reference ids and
# index entries; measured: ~500 bytes per record, 1 KB pages and 512 alike), kept free for
# each one to send
DELIVERY_BYTES = 512
# A reading that finds this much more free than new records need kept free is trusted for
# up to TRUSTED_S, instead of asking the filesystem again at every record: a meter that
# uploads its stored sales stop-and-wait sends hundreds a second, and the check (a
# statvfs and two queries) was a tenth of each one's CPU. The records taken on trust may
# use at most half that margin, at RECORD_BYTES_AT_MOST each (a record's row, index
# entries and WAL frames take about 5 KB). Nearer the limit, as on any small or nearly
# full disk, every record is checked; a disk that fills all the same (another program,
# within that second) fails SQLite's write, which gives the reserve back as before.
AMPLE_BYTES = 8 * 2**20
TRUSTED_S = 1.0
RECORD_BYTES_AT_MOST = 16 * 1024


class DiskReserve:
    """A file of zero bytes beside the journal, given back to the filesystem when the disk
    is full so that the agent can still record deliveries, make room and drain its backlog
    (a full disk must not wedge it).

    Its size scales to the filesystem, so a small or nearly full one still takes sales:
    a ``RESERVE_SHARE``-th of the space free at start (counting a reserve file already
    there), at least ``MIN_RESERVE_BYTES`` (a few dozen deliveries' bookkeeping), at most
    ``most``, and never more than half of what is free. ``most`` 0: no reserve (the CLI's
    journals, tests).

    New records are taken while the room there is, free space on the filesystem plus free
    pages inside the journal (delivered records that gave way), exceeds half the reserve's
    size, plus ``DELIVERY_BYTES`` for each record still to send, by ``SALES_ROOM_BYTES``
    (a few records; a reading far above that holds for a moment, see ``AMPLE_BYTES``).
    So besides the file, that much stays free: a WAL checkpoint (at most
    half the reserve's worth of pages, see :class:`~agent.journal.store.Store`) can
    always grow the journal file, and the backlog's deliveries can be recorded however
    long the outage was. The file is given back when the disk fills all the same (another
    program, or attempts logged during an outage), and laid down again once the filesystem
    has twice its size free (not sooner: laying it down and giving it back in turns would
    wear the flash).
    """

    def __init__(self, path: Path, most: int) -> None:
        self.path = path
        self.size = 0
        self.released = False
        self.released_at: float | None = None
        self._directory = str(path.parent)
        self._trusted_until = 0.0  # monotonic: a reading with ample room holds until then
        self._trusted_records = 0  # ... and for this many more records
        if most:
            self.size = self._scaled(most)
            self._lay_down()

    def ready(
        self,
        records: int,
        inside: Callable[[], int],
        backlog_at_most: Callable[[], int],
        backlog: Callable[[], int],
    ) -> bool:
        """May ``records`` new records be taken? ``inside``: bytes free within the journal file;
        ``backlog``: records still to deliver, ``backlog_at_most`` a cheap upper bound."""
        if not self.size:
            return True
        now = time.monotonic()
        if self._trusted_records >= records and now < self._trusted_until and not self.released:
            self._trusted_records -= records  # a burst's records, not its one call
            return True
        free = self.free()
        if self.released and free >= 2 * self.size:
            self._lay_down()
        kept = self.size // 2 + SALES_ROOM_BYTES
        spare = free - kept - backlog_at_most() * DELIVERY_BYTES
        if spare >= 0:
            if spare >= AMPLE_BYTES and not self.released:
                self._trusted_until = now + TRUSTED_S
                self._trusted_records = spare // 2 // (RECORD_BYTES_AT_MOST + DELIVERY_BYTES)
            return True
        return free + inside() >= kept + backlog() * DELIVERY_BYTES

    def free(self) -> int:
        """Bytes free on the journal's filesystem, for this (unprivileged) user."""
        found = os.statvfs(self._directory)
        return found.f_bavail * found.f_frsize

    def release_if_disk_full(self) -> bool:
        """Give the reserve back if the disk (not the journal's size limit) is full; True
        when it was given back just now."""
        self._trusted_records = 0  # a write failed for want of space: read the disk again
        if not self.size or self.released:
            return False
        if self.free() >= self.size:
            return False  # the journal's own size limit, not the disk: keep the reserve
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.released = True
        self.released_at = time.time()
        log.error(
            "disk full under %s: reserve of %d KB given back so deliveries can still be "
            "recorded; new records are refused until space returns",
            self.path.parent,
            self.size // 1024,
        )
        return True

    def _scaled(self, most: int) -> int:
        try:
            there = self.path.stat().st_size
        except FileNotFoundError:
            there = 0
        free = self.free() + there
        size = min(most, max(MIN_RESERVE_BYTES, free // RESERVE_SHARE), free // 2)
        return max(size, 0) // 4096 * 4096

    def _lay_down(self) -> None:
        try:
            if self.path.exists() and self.path.stat().st_size == self.size:
                self.released = False
                self.released_at = None
                return
            with open(self.path, "wb") as out:
                out.write(bytes(self.size))  # real blocks: a sparse file would reserve nothing
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.unlink()
            if not self.released:
                log.warning("cannot lay down a disk reserve at %s: %s", self.path, exc)
                self.released_at = time.time()
            self.released = True
            return
        if self.released:
            log.warning("disk space is back under %s: reserve laid down again", self.path.parent)
        self.released = False
        self.released_at = None
