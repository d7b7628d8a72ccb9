"""A salvage: copying every row that can still be read from a damaged journal into a new
one (see :mod:`agent.journal.recovery` for when and how it is started).

Rows are read by rowid from the table's own B-tree (``NOT INDEXED``), never through a
secondary index, which may be the damaged part. A scan that fails at a damaged page is
resumed past it: scans starting ever further ahead find where readable rows begin again,
and every rowid in between is looked up on its own (a lookup descends from the root and
fails only for the rows of the damaged page itself). The highest rowid to look for comes
from ``sqlite_sequence`` (the AUTOINCREMENT counter) and the table's last row, whichever
can be read.

The rows are copied in batches, each committed with the salvage's progress (the last rowid
read) in the new journal's ``meta``, so a salvage stopped at any point goes on from there;
a row already copied is never copied twice (the copy keeps ids).

The new journal numbers its records above every id the damaged one may have handed out
(:func:`id_floor`), since a sale without a receipt number is sent as ``{station}-J{id}``.
The ids that raising the counter jumps over are kept in the new journal's ``meta``
(``ids_skipped``), so that a later salvage does not look them up one by one.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.errors import Stopped
from agent.journal.records import SENDING
from agent.journal.reports import Reports
from agent.journal.store import put_meta
from agent.signals import Flag

log = logging.getLogger("agent.recovery")
SALVAGE_BATCH = 200
SALVAGE_SCAN = (
    f"SELECT * FROM records NOT INDEXED WHERE rowid > ? ORDER BY rowid LIMIT {SALVAGE_BATCH}"
)
_LOOKUP = "SELECT * FROM records NOT INDEXED WHERE rowid = ?"
_NEXT = "SELECT rowid FROM records NOT INDEXED WHERE rowid > ? ORDER BY rowid LIMIT 1"
LOOKUP_CAP = 1 << 16  # ids looked up past damage when no upper bound can be read
PROGRESS_STEP = 0.05  # a salvage logs its progress every 5 % of the ids


class SalvageTarget(Reports):
    """The writes a salvage makes into the new journal; part of
    :class:`~agent.journal.Journal`."""

    def import_rows(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        meta: Mapping[str, str] | None = None,
    ) -> int:
        """Insert records salvaged from a damaged journal, keeping their ids and states;
        return how many were new. A row whose id is already here is left as it is, so a
        salvage that starts again never duplicates one. A claim that was in flight counts
        as an unknown outcome, as after a crash. ``meta`` (the salvage's progress) is
        written in the same transaction."""
        with self._lock:
            known = {r[1] for r in self._db.execute("PRAGMA table_info(records)")}
        keep = [i for i, name in enumerate(columns) if name in known]
        names = [columns[i] for i in keep]
        sql = (
            f"INSERT OR IGNORE INTO records ({', '.join(names)}) "
            f"VALUES ({', '.join('?' * len(names))})"
        )
        ids = [row[columns.index("id")] for row in rows]
        with self._write(durable=True) as db:
            before = db.total_changes
            for row in rows:
                db.execute(sql, [row[i] for i in keep])
            inserted = db.total_changes - before
            if ids:
                db.execute(
                    f"""UPDATE records SET in_flight = 0,
                           unknown_outcomes = unknown_outcomes + (in_flight = {SENDING})
                       WHERE in_flight != 0 AND id IN ({",".join("?" * len(ids))})""",
                    ids,
                )
            put_meta(db, meta or {})
        if inserted:
            self._notify()
        return inserted

    def keep_ids_above(
        self,
        floor: int,
        meta: Mapping[str, str | None] | None = None,
        skipped: Sequence[tuple[int, int]] = (),
    ) -> None:
        """Hand out record ids above ``floor`` from now on: AUTOINCREMENT's counter is
        raised to ``floor`` (never lowered, so calling it again changes nothing). A salvage
        uses it so that a new record never gets the id, and so the ``{station}-J{id}``
        permit number, of a record of the damaged journal. ``meta`` is written in the
        same durable transaction.

        The ids jumped over (and ``skipped``, ranges known to hold no record) are kept in
        ``meta`` as ``ids_skipped``, first and last of each range: a later salvage of this
        journal need not look them up one by one past a damaged page (after a file that
        was not SQLite, ids start near 2e9)."""
        with self._write(durable=True) as db:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
            counter = 0 if row is None else int(row[0])
            ranges = set(skipped_ids(dict(db.execute("SELECT key, value FROM meta"))))
            ranges.update(skipped)
            if floor > counter:
                ranges.add((counter + 1, floor))
            if row is None:  # no record was ever inserted: no counter yet
                db.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('records', ?)", (floor,)
                )
            else:
                db.execute(
                    "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'records'",
                    (floor,),
                )
            values = dict(meta or {})
            if ranges:
                values["ids_skipped"] = json.dumps(sorted(ranges))
            put_meta(db, values)


def skipped_ids(meta: Mapping[str, str]) -> list[tuple[int, int]]:
    """The id ranges (first, last) a journal's ``meta`` says hold no record; none when the
    value is missing or cannot be read."""
    try:
        ranges = json.loads(meta.get("ids_skipped", "[]"))
        if not isinstance(ranges, list):
            return []
        return [
            (first, last)
            for first, last in ranges
            if isinstance(first, int) and isinstance(last, int) and 0 < first <= last
        ]
    except (TypeError, ValueError):
        return []


def salvage(old: Path, journal: SalvageTarget, stopping: Flag | None = None) -> tuple[int, int]:
    """Copy every readable record of ``old`` into ``journal``: (recovered, unreadable).

    Resumes from the progress kept in ``journal``'s meta (key ``salvage``); ``stopping``
    ends it between two batches with :class:`Stopped`, progress kept."""
    progress = json.loads(journal.meta().get("salvage", "{}"))
    position: int = progress.get("position", 0)
    seen: int = progress.get("seen", 0)
    unreadable: int = progress.get("unreadable", 0)
    try:
        db = sqlite3.connect(f"file:{old}?mode=ro", uri=True)
    except sqlite3.Error:
        return sum(journal.counts().values()), unreadable
    try:
        try:
            columns = [r[1] for r in db.execute("PRAGMA table_info(records)")]
        except sqlite3.Error:
            columns = []
        if "id" not in columns:
            return sum(journal.counts().values()), unreadable  # not a journal: nothing to read
        top = _top(db)
        skip = _skipped(db)
        next_report = _next_report(position, top)
        while True:
            if stopping is not None and stopping.is_set():
                raise Stopped(
                    f"stopped during the salvage of {old.name}; it goes on at the next start"
                )
            rows, complete = _scan(db, position, top)
            more = bool(rows) and len(rows) == SALVAGE_BATCH
            if rows:
                position = rows[-1][0]
            if not complete:
                found, errors, position, more = _past_damage(db, position, top, skip)
                rows += found
                unreadable += errors
            seen += len(rows)
            journal.import_rows(
                columns,
                rows,
                {
                    "salvage": json.dumps(
                        {"position": position, "seen": seen, "unreadable": unreadable}
                    )
                },
            )
            if top and position >= next_report:
                log.info(
                    "salvage of %s: %d%% (%d record(s) read)",
                    old.name,
                    min(100, 100 * position // top),
                    seen,
                )
                next_report = _next_report(position, top)
            if not more:
                break
    finally:
        db.close()
    recovered = sum(journal.counts().values())
    return recovered, unreadable + max(0, seen - recovered)


def _scan(db: sqlite3.Connection, position: int, top: int | None) -> tuple[list[Any], bool]:
    """The next batch of rows after ``position``, and whether the scan ended without error
    (the rows read before a damaged page are kept). A damaged page may also yield rowids
    out of order or past ``top``: that ends the scan as an error does."""
    rows: list[Any] = []
    try:
        for row in db.execute(SALVAGE_SCAN, (position,)):
            if row[0] <= (rows[-1][0] if rows else position) or (top and row[0] > top):
                return rows, False
            rows.append(row)
    except sqlite3.DatabaseError:
        return rows, False
    return rows, True


def _past_damage(
    db: sqlite3.Connection, last: int, top: int | None, skip: Sequence[tuple[int, int]] = ()
) -> tuple[list[Any], int, int, bool]:
    """A scan failed after rowid ``last``: find where rows can be read again, look up every
    rowid before that one by one. Returns (rows found, rowids in between that could not be
    read, the position reached, whether rows may follow). A rowid of a damaged page may
    fail or find nothing: both count as unreadable (a rowid there that never held a row,
    or was pruned, is counted too: the figure is an upper bound).

    Rowids in ``skip`` (ranges the journal says hold no record: those a raised counter
    jumped over) are not looked up; a failed scan just below such a range goes on from its
    end."""
    first = last
    for low, high in sorted(skip):
        if low <= last + 1 <= high:
            last = high
    end: int | None = None  # the first rowid a scan reaches past the damage
    step = 1
    while top is None or last + step < top:
        try:
            row = db.execute(_NEXT, (last + step,)).fetchone()
        except sqlite3.DatabaseError:
            row = (0,)  # as if out of order
        if row is None:  # nothing readable after the damage, up to the highest rowid
            end = max(top or 0, last + step) + 1
            break
        if last + step < row[0] <= (top if top is not None else last + LOOKUP_CAP):
            end = row[0]
            break
        step *= 2
        if top is None and step > LOOKUP_CAP:
            break
    more = end is not None
    stop = end if end is not None else (top + 1 if top is not None else last + LOOKUP_CAP)
    rows = []
    looked = 0
    for rowid in _ids(last + 1, stop, skip):
        looked += 1
        with contextlib.suppress(sqlite3.DatabaseError):
            row = db.execute(_LOOKUP, (rowid,)).fetchone()
            if row is not None and row[0] == rowid:  # a damaged page may answer another
                rows.append(row)
    return rows, looked - len(rows), max(stop - 1, first), more


def _ids(start: int, stop: int, skip: Sequence[tuple[int, int]]) -> Iterator[int]:
    """The rowids from ``start`` to ``stop`` (excluded) outside the ranges of ``skip``."""
    rowid = start
    for low, high in sorted(skip):
        if high < rowid:
            continue
        yield from range(rowid, min(low, stop))
        rowid = max(rowid, high + 1)
        if rowid >= stop:
            return
    yield from range(rowid, stop)


def _skipped(db: sqlite3.Connection) -> list[tuple[int, int]]:
    """The id ranges the damaged journal's ``meta`` says hold no record, if it can be read."""
    try:
        return skipped_ids(dict(db.execute("SELECT key, value FROM meta").fetchall()))
    except sqlite3.DatabaseError:
        return []


def skipped_in(old: Path) -> list[tuple[int, int]]:
    """The id ranges the journal file ``old`` says hold no record, if it can be read."""
    try:
        db = sqlite3.connect(f"file:{old}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    try:
        return _skipped(db)
    finally:
        db.close()


def _top(db: sqlite3.Connection) -> int | None:
    """The highest rowid the table may hold: AUTOINCREMENT's counter (no rowid is ever
    above it), else the table's last row (which a damaged last page may get wrong)."""
    for sql in (
        "SELECT seq FROM sqlite_sequence WHERE name = 'records'",
        "SELECT max(rowid) FROM records NOT INDEXED",
    ):
        try:
            row = db.execute(sql).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None and isinstance(row[0], int):
            return row[0]
    return None


def id_floor(old: Path, stamp: str) -> int:
    """The id the new journal numbers its records above, so that no new record gets the id,
    and so the ``{station}-J{id}`` permit number, of a record of the damaged journal ``old``
    (the controller may hold that number: a new sale sent with it would be a false "permit
    number conflict", or a 9022 taken for its delivery).

    * The old file's AUTOINCREMENT counter, when it can be read: no id was ever handed out
      above it, and every id up to it may have been, including those of rows on damaged
      pages and of rows pruned since. A table without a counter never had a record: 0.
    * Otherwise (not SQLite at all, the counter's page damaged, no ``records`` table) how
      many ids the old journal handed out is unknown; the table's last row, even when it
      can be read, says nothing about rows after it on a damaged page. Then the floor is
      the salvage's time in seconds since the epoch, taken from the marker's ``stamp`` so
      that a salvage resumed after a crash ends with the same counter (or the last row's
      id, if higher). A journal hands out one id per record: to reach the seconds since
      1970 it would need more than one record a second for fifty years, and a journal
      numbered from an earlier salvage's time would need more than one a second on
      average since that salvage (a pay station takes a sale a minute in a busy hour).
      Ten digits until the year 2286: ``{station}-J{id}`` stays within 32 + 2 + 10 of the
      50 characters a permit number may have.
    """
    counter: int | None = None
    last = 0
    with contextlib.suppress(sqlite3.Error):
        db = sqlite3.connect(f"file:{old}?mode=ro", uri=True)
        try:
            with contextlib.suppress(sqlite3.DatabaseError):
                if any(r[1] == "id" for r in db.execute("PRAGMA table_info(records)")):
                    with contextlib.suppress(sqlite3.DatabaseError):
                        row = db.execute("SELECT max(rowid) FROM records NOT INDEXED").fetchone()
                        last = row[0] if isinstance(row[0], int) else 0
                    row = db.execute(
                        "SELECT seq FROM sqlite_sequence WHERE name = 'records'"
                    ).fetchone()
                    counter = 0 if row is None else row[0] if isinstance(row[0], int) else None
        finally:
            db.close()
    if counter is not None:
        return counter
    try:
        since_epoch = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    except ValueError:  # a marker written by hand: the time now
        since_epoch = int(time.time())
    return max(last, since_epoch)


def _next_report(position: int, top: int | None) -> int:
    step = max(1, int((top or 0) * PROGRESS_STEP))
    return (position // step + 1) * step
