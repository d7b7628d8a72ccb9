"""The promises under a seeded storm: two meters on two serial lines that number their
receipts alike (the same TXNs), with noise and corrupt frames; a controller that keys
permits by number alone (``dedupe="permit"``), goes down, answers 5xx, 429, slowly, with
resets, auth errors, errors under HTTP 200 and statuses the vendor never documented
(a redirect, 405, 410, a 201 without a success body); another process (a technician's
``sqlite3`` shell) holding the journal's write lock, at times while the agent starts or
stops; and an agent killed with SIGKILL at random moments (while ACKing, while committing,
mid-request, mid-drain) and restarted, or stopped with SIGTERM.

At the end everything is reconciled: every ACKed sale of each meter delivered as its own
permit, no payload refused, no 9022 taken for a delivery that never happened, duplicates
only where an outcome was unknowable (and counted), the journal never moved aside for a
lock, every SIGTERM a clean exit, and status agreeing with the controller.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from agent.emulator import ControllerEmulator
from tests.conftest import cli, eventually, write_config
from tests.scenarios.conftest import SEED, SOAK, report
from tests.test_serial import Pty, Relay, lines_of, run_agent, serial_driver, simulate, stop

SECONDS = 180.0 if SOAK else 20.0
RATE = 8.0  # per meter
METERS = ("meter-1", "meter-2")
STATION = "PS-TEST"
FAULTS = [
    ("down", {}),
    ("error", {"status": 500}),
    ("error", {"status": 503, "retry_after": "1"}),
    ("throttle", {"retry_after": "1"}),
    ("slow", {"delay": 1.5}),  # longer than the agent's timeout: an unknown outcome
    ("reset", {"accept": True}),  # stored, but the answer is lost
    ("reset", {"accept": False}),
    ("auth", {"status": 401, "error_code": 9001}),
    ("error200", {"error_code": 9002}),
    # answers the vendor never documented: never the record's fault, never a dead letter
    ("error", {"status": 302}),
    ("error", {"status": 405}),
    ("error", {"status": 410}),
    ("error", {"status": 201}),
]


def test_nothing_acked_is_lost_under_faults_and_kills(tmp_path: Path) -> None:
    rnd = random.Random(SEED)
    lines = {name: (Pty(), Pty()) for name in METERS}
    relays = [Relay(agent_end, meter_end) for agent_end, meter_end in lines.values()]
    emulator = ControllerEmulator(token="SECRET-TOKEN-7f3a9c1e", dedupe="permit").start()
    drivers = "".join(
        serial_driver(agent_end.path).replace('"meter-1"', f'"{name}"')
        for name, (agent_end, _) in lines.items()
    )
    config = write_config(
        tmp_path,
        emulator.url,
        drivers=drivers,
        controller_extra="auth_retry_s = 1.0\nconcurrency = 3",
    )
    config.write_text(config.read_text().replace("timeout_s  = 5.0", "timeout_s  = 1.0"))
    journal = tmp_path / "journal.sqlite3"
    log = tmp_path / "agent.log"
    count = int(SECONDS * RATE)
    agent = run_agent(config, log)
    # a lock is held for less than the meters' answer timeout: a late ACK would be taken
    # for the answer to the meter's next frame (the reference protocol has no sequence number)
    line_faults = ("--noise", "0.1", "--corrupt", "0.05", "--answer-timeout", "2.0")
    meters = {
        # the same batch on both: the two meters number their receipts alike
        name: simulate(
            meter_end.path,
            tmp_path / f"acked-{name}.txt",
            *("--count", str(count), "--rate", str(RATE), "--seed", str(SEED), "--batch", "B1"),
            *line_faults,
        )
        for name, (_, meter_end) in lines.items()
    }
    faults: dict[str, int] = {}
    kills = locks = 0
    stops: list[float] = []
    try:
        deadline = time.monotonic() + SECONDS * 4 + 60
        while any(m.poll() is None for m in meters.values()) and time.monotonic() < deadline:
            time.sleep(rnd.uniform(0.2, 1.2))
            roll = rnd.random()
            if roll < 0.12:
                agent.kill()  # SIGKILL, wherever it is
                agent.wait()
                kills += 1
                agent = run_agent(config, log)
            elif roll < 0.27:
                # a technician's sqlite3 shell inside a transaction; now and then the agent
                # is stopped with SIGTERM or started while it is held
                locks += 1
                with _write_lock(journal):
                    time.sleep(rnd.uniform(0.2, 0.8))
                    action = rnd.random()
                    if action < 0.4:
                        stops.append(_sigterm(agent))
                        agent = run_agent(config, log)
                    elif action < 0.5:
                        agent.kill()
                        agent.wait()
                        kills += 1
                        agent = run_agent(config, log)
                    time.sleep(rnd.uniform(0.1, 0.4))
            elif roll < 0.42:
                emulator.clear_fault()
                emulator.come_up()
            else:
                kind, options = rnd.choice(FAULTS)
                emulator.come_up()
                if kind == "down":
                    emulator.go_down()
                else:
                    emulator.set_fault(kind, count=rnd.randint(1, 6), **options)  # type: ignore[arg-type]
                name = f"{kind} {options['status']}" if kind == "error" else kind
                faults[name] = faults.get(name, 0) + 1
        outputs = {name: m.communicate(timeout=30) for name, m in meters.items()}
        for name, m in meters.items():
            assert m.returncode == 0, (name, outputs[name])
        emulator.clear_fault()
        emulator.come_up()
        if agent.poll() is not None:  # a start that gave up on a held lock: systemd restarts
            agent = run_agent(config, log)
        eventually(lambda: _undelivered(journal) == 0, timeout=90, what="backlog drained")
        status = json.loads(cli("status", "--json", "--config", str(config)).stdout)
    finally:
        stop(agent)
        for m in meters.values():
            if m.poll() is None:
                stop(m)
        emulator.stop()
        for relay in relays:
            relay.close()
        for agent_end, meter_end in lines.values():
            agent_end.close()
            meter_end.close()

    acked = {(name, txn) for name in METERS for txn in lines_of(tmp_path / f"acked-{name}.txt")}
    rows = _rows(journal)
    journaled = {(source, txn) for source, txn, _, _, _ in rows}
    delivered = {a.payload["permitNo"] for a in emulator.accepted}
    lost = {(name, txn) for name, txn in acked if f"{STATION}-{name}-{txn}" not in delivered}
    assert len(acked) == count * len(METERS)
    assert len({txn for _, txn in acked}) == count, "the meters did not number alike"
    assert acked <= journaled, "an ACKed sale is missing from the journal"
    assert not lost, f"ACKed but never delivered: {sorted(lost)[:10]}"
    assert {state for _, _, state, _, _ in rows} == {"sent"}
    assert not emulator.refusals, "the controller refused a payload"
    assert len(emulator.accepted) == len(delivered)  # it never stored one sale twice
    assert not list(tmp_path.glob("journal.sqlite3.corrupt-*")), "a held lock taken for damage"
    unknown = sum(u for *_, u in rows)
    repeats = emulator.counts()["duplicate"]
    assert repeats <= unknown, "a duplicate where the outcome was known"
    assert all(seconds <= 5.0 for seconds in stops), f"slow stops: {stops}"
    assert status["sent"] == len(delivered) and status["pending"] == 0
    assert status["unknown_outcomes"] == unknown
    report(
        "chaos",
        seconds=SECONDS,
        meters=len(METERS),
        sales=count * len(METERS),
        acked=len(acked),
        delivered=len(delivered),
        lost=len(lost),
        kills=kills,
        locks_held=locks,
        sigterm_stops_s=[round(s, 2) for s in stops],
        faults=faults,
        corrupt_frames_naked=sum(
            int(dict(p.split("=") for p in out.split())["naked"]) for out, _ in outputs.values()
        ),
        duplicates_at_controller=repeats,
        unknown_outcomes=unknown,
    )


class _write_lock:
    """Another process's write transaction on the journal (a second connection stands in
    for the technician's shell: SQLite's locks are per connection, across processes too)."""

    def __init__(self, journal: Path) -> None:
        self.db = sqlite3.connect(journal, timeout=10, isolation_level=None)

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, *exc: object) -> None:
        self.db.execute("ROLLBACK")
        self.db.close()


def _sigterm(agent: subprocess.Popen[bytes]) -> float:
    """Stop the agent as systemd does; the seconds it took (it must exit 0)."""
    started = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    code = agent.wait(30)
    assert code == 0, f"SIGTERM while the journal was locked: exit {code}"
    return time.monotonic() - started


def _undelivered(journal: Path) -> int:
    db = sqlite3.connect(journal, timeout=10)
    try:
        return int(db.execute("SELECT count(*) FROM records WHERE state != 'sent'").fetchone()[0])
    finally:
        db.close()


def _rows(journal: Path) -> list[tuple[str, str, str, str, int]]:
    db = sqlite3.connect(journal, timeout=10)
    try:
        return db.execute(
            "SELECT source, txn, state, json_extract(payload, '$.permitNo'), unknown_outcomes "
            "FROM records"
        ).fetchall()
    finally:
        db.close()
