"""The retry policy's run of one record's tries: the first try outside tenacity, the rest
as tenacity waits them."""

from __future__ import annotations

import threading
from collections.abc import Callable

from agent.forwarder import Outcome, RetryPolicy, Verdict

POLICY = RetryPolicy(initial_s=1.0, max_s=60.0, jitter_s=0.5, pause_initial_s=30.0)


def tries(*verdicts: Verdict | None) -> tuple[list[int], Callable[[], Verdict | None]]:
    calls: list[int] = []
    answers = iter(verdicts)

    def attempt() -> Verdict | None:
        calls.append(len(calls) + 1)
        return next(answers)

    return calls, attempt


def test_a_record_delivered_at_once_is_tried_once_and_never_waits() -> None:
    waits: list[float] = []
    calls, attempt = tries(Verdict(Outcome.DELIVERED, "ok", 200))
    verdict = POLICY.run(attempt, stop=threading.Event(), sleep=waits.append)
    assert verdict is not None and verdict.outcome is Outcome.DELIVERED
    assert calls == [1] and waits == []


def test_the_waits_after_a_failed_first_try_are_the_policys_own_steps() -> None:
    waits: list[float] = []
    transient = Verdict(Outcome.TRANSIENT, "HTTP 500", 500)
    calls, attempt = tries(transient, transient, Verdict(Outcome.DELIVERED, "ok", 200))
    verdict = POLICY.run(attempt, stop=threading.Event(), sleep=waits.append)
    assert verdict is not None and verdict.outcome is Outcome.DELIVERED
    assert calls == [1, 2, 3]  # the first failure is not sent twice
    # exponential with jitter: the first wait is one step (1 s), the second two (2 s)
    assert 1.0 <= waits[0] <= 1.5 and 2.0 <= waits[1] <= 2.5


def test_retry_after_on_the_first_answer_sets_the_first_wait() -> None:
    waits: list[float] = []
    busy = Verdict(Outcome.TRANSIENT, "HTTP 503", 503, retry_after_s=7.0)
    calls, attempt = tries(busy, Verdict(Outcome.DELIVERED, "ok", 200))
    POLICY.run(attempt, stop=threading.Event(), sleep=waits.append)
    assert waits == [7.0] and calls == [1, 2]


def test_stopping_after_a_failed_first_try_returns_its_verdict_untried_again() -> None:
    stop = threading.Event()
    stop.set()
    transient = Verdict(Outcome.TRANSIENT, "HTTP 500", 500)
    calls, attempt = tries(transient)
    verdict = POLICY.run(attempt, stop=stop, sleep=lambda s: None)
    assert verdict == transient and calls == [1]
