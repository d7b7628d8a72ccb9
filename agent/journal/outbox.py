"""The journal as the queue between the drivers and the forwarder: records go in
(:meth:`Outbox.append`), the forwarder claims them, sends them, and records each result.

Contract:

* :meth:`Outbox.append` commits (WAL, ``synchronous=FULL``) before it returns. Only then
  may a driver acknowledge the record to the hardware. A repeat of a (station, driver, TXN)
  already journaled is reported as a duplicate, and is just as safe to acknowledge. Each
  driver (each meter) has its own receipt numbers, so two meters may both send TXN 000123.
* The forwarder :meth:`~Outbox.claim` s a few pending records at a time, sessions still
  running first, then oldest first, so memory never grows with the backlog. ``in_flight``
  on disk says where a claim is: ``SENDING`` (1) while a request may be outstanding (a
  claim is taken to be sent at once), ``WAITING`` (2) between a known answer and the next
  retry (:meth:`~Outbox.sending` sets it back before that retry goes out, durably). A
  crash with a record ``SENDING`` is found at the next start and counted as an *unknown
  outcome*, the one case where the controller may see a duplicate, and the one case where
  its 9022 means "ours"; a crash while ``WAITING`` is not, since the last answer said
  nothing was stored.
* A sale sold while a forwarder worker waits for work is claimed for that worker in the
  commit that stores it (:meth:`~Outbox.await_claim`, :meth:`~Outbox.take_handed`): one
  commit per sale fewer (measured: 7 % fewer bytes written per record at 200 sales a
  second, 5 % with sales far apart; docs/benchmarks.md). Such a claim is ``SENDING`` from
  the start, as any claim is taken to be sent at once: a crash before it went out counts
  it as an unknown outcome, and it is sent again.
* Bookkeeping after a send (``sent``, ``dead``, attempt counts) is committed with
  ``synchronous=NORMAL``: losing it to a power cut can only cause a re-send, never a loss,
  and it spares the flash one fsync per record. The next FULL commit syncs it anyway.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from agent.errors import JournalFullError, MappingError
from agent.journal.records import (
    SENDING,
    WAITING,
    Appended,
    Attempt,
    Claim,
    NewRecord,
    Reread,
    State,
)
from agent.journal.schema import UNSENT
from agent.journal.space import Space
from agent.journal.store import put_meta

log = logging.getLogger("agent.journal")


# Claim one record, in one statement (each statement a worker runs is a GIL hand-over to
# the other workers): a session still running first, else the oldest pending record.
_CLAIM_ONE = f"""
    UPDATE records SET in_flight = {SENDING}, updated_at = :now
    WHERE id = coalesce(
        (SELECT id FROM records INDEXED BY records_pending_end
         WHERE state = 'pending' AND in_flight = 0 AND ends_at > :now ORDER BY id LIMIT 1),
        (SELECT id FROM records INDEXED BY records_unsent
         WHERE {UNSENT} AND state = 'pending' AND in_flight = 0 ORDER BY id LIMIT 1))
    RETURNING id, payload, attempts, unknown_outcomes"""


class Outbox(Space):
    """The queue's operations; part of :class:`~agent.journal.Journal`. It works within
    the room :class:`~agent.journal.space.Space` leaves: new records are refused when the
    journal is full, and a delivery is recorded even then, making room if need be."""

    _takers = 0  # forwarder workers waiting for work (await_claim)
    _handed: tuple[Claim, ...] = ()  # claimed for them by an append, not taken yet

    def await_claim(self, waiting: bool) -> None:
        """A forwarder worker starts (True) or stops (False) waiting for work. While some
        wait, an append claims its new pending records for them, up to one each, in the
        commit that stores them; :meth:`take_handed` gives them out."""
        with self._lock:
            self._takers += 1 if waiting else -1

    def take_handed(self) -> list[Claim]:
        """One claim an append took for a waiting worker, or none."""
        with self._lock:
            if not self._handed:
                return []
            claim, self._handed = self._handed[0], self._handed[1:]
            return [claim]

    def release_handed(self) -> None:
        """Give back the claims no worker took (the forwarder stopped): pending again."""
        with self._lock:
            handed, self._handed = self._handed, ()
        for claim in handed:
            self.release(claim.id)

    def append(self, **record: Any) -> Appended:
        """Store one hardware record durably (see :class:`NewRecord` for the fields);
        return only once it is committed."""
        return self.append_many([NewRecord(**record)])[0]

    def append_many(self, records: Sequence[NewRecord]) -> list[Appended]:
        """Store records in one durable commit (group commit: one fsync for a burst).

        A repeat of a journaled (station, driver, TXN) with the same fields is a resend:
        reported as a duplicate, not stored again. The same TXN with *different* fields is
        a device that reused a receipt number (a counter reset): that is a new sale, stored
        under ``TXN~2`` (``~3``…) and logged, never dropped.
        """
        now = self._clock()
        with self._write(durable=True) as db:
            self._check_room(db, len(records))
            results = [self._insert(db, record, now) for record in records]
            handed = self._hand_over(db, results, now)
        if handed:
            with self._lock:
                self._handed += tuple(handed)
        if any(r.state is State.PENDING and not r.duplicate for r in results):
            self._notify()
        return results

    def _hand_over(
        self, db: sqlite3.Connection, results: list[Appended], now: float
    ) -> list[Claim]:
        """(In the append's transaction.) Claim new pending records for the workers that
        wait for work and have none handed yet."""
        wanted = self._takers - len(self._handed)
        handed: list[Claim] = []
        for r in results:
            if len(handed) >= wanted:
                break
            if r.state is State.PENDING and not r.duplicate:
                payload, attempts, unknown = db.execute(
                    f"""UPDATE records SET in_flight = {SENDING}, updated_at = ?
                       WHERE id = ? RETURNING payload, attempts, unknown_outcomes""",
                    (now, r.id),
                ).fetchone()
                handed.append(Claim(r.id, json.loads(payload), attempts, unknown))
        return handed

    def _insert(self, db: sqlite3.Connection, r: NewRecord, now: float) -> Appended:
        fields_json = _dump(r.fields)
        payload = _dump(r.payload) if r.payload is not None else None
        for variant in _txn_variants(r.txn):
            cur = db.execute(
                """INSERT INTO records (station, txn, source, state, raw, fields, payload,
                       zone_code, ends_at, received_at, updated_at, last_error)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (station, source, txn) WHERE txn IS NOT NULL DO NOTHING""",
                (
                    r.station,
                    variant,
                    r.source,
                    r.state.value,
                    r.raw,
                    fields_json,
                    payload,
                    r.zone_code,
                    r.ends_at,
                    now,
                    now,
                    r.error,
                ),
            )
            if cur.rowcount:
                if variant != r.txn:
                    log.warning(
                        "%s reused TXN %s for a different sale; stored as %s",
                        r.source,
                        r.txn,
                        variant,
                    )
                record_id = int(cur.lastrowid or 0)
                state = r.state
                if variant != r.txn or variant is None:
                    state = self._number(db, record_id, r, variant)
                return Appended(record_id, False, state)
            row = db.execute(
                "SELECT id, state, fields FROM records "
                "WHERE station = ? AND source = ? AND txn = ?",
                (r.station, r.source, variant),
            ).fetchone()
            if json.loads(row[2]) == dict(r.fields):
                return Appended(row[0], True, State(row[1]))
        raise AssertionError("unreachable: _txn_variants is endless")

    @staticmethod
    def _number(db: sqlite3.Connection, record_id: int, r: NewRecord, txn: str | None) -> State:
        """Give a just-inserted pending record the permit number of its stored TXN and id."""
        if r.payload is None or r.permit_no is None:
            return r.state
        try:
            number = r.permit_no(txn, record_id)
        except MappingError as exc:
            db.execute(
                "UPDATE records SET state = 'rejected', payload = NULL, last_error = ? "
                "WHERE id = ?",
                (str(exc), record_id),
            )
            return State.REJECTED
        if number is not None and number != r.payload.get("permitNo"):
            db.execute(
                "UPDATE records SET payload = ? WHERE id = ?",
                (_dump({**r.payload, "permitNo": number}), record_id),
            )
        return r.state

    def recover_in_flight(self) -> int:
        """At start: claims left by a crash while a request may have been outstanding had an
        unknown outcome; claims waiting for a retry did not. All are pending again."""
        with self._write(durable=True) as db:
            cur = db.execute(
                f"""UPDATE records SET in_flight = 0, attempts = attempts + 1,
                       unknown_outcomes = unknown_outcomes + 1
                   WHERE in_flight = {SENDING}"""
            )
            db.execute(f"UPDATE records SET in_flight = 0 WHERE in_flight = {WAITING}")
            return cur.rowcount

    def sending(self, record_id: int) -> None:
        """A retry of a claimed record is about to go out: from now on a crash leaves it as
        an unknown outcome. Durable, since a lost mark would later take the controller's
        9022 for another record's (a conflict) when it was this record's own delivery."""
        with self._write(durable=True) as db:
            db.execute(f"UPDATE records SET in_flight = {SENDING} WHERE id = ?", (record_id,))

    def claim(self, limit: int) -> list[Claim]:
        """Take up to ``limit`` pending records: sessions still running first, then by age."""
        with self._write(durable=False) as db:
            return self._claim(db, limit)

    def _claim(self, db: sqlite3.Connection, limit: int) -> list[Claim]:
        claims: list[Claim] = []
        while len(claims) < limit:
            row = db.execute(_CLAIM_ONE, {"now": self._clock()}).fetchone()
            if row is None:
                break
            record_id, payload, attempts, unknown = row
            claims.append(Claim(record_id, json.loads(payload), attempts, unknown))
        return claims

    def record_attempt(
        self,
        record_id: int,
        attempt: Attempt,
        *,
        claim_next: bool = False,
        meta: Mapping[str, str | None] | None = None,
    ) -> Claim | None:
        """Record one send's result: the record becomes ``sent`` or ``dead``, or stays
        claimed (``attempt.state is None``) for its next retry. Failed attempts are kept in
        the ``attempts`` table, in the same transaction, for ``dead show``; a delivery's
        proof is the record's own reference_id.

        ``claim_next``: in the same transaction, claim the next pending record and return
        it (one commit per record while draining a backlog, not two). ``meta``: service
        state ``status`` shows (a dead letter's last error), set in the same commit, so
        ``status`` never sees the record dead without its reason.

        On a full journal the attempt's row is left out, and if even the record's own
        update does not fit, the oldest delivered records give way first: a delivery must
        be recorded, or the same sale would be sent again and again.
        """
        try:
            return self._record_attempt(
                record_id, attempt, keep_row=True, claim_next=claim_next, meta=meta
            )
        except JournalFullError:
            try:
                return self._record_attempt(record_id, attempt, keep_row=False, meta=meta)
            except JournalFullError:
                freed = self.make_room(self._clock(), limit=50)
                log.warning("journal full: %d delivered record(s) pruned early", freed)
                return self._record_attempt(record_id, attempt, keep_row=False, meta=meta)

    def _record_attempt(
        self,
        record_id: int,
        attempt: Attempt,
        *,
        keep_row: bool,
        claim_next: bool = False,
        meta: Mapping[str, str | None] | None = None,
    ) -> Claim | None:
        now = self._clock()
        state = attempt.state.value if attempt.state is not None else None
        with self._write(durable=False) as db:
            keep_row = keep_row and not self._over_intake_limit(db)
            db.execute(
                f"""UPDATE records SET
                       state = coalesce(?, state),
                       in_flight = CASE WHEN ? IS NULL THEN {WAITING} ELSE 0 END,
                       attempts = attempts + 1,
                       updated_at = ?,
                       sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END,
                       reference_id = coalesce(?, reference_id),
                       internal_reference_id = coalesce(?, internal_reference_id),
                       already_existed = max(already_existed, ?),
                       unknown_outcomes = unknown_outcomes + ?,
                       last_status = ?, last_error = ?, last_body = ?
                   WHERE id = ?""",
                (
                    state,
                    state,
                    now,
                    state,
                    now,
                    attempt.reference_id,
                    attempt.internal_reference_id,
                    int(attempt.already_existed),
                    int(attempt.unknown),
                    attempt.status,
                    attempt.error,
                    _kept_body(attempt, keep_row),
                    record_id,
                ),
            )
            if keep_row and attempt.state is not State.SENT:  # a delivery's proof is its row
                db.execute(
                    """INSERT INTO attempts (record_id, at, outcome, status, error, body)
                       VALUES (?, ?, ?, ?, ?, ?)""",
                    (record_id, now, attempt.outcome, attempt.status, attempt.error, attempt.body),
                )
            if meta:
                put_meta(db, meta)
            if claim_next:
                claims = self._claim(db, 1)
                return claims[0] if claims else None
        return None

    def release(self, record_id: int) -> None:
        """Give a claim back unsent (the forwarder is stopping); it stays pending."""
        with self._write(durable=False) as db:
            db.execute("UPDATE records SET in_flight = 0 WHERE id = ?", (record_id,))

    def remap(
        self,
        states: Sequence[State],
        mapper: Callable[
            [dict[str, str], int, str, str | None],
            tuple[State, dict[str, str] | None, float | None, str | None],
        ],
        *,
        ids: Sequence[int] | None = None,
        batch: int = 500,
        progress: Callable[[int], None] | None = None,
        reread: Reread | None = None,
    ) -> dict[State, int]:
        """Re-map records in ``states`` with the current rules (zone edits, requeue).

        ``mapper(fields, id, source, txn)`` returns (new state, payload, ends_at, error);
        ``txn`` is the TXN as journaled (``TXN~2`` for a reused receipt number). Works in
        batches so a backlog of any size is never loaded at once.

        ``reread(raw, source)``, when given, reads a *rejected* record's raw bytes again
        (the driver's current format and ``renames``): ``(fields, None)`` replaces its
        fields, TXN and zone code before mapping, ``({}, why)`` keeps it rejected, and
        None (a source with no reader now) keeps the fields it has. A TXN that now
        appears and is already journaled from that driver is a repeat: kept rejected.
        """
        counts: dict[State, int] = {}
        last = 0
        marks = ",".join("?" * len(states))
        while True:
            with self._write(durable=True) as db:
                unsent = "" if State.SENT in states else f"{UNSENT} AND "
                sql = (
                    "SELECT id, fields, source, txn, state, raw FROM records "
                    f"WHERE {unsent}state IN ({marks}) AND id > ?"
                )
                params: list[Any] = [s.value for s in states] + [last]
                if ids is not None:
                    sql += f" AND id IN ({','.join('?' * len(ids))})"
                    params += list(ids)
                rows = db.execute(sql + " ORDER BY id LIMIT ?", [*params, batch]).fetchall()
                now = self._clock()
                for record_id, fields, source, txn, state, raw in rows:
                    record = json.loads(fields)
                    unreadable: str | None = None
                    again = None
                    if reread is not None and state == State.REJECTED.value:
                        again = reread(bytes(raw), source)
                    if again is not None:
                        record, unreadable = again
                        txn, unreadable = _reread(db, record_id, record, txn, unreadable)
                    result = (
                        (State.REJECTED, None, None, unreadable)
                        if unreadable is not None
                        else mapper(record, record_id, source, txn)
                    )
                    new_state, payload, ends_at, error = result
                    db.execute(
                        """UPDATE records SET state = ?, payload = ?,
                               ends_at = coalesce(?, ends_at),
                               last_error = ?, updated_at = ?, in_flight = 0
                           WHERE id = ?""",
                        (
                            new_state.value,
                            _dump(payload) if payload is not None else None,
                            ends_at,
                            error,
                            now,
                            record_id,
                        ),
                    )
                    counts[new_state] = counts.get(new_state, 0) + 1
            if not rows:
                break
            last = rows[-1][0]
            if progress is not None:
                progress(sum(counts.values()))
        if counts.get(State.PENDING):
            self._notify()
        return counts


def _reread(
    db: sqlite3.Connection,
    record_id: int,
    fields: dict[str, str],
    txn: str | None,
    unreadable: str | None,
) -> tuple[str | None, str | None]:
    """Store a record's fields as read again, with the TXN and zone code they give.
    Returns the TXN as journaled now, and why the record stays rejected (None: map it)."""
    if unreadable is not None:
        return txn, unreadable
    new = (fields.get("TXN") or "").strip() or None
    if txn is not None and new is not None and (txn == new or txn.startswith(f"{new}~")):
        new = txn  # a reused receipt number keeps its ~2
    zone = (fields.get("ZONE") or "").strip() or None
    try:
        db.execute(
            "UPDATE records SET fields = ?, txn = ?, zone_code = ? WHERE id = ?",
            (_dump(fields), new, zone, record_id),
        )
    except sqlite3.IntegrityError:  # (station, source, txn) is another record's
        db.execute(
            "UPDATE records SET fields = ?, zone_code = ? WHERE id = ?",
            (_dump(fields), zone, record_id),
        )
        return txn, f"TXN {new} is already journaled from this driver: a repeat, not sent"
    return new, None


def _kept_body(attempt: Attempt, keep_row: bool) -> str | None:
    """The answer's body kept with the record: none for a delivery, whose proof is its
    reference_id (a body per delivered record would grow the journal by a third just when
    a full disk's backlog drains), and a short one when the journal is full."""
    if attempt.state is State.SENT:
        return None
    return attempt.body if keep_row else attempt.body[:200]


def _txn_variants(txn: str | None) -> Iterator[str | None]:
    yield txn
    if txn is not None:
        n = 2
        while True:
            yield f"{txn}~{n}"
            n += 1


# one encoder for every row: json.dumps() with options builds a new one at each call
_dump: Callable[[Mapping[str, str]], str] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False
).encode
