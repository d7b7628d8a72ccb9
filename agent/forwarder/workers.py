"""The forwarder's workers: take pending records from the journal and deliver them, at
least once.

A few worker threads (``controller.concurrency``) each claim one record at a time from
the journal (sessions still running first, then oldest first), send it through the
:class:`~agent.forwarder.transport.Sender` seam, read the answer with
:mod:`~agent.forwarder.outcome` and record the result in the journal:

* delivered (or 9022 after an earlier attempt of this record had an unknown outcome):
  ``sent`` with the ``reference_id``;
* rejected, or 9022 on a first attempt (a permit-number conflict): ``dead`` with status,
  body and reason, shown as ``status``'s last error; the worker moves on to the next record;
* transient (a redirect and any status nobody named included): the same record is retried
  by tenacity, forever, with backoff;
* paused (token or licence refused): every worker stops sending until the backoff ends or
  the token changes; nothing is dead-lettered.

Each answer also moves the controller's state (:mod:`~agent.forwarder.controller`); the
retries and their waits are :mod:`~agent.forwarder.retry`'s policy.

An error in the agent's own code while it reads an answer is a transient *unknown*
outcome (the controller did answer, so it may have stored the record): backed off like any
other, counted as a possible duplicate, logged once with its stack and shown in ``status``
(:mod:`~agent.forwarder.agent_errors`).

Workers sleep on conditions, never on a timer: the journal wakes them when a record is
appended, and any success wakes every worker that is backing off, so a backlog starts to
drain the moment the controller is back. :meth:`Forwarder.stop` interrupts every wait. A
worker that spends longer than ``stall_after_s`` in one request is stuck (no timeout can
cut a read that trickles): :attr:`Forwarder.idle_or_progressing` turns false, the watchdog
starves and systemd restarts the service.

A little over 400 lines: the worker loop, its waits and the recording of an answer share
one lock, its conditions and each thread's carried state; split, each half would reach
into the other's.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass

from agent.errors import JournalError, SendError
from agent.forwarder.agent_errors import AgentErrors
from agent.forwarder.controller import ControllerHealth, ControllerState
from agent.forwarder.flow import SendWindow
from agent.forwarder.outcome import Outcome, Verdict, classify, classify_failure, explain_conflict
from agent.forwarder.retry import RetryPolicy
from agent.forwarder.transport import Reply, Sender
from agent.journal import Attempt, Claim, Journal, State
from agent.timestamps import utc_iso

log = logging.getLogger("agent.forwarder")
JOURNAL_RETRY_MAX_S = 30.0  # the longest wait between two tries of a failing journal
BODY_LIMIT = 2_000  # characters of an answer's body, or of a reason, the journal keeps
STALL_AFTER_S = 60.0


@dataclass
class _Delivery:
    """One record's trip through the retry loop."""

    claim: Claim
    may_have_arrived: bool  # an earlier attempt's outcome was unknown: a 9022 is ours
    attempts: int = 0  # answers recorded in this trip: a retry marks the record sending


class _Unrecorded(Exception):
    """The service stopped before a request's answer could be recorded (the journal was
    locked or failing all along): the record stays marked as sending, so the next start
    counts it as an unknown outcome, which it is as far as the journal knows."""


class Forwarder:
    def __init__(
        self,
        journal: Journal,
        sender: Sender,
        *,
        concurrency: int = 4,
        adaptive: bool = True,
        policy: RetryPolicy | None = None,
        secret_text: Callable[[], str | Sequence[str]] = lambda: "",
        observe: Callable[[str, float, str], None] | None = None,
        stall_after_s: float = STALL_AFTER_S,
    ) -> None:
        self.journal = journal
        self.sender = sender
        self.concurrency = concurrency
        self.policy = policy or RetryPolicy()
        self.requests: Counter[str] = Counter()
        self._controller = ControllerHealth(
            self._set_meta, lambda: self.journal.counts()[State.PENDING]
        )
        self.health = self._controller.health
        self._secret_text = secret_text
        self._observe = observe
        self._stop = threading.Event()
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # backoffs and pauses wait here
        # idle workers wait here, on the same lock: new work wakes one of them, not every
        # thread in a backoff (each wake-up costs the GIL a switch, per record)
        self._idle = threading.Condition(lock)
        self._work_gen = 0  # bumped when the journal has new pending records
        self._retry_gen = 0  # bumped when backoffs should end early (success, new token)
        self._paused_until = 0.0  # monotonic
        self._next_try_noted = 0.0  # epoch: the next try while paused, as last recorded
        self._sleepers = 0  # workers in a backoff: a success ends their waits
        self._successes = 0  # deliveries so far; a worker notes it when it sends
        self._threads: list[threading.Thread] = []
        self._carried = threading.local()  # per worker: a claim taken with the last result
        self.stall_after_s = stall_after_s
        self._sending: dict[int, float] = {}  # worker thread id -> monotonic start of its send
        self._errors = AgentErrors(journal, self._stored, self._set_meta)
        # how many of the workers may send at once
        self.window = SendWindow(concurrency, adaptive=adaptive)
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
        self._errors.load()
        # what the last run said about the controller no longer holds
        self.journal.set_meta(
            {
                "controller_state": ControllerState.UNKNOWN.value,
                "controller_reason": None,
                "paused": None,
            }
        )
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._work, name=f"forwarder-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 3.0) -> None:
        """Stop sending; records in flight are finished or left for the next start."""
        self._stop.set()
        self.window.close()
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
        with suppress(JournalError):  # else the next start finds them in flight: resent
            self.journal.release_handed()  # claimed for a worker that stopped first

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
        """For the watchdog: alive threads that are idle, waiting out a backoff, or sending
        a request that started less than ``stall_after_s`` ago."""
        if self._stop.is_set() or not all(t.is_alive() for t in self._threads):
            return False
        oldest = min(tuple(self._sending.values()), default=None)
        return oldest is None or time.monotonic() - oldest < self.stall_after_s

    # -- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        unreleased: list[int] = []  # claims a failing journal could not give back yet
        self._carried.claim = None
        failures = 0  # the agent's own errors in a row: they back off like transient ones
        self._carried.journal_errors = 0
        while not self._stop.is_set():
            unreleased = [i for i in unreleased if not self._release(i)]
            claim, self._carried.claim = self._carried.claim, None
            claim = claim or self._next_claim()
            if claim is None:
                continue
            try:
                self._deliver(claim)
            except _Unrecorded:
                continue  # stopping, and the claim must stay marked as sending: no release
            except Exception as exc:  # a worker must outlive any error: the record stays pending
                if isinstance(exc, JournalError):
                    log.error("journal error while forwarding record %d: %s", claim.id, exc)
                    self._journal_pause()
                else:
                    failures += 1
                    self._errors.record(claim.id, exc)
                    self._sleep(self.policy.agent_error_wait_s(failures))
                if not self._release(claim.id):
                    unreleased.append(claim.id)
            else:
                failures = 0
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
            claims = self.journal.take_handed() or self.journal.claim(1)
        except JournalError as exc:
            log.error("cannot read the journal: %s", exc)
            self._journal_pause()
            return None
        self._carried.journal_errors = 0
        if claims:
            with self._cond:
                self._idle.notify()  # there may be more: the next idle worker looks
            return claims[0]
        # a sale stored while this worker waits comes claimed for it (one commit fewer)
        self.journal.await_claim(True)
        try:
            with self._cond:
                self._idle.wait_for(lambda: self._work_gen != gen or self._stop.is_set())
        finally:
            self.journal.await_claim(False)
        return None

    def _deliver(self, claim: Claim) -> None:
        delivery = _Delivery(claim, may_have_arrived=claim.unknown_outcomes > 0)
        verdict = self.policy.run(
            lambda: self._attempt(delivery), stop=self._stop, sleep=self._sleep
        )
        if verdict is None or not verdict.final:
            self.journal.release(claim.id)  # stopping: the record stays pending

    def _attempt(self, delivery: _Delivery) -> Verdict | None:
        """One send of one record, its answer recorded; ``None`` if stopping first."""
        if not self._wait_out_pause():
            return None
        claim = delivery.claim
        round_ = self.window.acquire()
        if round_ is None:
            return None  # stopping
        started = time.monotonic()
        verdict: Verdict | None = None
        try:
            # the record's "being sent" mark on the disk before its request goes out: a
            # power cut that took it would later read the controller's 9022 for this very
            # request as another record's (a conflict), dead-lettering a delivered sale
            if delivery.attempts:
                self.journal.sending(claim.id)  # a JournalError here: nothing went out
            else:
                self.journal.settle()  # the claim's commit, and any made since
            verdict, body_text = self._send(delivery)
        finally:
            self.window.release(round_, verdict, time.monotonic() - started)
        delivery.may_have_arrived = delivery.may_have_arrived or verdict.unknown
        self.requests[verdict.outcome.value] += 1
        if self._observe is not None:
            self._observe(verdict.outcome.value, time.monotonic() - started, verdict.cause)
        log.debug(
            "record %d: %s in %.0f ms", claim.id, verdict.reason, (time.monotonic() - started) * 1e3
        )

        state = State.SENT if verdict.delivered else None
        verdict = explain_conflict(verdict, claim.payload.get("permitNo", ""))
        if verdict.outcome in (Outcome.REJECTED, Outcome.CONFLICT):
            state = State.DEAD
        # a final answer: take this worker's next record in the same commit
        # a dead letter's reason for status, in the same commit as the record's state
        dead_meta: dict[str, str | None] | None = (
            {"last_error": f"{utc_iso()} record {claim.id} dead: {verdict.reason}"}
            if state is State.DEAD
            else None
        )
        self._carried.claim = self._record(
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
            meta=dead_meta,
        )
        delivery.attempts += 1
        if verdict.outcome is Outcome.ALREADY_DELIVERED:
            log.info("record %d: controller already had it (%s)", claim.id, verdict.reason)
        elif state is State.DEAD:
            log.warning("record %d refused by the controller: %s", claim.id, verdict.reason)
        elif verdict.outcome is Outcome.PAUSED:
            with self._cond:
                self._paused_until = max(
                    self._paused_until, time.monotonic() + self.policy.pause_initial_s
                )
        self._on_answer(verdict)
        return verdict

    def _send(self, delivery: _Delivery) -> tuple[Verdict, str]:
        """Post the record; the verdict on what came back (or did not) and the body."""
        worker = threading.get_ident()
        self._sending[worker] = time.monotonic()
        self._carried.successes_at_send = self._successes
        try:
            reply = self.sender.post(delivery.claim.payload)
        except SendError as exc:  # no answer is transient: retry, never drop
            return classify_failure(exc), ""
        except Exception as exc:  # the sender's own bug: the request may have gone out
            return self._errors.verdict(delivery.claim.id, None, exc), ""
        finally:
            del self._sending[worker]
        return self._read(delivery, reply)

    def _read(self, delivery: _Delivery, reply: Reply) -> tuple[Verdict, str]:
        """The verdict on an answer, and its body as stored (redacted, shortened); the
        controller's words are stored and logged, never with the token in them."""
        try:
            body_text = self._stored(reply.body.decode("utf-8", "replace"))
            verdict = classify(
                reply.status,
                reply.headers,
                reply.body,
                may_have_arrived=delivery.may_have_arrived,
            )
            return dataclasses.replace(verdict, reason=self._redact(verdict.reason)), body_text
        except Exception as exc:  # a bug in reading: never a tight loop, never a silent one
            return self._errors.verdict(delivery.claim.id, reply.status, exc), ""

    def _record(
        self,
        record_id: int,
        attempt: Attempt,
        *,
        claim_next: bool,
        meta: dict[str, str | None] | None = None,
    ) -> Claim | None:
        """Record a request's answer, however long the journal takes: once a request went
        out, what came back must not be forgotten (a resend would take the controller's
        9022 for another record's, and dead-letter a delivered sale). While the journal
        fails (locked by another process past its busy timeout, full, an I/O error), try
        again with backoff; a stop raises :class:`_Unrecorded`."""
        failures = 0
        while True:
            try:
                return self.journal.record_attempt(
                    record_id, attempt, claim_next=claim_next, meta=meta
                )
            except JournalError as exc:
                if self._stop.is_set():
                    log.warning(
                        "record %d: its answer (%s) could not be recorded before the stop: "
                        "%s; it is sent again at the next start and counted as an unknown "
                        "outcome",
                        record_id,
                        attempt.outcome,
                        exc,
                    )
                    raise _Unrecorded from exc
                if failures == 0:
                    log.error(
                        "record %d: cannot record the controller's answer (%s) yet: %s; "
                        "trying again",
                        record_id,
                        attempt.outcome,
                        exc,
                    )
                failures += 1
                self._stop.wait(_journal_wait_s(0.1, failures))
                claim_next = claim_next and not self._stop.is_set()

    def _journal_pause(self) -> None:
        """Wait after a journal error, longer each time in a row (0.5 s doubling to
        ``JOURNAL_RETRY_MAX_S``); only a stop ends it early. Not :meth:`_sleep`, which a
        delivery ends: a journal that fails at once must not spin a worker."""
        errors = getattr(self._carried, "journal_errors", 0)
        self._carried.journal_errors = errors + 1
        self._stop.wait(_journal_wait_s(0.5, errors))

    def _wait_out_pause(self) -> bool:
        with self._cond:
            while not self._stop.is_set():
                left = self._paused_until - time.monotonic()
                if left <= 0:
                    return True
                self._cond.wait(left)
        return False

    def _sleep(self, seconds: float) -> None:
        """Wait out a backoff, or less: a stop, :meth:`retry_now`, or any delivery since
        this worker's last request went out (the controller answers well now, even if
        that delivery came in before this worker began to wait) ends it."""
        since = getattr(self._carried, "successes_at_send", self._successes)
        with self._cond:
            gen = self._retry_gen
            if self._successes != since:
                return
            if self.health.state is ControllerState.PAUSED:
                self._note_next_try(time.time() + seconds)
            self._sleepers += 1
            try:
                self._cond.wait_for(
                    lambda: (
                        self._retry_gen != gen or self._successes != since or self._stop.is_set()
                    ),
                    timeout=seconds,
                )
            finally:
                self._sleepers -= 1

    def _note_next_try(self, at: float) -> None:
        """While paused, when the next try is (for ``status``: a person waits on it, or
        reloads); once per pause step, not per worker (called under ``_cond``)."""
        if abs(at - self._next_try_noted) < 1.0:
            return
        self._next_try_noted = at
        self._set_meta({"next_try_at": f"{at:.0f}"})

    # -- the controller's state ----------------------------------------------------------

    def _on_answer(self, verdict: Verdict) -> None:
        """Move the controller's state; a change after a final answer (it answers well
        again) ends every backoff and pause now."""
        if verdict.delivered:
            self._successes += 1
        changed = self._controller.answer(verdict)
        if not verdict.final:
            return
        if changed:
            self.retry_now()
        elif verdict.delivered:
            self._end_backoffs()

    def _end_backoffs(self) -> None:
        """A success while other workers back off (their failure may have come after the
        health turned ok again): they try again now, not after their Retry-After."""
        if not self._sleepers:  # read without the lock: the hot path stays lock-free
            return
        with self._cond:
            self._cond.notify_all()  # _successes changed: their waits end

    def _set_meta(self, values: dict[str, str | None]) -> None:
        try:
            self.journal.set_meta(values)
        except JournalError as exc:
            log.error("cannot record the controller's state in the journal: %s", exc)

    def _redact(self, text: str) -> str:
        secrets = self._secret_text()
        for secret in [secrets] if isinstance(secrets, str) else secrets:
            if secret:
                text = text.replace(secret, "********")
        return text

    def _stored(self, text: str) -> str:
        """``text`` as the journal keeps it: the whole of it (a body is at most
        transport.BODY_MAX) redacted before it is shortened, so a cut never leaves part of
        the token behind."""
        return self._redact(text)[:BODY_LIMIT]


def _journal_wait_s(first_s: float, failures: int) -> float:
    """``first_s`` doubled per failure in a row, up to ``JOURNAL_RETRY_MAX_S``; the exponent
    is bounded too, so hours of failures never overflow a float."""
    return float(min(JOURNAL_RETRY_MAX_S, first_s * 2 ** min(failures, 32)))
