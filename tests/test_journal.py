"""The journal on a real SQLite file: durability settings, dedupe, states, ordering,
pruning, schema versioning and several processes at once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.errors import JournalBusyError, JournalError
from agent.journal import SCHEMA_VERSION, Attempt, Journal, State
from tests.conftest import ROOT
from tests.scenarios.conftest import submit_sale


def add(
    journal: Journal, txn: str | None, *, ends_at: float = 0.0, state: State = State.PENDING
) -> int:
    return journal.append(
        station="PS-1",
        txn=txn,
        source="test",
        raw=f"TXN={txn}".encode(),
        fields={"TXN": txn or ""},
        payload={"permitNo": txn or "x"} if state is State.PENDING else None,
        state=state,
        ends_at=ends_at,
    ).id


def test_append_is_durable_wal_full(journal: Journal) -> None:
    add(journal, "1")
    assert journal.synchronous() == 2  # FULL, read back from SQLite on the open connection
    mode = sqlite3.connect(journal.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_append_is_visible_to_another_connection_at_once(journal: Journal) -> None:
    add(journal, "1")
    other = sqlite3.connect(journal.path)
    assert other.execute("SELECT txn, state FROM records").fetchall() == [("1", "pending")]
    other.close()


def test_duplicate_txn_is_reported_not_stored_twice(journal: Journal) -> None:
    first = journal.append(
        station="PS-1",
        txn="42",
        source="t",
        raw=b"a",
        fields={},
        payload={},
        state=State.PENDING,
        ends_at=0,
    )
    again = journal.append(
        station="PS-1",
        txn="42",
        source="t",
        raw=b"a",
        fields={},
        payload={},
        state=State.PENDING,
        ends_at=0,
    )
    other_station = journal.append(
        station="PS-2",
        txn="42",
        source="t",
        raw=b"a",
        fields={},
        payload={},
        state=State.PENDING,
        ends_at=0,
    )
    other_meter = journal.append(
        station="PS-1",
        txn="42",
        source="meter-2",
        raw=b"a",
        fields={},
        payload={},
        state=State.PENDING,
        ends_at=0,
    )
    assert not first.duplicate and again.duplicate and again.id == first.id
    assert not other_station.duplicate
    assert not other_meter.duplicate  # each meter numbers its own receipts
    assert journal.counts()[State.PENDING] == 3


def test_records_without_txn_are_never_merged(journal: Journal) -> None:
    add(journal, None, state=State.REJECTED)
    add(journal, None, state=State.REJECTED)
    assert journal.counts()[State.REJECTED] == 2


def test_claim_orders_running_sessions_first_then_oldest(journal: Journal) -> None:
    future = time.time() + 3600
    old = [add(journal, f"old{i}", ends_at=1.0) for i in range(3)]
    running = [add(journal, f"run{i}", ends_at=future) for i in range(2)]
    claims = journal.claim(5)
    assert [c.id for c in claims] == running + old
    assert journal.claim(5) == []  # all in flight


def test_claim_takes_only_what_it_is_asked(journal: Journal) -> None:
    for i in range(50):
        add(journal, str(i))
    assert len(journal.claim(3)) == 3


def wal_frames(journal: Journal) -> int:
    wal = journal.path.with_name(journal.path.name + "-wal")
    page = sqlite3.connect(journal.path).execute("PRAGMA page_size").fetchone()[0]
    return (wal.stat().st_size - 32) // (24 + page) if wal.exists() else 0


def test_a_sale_stored_while_a_worker_waits_is_claimed_for_it_in_the_same_commit(
    journal: Journal,
) -> None:
    journal._db.execute("PRAGMA wal_autocheckpoint = 0")  # every commit stays in the WAL
    add(journal, "warm-up")  # the file, its first pages
    assert journal.take_handed() == [] and len(journal.claim(1)) == 1
    before = wal_frames(journal)
    add(journal, "1")  # nobody waits: the worker claims it in a commit of its own
    assert len(journal.claim(1)) == 1
    apart = wal_frames(journal) - before

    journal.await_claim(True)  # a forwarder worker goes idle
    before = wal_frames(journal)
    record_id = add(journal, "2")
    handed = journal.take_handed()
    together = wal_frames(journal) - before
    assert [c.id for c in handed] == [record_id] and handed[0].payload == {"permitNo": "2"}
    assert together < apart  # the claim's commit is gone
    assert journal.claim(1) == []  # in flight, for that worker only
    state = sqlite3.connect(journal.path).execute(
        "SELECT in_flight FROM records WHERE id = ?", (record_id,)
    )
    assert state.fetchone() == (1,)  # sending: a crash now counts an unknown outcome
    assert journal.take_handed() == []  # one claim per waiting worker


def test_no_sale_is_claimed_ahead_for_a_worker_that_stopped_waiting(journal: Journal) -> None:
    journal.await_claim(True)
    journal.await_claim(False)
    add(journal, "1")
    assert journal.take_handed() == []
    assert len(journal.claim(1)) == 1


def test_claims_handed_but_never_taken_are_given_back(journal: Journal) -> None:
    journal.await_claim(True)
    record_id = add(journal, "1")
    journal.release_handed()  # the forwarder stopped first
    assert journal.take_handed() == []
    assert [c.id for c in journal.claim(1)] == [record_id]


def test_a_sale_claimed_for_a_waiting_worker_and_lost_in_a_crash_is_sent_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite3"
    with Journal(path) as journal:
        journal.await_claim(True)
        record_id = add(journal, "1")
        assert [c.id for c in journal.take_handed()] == [record_id]
        # the agent dies here: the claim was never sent, never given back
    with Journal(path) as journal:
        assert journal.recover_in_flight() == 1  # counted, as promise 3 asks
        assert [c.id for c in journal.claim(1)] == [record_id]


def test_in_flight_after_a_crash_is_counted_as_unknown(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    with Journal(path) as journal:
        add(journal, "1")
        assert len(journal.claim(1)) == 1
    with Journal(path) as journal:
        assert journal.recover_in_flight() == 1
        record = journal.get(1)
        assert record is not None and record.unknown_outcomes == 1 and record.state is State.PENDING
        assert len(journal.claim(1)) == 1


def test_prune_deletes_only_old_sent_records(journal: Journal) -> None:
    ids = [add(journal, str(i)) for i in range(5)]
    for record_id in ids[:3]:
        journal.record_attempt(record_id, Attempt("delivered", State.SENT, 200, None, "{}", "r"))
    add(journal, "dead")
    journal.record_attempt(6, Attempt("rejected", State.DEAD, 400, "HTTP 400", ""))
    assert journal.prune_sent(time.time() + 1) == 3
    counts = journal.counts()
    assert counts[State.SENT] == 0 and counts[State.PENDING] == 2 and counts[State.DEAD] == 1
    assert journal.prune_sent(time.time() + 1) == 0
    assert journal.attempts(ids[0]) == [] and len(journal.attempts(6)) == 1


def test_make_room_gives_up_only_delivered_records_oldest_first(journal: Journal) -> None:
    """A full journal frees space from delivered records only: never from a sale the
    controller does not have yet, whatever its age."""
    ids = [add(journal, str(i)) for i in range(8)]
    for record_id in (ids[1], ids[5], ids[3]):  # delivered in this order
        journal.record_attempt(record_id, Attempt("delivered", State.SENT, 200, None, "", "r"))
        time.sleep(0.01)
    add(journal, "dead")
    journal.record_attempt(9, Attempt("rejected", State.DEAD, 400, "HTTP 400", ""))
    assert journal.make_room(time.time() + 1, limit=2) == 2
    left = {r.txn: r.state for r in journal.records()}
    assert "1" not in left and "5" not in left and left["3"] == "sent"  # oldest delivery first
    assert journal.make_room(time.time() + 1) == 1
    assert journal.make_room(time.time() + 1) == 0  # nothing delivered left: nothing given up
    assert {t for t, s in left.items() if s != "sent"} == {"0", "2", "4", "6", "7", "dead"}
    assert len(list(journal.records())) == 6


def test_records_are_read_in_batches_oldest_first(journal: Journal) -> None:
    for i in range(25):
        add(journal, str(i))
    assert [r.txn for r in journal.records(batch=4)] == [str(i) for i in range(25)]


def test_schema_is_versioned(journal: Journal) -> None:
    version = sqlite3.connect(journal.path).execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION


def test_a_newer_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(JournalError, match="newer than this agent"):
        Journal(path)


def test_not_a_database_is_a_journal_error(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError, match="not a usable SQLite database"):
        Journal(path)


def test_several_processes_append_at_once(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    script = (
        "import sys; from pathlib import Path; from agent.journal import Journal, State\n"
        "j = Journal(Path(sys.argv[1]))\n"
        "for i in range(200):\n"
        "    j.append(station='PS', txn=f'{sys.argv[2]}-{i}', source='t', raw=b'', fields={},"
        " payload={}, state=State.PENDING, ends_at=0)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), tag], cwd=ROOT)
        for tag in ("a", "b", "c")
    ]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    with Journal(path) as journal:
        assert journal.counts()[State.PENDING] == 600


def test_a_reused_txn_with_different_content_is_a_new_sale(journal: Journal) -> None:
    def sale(plate: str) -> tuple[int, bool]:
        result = journal.append(
            station="PS-1",
            txn="000123",
            source="t",
            raw=plate.encode(),
            fields={"TXN": "000123", "PLATE": plate},
            payload={"p": plate},
            state=State.PENDING,
            ends_at=0,
        )
        return result.id, result.duplicate

    first, _ = sale("AAA111")
    assert sale("AAA111") == (first, True)  # a resend
    second, dup = sale("BBB222")  # the meter's counter was reset: another customer
    assert not dup and second != first
    assert sale("BBB222") == (second, True)
    assert [r.txn for r in journal.records()] == ["000123", "000123~2"]


def test_a_version_1_journal_is_migrated_with_its_records(tmp_path: Path) -> None:
    from agent.journal.schema import _MIGRATIONS

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(_MIGRATIONS[0])
    db.execute(
        "INSERT INTO records (station, txn, source, state, raw, fields, payload, ends_at, "
        "received_at, updated_at) VALUES ('PS', '1', 't', 'pending', x'00', '{}', '{}', 0, 1, 1)"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with Journal(path) as journal:
        assert journal.counts()[State.PENDING] == 1
        [claim] = journal.claim(1)
        journal.record_attempt(claim.id, Attempt("rejected", State.DEAD, 400, "HTTP 400", "no"))
        assert [a.status for a in journal.attempts(claim.id)] == [400]
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION == 4


def test_a_journal_migrated_by_another_process_while_this_one_opens_it_takes_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service and a CLI command (or three appenders, as above) open a new or old
    # journal at once: the other migrates it between this opener's first look at the schema
    # and its own migration step. Deterministic here; the race itself is rare.
    from agent.journal.schema import _MIGRATIONS

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(_MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    migrate = Journal._migrate
    openers: list[Journal] = []

    def another_opener_first(self: Journal) -> None:
        openers.append(self)
        if len(openers) == 1:
            Journal(path).close()  # its own connection migrates the file to the end
        migrate(self)

    monkeypatch.setattr(Journal, "_migrate", another_opener_first)
    with Journal(path) as journal:
        assert len(openers) == 2  # the other one did run in between
        add(journal, "1")
        add(journal, "1")  # a resend: the unique key of the current schema dedupes it
        assert journal.counts()[State.PENDING] == 1


def test_root_opening_a_service_users_journal_keeps_its_side_files_usable(tmp_path: Path) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root: the case is root's CLI next to the service's user")
    path = tmp_path / "j.sqlite3"
    Journal(path).close()
    os.chown(path, 4242, 4242)
    for side in tmp_path.glob("j.sqlite3-*"):
        side.unlink()
    with Journal(path) as journal:  # as root, the way `dead requeue` runs
        add(journal, "1")
        for side in tmp_path.glob("j.sqlite3-*"):
            assert side.stat().st_uid == 4242


def test_once_stopping_all_writes_together_give_up_on_a_lock_held_elsewhere(
    tmp_path: Path,
) -> None:
    """A stop meets the drivers', the forwarder's and the port health's writes one after
    the other while a technician's shell holds the lock: together they wait STOP_WAIT_S
    (0.5 s) at most, not that much each (six writes took 3 s, and a stop 4.9 s)."""
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        submit_sale(journal, "T-1", PLATE="P1")
        shell = sqlite3.connect(path, isolation_level=None)
        shell.execute("BEGIN IMMEDIATE")
        try:
            journal.stop_waiting()
            started = time.monotonic()
            for n in range(6):
                with pytest.raises(JournalBusyError):
                    journal.set_meta({"probe": str(n)})
            waited = time.monotonic() - started
        finally:
            shell.execute("ROLLBACK")
            shell.close()
        assert waited < 2.0, f"six writes waited {waited:.1f} s in all"
        journal.set_meta({"probe": "after"})  # the lock is free: writes work again
        assert journal.meta()["probe"] == "after"


def test_a_reread_record_whose_txn_is_already_journaled_stays_rejected(
    journal: Journal,
) -> None:
    """A rejected record read again may turn out to carry a receipt number already
    journaled from its driver (the meter's resend of a sale kept meanwhile): a repeat,
    never sent twice."""
    add(journal, "7")
    rejected = journal.append(
        station="PS-1",
        txn=None,
        source="test",
        raw=b"RECEIPT=7|PLATENO=AB1",
        fields={},
        payload=None,
        state=State.REJECTED,
        error="not a kv record",
    ).id

    def mapper(
        fields: dict[str, str], record_id: int, source: str, txn: str | None
    ) -> tuple[State, dict[str, str] | None, float | None, str | None]:
        return State.PENDING, {"permitNo": txn or ""}, None, None

    counts = journal.remap(
        (State.REJECTED,), mapper, reread=lambda raw, source: ({"TXN": "7", "PLATE": "AB1"}, None)
    )
    assert counts == {State.REJECTED: 1}
    record = journal.get(rejected)
    assert record is not None and record.state is State.REJECTED and record.txn is None
    assert record.last_error == "TXN 7 is already journaled from this driver: a repeat, not sent"
    assert record.fields == {"TXN": "7", "PLATE": "AB1"}


def test_a_version_3_journal_keeps_its_counts_and_backlog_order_after_migrating(
    tmp_path: Path,
) -> None:
    # Step 3 -> 4 replaces the state index by one of the records not yet delivered: the
    # counts, the claim order and the retention of rejected records read it from then on.
    from agent.journal.schema import _MIGRATIONS

    path = tmp_path / "v3.sqlite3"
    db = sqlite3.connect(path)
    for step in _MIGRATIONS[:3]:
        db.executescript(step)
    for n, state in enumerate(["sent", "pending", "sent", "dead", "pending", "rejected"]):
        db.execute(
            "INSERT INTO records (station, txn, source, state, raw, fields, payload, ends_at, "
            "received_at, updated_at, sent_at) "
            "VALUES ('PS', ?, 't', ?, x'00', '{}', '{}', 0, 1, 1, ?)",
            (str(n), state, 5.0 if state == "sent" else None),
        )
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    with Journal(path) as journal:
        counts = journal.counts()
        assert (counts[State.SENT], counts[State.PENDING], counts[State.DEAD]) == (2, 2, 1)
        assert counts[State.REJECTED] == 1
        assert [c.payload for c in journal.claim(5)] == [{}, {}]
        assert journal.prune_rejected(older_than=2) == 1
        assert journal.prune_sent(older_than=6) == 2
        assert [r.state for r in journal.records()] == [State.PENDING, State.DEAD, State.PENDING]
    db = sqlite3.connect(path)
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "records_unsent" in indexes and "records_state" not in indexes
    assert db.execute("PRAGMA user_version").fetchone()[0] == 4
    db.close()
