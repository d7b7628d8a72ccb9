"""How many requests may be in flight at once: fewer when the controller struggles.

Why: one controller serves a whole fleet. After an outage every agent with a backlog resumes
at once; with ``controller.concurrency`` requests each, however the controller copes, they
can knock it over again (the reconnect storm log shippers and fleet managers are known for).
So the number of requests in flight adapts as TCP's congestion window does: additive
increase, multiplicative decrease.

Contract (:class:`SendWindow`):

* ``limit`` starts at 1 (a resuming agent starts gently) and stays within
  :data:`MIN_LIMIT` … ``ceiling``. Below 1 it paces: one request at a time, each started
  ``usual answer time / limit`` after the one before (a fleet larger than the controller's
  capacity must send less than one request in flight per agent, or it overloads it
  however each agent adapts).
* A worker calls :meth:`~SendWindow.acquire` before a request (it waits while the window is
  full, or paced; None once :meth:`~SendWindow.close` was called) and
  :meth:`~SendWindow.release` after it, with how the answer read and how long it took.
* A good answer (a delivery, or a refusal of the record itself) that came quickly makes it
  grow. Until the first trouble, by ``1 / limit`` (about one more request in flight per
  round of answers), or a quarter of ``limit`` while below 1. After it, by
  :data:`CAREFUL_STEP` requests per usual answer time, a step that doubles every
  :data:`STEP_DOUBLES_EVERY` answer times without trouble, up to one (and never more than a
  quarter of ``limit`` per answer). Why: every agent of a fleet takes the same step, so the
  shares even out (additive increase, as TCP's congestion avoidance), but TCP's one whole
  request per round, taken by a dozen agents at once, overflows a controller every round;
  the careful step probes the capacity a few in a hundred requests at a time, and an agent
  alone with its controller is back to ``ceiling`` within a few dozen answer times.
* Load halves ``limit``, once per round (requests already in flight when it was halved do
  not halve it again: they were sent into the same trouble): a transient answer (429 or
  503, any 5xx), a request that may have reached the controller and got no answer (a
  timeout, a reset), or a good answer slower than both :data:`SLOW_ANSWER_S` and
  :data:`SLOWDOWN` times the usual one.
* No request reached a server (refused, no DNS, no route): an outage, not load. ``limit``
  goes no higher than 1, so a resuming agent starts gently, and no lower, so it does not
  crawl back up when the controller returns.
* A paused controller (token refused) changes nothing: that is not load either.

``adaptive=False`` (``controller.adaptive_concurrency = false``, for a controller of the
station's own) keeps ``limit`` at ``ceiling``.

``Retry-After`` is not this module's business: the retry policy still waits it out; the
window only bounds how many go at once when the waits end.
"""

from __future__ import annotations

import math
import threading
import time

from agent.forwarder.outcome import Outcome, Verdict

MIN_LIMIT = 1 / 32  # at the least, one request per 32 answer times
CAREFUL_STEP = 1 / 32  # after trouble: requests in flight added per usual answer time ...
STEP_DOUBLES_EVERY = 8.0  # ... doubled every so many answer times without trouble
SLOW_ANSWER_S = 0.5  # a good answer never counts as slow below this: loopback jitter
SLOWDOWN = 4.0  # ... nor below this many times the usual answer time
_CALM_ENOUGH = STEP_DOUBLES_EVERY * math.log2(1 / CAREFUL_STEP)  # the step is 1 by then
_SMOOTHING = 0.1  # weight of the newest good answer in the usual answer time


class SendWindow:
    """The requests allowed in flight; see the module docstring. Thread-safe."""

    def __init__(self, ceiling: int, *, adaptive: bool = True) -> None:
        if ceiling < 1:
            raise ValueError(f"ceiling: expected at least 1, got {ceiling}")
        self.ceiling = ceiling
        self.adaptive = adaptive
        self._limit = 1.0 if adaptive else float(ceiling)
        self._in_flight = 0
        # bumped by each decrease (0: no trouble yet); a request remembers the round it went in
        self._round = 0
        self._usual_s: float | None = None  # smoothed time of good answers
        self._next_at = 0.0  # monotonic: while paced, the next request waits for this
        self._calm = 0.0  # answer times since the last load signal
        self._closed = False
        self._cond = threading.Condition(threading.Lock())

    @property
    def limit(self) -> float:
        """Requests allowed in flight now (whole ones from 1 up; below 1, the pace)."""
        return float(int(self._limit)) if self._limit >= 1 else self._limit

    def acquire(self) -> int | None:
        """Wait for room for one more request; the round it goes in, or None once closed."""
        with self._cond:
            while not self._closed:
                if self._in_flight >= max(1, int(self._limit)):
                    self._cond.wait()
                    continue
                early = self._next_at - time.monotonic()
                if self._limit < 1 and early > 0:
                    self._cond.wait(early)
                    continue
                break
            if self._closed:
                return None
            self._in_flight += 1
            if self._limit < 1:
                self._next_at = time.monotonic() + (self._usual_s or 0.0) / self._limit
            return self._round

    def release(self, round_: int, verdict: Verdict | None, seconds: float) -> None:
        """One request is over: ``verdict`` is how its answer read (None: it never went
        out), ``seconds`` its time."""
        with self._cond:
            self._in_flight -= 1
            before = int(self._limit)
            if verdict is None or not self.adaptive:
                self._cond.notify()
                return
            good = verdict.final
            slow = good and self._slow(seconds)
            if good:
                usual = self._usual_s
                self._usual_s = seconds if usual is None else usual + _SMOOTHING * (seconds - usual)
            if good and not slow:
                self._limit = min(float(self.ceiling), self._grown())
            elif _outage(verdict):
                self._limit = min(self._limit, 1.0)
            elif verdict.outcome is not Outcome.PAUSED and round_ == self._round:
                self._limit = max(MIN_LIMIT, self._limit / 2.0)
                self._round += 1
                self._calm = 0.0
            if int(self._limit) > before:
                self._cond.notify(int(self._limit) - before + 1)
            else:
                self._cond.notify()

    def close(self) -> None:
        """Stopping: every wait in :meth:`acquire` ends, and no new request is let through."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _grown(self) -> float:
        """``limit`` after one more good answer (see the module docstring); each answer is
        ``1 / limit`` usual answer times apart."""
        limit = self._limit
        if self._round == 0:
            return limit * 1.25 if limit < 1 else limit + 1 / limit
        self._calm = min(self._calm + 1 / limit, _CALM_ENOUGH)  # 2 ** calm stays a float
        step = min(1.0, CAREFUL_STEP * 2 ** (self._calm / STEP_DOUBLES_EVERY))
        return limit + min(limit / 4, step / limit)

    def _slow(self, seconds: float) -> bool:
        """Slower than the usual answer (which learns every good answer, so a link that is
        always slow, a cellular one, is the usual, not a slowdown)."""
        usual = self._usual_s
        return usual is not None and seconds > max(SLOW_ANSWER_S, SLOWDOWN * usual)


def _outage(verdict: Verdict) -> bool:
    """Nothing reached a server: no answer, and the request cannot have arrived."""
    return verdict.status is None and not verdict.unknown
