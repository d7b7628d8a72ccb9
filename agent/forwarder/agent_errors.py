"""The agent's own errors around a send: never a tight loop, never a silent one.

An unexpected exception in the agent's code while it sends a record or handles the answer
(a bug in reading it, in the metrics hook, …) may come after the request went out, so the
controller may have stored the record: it is a transient *unknown* outcome, backed off like
any other and counted as a possible duplicate, so a 9022 on the record's next attempt is
its own. The stack is logged once per place it comes from (type, file, line); every
occurrence is counted in the journal's meta, with the last one's reason, for ``status``.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable

from agent.errors import JournalError
from agent.forwarder.controller import RecordMeta
from agent.forwarder.outcome import Outcome, Verdict
from agent.journal import Attempt, Journal
from agent.timestamps import utc_iso

log = logging.getLogger("agent.forwarder")


class AgentErrors:
    """Counts and logs the agent's own errors; ``stored`` makes a reason fit for the journal
    (redacted, shortened), ``record_meta`` writes the count (its errors its own)."""

    def __init__(
        self, journal: Journal, stored: Callable[[str], str], record_meta: RecordMeta
    ) -> None:
        self._journal = journal
        self._stored = stored
        self._record_meta = record_meta
        self._lock = threading.Lock()
        self._count = 0
        self._logged: set[tuple[str, str, int] | None] = set()

    def load(self) -> None:
        """Continue the count the journal holds from earlier runs."""
        self._count = int(self._journal.meta().get("agent_errors", "0"))

    def verdict(self, record_id: int, status: int | None, exc: Exception) -> Verdict:
        """An unexpected exception in the agent's own code while it handled an answer: the
        record stays, backs off as transient, counts as a possible duplicate; the stack is
        logged once per place it comes from, every occurrence is counted for ``status``."""
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = (type(exc).__name__, frame.filename, frame.lineno or 0) if frame else None
        reason = self._stored(
            "agent error handling the answer"
            + (f" (HTTP {status})" if status is not None else "")
            + f": {type(exc).__name__}: {exc}"
        )
        if where not in self._logged:
            self._logged.add(where)
            log.error(
                "record %d: %s; the record is kept and retried with backoff (each such try "
                "is counted as a possible duplicate)",
                record_id,
                reason,
                exc_info=exc,
            )
        else:
            log.debug("record %d: %s", record_id, reason)
        with self._lock:
            self._count += 1
            count = self._count
        self._record_meta({"agent_errors": str(count), "agent_error_last": f"{utc_iso()} {reason}"})
        return Verdict(Outcome.TRANSIENT, reason, status, unknown=True)

    def record(self, record_id: int, exc: Exception) -> None:
        """An error in the agent's own code around a send (after the answer, say): the
        request may have gone out, so the record gets an unknown outcome, and a 9022 on
        its next attempt is its own."""
        verdict = self.verdict(record_id, None, exc)
        attempt = Attempt(
            outcome=verdict.outcome.value,
            state=None,
            status=None,
            error=verdict.reason,
            body="",
            unknown=True,
        )
        try:
            self._journal.record_attempt(record_id, attempt)
        except JournalError as journal_exc:
            log.error("cannot record the error for record %d: %s", record_id, journal_exc)
