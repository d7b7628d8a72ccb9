"""What the journal needs to know of SQLite itself: which result codes mean a lock held by
another connection, damage or a full disk, and how to end a transaction that SQLite may
already have ended. Imports nothing of the agent."""

from __future__ import annotations

import sqlite3
from contextlib import suppress

SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB = 5, 6, 11, 13, 26


def is_busy(exc: sqlite3.Error) -> bool:
    """Another connection holds a lock: wait, this is not damage."""
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)


def is_corrupt(exc: sqlite3.Error) -> bool:
    """The file is damaged or not SQLite at all (extended codes included)."""
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


def is_full(exc: sqlite3.Error) -> bool:
    """The disk (or the journal's ``max_page_count``) is full: SQLITE_FULL itself."""
    return getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL


def rollback(db: sqlite3.Connection) -> None:
    """Undo an open transaction. SQLite may already have rolled it back by itself (it
    does on a full disk), and a failing ROLLBACK must not hide the error that led here."""
    if db.in_transaction:
        with suppress(sqlite3.Error):
            db.execute("ROLLBACK")
