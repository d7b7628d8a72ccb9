"""The journal's tables and indexes, as the steps that build them: step ``n`` brings a
journal from schema version ``n`` (SQLite's ``user_version``) to ``n + 1``. A new journal
runs them all; an old one the steps it lacks, each in a transaction of its own.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.errors import JournalError
from agent.journal.sqlite import rollback

SCHEMA_VERSION = 4

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
    # 3 -> 4: the state index holds the records still to be dealt with, not the delivered
    # ones (most of the journal): a delivery deletes its entry instead of moving it, and
    # retention's prune no longer rewrites it. Queries on it repeat its WHERE term
    # (UNSENT) so that SQLite may use it; the delivered are counted by records_sent_at.
    # AUTOINCREMENT stays (one page per append): its counter is what keeps a record id,
    # and so a ``{station}-J{id}`` permit number, from ever being handed out twice, both
    # after retention pruned the newest rows and after a salvage raised it (salvage.py).
    """
    DROP INDEX records_state;
    CREATE INDEX records_unsent ON records (state, id) WHERE state != 'sent';
    """,
)

# The term a query must carry, as written, for SQLite to use the partial index
# records_unsent (SQLite does not infer it from ``state = 'pending'``).
UNSENT = "state != 'sent'"


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION, one step per transaction.

    The version is read inside the write transaction, so two processes opening a new
    journal at once do not both run a step. Reading sqlite_master there makes SQLite
    reload this connection's copy of the schema if another process migrated since the
    connection's PRAGMAs loaded it: a stale copy fails every append for good ("ON CONFLICT
    clause does not match any ... UNIQUE constraint"), as SQLite does not re-check the
    schema for that error.

    A journal already at SCHEMA_VERSION is recognised in a read transaction, which
    another process's write lock does not block: ``status`` works while a technician's
    shell holds the journal.
    """
    db.execute("BEGIN")
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        current = db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        rollback(db)
    if current:
        return
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f"journal {path} has schema version {version}, newer than this "
                    f"agent's ({SCHEMA_VERSION}); upgrade the agent"
                )
            if version == SCHEMA_VERSION:
                db.execute("COMMIT")
                return
            # executescript() would commit mid-step; run the statements one by one
            for statement in _MIGRATIONS[version].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
