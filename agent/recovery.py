"""Opening the journal at start, whatever state the last run or the disk left it in.

A journal that SQLite cannot read, or that fails ``PRAGMA quick_check``, must not leave
the agent looking healthy but stuck, nor be silently replaced. It is moved aside with a
timestamp (``journal.sqlite3.corrupt-20261128T041500Z``, with its -wal and -shm), a fresh
journal is started, every row that can still be read from the old file is copied into
the new one (keeping its state, so delivered sales are not sent again and undelivered ones
are), and the event is logged as critical and shown by ``status`` until a person has seen
it. A journal from a newer agent, or one this user may not open, is left alone: those are
errors for a person, not corruption.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from agent.errors import JournalCorruptError
from agent.journal import Journal

log = logging.getLogger("agent.recovery")
SALVAGE_BATCH = 200


def open_journal(path: Path, max_bytes: int | None = None, reserve_bytes: int = 0) -> Journal:
    try:
        journal = Journal(path, max_bytes=max_bytes, reserve_bytes=reserve_bytes)
    except JournalCorruptError as exc:
        problem = str(exc)
    else:
        problem = journal.quick_check()
        if problem == "ok":
            return journal
        journal.close()
    return _rebuild(path, problem, max_bytes, reserve_bytes)


def _rebuild(path: Path, problem: str, max_bytes: int | None, reserve_bytes: int) -> Journal:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(aside.with_name(aside.name + suffix))
    journal = Journal(path, max_bytes=max_bytes, reserve_bytes=reserve_bytes)
    recovered, lost = salvage(aside, journal)
    message = (
        f"journal {path} was unreadable ({problem}); moved aside to {aside.name}, "
        f"{recovered} record(s) recovered into a new journal"
        + (f", {lost} unreadable" if lost else "")
    )
    log.critical(message)
    journal.set_meta({"journal_recovered": f"{stamp} {message}"})
    return journal


def salvage(old: Path, journal: Journal) -> tuple[int, int]:
    """Copy every readable record of ``old`` into ``journal``: (recovered, unreadable).

    A range scan over a damaged B-tree may stop early without an error, so every id a
    scan did not return is looked up on its own: a point lookup descends from the root and
    fails only for the rows of the damaged page itself."""
    try:
        db = sqlite3.connect(f"file:{old}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0, 0
    recovered = unreadable = 0
    try:
        try:
            low, top = db.execute("SELECT min(id) - 1, max(id) FROM records").fetchone()
            columns = [r[1] for r in db.execute("PRAGMA table_info(records)")]
        except sqlite3.Error:
            return 0, 0  # not a journal at all: nothing to salvage
        low, top = low or 0, top or 0
        while low < top:
            high = min(low + SALVAGE_BATCH, top)
            try:
                rows = db.execute(
                    "SELECT * FROM records WHERE id > ? AND id <= ? ORDER BY id", (low, high)
                ).fetchall()
            except sqlite3.DatabaseError:
                rows = []
            present = {row[0] for row in rows}
            for record_id in range(low + 1, high + 1):
                if record_id in present:
                    continue
                try:
                    row = db.execute("SELECT * FROM records WHERE id = ?", (record_id,)).fetchone()
                except sqlite3.DatabaseError:
                    unreadable += 1
                    continue
                if row is not None:
                    rows.append(row)
            recovered += journal.import_rows(columns, rows)
            low = high
    finally:
        db.close()
    return recovered, unreadable
