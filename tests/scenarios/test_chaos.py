"""The promises under a seeded storm: a meter on a serial line with noise and corrupt
frames, a controller that goes down, answers 5xx, 429, slowly, with resets, auth errors
and errors under HTTP 200, and an agent killed with SIGKILL at random moments (while
ACKing, while committing, mid-request, mid-drain) and restarted. At the end everything
is reconciled: every ACKed sale delivered, no payload refused, duplicates only where an
outcome was unknowable (and counted), status agreeing with the controller.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path

from agent.emulator import ControllerEmulator
from tests.conftest import cli, eventually, write_config
from tests.scenarios.conftest import SEED, SOAK, report
from tests.test_serial import Pty, Relay, lines_of, run_agent, serial_driver, simulate, stop

SECONDS = 180.0 if SOAK else 20.0
RATE = 15.0
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
]


def test_nothing_acked_is_lost_under_faults_and_kills(tmp_path: Path) -> None:
    rnd = random.Random(SEED)
    agent_pty, meter_pty = Pty(), Pty()
    relay = Relay(agent_pty, meter_pty)
    emulator = ControllerEmulator(token="SECRET-TOKEN-7f3a9c1e").start()
    config = write_config(
        tmp_path,
        emulator.url,
        drivers=serial_driver(agent_pty.path),
        controller_extra="auth_retry_s = 1.0\nconcurrency = 3",
    )
    config.write_text(config.read_text().replace("timeout_s  = 5.0", "timeout_s  = 1.0"))
    log, acked = tmp_path / "agent.log", tmp_path / "acked.txt"
    count = int(SECONDS * RATE)
    agent = run_agent(config, log)
    meter = simulate(
        meter_pty.path, acked, "--count", str(count), "--rate", str(RATE), "--seed", str(SEED),
        "--noise", "0.1", "--corrupt", "0.05", "--answer-timeout", "0.5",
    )  # fmt: skip
    faults: dict[str, int] = {}
    kills = 0
    try:
        deadline = time.monotonic() + SECONDS * 4 + 60
        while meter.poll() is None and time.monotonic() < deadline:
            time.sleep(rnd.uniform(0.2, 1.2))
            roll = rnd.random()
            if roll < 0.15:
                agent.kill()  # SIGKILL, wherever it is
                agent.wait()
                kills += 1
                agent = run_agent(config, log)
            elif roll < 0.35:
                emulator.clear_fault()
                emulator.come_up()
            else:
                kind, options = rnd.choice(FAULTS)
                emulator.come_up()
                if kind == "down":
                    emulator.go_down()
                else:
                    emulator.set_fault(kind, count=rnd.randint(1, 6), **options)  # type: ignore[arg-type]
                faults[kind] = faults.get(kind, 0) + 1
        out, err = meter.communicate(timeout=30)
        assert meter.returncode == 0, err
        emulator.clear_fault()
        emulator.come_up()
        journal = tmp_path / "journal.sqlite3"
        eventually(lambda: _pending(journal) == 0, timeout=60, what="backlog drained")
        status = json.loads(cli("status", "--json", "--config", str(config)).stdout)
    finally:
        stop(agent)
        if meter.poll() is None:
            stop(meter)
        emulator.stop()
        relay.close()
        agent_pty.close()
        meter_pty.close()

    acked_txns = set(lines_of(acked))
    rows = _rows(tmp_path / "journal.sqlite3")
    journaled = {txn for txn, _, _ in rows}
    delivered = {a.payload["permitNo"] for a in emulator.accepted}
    lost = acked_txns - delivered
    assert len(acked_txns) == count
    assert acked_txns <= journaled, "an ACKed sale is missing from the journal"
    assert not lost, f"ACKed but never delivered: {sorted(lost)[:10]}"
    assert {state for _, state, _ in rows} == {"sent"}
    assert emulator.counts()["invalid"] == 0, "the controller refused a payload"
    assert len(emulator.accepted) == len(delivered)  # it never stored one sale twice
    unknown = sum(u for _, _, u in rows)
    repeats = emulator.counts()["duplicate"]
    assert repeats <= unknown, "a duplicate where the outcome was known"
    assert status["sent"] == len(delivered) and status["pending"] == 0
    assert status["unknown_outcomes"] == unknown
    report(
        "chaos",
        seconds=SECONDS,
        sales=count,
        acked=len(acked_txns),
        delivered=len(delivered),
        lost=len(lost),
        kills=kills,
        faults=faults,
        corrupt_frames_naked=int(dict(p.split("=") for p in out.split())["naked"]),
        duplicates_at_controller=repeats,
        unknown_outcomes=unknown,
    )


def _pending(journal: Path) -> int:
    db = sqlite3.connect(journal, timeout=10)
    try:
        return int(db.execute("SELECT count(*) FROM records WHERE state != 'sent'").fetchone()[0])
    finally:
        db.close()


def _rows(journal: Path) -> list[tuple[str, str, int]]:
    db = sqlite3.connect(journal, timeout=10)
    try:
        return db.execute("SELECT txn, state, unknown_outcomes FROM records").fetchall()
    finally:
        db.close()
