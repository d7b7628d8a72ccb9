"""SIGHUP on a real agent process (issue 11, hazard 11): a changed ``[[drivers]]`` list is
applied (new drivers start, removed ones stop, unchanged ones run on untouched), and every
changed key that only a restart applies is named in the log, instead of a bare
"reloaded" that ignores it."""

from __future__ import annotations

import re
import signal
import sqlite3
from pathlib import Path

from agent.config import Config
from agent.emulator import ControllerEmulator
from agent.journal import Journal
from tests.conftest import (
    TOKEN,
    cli,
    eventually,
    simulated_driver,
    start_agent,
    stop_agent,
    write_config,
)
from tests.scenarios.conftest import submit_sale

RESTART = "restart the service to apply it (systemctl restart paystation-agent)"


def from_driver(emulator: ControllerEmulator, driver: str) -> int:
    prefix = f"PS-TEST-{driver}-"  # the default permit form names the driver
    return sum(a.payload["permitNo"].startswith(prefix) for a in emulator.accepted)


def journaled_from(journal: Path, driver: str) -> int:
    with sqlite3.connect(journal, timeout=10) as db:
        (count,) = db.execute("SELECT count(*) FROM records WHERE source = ?", (driver,)).fetchone()
    return int(count)


def test_sighup_applies_changed_drivers_and_names_the_keys_that_need_a_restart(
    tmp_path: Path,
) -> None:
    log = tmp_path / "agent.log"
    with ControllerEmulator(token=TOKEN) as first, ControllerEmulator(token=TOKEN) as second:
        config = write_config(tmp_path, first.url, drivers=simulated_driver(count=3, seed=1))
        original = config.read_text()
        agent = start_agent(config, log)
        try:
            assert first.wait_for(3, timeout=30), log.read_text()

            meter_2 = simulated_driver(count=0, rate=20, seed=2).replace("meter-1", "meter-2")
            changed = original.replace(first.url, second.url).replace(
                "timeout_s  = 5.0", "timeout_s  = 7.0"
            )
            config.write_text(changed + meter_2)
            agent.send_signal(signal.SIGHUP)
            eventually(lambda: from_driver(first, "meter-2") >= 5, timeout=30, what="meter-2 sells")

            config.write_text(changed)  # meter-2 removed again
            agent.send_signal(signal.SIGHUP)
            eventually(lambda: "driver meter-2 stopped" in log.read_text(), what="meter-2 stops")
            stopped_at = journaled_from(tmp_path / "journal.sqlite3", "meter-2")
            eventually(lambda: len(first.accepted) >= 3 + stopped_at, what="backlog sent")
            assert journaled_from(tmp_path / "journal.sqlite3", "meter-2") == stopped_at
        finally:
            assert stop_agent(agent) == 0
    text = log.read_text()
    assert f"controller.url changed; {RESTART}" in text
    assert f"controller.timeout_s changed; {RESTART}" in text
    assert "controller.token_file changed" not in text  # only keys that changed are named
    assert "driver meter-2 started" in text
    assert second.accepted == []  # the running sender keeps its URL until the restart
    assert from_driver(first, "meter-1") == 3  # unchanged: never restarted (it would sell again)


def test_a_reload_plan_applies_drivers_and_keeps_restart_only_keys_at_their_running_values(
    tmp_path: Path,
) -> None:
    from agent.config import load_config
    from agent.service.reload import plan_reload

    def config(url: str, drivers: str) -> Config:
        path = write_config(tmp_path, url, drivers=drivers)
        return load_config(path)

    one, two = "http://127.0.0.1:1/push", "http://127.0.0.1:2/push"
    meter = simulated_driver(count=3, seed=1)
    other = simulated_driver(count=3, seed=1).replace("meter-1", "meter-2")
    running = config(one, meter + other)

    same = plan_reload(running, config(one, meter + other))
    assert (same.needs_restart, same.stop, same.start) == ((), (), ())

    changed = plan_reload(running, config(two, meter.replace("seed = 1", "seed = 9")))
    assert changed.needs_restart == ("controller.url",)
    assert changed.config.controller.url == one  # runs on with the running URL
    assert changed.stop == ("meter-1", "meter-2")
    assert [d.name for d in changed.start] == ["meter-1"]
    assert changed.start[0].options.seed == 9  # type: ignore[attr-defined]


def test_a_changed_serial_driver_is_restarted_on_its_port_and_goes_on_acknowledging(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    from drivers.framing import ACK
    from tests.test_serial import FRAMER, Pty, receipts, sale, serial_driver

    line = Pty()
    log = tmp_path / "agent.log"
    config = write_config(tmp_path, emulator.url, drivers=serial_driver(line.path))
    agent = start_agent(config, log)
    try:
        eventually(lambda: "open (9600 8N1" in log.read_text(), what="port open")
        line.write(FRAMER.encode(sale("R-1")))
        assert line.answer() == ACK

        config.write_text(config.read_text().replace('port = "', 'reconnect_max_s = 5\nport = "'))
        agent.send_signal(signal.SIGHUP)
        eventually(lambda: "driver meter-1 restarted" in log.read_text(), what="restarted")
        eventually(lambda: log.read_text().count("open (9600 8N1") == 2, what="port reopened")
        line.write(FRAMER.encode(sale("R-2")))
        assert line.answer() == ACK
        assert emulator.wait_for(2, timeout=30), log.read_text()
    finally:
        assert stop_agent(agent) == 0
        line.close()
    assert sorted(receipts(emulator)) == ["R-1", "R-2"]


def test_a_sighup_while_another_process_holds_the_journal_does_not_stop_the_service(
    tmp_path: Path,
) -> None:
    """A technician maps a zone and reloads while their sqlite3 shell still holds the
    journal's lock past its busy timeout: the service goes on (it exited 1 before), says
    the held records wait, and releases them once the journal is free."""
    log = tmp_path / "agent.log"
    path = tmp_path / "journal.sqlite3"
    with ControllerEmulator(token=TOKEN) as emulator:
        config = write_config(tmp_path, emulator.url)
        with Journal(path) as journal:
            submit_sale(journal, "Z9-1", ZONE="9")  # zone 9 has no mapping: held
        agent = start_agent(config, log)
        try:
            eventually(lambda: "running:" in log.read_text(), what="the agent running")
            config.write_text(
                config.read_text().replace('"4" = "Lot 4"', '"4" = "Lot 4"\n"9" = "Lot 9"')
            )
            shell = sqlite3.connect(path, isolation_level=None)
            shell.execute("BEGIN IMMEDIATE")
            try:
                agent.send_signal(signal.SIGHUP)
                eventually(
                    lambda: "held record(s) are released once it is free" in log.read_text(),
                    timeout=30,
                    what="the reload saying the journal is locked",
                )
                assert agent.poll() is None, log.read_text()
            finally:
                shell.execute("ROLLBACK")
                shell.close()
            assert emulator.wait_for(1, timeout=30), log.read_text()
            assert emulator.accepted[0].payload["zone"] == "Lot 9"
        finally:
            assert stop_agent(agent) == 0


def test_a_reload_with_the_same_token_ends_an_auth_pause_and_tries_at_once(
    tmp_path: Path,
) -> None:
    """A 401 blip pauses sending for auth_retry_s (here a minute); a technician's reload is
    a "try now", even though the token did not change."""
    log = tmp_path / "agent.log"
    with ControllerEmulator(token=TOKEN) as emulator:
        emulator.set_fault("auth", count=1)
        config = write_config(
            tmp_path,
            emulator.url,
            drivers=simulated_driver(count=1),
            controller_extra="auth_retry_s = 60.0",
        )
        agent = start_agent(config, log)
        try:
            eventually(lambda: "forwarding paused" in log.read_text(), timeout=30, what="paused")
            status = eventually(
                lambda: (
                    (s := cli("status", "--config", str(config))) and "next try" in s.stdout and s
                ),
                what="the next try in status",
            )
            assert status.returncode == 4 and "PAUSED" in status.stdout
            assert re.search(r"next try in (\d+ s|1 min); or fix the token", status.stdout)
            assert "systemctl reload paystation-agent: it tries again at once" in status.stdout
            agent.send_signal(signal.SIGHUP)
            # well within the minute the pause would last
            assert emulator.wait_for(1, timeout=10), log.read_text()
        finally:
            assert stop_agent(agent) == 0
