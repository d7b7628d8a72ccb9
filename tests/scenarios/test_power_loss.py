"""Power loss, short of pulling a plug. The commit that precedes each ACK is durable: the
open connection runs WAL with ``synchronous=FULL`` (read back from SQLite, and checked in
the running service), and the ACK byte is written only after the commit returns
(test_serial). Here: a journal whose WAL was cut, or whose last write was torn, at a random
byte opens as the prefix of what was committed, intact, and the agent carries on from it;
and a power cut in the middle of a delivery run, modelled by what the agent's fsyncs made
durable (``synced_log.c``), leaves no delivered sale taken for another's.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from agent.config import load_config
from agent.emulator import ControllerEmulator
from agent.journal import Journal, State, open_journal
from agent.service import Service
from tests.conftest import agent_env, eventually, start_agent, stop_agent, write_config
from tests.scenarios.conftest import SEED, SOAK, fill_journal, report, submit_sale

CUTS = 200 if SOAK else 25


def snapshot_without_checkpoint(tmp_path: Path, records: int) -> tuple[Path, list[str]]:
    """A journal as a power cut finds it: the database file and a WAL that holds every
    commit since the last checkpoint (copied while the writer still has it open)."""
    live = tmp_path / "live" / "journal.sqlite3"
    live.parent.mkdir()
    txns = [f"W-{n}" for n in range(records)]
    with Journal(live) as journal:
        journal._db.execute("PRAGMA wal_autocheckpoint = 0")  # keep every commit in the WAL
        for txn in txns:
            submit_sale(journal, txn)  # the intake's path: one durable commit each
        snap = tmp_path / "snap"
        snap.mkdir()
        shutil.copy(live, snap / "journal.sqlite3")
        shutil.copy(live.with_name("journal.sqlite3-wal"), snap / "journal.sqlite3-wal")
    return snap / "journal.sqlite3", txns


def journaled(path: Path) -> list[tuple[str, str]]:
    with Journal(path) as journal:
        return [(r.txn or "", r.state) for r in journal.records()]


def test_a_wal_cut_at_any_byte_opens_as_a_committed_prefix(tmp_path: Path) -> None:
    snap, txns = snapshot_without_checkpoint(tmp_path, 40)
    wal_size = snap.with_name("journal.sqlite3-wal").stat().st_size
    rnd = random.Random(SEED)
    cuts = sorted([rnd.randrange(0, wal_size) for _ in range(CUTS)] + [wal_size])
    seen = []
    for i, cut in enumerate(cuts):
        case = tmp_path / f"cut-{i}"
        case.mkdir()
        shutil.copy(snap, case / "journal.sqlite3")
        with open(snap.with_name("journal.sqlite3-wal"), "rb") as src:
            (case / "journal.sqlite3-wal").write_bytes(src.read(cut))
        journal = open_journal(case / "journal.sqlite3")
        try:
            assert journal.quick_check() == "ok"
            assert journal.meta().get("journal_recovered") is None  # a cut WAL is not corruption
            rows = [(r.txn, r.state, r.payload) for r in journal.records()]
        finally:
            journal.close()
        kept = [txn for txn, _, _ in rows]
        assert kept == txns[: len(kept)], f"cut at byte {cut}: not a prefix"
        assert all(state == "pending" and payload for _, state, payload in rows)
        seen.append(len(kept))
    assert seen == sorted(seen), "a longer WAL never gives fewer records"
    assert seen[-1] == len(txns), "the whole WAL gives every committed record"
    report("power-loss-cut", cuts=len(cuts), records=len(txns), distinct_prefixes=len(set(seen)))


def test_a_torn_last_write_loses_only_the_commit_being_written(tmp_path: Path) -> None:
    snap, txns = snapshot_without_checkpoint(tmp_path, 20)
    wal = snap.with_name("journal.sqlite3-wal")
    data = bytearray(wal.read_bytes())
    rnd = random.Random(SEED)
    for offset in range(len(data) - 2048, len(data)):  # the tail of the last commit: garbage
        data[offset] = rnd.randrange(256)
    wal.write_bytes(bytes(data))
    kept = [txn for txn, _ in journaled(snap)]
    assert kept == txns[:-1], "exactly the torn commit is missing"


def test_the_running_service_writes_with_synchronous_full(tmp_path: Path) -> None:
    """Read back from the connection the service uses, not from a fresh one."""
    config = load_config(write_config(tmp_path, "http://127.0.0.1:9/push"), environ={})
    service = Service(config, environ={})
    try:
        assert service.journal.synchronous() == 2  # FULL, as the append that precedes an ACK
        mode = service.journal._db.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        service.stop()
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
    db.close()


def synced_sizes(log: Path) -> dict[str, int]:
    """Each file's size at the last fsync the agent made of it (``synced_log.c``'s log)."""
    sizes: dict[str, int] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        path, size = line.rsplit(" ", 1)
        sizes[path] = int(size)
    return sizes


def count(journal: Path, state: str) -> int | None:
    """Records in ``state``, read as another process reads the live journal (read-only: a
    reader that closes last must not checkpoint the WAL the test is about to cut); None
    while the agent has not opened it yet (a read-only reader cannot set up its WAL)."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT count(*) FROM records WHERE state = ?", (state,)).fetchone()
        return int(row[0])
    except sqlite3.OperationalError:
        return None
    finally:
        db.close()


def test_a_power_cut_while_delivering_takes_no_delivered_sale_for_a_conflict(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    """A backlog drains; the power goes: whatever the agent wrote after its last fsync is
    gone. The controller holds every sale it was sent, so each one sent again must be
    answered 9022 and taken as delivered (an earlier attempt's outcome was unknown to the
    journal), never dead-lettered as a permit-number conflict. That holds only if a
    record's "being sent" mark is durable before its request goes out."""
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler (cc) to build the fsync log shim")
    shim = tmp_path / "synced_log.so"
    source = Path(__file__).with_name("synced_log.c")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(shim), str(source), "-ldl"], check=True)
    journal = tmp_path / "journal.sqlite3"
    wal = journal.with_name("journal.sqlite3-wal")
    txns = fill_journal(journal, pending=30)  # durable appends, then closed: no WAL left
    config = write_config(tmp_path, emulator.url)

    log = tmp_path / "synced.log"
    env = agent_env(LD_PRELOAD=str(shim), SYNCED_LOG=str(log))
    agent = start_agent(config, tmp_path / "agent.log", env)
    try:
        assert emulator.wait_for(len(txns), timeout=30), "the backlog was not delivered"
        eventually(lambda: count(journal, "pending") == 0, what="every result recorded")
    finally:
        agent.kill()  # the power goes
        agent.wait()
    synced = synced_sizes(log)
    assert str(journal) not in synced, "a checkpoint ran: this model of a power cut no longer holds"
    with open(wal, "r+b") as cut:  # what was never synced never reached the disk
        cut.truncate(synced.get(str(wal), 0))
    journal.with_name("journal.sqlite3-shm").unlink(missing_ok=True)

    agent = start_agent(config, tmp_path / "agent.log")
    try:
        # dead or sent, none is pending any more (None: not opened yet, as in the first run)
        eventually(lambda: count(journal, "pending") == 0, timeout=30, what="all sent again")
    finally:
        stop_agent(agent)
    with Journal(journal) as reopened:
        states = [r.state for r in reopened.records()]
        dead = [r.last_error for r in reopened.records() if r.state is State.DEAD]
    report("power-cut-delivering", records=len(txns), dead=len(dead))
    assert dead == [], f"{len(dead)} delivered sale(s) dead-lettered after the cut: {dead[:1]}"
    assert states == [State.SENT] * len(txns)
    permits = [a.payload["permitNo"] for a in emulator.accepted]
    assert len(permits) == len(set(permits)) == len(txns), "the controller holds each sale once"
