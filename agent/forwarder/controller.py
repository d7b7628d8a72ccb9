"""The controller as the forwarder sees it: one state, its transitions in one place.

Every recorded answer moves the controller to the state its outcome leads to
(:meth:`ControllerState.after`): a delivery or a refusal of one record means the controller
answers well (``ok``), a refused token or licence pauses every worker (``paused``), anything
transient means it cannot take records now (``unreachable``). ``unknown`` is the state at
start, until the first answer.

Several workers see the same outage at once: only the first one's transition counts, so
each change is logged and recorded in the journal's meta (for ``status`` in another
process) once, not per retry. What the workers do about a change (end their backoffs,
pause) is theirs: :meth:`ControllerHealth.answer` only says whether the state changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from agent.forwarder.outcome import Outcome, Verdict
from agent.timestamps import utc_iso

log = logging.getLogger("agent.forwarder")

RecordMeta = Callable[[dict[str, str | None]], None]


class ControllerState(StrEnum):
    UNKNOWN = "unknown"  # nothing answered since the start
    OK = "ok"  # it answers: records are delivered or refused one by one
    UNREACHABLE = "unreachable"  # no answer, or a transient one: records wait
    PAUSED = "paused"  # the token or licence refused: nothing is sent until the backoff ends

    @property
    def down(self) -> bool:
        """Not taking records: its return is news."""
        return self in (ControllerState.UNREACHABLE, ControllerState.PAUSED)

    @classmethod
    def after(cls, outcome: Outcome) -> ControllerState:
        """The state an answer with this outcome leads to, from any state."""
        return _AFTER[outcome]


_AFTER = {
    Outcome.DELIVERED: ControllerState.OK,
    Outcome.ALREADY_DELIVERED: ControllerState.OK,
    Outcome.REJECTED: ControllerState.OK,
    Outcome.CONFLICT: ControllerState.OK,
    Outcome.PAUSED: ControllerState.PAUSED,
    Outcome.TRANSIENT: ControllerState.UNREACHABLE,
}


@dataclass
class Health:
    """The controller as the forwarder sees it; changes are logged once, not per retry."""

    state: ControllerState = ControllerState.UNKNOWN
    since: float = 0.0
    reason: str = ""
    last_success: float | None = None


class ControllerHealth:
    """The state machine: :attr:`health`, moved by each answer, each change recorded once
    through ``record_meta`` (errors its own); ``pending`` counts the records left to send,
    for the log line that says the controller is back."""

    def __init__(self, record_meta: RecordMeta, pending: Callable[[], int]) -> None:
        self.health = Health(since=time.time())
        self._record_meta = record_meta
        self._pending = pending
        self._lock = threading.Lock()
        self._left_ok_at = time.time()
        self._redirect: str | None = None  # the last redirect target logged

    def answer(self, verdict: Verdict) -> bool:
        """Move to the state ``verdict`` leads to and log the change once; True if the
        state changed (a worker's cue to end every backoff and pause now)."""
        state = ControllerState.after(verdict.outcome)
        if verdict.delivered:
            self.health.last_success = time.time()
        if state is ControllerState.OK:
            previous = self.move(state, "")
            # a delivery announces the return; a refused record changes the state quietly
            if verdict.delivered and previous is not None and previous.down:
                log.warning(
                    "controller back after %s; %d record(s) to send",
                    _duration(time.time() - self._left_ok_at),
                    self._pending(),
                )
        elif state is ControllerState.PAUSED:
            previous = self.move(state, verdict.reason)
            if previous is not None:
                log.error(
                    "forwarding paused: the controller refused the API token or licence (%s); "
                    "fix the token, then reload (SIGHUP) or wait for the next try",
                    verdict.reason,
                )
        else:
            previous = self.move(state, verdict.reason)
            self._unreachable(verdict, changed=previous is not None)
        return previous is not None

    def _unreachable(self, verdict: Verdict, *, changed: bool) -> None:
        """A redirect is logged as an error once per target (it is the site's to fix);
        another cause once per outage."""
        if verdict.redirect is not None and verdict.redirect != self._redirect:
            self._redirect = verdict.redirect
            log.error("%s; records are kept and retried", verdict.reason)
            if not changed:
                self._record_meta(
                    {
                        "controller_reason": verdict.reason,
                        "last_error": f"{utc_iso()} {verdict.reason}",
                    }
                )
        elif changed:
            reason = verdict.reason  # a lost connection's names whom: controller, or proxy
            if "unreachable" not in reason:
                reason = f"controller unreachable: {reason}"
            log.warning("%s; records are kept and retried", reason)

    def move(self, state: ControllerState, reason: str) -> ControllerState | None:
        """Move to ``state``; return the previous state if it changed, else None.

        Several workers see the same outage at once: only the first one's transition
        counts, so each change is logged and recorded once.
        """
        with self._lock:
            previous = self.health.state
            if previous == state:
                return None
            now = time.time()
            if not previous.down:
                self._left_ok_at = now
            self.health.state, self.health.since, self.health.reason = state, now, reason
            if state is ControllerState.OK:
                self._redirect = None
            values: dict[str, str | None] = {
                "controller_state": state.value,
                "controller_since": f"{now:.3f}",
                "controller_reason": reason or None,
                "paused": reason if state is ControllerState.PAUSED else None,
                "next_try_at": None,  # set by the workers while paused
            }
            if reason:  # the last error stays visible after recovery, with its time
                values["last_error"] = f"{utc_iso(now)} {reason}"
            self._record_meta(values)
            return previous


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
