"""The retry policy, as data built from the config and turned into tenacity strategies.

Transient failures are retried forever (the journal bounds the cost) with capped
exponential backoff and jitter; a ``Retry-After`` from the controller wins over the
computed wait. An auth failure pauses for longer, since a person has to fix the token.
Waits are monotonic (a clock jump on the PC does not stretch or cut them) and interruptible,
so SIGTERM, a token change or the controller's return end them at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import tenacity

from agent.outcome import Outcome, Verdict


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float = 0.5
    max_s: float = 60.0
    jitter_s: float = 1.0
    pause_initial_s: float = 30.0
    pause_max_s: float = 600.0

    def wait(self) -> tenacity.wait.wait_base:
        return _WaitForVerdict(self)


class _WaitForVerdict(tenacity.wait.wait_base):
    """Exponential jitter by default; Retry-After when given; longer steps while paused."""

    def __init__(self, policy: RetryPolicy) -> None:
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
            return verdict.retry_after_s
        if verdict is not None and verdict.outcome is Outcome.PAUSED:
            return float(self.paused(retry_state))
        return float(self.transient(retry_state))


def _verdict(retry_state: tenacity.RetryCallState) -> Verdict | None:
    if retry_state.outcome is None or retry_state.outcome.failed:
        return None
    result = retry_state.outcome.result()
    return result if isinstance(result, Verdict) else None
