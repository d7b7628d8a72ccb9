"""Opening the journal at start (agent.recovery): only real damage counts as corruption, a
journal locked by another process is waited for and never moved aside, and a salvage
reads every row that can still be read, by rowid, whatever index is damaged.

The journals are real SQLite files, damaged by overwriting real pages; the lock is held by
a real second process.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

import agent.journal.recovery
from agent.emulator import ControllerEmulator
from agent.journal import open_journal
from tests.conftest import cli, eventually, start_agent, stop_agent, write_config
from tests.scenarios.conftest import fill_journal

# A technician's sqlite3 shell, inside a transaction: it has written a row, not committed.
LOCK_HOLDER = r"""
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN " + sys.argv[2])
db.execute("INSERT INTO meta (key, value) VALUES ('technician', 'was here')")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
"""


@contextmanager
def lock_held(path: Path, how: str = "IMMEDIATE") -> Iterator[subprocess.Popen[str]]:
    """Another process holds the journal's write lock until :func:`release` (or the end)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    try:
        yield holder
    finally:
        release(holder)


def release(holder: subprocess.Popen[str]) -> None:
    """The other process commits and exits."""
    if holder.poll() is None:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(30)
    for pipe in (holder.stdin, holder.stdout):
        if pipe is not None and not pipe.closed:
            pipe.close()


def technician_row(path: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT key, value FROM meta WHERE key = 'technician'").fetchall()


def aside_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.corrupt-*") if not p.name.endswith(("-wal", "-shm")))


# -- hazard 4: a lock is not corruption -------------------------------------------------------


@pytest.mark.parametrize("how", ["IMMEDIATE", "EXCLUSIVE"])
def test_a_locked_journal_is_waited_for_and_never_moved_aside(
    tmp_path: Path, emulator: ControllerEmulator, how: str
) -> None:
    journal = tmp_path / "journal.sqlite3"
    fill_journal(journal, pending=5)
    config = write_config(tmp_path, emulator.url)
    log = tmp_path / "agent.log"
    with lock_held(journal, how) as holder:
        agent = start_agent(config, log)
        try:
            eventually(
                lambda: "locked by another process since" in log.read_text(),
                timeout=20,
                what="the agent saying the journal is locked",
            )
            assert agent.poll() is None and not aside_files(tmp_path)
            release(holder)
            eventually(lambda: "running" in log.read_text(), what="the agent running")
            assert emulator.wait_for(5, timeout=30), "the journal's backlog was not delivered"
        finally:
            assert stop_agent(agent) == 0
    text = log.read_text()
    assert not aside_files(tmp_path) and "CRITICAL" not in text, text
    assert technician_row(journal) == [("technician", "was here")], "the other commit was lost"
    assert len(emulator.accepted) == 5


def test_a_lock_held_past_the_wait_fails_the_start_and_leaves_the_file(tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite3"
    fill_journal(journal, pending=3)
    from agent.errors import JournalBusyError

    inode = journal.stat().st_ino
    with lock_held(journal) as holder:
        with pytest.raises(JournalBusyError, match="locked by another process since"):
            open_journal(journal, lock_wait_s=1.5)
        release(holder)
    assert journal.stat().st_ino == inode and not aside_files(tmp_path)
    assert technician_row(journal) == [("technician", "was here")]
    with open_journal(journal) as reopened:
        assert sum(reopened.counts().values()) == 3


def test_sigterm_while_waiting_for_a_locked_journal_stops_at_once_with_exit_0(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    journal = tmp_path / "journal.sqlite3"
    fill_journal(journal, pending=2)
    log = tmp_path / "agent.log"
    with lock_held(journal):
        agent = start_agent(write_config(tmp_path, emulator.url), log)
        try:
            eventually(
                lambda: "locked by another process since" in log.read_text(),
                timeout=20,
                what="the agent waiting for the lock",
            )
            started = time.monotonic()
            code = stop_agent(agent)
            elapsed = time.monotonic() - started
        finally:
            stop_agent(agent)
    print(f"stop while waiting for the lock at start: {elapsed:.2f} s")
    assert code == 0 and elapsed <= 5.0
    assert not aside_files(tmp_path) and technician_row(journal)


# -- hazard 3: salvage by rowid, whatever is damaged -------------------------------------------

ROWS = 20_000
COLUMNS = "id, station, txn, source, state, payload, reference_id, unknown_outcomes, in_flight"


def build_journal(path: Path, count: int = ROWS) -> None:
    """A journal as a long-running service leaves it: every state, claims in flight at a
    crash, unknown outcomes; then checkpointed, so the pages are in the main file."""
    from bench.backlog import fill

    fill(path, count, station="PS-TEST")
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN")
        db.execute(
            "UPDATE records SET state = 'sent', sent_at = received_at, "
            "reference_id = 'R-' || id WHERE id % 5 = 0"
        )
        db.execute(
            "UPDATE records SET state = 'held', zone_code = '9', payload = NULL, "
            "fields = json_set(fields, '$.ZONE', '9') WHERE id % 7 = 0"
        )
        db.execute("UPDATE records SET state = 'dead', last_error = 'refused' WHERE id % 11 = 0")
        db.execute("UPDATE records SET state = 'rejected', payload = NULL WHERE id % 13 = 0")
        db.execute("UPDATE records SET unknown_outcomes = 1 WHERE id % 17 = 0")
        db.execute("UPDATE records SET in_flight = 1 WHERE id % 19 = 0 AND state = 'pending'")
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def pages_of(path: Path, name: str, kind: str) -> list[int]:
    with closing(sqlite3.connect(path)) as db:
        return [
            row[0]
            for row in db.execute(
                "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = ? ORDER BY path",
                (name, kind),
            )
        ]


def rowids_on(path: Path, page: int) -> set[int]:
    """The rowids stored on one leaf page of a table, read from the file's bytes."""
    with closing(sqlite3.connect(path)) as db:
        size = db.execute("PRAGMA page_size").fetchone()[0]
    data = path.read_bytes()[(page - 1) * size : page * size]
    assert data[0] == 0x0D, "not a table leaf page"
    cells = int.from_bytes(data[3:5], "big")
    rowids = set()
    for i in range(cells):
        offset = int.from_bytes(data[8 + 2 * i : 10 + 2 * i], "big")
        _, offset = _varint(data, offset)  # payload size
        rowid, _ = _varint(data, offset)
        rowids.add(rowid)
    return rowids


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        byte = data[offset + i]
        if i == 8:
            return (value << 8) | byte, offset + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, offset + i + 1
    raise AssertionError("unreachable")


def ruin(path: Path, pages: list[int]) -> None:
    """Overwrite every cell of these pages (their header's type byte stays)."""
    with closing(sqlite3.connect(path)) as db:
        size = db.execute("PRAGMA page_size").fetchone()[0]
    with open(path, "r+b") as f:
        for page in pages:
            f.seek((page - 1) * size + 8)
            f.write(bytes((page * 31 + i) % 251 for i in range(size - 8)))


def expected_rows(pristine: Path, lost: set[int]) -> dict[int, tuple[Any, ...]]:
    """The rows a salvage must bring back: all but ``lost``, a claim in flight counted as an
    unknown outcome (as after a crash)."""
    with closing(sqlite3.connect(pristine)) as db:
        rows = db.execute(f"SELECT {COLUMNS} FROM records").fetchall()
    return {r[0]: (*r[:7], r[7] + r[8], 0) for r in rows if r[0] not in lost}


def journal_rows(path: Path) -> dict[int, tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(f"SELECT {COLUMNS} FROM records").fetchall()
    by_id = {r[0]: r for r in rows}
    assert len(by_id) == len(rows)
    return by_id


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "journal.sqlite3"
    build_journal(path)
    return path


def copy_of(pristine: Path, directory: Path) -> Path:
    path = directory / "journal.sqlite3"
    shutil.copyfile(pristine, path)
    return path


INDEXES = [
    "records_txn",
    "records_unsent",
    "records_pending_end",
    "records_sent_at",
    "records_held_zone",
    "records_unusual",
]


@pytest.mark.parametrize("index", INDEXES)
def test_salvage_recovers_every_row_past_a_damaged_index(
    tmp_path: Path, pristine: Path, index: str
) -> None:
    path = copy_of(pristine, tmp_path)
    leaves = pages_of(path, index, "leaf")
    assert leaves, f"no leaf page of {index}"
    ruin(path, [leaves[len(leaves) // 2]])
    with open_journal(path) as journal:
        recovered = journal.meta().get("journal_recovered", "")
    assert len(aside_files(tmp_path)) == 1, "the damaged file was not moved aside"
    rows = journal_rows(path)
    assert f"{ROWS} record(s) recovered" in recovered, recovered
    assert rows == expected_rows(pristine, set()), f"{len(rows)} of {ROWS} rows recovered"


def test_salvage_recovers_every_readable_row_past_damaged_table_pages(
    tmp_path: Path, pristine: Path
) -> None:
    path = copy_of(pristine, tmp_path)
    leaves = pages_of(path, "records", "leaf")
    damaged = [leaves[0], leaves[len(leaves) // 2], leaves[-1]]  # the first, one, the last
    lost = set().union(*(rowids_on(path, page) for page in damaged))
    ruin(path, damaged)
    with open_journal(path) as journal:
        recovered = journal.meta().get("journal_recovered", "")
    rows = journal_rows(path)
    assert rows == expected_rows(pristine, lost), f"{len(rows)} of {ROWS - len(lost)} rows"
    assert f"{ROWS - len(lost)} record(s) recovered" in recovered
    assert f"{len(lost)} unreadable" in recovered, "rows were lost without a word"


def test_salvage_scan_reads_the_table_b_tree_not_an_index(tmp_path: Path, pristine: Path) -> None:
    from agent.journal.salvage import SALVAGE_SCAN

    with closing(sqlite3.connect(pristine)) as db:
        plan = " ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + SALVAGE_SCAN, (0,)))
    assert "INTEGER PRIMARY KEY" in plan and "INDEX" not in plan.replace("PRIMARY KEY", ""), plan


def test_a_recovery_stays_in_status_until_a_person_acknowledges_it(
    tmp_path: Path, pristine: Path
) -> None:
    from tests.conftest import write_config as config_for

    path = copy_of(pristine, tmp_path)
    ruin(path, [pages_of(path, "records_unsent", "leaf")[3]])
    open_journal(path).close()
    config = config_for(tmp_path, "http://127.0.0.1:9/push")
    first = cli("status", "--config", str(config)).stdout.splitlines()[0]
    assert first.startswith("JOURNAL") and "RECOVERED" in first, first
    done = cli("journal", "acknowledge", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "acknowledged" in done.stdout and aside_files(tmp_path)[0].name in done.stdout
    status = cli("status", "--json", "--config", str(config))
    assert '"journal_recovered": null' in status.stdout
    again = cli("journal", "acknowledge", "--config", str(config))
    assert again.returncode == 0 and "nothing to acknowledge" in again.stdout


def test_an_unfinished_salvage_is_finished_at_the_next_start(
    tmp_path: Path, pristine: Path
) -> None:
    """A crash right after the marker was written and the files moved, before any row was
    copied: the next start finishes the salvage instead of running on an empty journal."""
    from agent.journal import salvage_marker

    path = copy_of(pristine, tmp_path)
    ruin(path, [pages_of(path, "records_unsent", "leaf")[1]])
    marker = salvage_marker(path)
    aside = path.with_name(path.name + ".corrupt-20261201T000000Z")
    marker.write_text(
        json.dumps({"aside": aside.name, "problem": "test", "stamp": "20261201T000000Z"})
    )
    for suffix in ("-wal", "-shm", ""):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).rename(aside.with_name(aside.name + suffix))
    with open_journal(path) as journal:
        assert "recovered" in journal.meta().get("journal_recovered", "")
    assert not marker.exists()
    assert journal_rows(path) == expected_rows(pristine, set())
    assert aside_files(tmp_path) == [aside]


# -- hazard 3: ids (and so {station}-J{id} permit numbers) never handed out again -------------

DELIVERED = 300


def delivered_journal(path: Path, count: int = DELIVERED) -> set[str]:
    """A journal of ``count`` sales without a receipt number, all delivered (so the
    controller holds their ``{station}-J{id}`` permit numbers), checkpointed into the main
    file. Returns those permit numbers."""
    from agent.journal import Journal

    with Journal(path) as journal:
        for n in range(count):
            new_sale(journal, str(n))
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("UPDATE records SET state = 'sent', sent_at = received_at, reference_id = id")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {r[0] for r in db.execute("SELECT json_extract(payload, '$.permitNo') FROM records")}


def new_sale(journal: Any, n: str) -> tuple[int, str]:
    """One sale without a receipt number: (its id, its permit number)."""
    from agent.journal import State
    from agent.permits import DEFAULT_TEMPLATE, PermitNumbering

    numbering = PermitNumbering("PS-1", {}, DEFAULT_TEMPLATE)
    appended = journal.append(
        station="PS-1",
        txn=None,
        source="meter-1",
        raw=b"sale " + n.encode(),
        fields={"N": n},
        payload={"permitNo": ""},
        state=State.PENDING,
        ends_at=time.time() + 3600,
        permit_no=lambda txn, rid: numbering.number("meter-1", txn, rid),
    )
    return appended.id, journal.get(appended.id).payload["permitNo"]


def id_counter(path: Path) -> int | None:
    with closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
    return None if row is None else int(row[0])


def test_ids_are_never_handed_out_again_after_a_salvage_lost_the_last_rows(
    tmp_path: Path,
) -> None:
    """The table's last page is damaged: its rows are lost, but the controller holds their
    permit numbers. A new sale's id is above every id the old journal had."""
    path = tmp_path / "journal.sqlite3"
    delivered = delivered_journal(path)
    last = pages_of(path, "records", "leaf")[-1]
    lost = rowids_on(path, last)
    assert max(lost) == DELIVERED, "the last page does not hold the last rows"
    ruin(path, [last])
    with open_journal(path) as journal:
        assert f"{len(lost)} unreadable" in journal.meta()["journal_recovered"]
        new_id, permit_no = new_sale(journal, "new")
    assert new_id > DELIVERED, f"id {new_id} handed out again ({permit_no})"
    assert permit_no not in delivered


def just_after_a_second_boundary() -> int:
    """The time in whole seconds, taken within a millisecond after it turned: where the
    kernel's coarse clock (behind ``time.gmtime()`` with no argument) still shows the
    second before, by up to one tick."""
    now = int(time.time())
    while int(time.time()) == now:
        pass
    return int(time.time())


def test_ids_are_never_handed_out_again_after_a_journal_that_is_not_sqlite(
    tmp_path: Path,
) -> None:
    """Nothing of the old file can be read, not even how many ids it handed out: new ids
    start above the salvage's time in seconds since the epoch, which no journal's count of
    records reaches."""
    path = tmp_path / "journal.sqlite3"
    delivered = delivered_journal(path)
    path.write_bytes(bytes((n * 37) % 256 for n in range(path.stat().st_size)))
    started = just_after_a_second_boundary()
    with open_journal(path) as journal:
        assert "0 record(s) recovered" in journal.meta()["journal_recovered"]
        new_id, permit_no = new_sale(journal, "new")
    assert new_id > started > 1_000_000_000, f"id {new_id} after a salvage of garbage"
    assert permit_no not in delivered


def test_a_fresh_journal_numbers_from_1(tmp_path: Path) -> None:
    from agent.journal import Journal

    with open_journal(tmp_path / "journal.sqlite3") as journal:
        assert new_sale(journal, "first")[0] == 1
    with Journal(tmp_path / "other.sqlite3") as journal:
        assert new_sale(journal, "first")[0] == 1


def test_a_resumed_salvage_ends_with_the_same_id_counter(tmp_path: Path, pristine: Path) -> None:
    """Stopped between two batches, then finished at the next start: the counter is the old
    journal's. A salvage of a file that is not SQLite, interrupted before any copy and
    finished later, numbers above the time the salvage began (the marker's), not the time
    it was finished."""
    import calendar

    from agent.errors import Stopped
    from agent.journal import salvage_marker
    from agent.signals import Flag

    class StopsAfter(Flag):
        def __init__(self, batches: int) -> None:
            super().__init__()
            self.left = batches

        def is_set(self) -> bool:
            self.left -= 1
            return self.left < 0

    path = copy_of(pristine, tmp_path)
    assert id_counter(path) == ROWS
    ruin(path, [pages_of(path, "records", "leaf")[-1]])
    with pytest.raises(Stopped):
        open_journal(path, stopping=StopsAfter(3))
    assert salvage_marker(path).exists() and id_counter(path) < ROWS  # stopped mid-copy
    open_journal(path).close()
    assert not salvage_marker(path).exists() and id_counter(path) == ROWS

    path = tmp_path / "garbage" / "journal.sqlite3"
    path.parent.mkdir()
    stamp = "20261201T000000Z"
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    aside.write_bytes(b"not a database " * 1000)
    salvage_marker(path).write_text(
        json.dumps({"aside": aside.name, "problem": "t", "stamp": stamp})
    )
    open_journal(path).close()
    assert id_counter(path) == calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))


SALVAGE_IN_A_PROCESS = r"""
import sys
from pathlib import Path
from agent.journal import open_journal
with open_journal(Path(sys.argv[1])) as journal:
    print(journal.meta()["journal_recovered"])
"""


def test_a_salvage_of_a_journal_numbered_from_an_earlier_salvage_skips_the_ids_it_never_had(
    tmp_path: Path,
) -> None:
    """After a file that was not SQLite, ids start near 2e9. If that journal's first page is
    damaged later, the ids below it are not looked up one by one (two billion lookups, hours
    at a start): the journal says they were skipped, and the next journal says so too."""
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"not a database " * 1000)
    with open_journal(path) as journal:
        ids = [new_sale(journal, str(n))[0] for n in range(100)]
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for aside in aside_files(tmp_path):  # the next salvage may come within the same second
        aside.rename(tmp_path / f"earlier-{aside.name}")
    first = pages_of(path, "records", "leaf")[0]
    lost = rowids_on(path, first)
    assert min(lost) == ids[0] > 1_000_000_000
    ruin(path, [first])
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SALVAGE_IN_A_PROCESS, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert f"{100 - len(lost)} record(s) recovered" in done.stdout
    assert f", {len(lost)} unreadable" in done.stdout, done.stdout
    assert elapsed < 30, f"the salvage took {elapsed:.1f} s"
    from agent.journal import skipped_ids

    with open_journal(path) as journal:
        assert (1, ids[0] - 1) in skipped_ids(journal.meta())
        assert new_sale(journal, "new")[0] > ids[-1]


def test_ids_outside_skipped_ranges() -> None:
    from agent.journal.salvage import _ids

    assert list(_ids(1, 11, [(3, 4), (7, 20)])) == [1, 2, 5, 6]
    assert list(_ids(5, 9, [(1, 5)])) == [6, 7, 8]
    assert list(_ids(5, 9, [(1, 100)])) == []
    assert list(_ids(5, 9, [])) == [5, 6, 7, 8]


def test_two_salvages_in_one_second_keep_both_damaged_files_and_read_the_right_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal damaged again within the second of its last salvage (the clock's stamp is
    the same): the second damaged file gets a name of its own, and it is the one salvaged,
    not the first one found under that name."""
    frozen = time.gmtime()
    monkeypatch.setattr(agent.journal.recovery.time, "gmtime", lambda *_: frozen)
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"not a journal at all " * 100)
    open_journal(path).close()  # the first salvage: nothing readable
    build_journal(path, count=50)
    ruin(path, pages_of(path, "records_unsent", "leaf")[:1])  # damaged again, index only
    journal = open_journal(path)
    try:
        assert len(journal_rows(path)) == 50, "the second salvage read the wrong file"
    finally:
        journal.close()
    assert len(aside_files(tmp_path)) == 2
