"""How much load the emulated controller takes before it answers as an overloaded server.

Why: after an outage a whole fleet of agents with backlogs resumes at once. A real server
has a limit; beyond it, it answers 503 with ``Retry-After`` (or slows down, or falls over).
The emulator models the first, so that a test can show an agent backing off instead of
knocking its controller over. A server of the kind that answers so (IIS's application pool,
a gunicorn or nginx in front of workers) first queues what it cannot handle yet, and
refuses only once that queue is full: ``queue`` models that; 0 refuses at once.

Contract: ``Capacity.admit`` says whether one more push request may be handled: at once
while fewer than ``max_in_flight`` are being handled, after a wait in first-come order
while fewer than ``queue`` wait, and never when ``per_second`` were admitted in the last
second. Each admitted request is handled for at least ``service_time`` seconds (what the
real server spends on it: without it, loopback requests barely overlap) and must be
followed by exactly one ``release``. ``peak_in_flight`` is the most ever handled at once,
``peak_waiting`` the longest the queue was, ``refused`` how many were answered 503.
Thread-safe; no limit is the default.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from agent.emulator.replies import Reply, json_reply


@dataclass(frozen=True)
class Limits:
    max_in_flight: int | None = None
    per_second: float | None = None
    retry_after: str | None = "1"  # None: no Retry-After header
    service_time: float = 0.0
    queue: int = 0  # requests that may wait for a free slot, beyond max_in_flight


def make_limits(
    max_in_flight: int | None,
    per_second: float | None,
    retry_after: str | None,
    service_time: float,
    queue: int = 0,
) -> Limits:
    """Checked ``Limits``; ValueError naming the bad option."""
    if max_in_flight is not None and not (_is_number(max_in_flight, int) and max_in_flight >= 1):
        raise ValueError(f"capacity max_in_flight {max_in_flight!r}: expected an integer >= 1")
    if per_second is not None and not (_is_number(per_second) and per_second > 0):
        raise ValueError(f"capacity per_second {per_second!r}: expected a number > 0")
    if not (_is_number(service_time) and service_time >= 0):
        raise ValueError(f"capacity service_time {service_time!r}: expected seconds >= 0")
    if retry_after is not None and (not isinstance(retry_after, str) or not retry_after):
        raise ValueError(f"capacity retry_after {retry_after!r}: expected a string or None")
    if not (_is_number(queue, int) and queue >= 0):
        raise ValueError(f"capacity queue {queue!r}: expected an integer >= 0")
    rate = None if per_second is None else float(per_second)
    return Limits(max_in_flight, rate, retry_after, float(service_time), queue)


def _is_number(value: object, kind: type | tuple[type, ...] = (int, float)) -> bool:
    if isinstance(value, bool) or not isinstance(value, kind):
        return False
    return math.isfinite(value)  # type: ignore[arg-type]


class Capacity:
    """The server's load limits and what it is handling now; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)  # a slot was released
        self._limits = Limits()
        self._in_flight = 0
        self._admitted: deque[float] = deque()  # monotonic times of the last second's starts
        self._waiting: deque[object] = deque()  # a ticket per queued request, in order
        self.peak_in_flight = 0
        self.peak_waiting = 0
        self.refused = 0

    def set(self, limits: Limits) -> None:
        with self._lock:
            self._limits = limits

    @property
    def limits(self) -> Limits:
        with self._lock:
            return self._limits

    def admit(self, stopping: threading.Event | None = None) -> bool:
        """Whether this request is handled (then ``release`` it), after its turn in the
        queue if it had to wait; a ``stopping`` server refuses those still waiting."""
        now = time.monotonic()
        with self._lock:
            limits = self._limits
            while self._admitted and self._admitted[0] <= now - 1.0:
                self._admitted.popleft()
            fast = limits.per_second is not None and len(self._admitted) >= limits.per_second
            if fast or (self._full(limits) and len(self._waiting) >= limits.queue):
                self.refused += 1
                return False
            queued = self._full(limits) or bool(self._waiting)
            if queued and not self._wait_turn(stopping):
                self.refused += 1
                return False
            self._in_flight += 1
            self._admitted.append(time.monotonic())
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            return True

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._freed.notify_all()

    def _full(self, limits: Limits) -> bool:
        return limits.max_in_flight is not None and self._in_flight >= limits.max_in_flight

    def _wait_turn(self, stopping: threading.Event | None) -> bool:
        """Queue (holding the lock) until first in line with a slot free; False if the
        server stops meanwhile."""
        ticket = object()
        self._waiting.append(ticket)
        self.peak_waiting = max(self.peak_waiting, len(self._waiting))
        try:
            while self._waiting[0] is not ticket or self._full(self._limits):
                if stopping is not None and stopping.is_set():
                    return False
                self._freed.wait(0.1)
            return True
        finally:
            self._waiting.remove(ticket)
            self._freed.notify_all()  # the next in line looks

    def refusal(self) -> Reply:
        """What an overloaded server answers."""
        after = self.limits.retry_after
        retry = (("Retry-After", after),) if after is not None else ()
        body = {"Message": "emulated overload: server at capacity"}
        return json_reply(503, body, "overloaded", retry)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                **asdict(self._limits),
                "in_flight": self._in_flight,
                "waiting": len(self._waiting),
                "peak_in_flight": self.peak_in_flight,
                "peak_waiting": self.peak_waiting,
                "refused": self.refused,
            }
