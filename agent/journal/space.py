"""Room in the journal: the disk reserve in use, the journal's own size limit, and the
deletes that give room back (retention's pruning, and a full journal making room).

A full journal must not wedge the agent: new records are refused first (the intake NAKs
them, the hardware keeps them), while deliveries can still be recorded in the room kept
for them (``1/RESERVE_FRACTION`` of ``journal_max_mb``, or the disk reserve) and the
oldest delivered records give way. Undelivered records are never deleted here.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from agent.errors import JournalFullError
from agent.journal.schema import UNSENT
from agent.journal.store import RESERVE_FRACTION, Store

DISK_FULL_ROOM_BATCH = 20  # delivered records deleted per transaction on a full disk
PRUNE_BATCH = 1_000


class Space(Store):
    """The room left, and the deletes; part of :class:`~agent.journal.Journal`."""

    _backlog_counted: tuple[float, int] | None = None  # (monotonic time, count)

    @property
    def disk_full(self) -> bool:
        """The disk was full and its reserve is in use: new records may be refused."""
        return self._reserve.released

    @property
    def size_limited(self) -> bool:
        """The journal has a size limit of its own (``journal_max_mb``)."""
        return self._intake_pages is not None

    def disk_free(self) -> int:
        """Bytes free on the journal's filesystem."""
        return self._reserve.free()

    def _check_room(self, db: sqlite3.Connection, records: int = 1) -> None:
        """Raise :class:`JournalFullError` when new records may not be taken now: the disk
        is nearly full (the room left is kept for the backlog's deliveries), or the
        journal has reached its size limit's share for new records."""
        if not self._reserve.ready(
            records,
            lambda: self._free_inside(db),
            lambda: self._backlog_at_most(db),
            lambda: self._backlog(db),
        ):
            raise JournalFullError(
                f"journal {self.path}: disk full (the room left is kept to record the "
                f"deliveries of the {self._backlog(db)} record(s) to send)"
            )
        if self._over_intake_limit(db):
            raise JournalFullError(
                f"journal {self.path}: size limit reached "
                f"(journal_max_mb, {RESERVE_FRACTION - 1}/{RESERVE_FRACTION} for new records)"
            )

    def _backlog_at_most(self, db: sqlite3.Connection) -> int:
        """At least as many as the records to send, from two indexed lookups."""
        first = db.execute(
            "SELECT id FROM records INDEXED BY records_unsent "
            f"WHERE {UNSENT} AND state = 'pending' ORDER BY id LIMIT 1"
        ).fetchone()
        if first is None:
            return 0
        return int(db.execute("SELECT max(id) FROM records").fetchone()[0]) - int(first[0]) + 1

    def _backlog(self, db: sqlite3.Connection) -> int:
        """The records to send, counted at most once a second (a near-full disk's check)."""
        now = time.monotonic()
        if self._backlog_counted is None or now - self._backlog_counted[0] >= 1.0:
            count = db.execute(
                f"SELECT count(*) FROM records WHERE {UNSENT} AND state = 'pending'"
            ).fetchone()
            self._backlog_counted = (now, int(count[0]))
        return self._backlog_counted[1]

    def _free_inside(self, db: sqlite3.Connection) -> int:
        """Bytes of free pages inside the journal file (SQLite reuses them first)."""
        pages = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages) * int(db.execute("PRAGMA page_size").fetchone()[0])

    def _over_intake_limit(self, db: sqlite3.Connection) -> bool:
        """Past the share of ``max_bytes`` that new records may fill. The rest is kept for
        bookkeeping, so that a full journal can still record deliveries (a reference_id,
        an index entry) and the backlog drains instead of wedging."""
        if self._intake_pages is None:
            return False
        used = db.execute("PRAGMA page_count").fetchone()[0]
        used -= db.execute("PRAGMA freelist_count").fetchone()[0]
        return bool(used >= self._intake_pages)

    def prune_sent(self, older_than: float) -> int:
        """Delete sent records whose ``sent_at`` is older than ``older_than`` (epoch),
        with their attempts, in small batches so the service never waits long for it."""
        return self._prune(
            """SELECT id FROM records INDEXED BY records_sent_at
               WHERE state = 'sent' AND sent_at < ? LIMIT ?""",
            older_than,
        )

    def prune_rejected(self, older_than: float) -> int:
        """Delete rejected records (invalid at the source, never to be sent) received
        before ``older_than``: the retention policy applies to them as to delivered ones,
        so garbage a line made cannot fill the journal. ``export`` and ``dead list`` show
        them until then. Dead records (refused by the controller) are kept for a person."""
        return self._prune(
            f"""SELECT id FROM records INDEXED BY records_unsent
               WHERE {UNSENT} AND state = 'rejected' AND received_at < ? LIMIT ?""",
            older_than,
        )

    def _prune(self, select: str, older_than: float) -> int:
        total = 0
        while True:
            with self._write(durable=False) as db:
                deleted = _delete_selected(db, select, (older_than, PRUNE_BATCH))
                total += deleted
            if deleted < PRUNE_BATCH:
                return total

    def make_room(self, sent_before: float, limit: int = 500) -> int:
        """The journal is full: delete up to ``limit`` delivered records sent before
        ``sent_before``, oldest first, so new sales fit (SQLite reuses the freed pages).
        Undelivered records are never touched. On a full disk the batch is small: its
        pages pass through the WAL, which must fit in what the reserve gave back."""
        if self._reserve.released:
            limit = min(limit, DISK_FULL_ROOM_BATCH)
        with self._write(durable=False) as db:
            return _delete_selected(
                db,
                """SELECT id FROM records INDEXED BY records_sent_at
                   WHERE state = 'sent' AND sent_at < ? ORDER BY sent_at LIMIT ?""",
                (sent_before, limit),
            )


def _delete_selected(db: sqlite3.Connection, select: str, params: Sequence[Any]) -> int:
    """Delete the records ``select`` finds (their ids), with their attempts, inside the
    caller's transaction; return how many. The one delete of the journal: retention's
    pruning and a full journal's making room both go through it."""
    ids = [row[0] for row in db.execute(select, params)]
    marks = ",".join("?" * len(ids))
    db.execute(f"DELETE FROM attempts WHERE record_id IN ({marks})", ids)
    db.execute(f"DELETE FROM records WHERE id IN ({marks})", ids)
    return len(ids)
