"""The forwarder: takes pending records from the journal and delivers them, at least once.

A few worker threads (``controller.concurrency``) each claim one record at a time from
the journal (sessions still running first, then oldest first), send it through the
:class:`~agent.transport.Sender` seam, read the answer with :mod:`agent.outcome` and record
the result in the journal:

* delivered (or 9022, already there): ``sent`` with the ``reference_id``;
* rejected: ``dead`` with status and body; the worker moves on to the next record;
* transient: the same record is retried by tenacity, forever, with backoff;
* paused (token or licence refused): every worker stops sending until the backoff ends or
  the token changes; nothing is dead-lettered.

Workers sleep on conditions, never on a timer: the journal wakes them when a record is
appended, and one success wakes every worker that is backing off, so a backlog starts to
drain the moment the controller is back. :meth:`Forwarder.stop` interrupts every wait.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import tenacity

from agent.errors import JournalError
from agent.journal import Attempt, Claim, Journal, State
from agent.outcome import Outcome, Verdict, classify, classify_failure
from agent.retry import RetryPolicy
from agent.transport import Sender

log = logging.getLogger("agent.forwarder")
BODY_LIMIT = 2_000


@dataclass
class Health:
    """The controller as the forwarder sees it; changes are logged once, not per retry."""

    state: str = "unknown"  # unknown (nothing sent yet) | ok | unreachable | paused
    since: float = 0.0
    reason: str = ""
    last_success: float | None = None


class Forwarder:
    def __init__(
        self,
        journal: Journal,
        sender: Sender,
        *,
        concurrency: int = 4,
        policy: RetryPolicy | None = None,
        secret_text: Callable[[], str] = lambda: "",
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.journal = journal
        self.sender = sender
        self.concurrency = concurrency
        self.policy = policy or RetryPolicy()
        self._wait = self.policy.wait()
        self.requests: Counter[str] = Counter()
        self.health = Health(since=time.time())
        self._secret_text = secret_text
        self._observe = observe
        self._health_lock = threading.Lock()
        self._left_ok_at = time.time()
        self._stop = threading.Event()
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # backoffs and pauses wait here
        # idle workers wait here, on the same lock: new work wakes one of them, not every
        # thread in a backoff (each wake-up costs the GIL a switch, per record)
        self._idle = threading.Condition(lock)
        self._work_gen = 0  # bumped when the journal has new pending records
        self._retry_gen = 0  # bumped when backoffs should end early (success, new token)
        self._paused_until = 0.0  # monotonic
        self._threads: list[threading.Thread] = []
        self._carried = threading.local()  # per worker: a claim taken with the last result
        journal.subscribe(self.wake)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        recovered = self.journal.recover_in_flight()
        if recovered:
            log.warning(
                "%d record(s) were in flight when the agent last stopped; their outcome is "
                "unknown, so they will be sent again (the controller may see them twice)",
                recovered,
            )
        # what the last run said about the controller no longer holds
        self.journal.set_meta({"controller_state": "unknown", "paused": None})
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._work, name=f"forwarder-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 3.0) -> None:
        """Stop sending; records in flight are finished or left for the next start."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            self._idle.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            self.sender.close()  # breaks a request still waiting for its answer
            for thread in self._threads:
                thread.join(max(0.0, deadline + 1.0 - time.monotonic()))
        else:
            self.sender.close()

    def wake(self) -> None:
        """New pending records: an idle worker claims them now (it wakes the next one if it
        found work, so a burst spreads over the workers)."""
        with self._cond:
            self._work_gen += 1
            self._idle.notify()

    def retry_now(self) -> None:
        """End backoffs and pauses early (the controller is back, or the token changed)."""
        with self._cond:
            self._retry_gen += 1
            self._work_gen += 1
            self._paused_until = 0.0
            self._cond.notify_all()
            self._idle.notify_all()

    @property
    def idle_or_progressing(self) -> bool:
        """For the watchdog: alive threads that are idle, waiting out a backoff, or sending."""
        return all(t.is_alive() for t in self._threads) and not self._stop.is_set()

    # -- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        unreleased: list[int] = []  # claims a failing journal could not give back yet
        self._carried.claim = None
        while not self._stop.is_set():
            unreleased = [i for i in unreleased if not self._release(i)]
            claim, self._carried.claim = self._carried.claim, None
            claim = claim or self._next_claim()
            if claim is None:
                continue
            try:
                self._deliver(claim)
            except Exception as exc:  # a worker must outlive any error: the record stays pending
                if isinstance(exc, JournalError):
                    log.error("journal error while forwarding record %d: %s", claim.id, exc)
                else:
                    log.exception("unexpected error while forwarding record %d", claim.id)
                self._sleep(1.0)
                if not self._release(claim.id):
                    unreleased.append(claim.id)
        carried = self._carried.claim
        if carried is not None:  # claimed with the last result, never sent: give it back
            self._release(carried.id)

    def _release(self, record_id: int) -> bool:
        try:
            self.journal.release(record_id)
        except JournalError:
            return False
        return True

    def _next_claim(self) -> Claim | None:
        with self._cond:
            gen = self._work_gen
        try:
            claims = self.journal.claim(1)
        except JournalError as exc:
            log.error("cannot read the journal: %s", exc)
            self._sleep(1.0)
            return None
        if claims:
            with self._cond:
                self._idle.notify()  # there may be more: the next idle worker looks
            return claims[0]
        with self._cond:
            self._idle.wait_for(lambda: self._work_gen != gen or self._stop.is_set())
        return None

    def _deliver(self, claim: Claim) -> None:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_result(
                lambda v: v is not None and v.outcome in (Outcome.TRANSIENT, Outcome.PAUSED)
            ),
            wait=self._wait,
            stop=lambda _state: self._stop.is_set(),
            sleep=self._sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        verdict: Verdict | None = retrying(self._attempt, claim)
        if verdict is None or not (verdict.delivered or verdict.outcome is Outcome.REJECTED):
            self.journal.release(claim.id)  # stopping: the record stays pending

    def _attempt(self, claim: Claim) -> Verdict | None:
        """One send of one record, its answer recorded; ``None`` if stopping first."""
        if not self._wait_out_pause():
            return None
        started = time.monotonic()
        body_text = ""
        try:
            reply = self.sender.post(claim.payload)
        except Exception as exc:  # any transport failure is transient: retry, never drop
            verdict = classify_failure(exc)
        else:
            body_text = self._redact(reply.body.decode("utf-8", "replace"))[:BODY_LIMIT]
            verdict = classify(reply.status, reply.headers, reply.body)
        # the controller's words are stored and logged: never with the token in them
        verdict = dataclasses.replace(verdict, reason=self._redact(verdict.reason))
        self.requests[verdict.outcome.value] += 1
        if self._observe is not None:
            self._observe(verdict.outcome.value, time.monotonic() - started)
        log.debug(
            "record %d: %s in %.0f ms", claim.id, verdict.reason, (time.monotonic() - started) * 1e3
        )

        state = State.SENT if verdict.delivered else None
        if verdict.outcome is Outcome.REJECTED:
            state = State.DEAD
        # a final answer: take this worker's next record in the same commit
        self._carried.claim = self.journal.record_attempt(
            claim.id,
            Attempt(
                outcome=verdict.outcome.value,
                state=state,
                status=verdict.status,
                error=None if verdict.delivered else verdict.reason,
                # a delivery's proof is its reference_id; the body is kept only for failures
                # (dead show), which spares the flash a copy of every 200 answer
                body="" if verdict.delivered else body_text,
                reference_id=verdict.reference_id,
                internal_reference_id=verdict.internal_reference_id,
                already_existed=verdict.outcome is Outcome.ALREADY_DELIVERED,
                unknown=verdict.unknown,
            ),
            claim_next=state is not None and not self._stop.is_set(),
        )
        if verdict.delivered:
            if verdict.outcome is Outcome.ALREADY_DELIVERED:
                log.info("record %d: controller already had it (%s)", claim.id, verdict.reason)
            self._on_success()
        elif verdict.outcome is Outcome.REJECTED:
            log.warning("record %d rejected by the controller: %s", claim.id, verdict.reason)
            self._on_reachable()
        elif verdict.outcome is Outcome.PAUSED:
            self._on_paused(verdict)
        else:
            self._on_unreachable(verdict)
        return verdict

    def _wait_out_pause(self) -> bool:
        with self._cond:
            while not self._stop.is_set():
                left = self._paused_until - time.monotonic()
                if left <= 0:
                    return True
                self._cond.wait(left)
        return False

    def _sleep(self, seconds: float) -> None:
        with self._cond:
            gen = self._retry_gen
            self._cond.wait_for(
                lambda: self._retry_gen != gen or self._stop.is_set(), timeout=seconds
            )

    # -- health -----------------------------------------------------------------------------

    def _on_success(self) -> None:
        self.health.last_success = time.time()
        previous = self._transition("ok", "")
        if previous in ("unreachable", "paused"):
            log.warning(
                "controller back after %s; %d record(s) to send",
                _duration(time.time() - self._left_ok_at),
                self.journal.counts()[State.PENDING],
            )
        if previous is not None:
            self.retry_now()

    def _on_reachable(self) -> None:
        if self._transition("ok", "") is not None:
            self.retry_now()

    def _on_unreachable(self, verdict: Verdict) -> None:
        if self._transition("unreachable", verdict.reason) is not None:
            log.warning("controller unreachable: %s; records are kept and retried", verdict.reason)

    def _on_paused(self, verdict: Verdict) -> None:
        with self._cond:
            self._paused_until = max(
                self._paused_until, time.monotonic() + self.policy.pause_initial_s
            )
        if self._transition("paused", verdict.reason) is not None:
            log.error(
                "forwarding paused: the controller refused the API token or licence (%s); "
                "fix the token, then reload (SIGHUP) or wait for the next try",
                verdict.reason,
            )

    def _transition(self, state: str, reason: str) -> str | None:
        """Move to ``state``; return the previous state if it changed, else None.

        Several workers see the same outage at once: only the first one's transition
        counts, so each change is logged and recorded once.
        """
        with self._health_lock:
            previous = self.health.state
            if previous == state:
                return None
            now = time.time()
            if previous in ("ok", "unknown"):
                self._left_ok_at = now
            self.health.state, self.health.since, self.health.reason = state, now, reason
            values: dict[str, str | None] = {
                "controller_state": state,
                "controller_since": f"{now:.3f}",
                "paused": reason if state == "paused" else None,
            }
            if reason:  # the last error stays visible after recovery, with its time
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
                values["last_error"] = f"{stamp} {reason}"
            try:
                self.journal.set_meta(values)
            except JournalError as exc:
                log.error("cannot record the controller's state in the journal: %s", exc)
            return previous

    def _redact(self, text: str) -> str:
        secret = self._secret_text()
        return text.replace(secret, "********") if secret else text


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
