"""The retry policy, as data built from the config and turned into tenacity strategies.

Transient failures are retried forever (the journal bounds the cost) with capped
exponential backoff and jitter; a ``Retry-After`` from the controller wins over the
computed wait, but never beyond ``max_s`` either: a date read against a skewed clock (the
PC's or the controller's) must not park a worker for an hour while new sales wait. An auth
failure pauses for longer, since a person has to fix the token.
Waits are monotonic (a clock jump on the PC does not stretch or cut them) and interruptible,
so SIGTERM, a token change or the controller's return end them at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from agent.forwarder.outcome import Outcome, Verdict

if TYPE_CHECKING:
    import tenacity  # imported when a record is first retried: a start does without it

RETRIED = frozenset({Outcome.TRANSIENT, Outcome.PAUSED})  # the same record is tried again


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float = 0.5
    max_s: float = 60.0
    jitter_s: float = 1.0
    pause_initial_s: float = 30.0
    pause_max_s: float = 600.0

    def retrying(
        self, *, stop: threading.Event, sleep: Callable[[float], None]
    ) -> tenacity.Retrying:
        """The tries of one record: again while the verdict is transient or paused, until
        ``stop`` is set, waiting as the policy says with ``sleep`` (which may end a wait
        early). Stopped, it returns the last verdict, or None if there was none."""
        import tenacity

        return tenacity.Retrying(
            retry=tenacity.retry_if_result(lambda v: v is not None and v.outcome in RETRIED),
            wait=self._wait,
            stop=tenacity.stop_when_event_set(stop),
            sleep=sleep,
            retry_error_callback=_last_result,
        )

    def run(
        self,
        attempt: Callable[[], Verdict | None],
        *,
        stop: threading.Event,
        sleep: Callable[[float], None],
    ) -> Verdict | None:
        """``attempt()`` until its verdict is final, as :meth:`retrying` runs it. The first
        try runs without tenacity: most records are delivered at once, and a ``Retrying``
        per record cost the forwarder more CPU than recording the delivery does. A first
        verdict that is retried is handed to tenacity as its first attempt's, so the waits
        after it are the policy's, as if tenacity had made that try."""
        first = attempt()
        if first is None or first.outcome not in RETRIED:
            return first
        replay = [first]
        retrying = self.retrying(stop=stop, sleep=sleep)
        return retrying(lambda: replay.pop() if replay else attempt())

    def agent_error_wait_s(self, in_a_row: int) -> float:
        """The wait after the agent's own errors in a row (``in_a_row`` from 1): they back
        off like transient failures, without jitter."""
        return float(min(self.max_s, self.initial_s * 2 ** min(in_a_row, 16)))

    @cached_property
    def _wait(self) -> _WaitForVerdict:
        return _WaitForVerdict(self)  # holds no state of a delivery: one serves every worker


class _WaitForVerdict:
    """Exponential jitter by default; Retry-After when given (up to ``max_s``); longer steps
    while paused. A wait strategy as tenacity calls one: ``wait(retry_state) -> seconds``."""

    def __init__(self, policy: RetryPolicy) -> None:
        import tenacity

        self.policy = policy
        self.transient = tenacity.wait_exponential_jitter(
            multiplier=policy.initial_s, max=policy.max_s, jitter=policy.jitter_s
        )
        self.paused = tenacity.wait_exponential_jitter(
            multiplier=policy.pause_initial_s, max=policy.pause_max_s, jitter=policy.jitter_s
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        verdict = _verdict(retry_state)
        if verdict is not None and verdict.retry_after_s is not None:
            return min(verdict.retry_after_s, self.policy.max_s)
        if verdict is not None and verdict.outcome is Outcome.PAUSED:
            return float(self.paused(retry_state))
        return float(self.transient(retry_state))


def _last_result(retry_state: tenacity.RetryCallState) -> Any:
    return retry_state.outcome.result() if retry_state.outcome else None


def _verdict(retry_state: tenacity.RetryCallState) -> Verdict | None:
    if retry_state.outcome is None or retry_state.outcome.failed:
        return None
    result = retry_state.outcome.result()
    return result if isinstance(result, Verdict) else None
