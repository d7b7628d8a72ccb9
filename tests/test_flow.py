"""The send window: fewer requests in flight while the controller struggles, more while it
answers well; and a real forwarder that does not hammer an overloaded emulator."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from agent.emulator import ControllerEmulator
from agent.forwarder import HttpSender, Outcome, RetryPolicy, Verdict
from agent.forwarder.flow import SLOW_ANSWER_S, SendWindow
from agent.journal import Journal, State
from tests.conftest import eventually
from tests.test_forwarder import Pipeline

GOOD = Verdict(Outcome.DELIVERED, "delivered", 200)
BUSY = Verdict(Outcome.TRANSIENT, "HTTP 503", 503)
PAUSED = Verdict(Outcome.PAUSED, "token refused", 403)
FAST_S = 0.002


def answer(window: SendWindow, verdict: Verdict, seconds: float = FAST_S) -> None:
    round_ = window.acquire()
    assert round_ is not None
    window.release(round_, verdict, seconds)


def test_starts_at_one_and_grows_by_about_one_per_round_of_good_answers() -> None:
    window = SendWindow(4)
    assert window.limit == 1
    answer(window, GOOD)
    assert window.limit == 2
    answer(window, GOOD)
    answer(window, GOOD)  # 2 + 1/2 + 1/2.5
    assert window.limit == 2
    for _ in range(20):
        answer(window, GOOD)
    assert window.limit == 4, "never beyond controller.concurrency"


def test_trouble_halves_it_once_per_round() -> None:
    window = SendWindow(8)
    for _ in range(40):
        answer(window, GOOD)
    assert window.limit == 8
    rounds = [window.acquire() for _ in range(8)]  # eight in flight, all into trouble
    for round_ in rounds:
        assert round_ is not None
        window.release(round_, BUSY, FAST_S)
    assert window.limit == 4, "requests sent into the same trouble halve it once"
    answer(window, BUSY)
    answer(window, BUSY)
    assert window.limit == 1


def test_after_trouble_it_grows_carefully_then_faster_while_answers_stay_good() -> None:
    """A dozen agents each adding a whole request per round overflow a shared controller
    every round: after trouble the step is small, and grows only while nothing goes wrong."""
    window = SendWindow(8)
    for _ in range(40):
        answer(window, GOOD)
    answer(window, BUSY)
    assert window.limit == 4
    for _ in range(8):  # two rounds of four: TCP would be at 6
        answer(window, GOOD)
    assert window.limit == 4, "grew as fast as before the trouble"
    for _ in range(200):
        answer(window, GOOD)
    assert window.limit == 8, "an agent alone with its controller stays held back"

    one = SendWindow(1)
    answer(one, BUSY)
    for _ in range(10_000):  # hours of good answers after trouble: the step stays a number
        answer(one, GOOD)
    assert one.limit == 1


def test_an_outage_is_not_load_but_a_lost_answer_is() -> None:
    refused = Verdict(Outcome.TRANSIENT, "connection refused", cause="refused")
    timeout = Verdict(Outcome.TRANSIENT, "timeout", unknown=True, cause="timeout")
    window = SendWindow(4)
    for _ in range(10):
        answer(window, GOOD)
    answer(window, refused)
    assert window.limit == 1, "a resuming agent starts gently"
    for _ in range(5):
        answer(window, refused)
    assert window.limit == 1, "a long outage crawls back from nothing"
    answer(window, timeout)  # the request may have reached a struggling controller
    assert window.limit == 0.5


def test_a_paused_controller_is_not_load() -> None:
    window = SendWindow(4)
    for _ in range(10):
        answer(window, GOOD)
    answer(window, PAUSED)
    assert window.limit == 4


def test_a_slowdown_halves_it_but_a_link_that_is_always_slow_does_not() -> None:
    window = SendWindow(4)
    for _ in range(10):
        answer(window, GOOD)
    answer(window, GOOD, seconds=SLOW_ANSWER_S * 2)  # fast answers, then a slow one
    assert window.limit == 2

    cellular = SendWindow(4)
    for _ in range(10):
        answer(cellular, GOOD, seconds=SLOW_ANSWER_S * 3)
    assert cellular.limit == 4


def test_below_one_request_in_flight_it_paces_its_requests() -> None:
    """A fleet larger than the controller's capacity: each agent sends less than one request
    in flight, one every few answer times, instead of hammering at one each."""
    window = SendWindow(4)
    answer(window, GOOD, seconds=0.05)  # the usual answer: 50 ms
    for _ in range(3):
        answer(window, BUSY, seconds=0.05)  # each in a round of its own: 2 → 1 → ½ → ¼
    assert window.limit == 0.25
    first = window.acquire()  # the next may start 50 ms / ¼ = 0.2 s after this one
    assert first is not None
    window.release(first, BUSY, 0.05)  # still in trouble: ⅛
    started = time.monotonic()
    second = window.acquire()
    assert second is not None
    assert time.monotonic() - started >= 0.15, "the next request went out at once"
    window.release(second, GOOD, 0.05)
    assert window.limit > 0.125  # a good answer speeds the pace up again


def test_acquire_waits_for_room_and_close_ends_the_wait() -> None:
    window = SendWindow(4)
    assert window.acquire() is not None  # limit 1: one in flight
    results: list[int | None] = []
    waiter = threading.Thread(target=lambda: results.append(window.acquire()))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive(), "a second request went out beside the first"
    window.close()
    waiter.join(5)
    assert results == [None]


def test_a_bad_ceiling_is_refused() -> None:
    with pytest.raises(ValueError, match="ceiling"):
        SendWindow(0)


# --------------------------------------------------------------------------- a real drain

# honours Retry-After ("1") up to 0.2 s, so the test is quick but a refused worker waits
POLICY = RetryPolicy(initial_s=0.05, max_s=0.2, jitter_s=0.01, pause_initial_s=0.1)


@pytest.fixture
def drain(journal: Journal, emulator: ControllerEmulator) -> Iterator[Pipeline]:
    pipe = Pipeline(journal, emulator, concurrency=8, policy=POLICY)
    # as the service does: one connection per worker
    pipe.forwarder.sender = pipe.sender = HttpSender(
        emulator.url, lambda: pipe.token, timeout_s=5.0, max_connections=8
    )
    yield pipe
    pipe.forwarder.stop()


def test_a_backlog_does_not_hammer_a_controller_at_capacity(drain: Pipeline) -> None:
    """Eight workers, a controller that takes two at once: the agent settles near two in
    flight instead of sending six doomed requests for every two it delivers."""
    drain.emulator.set_capacity(2, retry_after=None, service_time=0.1)
    ids = [drain.sale() for _ in range(60)]
    drain.forwarder.start()
    eventually(
        lambda: all(drain.state_of(i) is State.SENT for i in ids), timeout=60, what="drained"
    )
    refused = drain.emulator.counts()["overloaded"]
    assert len(drain.emulator.accepted) == 60
    assert refused < 0.5 * 60, f"{refused} requests refused as overload for 60 delivered"


def test_after_trouble_it_grows_back_to_the_configured_concurrency(drain: Pipeline) -> None:
    drain.emulator.set_capacity(service_time=0.05)  # slow enough that requests overlap
    drain.emulator.set_fault("error", status=503, count=3)
    ids = [drain.sale() for _ in range(300)]
    drain.forwarder.start()
    eventually(
        lambda: all(drain.state_of(i) is State.SENT for i in ids), timeout=60, what="drained"
    )
    assert drain.emulator.peak_in_flight == 8
    assert drain.forwarder.window.limit == 8


def test_a_fixed_window_stays_at_the_configured_concurrency() -> None:
    window = SendWindow(4, adaptive=False)
    assert window.limit == 4
    for _ in range(3):
        answer(window, BUSY)
    assert window.limit == 4
