"""The journal: one SQLite file, the durable store-and-forward buffer between drivers and
the forwarder.

Contract:

* :meth:`Journal.append` commits (WAL, ``synchronous=FULL``) before it returns. Only then
  may a driver acknowledge the record to the hardware. A repeat of a (station, driver, TXN)
  already journaled is reported as a duplicate, and is just as safe to acknowledge. Each
  driver (each meter) has its own receipt numbers, so two meters may both send TXN 000123.
* Every record has one state: ``pending`` (to send), ``held`` (zone not mapped yet),
  ``sent`` (the controller has it; its ``reference_id`` is kept), ``rejected`` (invalid at
  the source: it never became a payload) or ``dead`` (the controller refused it for good).
* The forwarder :meth:`claim` s a few pending records at a time, sessions still running
  first, then oldest first, so memory never grows with the backlog. A claim is marked
  ``in_flight`` on disk: a crash between send and answer is found at the next start and
  counted as an *unknown outcome*, the one case where the controller may see a duplicate.
* Bookkeeping after a send (``sent``, ``dead``, attempt counts) is committed with
  ``synchronous=NORMAL``: losing it to a power cut can only cause a re-send, never a loss,
  and it spares the flash one fsync per record. The next FULL commit syncs it anyway.
* Several processes may open the file at once (the service and the CLI); WAL lets
  ``status`` read while ``run`` writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.errors import JournalCorruptError, JournalError, JournalFullError

log = logging.getLogger("agent.journal")
SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 10_000
PAGE_SIZE = 1024
# With a size limit, new records may fill all but 1/RESERVE_FRACTION of it: the rest lets a
# full journal still record deliveries and make room.
RESERVE_FRACTION = 8
SQLITE_FULL = 13
PRUNE_BATCH = 1_000


class State(StrEnum):
    PENDING = "pending"
    HELD = "held"
    SENT = "sent"
    REJECTED = "rejected"
    DEAD = "dead"


@dataclass(frozen=True)
class NewRecord:
    """One hardware record to journal, as the intake built it."""

    station: str
    txn: str | None  # the device's receipt number; None: never deduplicated
    source: str  # the driver's name
    raw: bytes
    fields: Mapping[str, str]
    payload: Mapping[str, str] | None  # None while held or when rejected
    state: State
    zone_code: str | None = None
    ends_at: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Appended:
    id: int
    duplicate: bool
    state: State


@dataclass(frozen=True)
class Claim:
    """One pending record handed to the forwarder; the payload has no token."""

    id: int
    payload: dict[str, str]
    attempts: int


@dataclass(frozen=True)
class Attempt:
    """The result of one send, as the forwarder read it."""

    outcome: str  # delivered, already_delivered, rejected, paused, transient
    state: State | None  # SENT, DEAD, or None: still pending, to be retried
    status: int | None
    error: str | None
    body: str
    reference_id: str | None = None
    internal_reference_id: str | None = None
    already_existed: bool = False
    unknown: bool = False


@dataclass(frozen=True)
class AttemptRow:
    at: float
    outcome: str
    status: int | None
    error: str | None
    body: str


@dataclass(frozen=True)
class Record:
    """A journal row as the CLI shows it."""

    id: int
    station: str
    txn: str | None
    source: str
    state: State
    raw: bytes
    fields: dict[str, str]
    payload: dict[str, str] | None
    zone_code: str | None
    received_at: float
    attempts: int
    unknown_outcomes: int
    last_status: int | None
    last_error: str | None
    last_body: str | None
    reference_id: str | None
    sent_at: float | None
    already_existed: bool


_MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1
    """
    CREATE TABLE records (
        id                    INTEGER PRIMARY KEY AUTOINCREMENT,
        station               TEXT    NOT NULL,
        txn                   TEXT,
        source                TEXT    NOT NULL,
        state                 TEXT    NOT NULL
                              CHECK (state IN ('pending', 'held', 'sent', 'rejected', 'dead')),
        raw                   BLOB    NOT NULL,
        fields                TEXT    NOT NULL,
        payload               TEXT,
        zone_code             TEXT,
        ends_at               REAL,
        received_at           REAL    NOT NULL,
        updated_at            REAL    NOT NULL,
        attempts              INTEGER NOT NULL DEFAULT 0,
        in_flight             INTEGER NOT NULL DEFAULT 0,
        unknown_outcomes      INTEGER NOT NULL DEFAULT 0,
        last_status           INTEGER,
        last_error            TEXT,
        last_body             TEXT,
        reference_id          TEXT,
        internal_reference_id TEXT,
        sent_at               REAL,
        already_existed       INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX records_txn ON records (station, txn) WHERE txn IS NOT NULL;
    CREATE INDEX records_state ON records (state, id);
    CREATE INDEX records_pending_end ON records (ends_at) WHERE state = 'pending';
    CREATE INDEX records_sent_at ON records (sent_at) WHERE state = 'sent';
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 1 -> 2: every attempt's answer (for dead-letter inspection); zone codes by state
    """
    CREATE TABLE attempts (
        record_id INTEGER NOT NULL,
        at        REAL    NOT NULL,
        outcome   TEXT    NOT NULL,
        status    INTEGER,
        error     TEXT,
        body      TEXT    NOT NULL DEFAULT ''
    );
    CREATE INDEX attempts_record ON attempts (record_id, at);
    CREATE INDEX records_zone ON records (zone_code, state);
    DROP INDEX records_txn;
    CREATE UNIQUE INDEX records_txn ON records (station, source, txn) WHERE txn IS NOT NULL;
    """,
    # 2 -> 3: fewer index pages rewritten per record (flash wear): zone codes are indexed
    # only while held; the rare unknown outcomes get a small index of their own
    """
    DROP INDEX records_zone;
    CREATE INDEX records_held_zone ON records (zone_code) WHERE state = 'held';
    CREATE INDEX records_unusual ON records (id)
        WHERE unknown_outcomes > 0 OR already_existed > 0;
    """,
)


class Journal:
    """The SQLite journal. Thread-safe: one connection, one lock, short transactions."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        max_bytes: int | None = None,
        reserve_bytes: int = 0,
    ) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
            )
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from exc
        self._synchronous = ""
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # a new journal gets small pages: each commit rewrites whole pages, and a record
            # (~700 bytes) in a 1 KB page costs the flash a third of what a 4 KB one does
            # (measured: docs/benchmarks.md, "flash wear"). An existing file keeps its size.
            self._db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise JournalError(f"journal {path}: cannot use WAL mode (got {mode!r})")
            self._set_synchronous("FULL")
            if self._db.execute("PRAGMA synchronous").fetchone()[0] != 2:
                raise JournalError(f"journal {path}: SQLite refused synchronous=FULL")
            self._migrate()
            self._keep_owner()
            self._intake_pages: int | None = None
            if max_bytes is not None:
                page = self._db.execute("PRAGMA page_size").fetchone()[0]
                pages = max(max_bytes // page, 64)
                self._db.execute(f"PRAGMA max_page_count = {pages}")
                self._intake_pages = pages - pages // RESERVE_FRACTION
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise JournalCorruptError(
                f"journal {path} is not a usable SQLite database: {exc}"
            ) from exc
        except BaseException:
            self._db.close()
            raise
        self._reserve = DiskReserve(path.with_name(path.name + "-reserve"), reserve_bytes)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every commit that may give the forwarder work."""
        self._listeners.append(listener)

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
        if not self._reserve.ready():
            raise JournalFullError(
                f"journal {self.path}: disk full (its reserve is in use until "
                f"{self._reserve.size // 2**20 * 2} MB are free again)"
            )
        with self._write(durable=True) as db:
            if self._over_intake_limit(db):
                raise JournalFullError(
                    f"journal {self.path}: size limit reached "
                    f"(journal_max_mb, {RESERVE_FRACTION - 1}/{RESERVE_FRACTION} for new records)"
                )
            results = [self._insert(db, record, now) for record in records]
        if any(r.state is State.PENDING and not r.duplicate for r in results):
            self._notify()
        return results

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
                return Appended(int(cur.lastrowid or 0), False, r.state)
            row = db.execute(
                "SELECT id, state, fields FROM records "
                "WHERE station = ? AND source = ? AND txn = ?",
                (r.station, r.source, variant),
            ).fetchone()
            if json.loads(row[2]) == dict(r.fields):
                return Appended(row[0], True, State(row[1]))
        raise AssertionError("unreachable: _txn_variants is endless")

    def recover_in_flight(self) -> int:
        """At start: claims left by a crash had an unknown outcome; make them pending again."""
        with self._write(durable=True) as db:
            cur = db.execute(
                """UPDATE records SET in_flight = 0, attempts = attempts + 1,
                       unknown_outcomes = unknown_outcomes + 1
                   WHERE in_flight = 1"""
            )
            return cur.rowcount

    def claim(self, limit: int) -> list[Claim]:
        """Take up to ``limit`` pending records: sessions still running first, then by age."""
        with self._write(durable=False) as db:
            return self._claim(db, limit)

    def _claim(self, db: sqlite3.Connection, limit: int) -> list[Claim]:
        now = self._clock()
        rows = db.execute(
            """SELECT id FROM records INDEXED BY records_pending_end
               WHERE state = 'pending' AND in_flight = 0 AND ends_at > ?
               ORDER BY id LIMIT ?""",
            (now, limit),
        ).fetchall()
        ids = [r[0] for r in rows]
        if len(ids) < limit:
            rows = db.execute(
                """SELECT id FROM records WHERE state = 'pending' AND in_flight = 0
                   ORDER BY id LIMIT ?""",
                (limit,),
            ).fetchall()
            ids += [r[0] for r in rows if r[0] not in ids][: limit - len(ids)]
        claims = []
        for record_id in ids:
            payload, attempts = db.execute(
                """UPDATE records SET in_flight = 1, updated_at = ?
                   WHERE id = ? RETURNING payload, attempts""",
                (now, record_id),
            ).fetchone()
            claims.append(Claim(record_id, json.loads(payload), attempts))
        return claims

    def record_attempt(
        self, record_id: int, attempt: Attempt, *, claim_next: bool = False
    ) -> Claim | None:
        """Record one send's result: the record becomes ``sent`` or ``dead``, or stays
        claimed (``attempt.state is None``) for its next retry. Failed attempts are kept in
        the ``attempts`` table, in the same transaction, for ``dead show``; a delivery's
        proof is the record's own reference_id.

        ``claim_next``: in the same transaction, claim the next pending record and return
        it (one commit per record while draining a backlog, not two).

        On a full journal the attempt's row is left out, and if even the record's own
        update does not fit, the oldest delivered records give way first: a delivery must
        be recorded, or the same sale would be sent again and again.
        """
        try:
            return self._record_attempt(record_id, attempt, keep_row=True, claim_next=claim_next)
        except JournalFullError:
            try:
                return self._record_attempt(record_id, attempt, keep_row=False)
            except JournalFullError:
                freed = self.make_room(self._clock(), limit=50)
                log.warning("journal full: %d delivered record(s) pruned early", freed)
                return self._record_attempt(record_id, attempt, keep_row=False)

    def _record_attempt(
        self, record_id: int, attempt: Attempt, *, keep_row: bool, claim_next: bool = False
    ) -> Claim | None:
        now = self._clock()
        state = attempt.state.value if attempt.state is not None else None
        with self._write(durable=False) as db:
            keep_row = keep_row and not self._over_intake_limit(db)
            db.execute(
                """UPDATE records SET
                       state = coalesce(?, state),
                       in_flight = CASE WHEN ? IS NULL THEN in_flight ELSE 0 END,
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
                    attempt.body if keep_row else attempt.body[:200],
                    record_id,
                ),
            )
            if keep_row and attempt.state is not State.SENT:  # a delivery's proof is its row
                db.execute(
                    """INSERT INTO attempts (record_id, at, outcome, status, error, body)
                       VALUES (?, ?, ?, ?, ?, ?)""",
                    (record_id, now, attempt.outcome, attempt.status, attempt.error, attempt.body),
                )
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
            [dict[str, str], int], tuple[State, dict[str, str] | None, float | None, str | None]
        ],
        *,
        ids: Sequence[int] | None = None,
        batch: int = 500,
        progress: Callable[[int], None] | None = None,
    ) -> dict[State, int]:
        """Re-map records in ``states`` with the current rules (zone edits, requeue).

        ``mapper(fields, id)`` returns (new state, payload, ends_at, error). Works in
        batches so a backlog of any size is never loaded at once.
        """
        counts: dict[State, int] = {}
        last = 0
        marks = ",".join("?" * len(states))
        while True:
            with self._write(durable=True) as db:
                sql = f"SELECT id, fields FROM records WHERE state IN ({marks}) AND id > ?"
                params: list[Any] = [s.value for s in states] + [last]
                if ids is not None:
                    sql += f" AND id IN ({','.join('?' * len(ids))})"
                    params += list(ids)
                rows = db.execute(sql + " ORDER BY id LIMIT ?", [*params, batch]).fetchall()
                now = self._clock()
                for record_id, fields in rows:
                    state, payload, ends_at, error = mapper(json.loads(fields), record_id)
                    db.execute(
                        """UPDATE records SET state = ?, payload = ?,
                               ends_at = coalesce(?, ends_at),
                               last_error = ?, updated_at = ?, in_flight = 0
                           WHERE id = ?""",
                        (
                            state.value,
                            _dump(payload) if payload is not None else None,
                            ends_at,
                            error,
                            now,
                            record_id,
                        ),
                    )
                    counts[state] = counts.get(state, 0) + 1
            if not rows:
                break
            last = rows[-1][0]
            if progress is not None:
                progress(sum(counts.values()))
        if counts.get(State.PENDING):
            self._notify()
        return counts

    def prune_sent(self, older_than: float) -> int:
        """Delete sent records whose ``sent_at`` is older than ``older_than`` (epoch),
        with their attempts, in small batches so the service never waits long for it."""
        total = 0
        while True:
            with self._write(durable=False) as db:
                ids = [
                    row[0]
                    for row in db.execute(
                        """SELECT id FROM records INDEXED BY records_sent_at
                           WHERE state = 'sent' AND sent_at < ? LIMIT ?""",
                        (older_than, PRUNE_BATCH),
                    )
                ]
                marks = ",".join("?" * len(ids))
                db.execute(f"DELETE FROM attempts WHERE record_id IN ({marks})", ids)
                db.execute(f"DELETE FROM records WHERE id IN ({marks})", ids)
                total += len(ids)
            if len(ids) < PRUNE_BATCH:
                return total

    def set_meta(self, values: Mapping[str, str | None]) -> None:
        """Service state that ``status`` in another process shows (last error, pause)."""
        with self._write(durable=False) as db:
            for key, value in values.items():
                if value is None:
                    db.execute("DELETE FROM meta WHERE key = ?", (key,))
                else:
                    db.execute(
                        "INSERT INTO meta (key, value) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (key, value),
                    )

    # -- reads ----------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def counts(self) -> dict[State, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, count(*) FROM records GROUP BY state").fetchall()
        counts = dict.fromkeys(State, 0)
        counts.update({State(s): n for s, n in rows})
        return counts

    def summary(self) -> dict[str, Any]:
        """The figures ``status`` shows; cheap on a large journal (indexed reads only)."""
        now = self._clock()
        with self._lock:
            db = self._db
            active = db.execute(
                "SELECT count(*) FROM records INDEXED BY records_pending_end "
                "WHERE state = 'pending' AND ends_at > ?",
                (now,),
            ).fetchone()[0]
            oldest = db.execute(
                "SELECT received_at FROM records WHERE state = 'pending' ORDER BY id LIMIT 1"
            ).fetchone()
            unknown, existed = db.execute(
                "SELECT coalesce(sum(unknown_outcomes), 0), coalesce(sum(already_existed), 0) "
                "FROM records INDEXED BY records_unusual "
                "WHERE unknown_outcomes > 0 OR already_existed > 0"
            ).fetchone()
        return {
            "active_pending": active,
            "oldest_pending_s": round(now - oldest[0], 1) if oldest else None,
            "last_sent_at": self.last_sent_at(),
            "unknown_outcomes": unknown,
            "already_existed": existed,
        }

    def get(self, record_id: int) -> Record | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records WHERE id = ?", (record_id,)
            ).fetchone()
        return _record(row) if row else None

    def zone_codes(self) -> list[tuple[str, int, float | None, int]]:
        """(zone code, held records, oldest held ``received_at``, all records) per code.
        Reads the whole journal: for the technician's ``zones list``, not for every status."""
        with self._lock:
            return self._db.execute(
                """SELECT zone_code, sum(state = 'held'),
                          min(CASE WHEN state = 'held' THEN received_at END), count(*)
                   FROM records
                   WHERE zone_code IS NOT NULL GROUP BY zone_code ORDER BY zone_code"""
            ).fetchall()

    def held_zones(self) -> list[tuple[str, int, float]]:
        """(zone code, held records, oldest held ``received_at``): indexed, cheap."""
        with self._lock:
            return self._db.execute(
                """SELECT zone_code, count(*), min(received_at)
                   FROM records INDEXED BY records_held_zone
                   WHERE state = 'held' AND zone_code IS NOT NULL
                   GROUP BY zone_code ORDER BY zone_code"""
            ).fetchall()

    def last_sent_at(self) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT max(sent_at) FROM records INDEXED BY records_sent_at WHERE state = 'sent'"
            ).fetchone()
        return row[0] if row else None

    def unsent_amounts(self) -> list[tuple[str | None, int]]:
        """(currency, cents) not yet at the controller: pending payloads and held records.

        Summed as integer cents, never as floats. Held records have no payload yet, so
        their hardware fields are read; a ``None`` currency means the config's default.
        """
        with self._lock:
            return self._db.execute(
                """SELECT currency, sum(cents) FROM (
                       SELECT json_extract(payload, '$.CurrencyID') AS currency,
                              CAST(round(json_extract(payload, '$.Amount') * 100) AS INTEGER)
                                  AS cents
                       FROM records WHERE state = 'pending'
                         AND json_extract(payload, '$.Amount') IS NOT NULL
                       UNION ALL
                       SELECT nullif(upper(trim(json_extract(fields, '$.CUR'))), ''),
                              CAST(round(json_extract(fields, '$.AMT') * 100) AS INTEGER)
                       FROM records WHERE state = 'held'
                         AND json_extract(fields, '$.AMT') IS NOT NULL)
                   GROUP BY currency ORDER BY currency"""
            ).fetchall()

    def attempts(self, record_id: int) -> list[AttemptRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, outcome, status, error, body FROM attempts WHERE record_id = ? "
                "ORDER BY at",
                (record_id,),
            ).fetchall()
        return [AttemptRow(*row) for row in rows]

    def records(
        self, states: Sequence[State] | None = None, *, batch: int = 1_000
    ) -> Iterator[Record]:
        """Every record (in ``states``), oldest first, read in batches."""
        last = 0
        where = ""
        params: list[Any] = []
        if states:
            where = f"state IN ({','.join('?' * len(states))}) AND "
            params = [s.value for s in states]
        while True:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT {_RECORD_COLUMNS} FROM records "
                    f"WHERE {where} id > ? ORDER BY id LIMIT ?",
                    [*params, last, batch],
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _record(row)
            last = rows[-1][0]

    def writable(self) -> bool:
        """True when a write transaction can start now (for the watchdog): takes SQLite's
        write lock and rolls back, so it proves the journal is not wedged without writing
        a byte (an idle agent must not wear the flash)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                return False
        return True

    def import_rows(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        """Insert records salvaged from a damaged journal, keeping their ids and states.
        A claim that was in flight counts as an unknown outcome, as after a crash."""
        if not rows:
            return 0
        with self._lock:
            known = {r[1] for r in self._db.execute("PRAGMA table_info(records)")}
        keep = [i for i, name in enumerate(columns) if name in known]
        names = [columns[i] for i in keep]
        sql = (
            f"INSERT OR IGNORE INTO records ({', '.join(names)}) "
            f"VALUES ({', '.join('?' * len(names))})"
        )
        with self._write(durable=True) as db:
            before = db.total_changes
            for row in rows:
                db.execute(sql, [row[i] for i in keep])
            inserted = db.total_changes - before
            db.execute(
                """UPDATE records SET in_flight = 0, unknown_outcomes = unknown_outcomes + 1
                   WHERE in_flight = 1"""
            )
        self._notify()
        return inserted

    def quick_check(self) -> str:
        """SQLite's ``PRAGMA quick_check``: "ok", or what is wrong with the file."""
        with self._lock:
            try:
                rows = self._db.execute("PRAGMA quick_check(5)").fetchall()
            except sqlite3.DatabaseError as exc:
                return str(exc)
        return "; ".join(str(r[0]) for r in rows)

    def make_room(self, sent_before: float, limit: int = 500) -> int:
        """The journal is full: delete up to ``limit`` delivered records sent before
        ``sent_before``, oldest first, so new sales fit (SQLite reuses the freed pages).
        Undelivered records are never touched."""
        with self._write(durable=False) as db:
            ids = [
                row[0]
                for row in db.execute(
                    """SELECT id FROM records INDEXED BY records_sent_at
                       WHERE state = 'sent' AND sent_at < ? ORDER BY sent_at LIMIT ?""",
                    (sent_before, limit),
                )
            ]
            marks = ",".join("?" * len(ids))
            db.execute(f"DELETE FROM attempts WHERE record_id IN ({marks})", ids)
            db.execute(f"DELETE FROM records WHERE id IN ({marks})", ids)
        return len(ids)

    def synchronous(self) -> int:
        """The connection's current ``PRAGMA synchronous`` (2 = FULL), read back from SQLite."""
        with self._lock:
            return int(self._db.execute("PRAGMA synchronous").fetchone()[0])

    # -- internals ------------------------------------------------------------------------

    @contextmanager
    def _write(self, *, durable: bool) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._set_synchronous("FULL" if durable else "NORMAL")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            except sqlite3.Error as exc:
                if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL:
                    self._reserve.release_if_disk_full()
                    raise JournalFullError(f"journal {self.path}: disk full") from exc
                raise JournalError(f"journal {self.path}: {exc}") from exc

    @property
    def disk_full(self) -> bool:
        """The disk was full and its reserve is in use: new records are refused."""
        return not self._reserve.ready()

    def _over_intake_limit(self, db: sqlite3.Connection) -> bool:
        """Past the share of ``max_bytes`` that new records may fill. The rest is kept for
        bookkeeping, so that a full journal can still record deliveries (a reference_id,
        an index entry) and the backlog drains instead of wedging."""
        if self._intake_pages is None:
            return False
        used = db.execute("PRAGMA page_count").fetchone()[0]
        used -= db.execute("PRAGMA freelist_count").fetchone()[0]
        return bool(used >= self._intake_pages)

    def _rollback(self) -> None:
        """Undo an open transaction. SQLite may already have rolled it back by itself (it
        does on a full disk), and a failing ROLLBACK must not hide the error that led here."""
        if self._db.in_transaction:
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _set_synchronous(self, level: str) -> None:
        if self._synchronous != level:
            self._db.execute(f"PRAGMA synchronous = {level}")
            self._synchronous = level

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION, one step per transaction.

        The version is read inside the write transaction, so two processes opening a new
        journal at once do not both run a step. Reading sqlite_master there makes SQLite
        reload this connection's copy of the schema if another process migrated since the
        PRAGMAs above loaded it: a stale copy fails every append for good ("ON CONFLICT
        clause does not match any ... UNIQUE constraint"), as SQLite does not re-check the
        schema for that error.
        """
        while True:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise JournalError(
                        f"journal {self.path} has schema version {version}, newer than this "
                        f"agent's ({SCHEMA_VERSION}); upgrade the agent"
                    )
                if version == SCHEMA_VERSION:
                    self._db.execute("COMMIT")
                    return
                # executescript() would commit mid-step; run the statements one by one
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {version + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _keep_owner(self) -> None:
        """root's CLI must not leave -wal/-shm files the service's user cannot open."""
        if os.geteuid() != 0:
            return
        owner = self.path.stat()
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                if side.stat().st_uid != owner.st_uid:
                    os.chown(side, owner.st_uid, owner.st_gid)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()


_RECORD_COLUMNS = (
    "id, station, txn, source, state, raw, fields, payload, zone_code, received_at, attempts, "
    "unknown_outcomes, last_status, last_error, last_body, reference_id, sent_at, already_existed"
)


def _record(row: Sequence[Any]) -> Record:
    return Record(
        id=row[0],
        station=row[1],
        txn=row[2],
        source=row[3],
        state=State(row[4]),
        raw=bytes(row[5]),
        fields=json.loads(row[6]),
        payload=json.loads(row[7]) if row[7] else None,
        zone_code=row[8],
        received_at=row[9],
        attempts=row[10],
        unknown_outcomes=row[11],
        last_status=row[12],
        last_error=row[13],
        last_body=row[14],
        reference_id=row[15],
        sent_at=row[16],
        already_existed=bool(row[17]),
    )


def _txn_variants(txn: str | None) -> Iterator[str | None]:
    yield txn
    if txn is not None:
        n = 2
        while True:
            yield f"{txn}~{n}"
            n += 1


def _dump(value: Mapping[str, str]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class DiskReserve:
    """A file of ``size`` zero bytes beside the journal, given back to the filesystem when
    the disk is full so that the agent can still record deliveries, make room and drain
    its backlog (a full disk must not wedge it). While it is given back, new records are
    refused; it is laid down again, and records accepted, once the disk has twice its size
    free. ``size`` 0: no reserve (the CLI's journals, tests)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.released = False
        if size:
            self._lay_down()

    def ready(self) -> bool:
        if self.released and shutil.disk_usage(self.path.parent).free >= 2 * self.size:
            self._lay_down()
        return not self.released

    def release_if_disk_full(self) -> None:
        if not self.size or self.released:
            return
        if shutil.disk_usage(self.path.parent).free >= self.size:
            return  # the journal's own size limit, not the disk: keep the reserve
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.released = True
        log.error(
            "disk full under %s: reserve of %d MB given back so deliveries can still be "
            "recorded; new records are refused until space returns",
            self.path.parent,
            self.size // 2**20,
        )

    def _lay_down(self) -> None:
        try:
            if self.path.exists() and self.path.stat().st_size >= self.size:
                self.released = False
                return
            with open(self.path, "wb") as out:
                out.write(bytes(self.size))  # real blocks: a sparse file would reserve nothing
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.unlink()
            if not self.released:
                log.warning("cannot lay down a disk reserve at %s: %s", self.path, exc)
            self.released = True
            return
        if self.released:
            log.warning("disk space is back under %s: reserve laid down again", self.path.parent)
        self.released = False
