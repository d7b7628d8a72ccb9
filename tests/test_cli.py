"""Scenario tests: the real CLI as a subprocess, a real journal file, the emulator on
loopback. What an installer and a technician see."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from agent.emulator import ControllerEmulator
from tests.conftest import (
    STATUS_CONTRACT_KEYS,
    TOKEN,
    agent_env,
    cli,
    eventually,
    simulated_driver,
    start_agent,
    stop_agent,
    write_config,
)


def journal_states(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    db = sqlite3.connect(path, timeout=10)
    try:
        return dict(db.execute("SELECT state, count(*) FROM records GROUP BY state").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()


def sent_permits(path: Path) -> set[str]:
    db = sqlite3.connect(path, timeout=10)
    try:
        rows = db.execute("SELECT payload FROM records WHERE state = 'sent'").fetchall()
    finally:
        db.close()
    return {json.loads(p)["permitNo"] for (p,) in rows}


def test_run_delivers_status_works_meanwhile_and_sigterm_is_clean(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    config = write_config(tmp_path, emulator.url, drivers=simulated_driver(count=30, rate=50))
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        assert emulator.wait_for(30, timeout=30), (tmp_path / "agent.log").read_text()
        status = cli("status", "--json", "--config", str(config))  # --config after the command
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        for key in STATUS_CONTRACT_KEYS:
            assert key in doc
        assert doc["sent"] == 30 and doc["pending"] == 0 and doc["running"] is True
        human = cli("--config", str(config), "status")  # --config before the command
        assert "30" in human.stdout and "running" in human.stdout
        started = time.monotonic()
        assert stop_agent(agent) == 0
        assert time.monotonic() - started < 5
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert json.loads(cli("status", "--json", "--config", str(config)).stdout)["running"] is False


def test_kill_9_mid_drain_loses_nothing(tmp_path: Path, emulator: ControllerEmulator) -> None:
    emulator.set_fault("slow", delay=0.05)
    config = write_config(tmp_path, emulator.url, drivers=simulated_driver(count=150, rate=500))
    journal = tmp_path / "journal.sqlite3"
    agent = start_agent(config, tmp_path / "agent.log")
    eventually(
        lambda: journal_states(journal).get("sent", 0) >= 10, timeout=30, what="drain started"
    )
    agent.kill()  # SIGKILL, mid-drain
    agent.wait()
    before = journal_states(journal)
    assert before.get("pending", 0) > 0, before

    emulator.clear_fault()
    # restart with no driver: only the journal's backlog is left to deliver
    config = write_config(tmp_path, emulator.url)
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        eventually(
            lambda: journal_states(journal).get("pending", 0) == 0, timeout=30, what="drained"
        )
    finally:
        assert stop_agent(agent) == 0
    after = journal_states(journal)
    assert sum(after.values()) == sum(before.values())  # nothing journaled disappeared
    assert after == {"sent": sum(before.values())}
    received = {a.payload["permitNo"] for a in emulator.accepted}
    assert sent_permits(journal) == received
    # a re-send is possible only for requests in flight at the kill, and it was counted
    duplicates = len(emulator.accepted) - len(received) + emulator.counts()["duplicate"]
    unknown = json.loads(cli("status", "--json", "--config", str(config)).stdout)[
        "unknown_outcomes"
    ]
    assert duplicates <= unknown


def test_invalid_and_unmapped_records_are_kept_not_sent(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    drivers = simulated_driver(count=40, rate=200, invalid_rate=0.25)
    config = write_config(tmp_path, emulator.url, drivers=drivers, zones='"1" = "Lot 1"')
    agent = start_agent(config, tmp_path / "agent.log")
    journal = tmp_path / "journal.sqlite3"
    try:
        eventually(
            lambda: (
                sum(journal_states(journal).values()) == 40
                and journal_states(journal).get("pending", 0) == 0
            ),
            what="all journaled",
        )
    finally:
        stop_agent(agent)
    states = journal_states(journal)
    assert states.get("rejected", 0) > 0 and states.get("held", 0) > 0
    assert states.get("sent", 0) == len(emulator.accepted)
    assert all(a.payload["zone"] == "Lot 1" for a in emulator.accepted)


def test_token_never_appears_in_logs_journal_or_status(tmp_path: Path) -> None:
    with ControllerEmulator(token="ANOTHER-TOKEN") as emulator:  # refuses ours: auth errors
        config = write_config(tmp_path, emulator.url, drivers=simulated_driver(count=5))
        log = tmp_path / "agent.log"
        agent = start_agent(config, log, env=agent_env())
        eventually(lambda: "paused" in log.read_text(), what="auth pause logged")
        emulator.set_fault("error200", error_code=9001)
        time.sleep(0.5)
        outputs = [
            cli(*cmd, "--config", str(config))
            for cmd in (["status"], ["status", "--json"], ["check-config"])
        ]
        stop_agent(agent)
    status = json.loads(outputs[1].stdout)
    assert status["paused"] and status["sent"] == 0 and status["dead"] == 0
    texts = [log.read_text()] + [o.stdout + o.stderr for o in outputs]
    for text in texts:
        assert TOKEN not in text
    for path in tmp_path.glob("journal.sqlite3*"):
        assert TOKEN.encode() not in path.read_bytes()


def test_check_config_names_every_bad_key_and_exits_78(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "http://controller.example.com/push",
        drivers="""
[[drivers]]
kind = "simulated"
rate = "fast"
""",
    )
    text = config.read_text().replace('timezone   = "America/Toronto"', 'timezone = "Mars/Olympus"')
    config.write_text(text + "\n[extra]\n")
    result = cli("check-config", "--config", str(config))
    assert result.returncode == 78
    assert "agent.timezone" in result.stderr
    assert "controller.url" in result.stderr
    assert 'drivers[0].rate: expected a number, got "fast"' in result.stderr
    assert "extra: unknown key" in result.stderr


def test_run_with_a_bad_config_exits_78_before_doing_anything(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[agent]\nstation_id = 'x'\n")
    result = cli("run", "--config", str(config))
    assert result.returncode == 78
    assert "controller" in result.stderr and "agent.timezone" in result.stderr
    assert not (tmp_path / "journal.sqlite3").exists()


def test_check_config_prints_the_resolved_config_without_the_token(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, "https://controller.operationscommander.io/api/OC-TOMA/v1/permits/push"
    )
    result = cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert 'station_id = "PS-TEST"' in result.stdout and '"4" = "Lot 4"' in result.stdout
    assert TOKEN not in result.stdout


def test_a_second_run_on_the_same_journal_is_refused(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    config = write_config(tmp_path, emulator.url)
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        eventually(lambda: "running" in (tmp_path / "agent.log").read_text(), what="started")
        second = cli("run", "--config", str(config))
        assert second.returncode == 1 and "another paystation-agent run" in second.stderr
    finally:
        stop_agent(agent)


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]])
def test_python_dash_m_agent_has_help(argv: list[str]) -> None:
    result = cli(*argv)
    assert result.returncode == 0 and "paystation-agent" in result.stdout


def test_sighup_releases_held_records_once_their_zone_is_mapped(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    config = write_config(tmp_path, emulator.url, drivers=simulated_driver(count=20), zones="")
    journal = tmp_path / "journal.sqlite3"
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        eventually(lambda: journal_states(journal).get("held", 0) == 20, what="all held")
        assert emulator.accepted == []
        text = config.read_text().replace(
            "[zones.map]",
            '[zones.map]\n"1" = "Lot 1"\n"2" = "Lot 2"\n"3" = "Lot 3"\n"4" = "Lot 4 - North"',
        )
        config.write_text(text)
        agent.send_signal(signal.SIGHUP)
        assert emulator.wait_for(20, timeout=20), (tmp_path / "agent.log").read_text()
    finally:
        assert stop_agent(agent) == 0
    assert journal_states(journal) == {"sent": 20}
    assert {a.payload["zone"] for a in emulator.accepted} <= {
        "Lot 1",
        "Lot 2",
        "Lot 3",
        "Lot 4 - North",
    }


def test_a_burst_of_sighups_then_sigterm_stops_cleanly_with_every_sale_kept(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    # A reload script run in a loop, or a technician's repeated `systemctl reload`: a
    # signal landing while the main loop held an Event's lock used to hang the agent for good.
    config = write_config(tmp_path, emulator.url, drivers=simulated_driver(count=20, rate=50))
    log = tmp_path / "agent.log"
    agent = start_agent(config, log)
    try:
        eventually(lambda: "running" in log.read_text(), what="started")
        for _ in range(300):
            agent.send_signal(signal.SIGHUP)
            time.sleep(0.0005)
        assert emulator.wait_for(20, timeout=30), log.read_text()
    finally:
        code = stop_agent(agent)
    text = log.read_text()
    assert code == 0, text[-2000:]
    assert "reloaded" in text and text.rstrip().endswith("stopped"), text[-2000:]
    assert journal_states(tmp_path / "journal.sqlite3") == {"sent": 20}


def test_sd_notify_ready_status_and_stopping(tmp_path: Path, emulator: ControllerEmulator) -> None:
    import socket

    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(15)
    try:
        config = write_config(tmp_path, emulator.url)
        env = agent_env(NOTIFY_SOCKET=address, WATCHDOG_USEC="1000000")
        agent = start_agent(config, tmp_path / "agent.log", env=env)
        messages: list[str] = []
        try:
            while not any("WATCHDOG=1" in m for m in messages):
                messages.append(sock.recv(4096).decode())
            assert "READY=1" in messages[0] and "STATUS=" in messages[0]
            agent.send_signal(signal.SIGTERM)
            while not any("STOPPING=1" in m for m in messages):
                messages.append(sock.recv(4096).decode())
        finally:
            assert stop_agent(agent) == 0
    finally:
        sock.close()


def test_demo_runs_end_to_end_and_reconciles() -> None:
    result = cli("demo", "--seconds", "6", "--rate", "5", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing lost" in result.stdout
    assert "LOST" in result.stdout and "DOWN" in result.stdout


def test_emulator_command_serves_with_a_fault_and_stops_on_sigterm() -> None:
    import subprocess
    import sys

    import httpx

    from tests.conftest import ROOT

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "emulator",
            "--port",
            "0",
            "--token",
            "VENDOR-1",
            "--fault",
            "throttle:1",
            "--dedupe",
            "permit",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=agent_env(),
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/permits/push")
        body = {
            "apiToken": "VENDOR-1",
            "LicencePlate": "PL8RDR",
            "permitNo": "1",
            "startTime": "2018-07-02T09:00:00",
            "endTime": "2018-07-02T09:30:00",
        }
        with httpx.Client() as client:
            throttled = client.post(url, json=body)
            assert throttled.status_code == 429 and throttled.headers["Retry-After"]
            accepted = client.post(url, json=body)
            assert accepted.status_code == 200 and accepted.json()["status"] == "success"
            same_number = client.post(url, json={**body, "LicencePlate": "OTHER1"})
            assert same_number.json()["ErrorCode"] == 9022  # --dedupe permit
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_rejected_records_older_than_the_retention_are_pruned_like_sent_ones(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    """Garbage that reached the journal as rejected must not stay forever: `run` prunes
    rejected records received more than retention_days ago, as it prunes delivered ones.
    Recent rejected records, and every undelivered or refused one, stay."""
    from agent.intake import Intake
    from agent.journal import Attempt, Journal, State
    from drivers.base import HardwareRecord
    from drivers.records import parse_kv
    from tests.test_serial import rules, sale

    config = write_config(tmp_path, emulator.url)  # retention_days: the default, 30
    path = tmp_path / "journal.sqlite3"
    long_ago = time.time() - 40 * 86400

    def submit(journal: Journal, txn: str, **fields: str) -> None:
        raw = sale(txn, **fields)
        Intake(journal, "PS-TEST", rules()).submit(HardwareRecord(raw, parse_kv(raw), "meter-1"))

    with Journal(path, clock=lambda: long_ago) as journal:
        submit(journal, "OLD-REJECTED-1", PLATE="")
        submit(journal, "OLD-REJECTED-2", AMT="1.234")
        submit(journal, "OLD-DEAD")
        submit(journal, "OLD-PENDING")
        dead = journal.claim(1)[0]
        journal.record_attempt(dead.id, Attempt("rejected", State.DEAD, 400, "HTTP 400", ""))
    with Journal(path) as journal:
        submit(journal, "NEW-REJECTED", PLATE="")
    log = tmp_path / "agent.log"
    agent = start_agent(config, log)
    try:
        eventually(lambda: len(emulator.accepted) == 1, what="the old pending sale delivered")
        eventually(lambda: "station PS-TEST running" in log.read_text(), what="the start done")
    finally:
        assert stop_agent(agent) == 0
    db = sqlite3.connect(path)
    try:
        left = dict(db.execute("SELECT txn, state FROM records"))
    finally:
        db.close()
    assert left == {"OLD-DEAD": "dead", "OLD-PENDING": "sent", "NEW-REJECTED": "rejected"}
    assert "pruned 2 rejected record(s) received more than 30 days ago" in log.read_text()
