"""The service under systemd's eyes: sd_notify, the watchdog, journald logging, metrics,
and the token kept out of every log line and stored answer."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.emulator import ControllerEmulator
from tests.conftest import (
    TOKEN,
    agent_env,
    cli,
    eventually,
    simulated_driver,
    start_agent,
    stop_agent,
    write_config,
)
from tests.test_cli import journal_states
from tests.test_recovery import lock_held


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def drain(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    """Every datagram received in the next ``seconds``, with its arrival time."""
    messages = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with contextlib.suppress(TimeoutError):
            messages.append((time.monotonic(), sock.recv(4096).decode()))
    return messages


def test_watchdog_is_fed_only_while_the_journal_can_be_written(
    tmp_path: Path, emulator: ControllerEmulator, notify_socket: socket.socket
) -> None:
    config = write_config(tmp_path, emulator.url)
    env = agent_env(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="1000000")
    agent = start_agent(config, tmp_path / "agent.log", env=env)
    try:
        healthy = drain(notify_socket, 3.0)
        pings = [m for _, m in healthy if "WATCHDOG=1" in m]
        assert any("READY=1" in m for _, m in healthy)
        assert 3 <= len(pings) <= 12, healthy  # every half of WATCHDOG_USEC, roughly

        # Another process holds the journal's write lock: the pipeline cannot store sales.
        blocker = sqlite3.connect(tmp_path / "journal.sqlite3", timeout=10)
        blocker.execute("BEGIN EXCLUSIVE")
        drain(notify_socket, 1.0)  # a ping already on its way may still arrive
        wedged = drain(notify_socket, 3.0)
        blocker.rollback()
        blocker.close()
        assert not [m for _, m in wedged if "WATCHDOG=1" in m], wedged

        recovered = drain(notify_socket, 12.0)
        assert any("WATCHDOG=1" in m for _, m in recovered)
    finally:
        assert stop_agent(agent) == 0


def test_journald_priority_prefixes_when_stderr_is_the_journal(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    log = tmp_path / "agent.log"
    log.touch()
    st = log.stat()
    env = agent_env(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    emulator.go_down()
    config = write_config(tmp_path, emulator.url, drivers=simulated_driver(count=3))
    agent = start_agent(config, log, env=env)
    try:
        eventually(lambda: "unreachable" in log.read_text(), what="a warning")
    finally:
        stop_agent(agent)
    lines = [line for line in log.read_text().splitlines() if line]
    assert lines and all(line[0] == "<" and line[2] == ">" for line in lines), lines
    assert any(line.startswith("<4>") and "unreachable" in line for line in lines)
    assert sum("unreachable" in line for line in lines) == 1  # once per outage, not per retry


def test_plain_log_lines_on_a_terminal_or_file(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    config = write_config(tmp_path, emulator.url)
    agent = start_agent(config, tmp_path / "agent.log")
    eventually(lambda: "running" in (tmp_path / "agent.log").read_text(), what="started")
    stop_agent(agent)
    first = (tmp_path / "agent.log").read_text().splitlines()[0]
    assert first[:4].isdigit() and "INFO" in first


def test_metrics_on_loopback_parse_and_match_the_journal(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    textfile = tmp_path / "paystation_agent.prom"
    config = write_config(
        tmp_path, emulator.url, drivers=simulated_driver(count=20, zones=("1", "9"))
    )
    config.write_text(
        config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\ntextfile = "{textfile}"\n'
    )
    agent = start_agent(config, tmp_path / "agent.log")
    journal = tmp_path / "journal.sqlite3"
    try:
        eventually(
            lambda: (
                sum(journal_states(journal).values()) == 20
                and journal_states(journal).get("pending", 0) == 0
            ),
            what="journaled",
        )
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        eventually(textfile.exists, what="textfile")
        assert textfile.stat().st_mode & 0o777 == 0o644
    finally:
        assert stop_agent(agent) == 0
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    states = journal_states(journal)
    by_state = {s.labels["state"]: s.value for s in families["paystation_records"].samples}
    assert by_state["sent"] == states["sent"] and by_state["held"] == states["held"]
    assert families["paystation_backlog_records"].samples[0].value == 0
    requests = {
        s.labels["outcome"]: s.value
        for s in families["paystation_requests"].samples
        if s.name == "paystation_requests_total"
    }
    assert requests["delivered"] == states["sent"]
    frames = {
        s.labels["result"]: s.value
        for s in families["paystation_frames"].samples
        if s.name == "paystation_frames_total"
    }
    assert frames["ok"] == 20
    assert "paystation_request_duration_seconds" in families
    connected = families["paystation_port_connected"].samples[0]
    assert connected.labels["driver"] == "meter-1"


def test_metrics_refuse_a_non_loopback_address(tmp_path: Path) -> None:
    config = write_config(tmp_path, "https://controller.example.com/push")
    config.write_text(config.read_text() + '\n[metrics]\nlisten = "0.0.0.0:9464"\n')
    result = cli("check-config", "--config", str(config))
    assert result.returncode == 78 and "metrics.listen" in result.stderr


class _EchoingController(http.server.BaseHTTPRequestHandler):
    """A controller that echoes the request (token included) in its error body."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        reply = json.dumps({"ErrorCode": 9030, "ErrorMessage": f"bad request {body.decode()}"})
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_controller_echoing_the_token_does_not_put_it_in_the_journal_or_logs(
    tmp_path: Path,
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoingController)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/api/OC-TOMA/v1/permits/push"
        config = write_config(tmp_path, url, drivers=simulated_driver(count=3))
        agent = start_agent(config, tmp_path / "agent.log", env=agent_env())
        journal = tmp_path / "journal.sqlite3"
        eventually(lambda: journal_states(journal).get("dead", 0) == 3, what="dead")
        shown = cli("dead", "show", "1", "--config", str(config))
        stop_agent(agent)
    finally:
        server.shutdown()
        server.server_close()
    assert "bad request" in shown.stdout and "********" in shown.stdout
    assert TOKEN not in shown.stdout
    assert TOKEN not in (tmp_path / "agent.log").read_text()
    for path in tmp_path.glob("journal.sqlite3*"):
        assert TOKEN.encode() not in path.read_bytes()


def test_watchdog_abort_leaves_every_threads_stack_in_the_log(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    # systemd sends SIGABRT when the watchdog starves or a stop overruns: the technician
    # reading the journal afterwards must see where the agent was stuck.
    log = tmp_path / "agent.log"
    agent = start_agent(write_config(tmp_path, emulator.url), log)
    try:
        eventually(lambda: "running" in log.read_text(), what="started")
        agent.send_signal(signal.SIGABRT)
        assert agent.wait(15) == -signal.SIGABRT
    finally:
        stop_agent(agent)
    text = log.read_text()
    assert "Fatal Python error: Aborted" in text, text
    assert "(most recent call first)" in text and "in serve" in text, text
    assert "in _next_claim" in text, text  # the forwarder's threads too, not only the main one
    assert TOKEN not in text


def test_stop_is_clean_within_5_s_while_another_process_holds_the_journal(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    """A technician's sqlite3 shell holds the write lock while sales arrive and the forwarder
    has work: the driver, the workers and the main loop all wait for the journal. SIGTERM
    still stops the agent within 5 s, with exit 0."""
    config = write_config(tmp_path, emulator.url, drivers=simulated_driver(count=0, rate=20))
    log = tmp_path / "agent.log"
    agent = start_agent(config, log)
    journal = tmp_path / "journal.sqlite3"
    try:
        assert emulator.wait_for(10, timeout=30), "the agent did not deliver"
        with lock_held(journal):
            time.sleep(1.5)  # every thread is now waiting for the lock
            started = time.monotonic()
            code = stop_agent(agent, timeout=120)
            elapsed = time.monotonic() - started
    finally:
        stop_agent(agent)
    print(f"stop with the journal locked by another process: {elapsed:.2f} s")
    assert code == 0 and elapsed <= 5.0, f"exit {code} after {elapsed:.1f} s"
    assert "stopped" in log.read_text()


@pytest.mark.parametrize("loaded", [False, True], ids=["quiet", "every-core-busy"])
def test_stop_is_clean_within_5_s_mid_request(
    tmp_path: Path, emulator: ControllerEmulator, loaded: bool
) -> None:
    """A controller that never answers in time; on a quiet machine, and with every core
    busy with other work. The requests in flight are given up, their records kept."""
    emulator.set_fault("slow", delay=30)
    config = write_config(tmp_path, emulator.url, drivers=simulated_driver(count=5))
    agent = start_agent(config, tmp_path / "agent.log")
    journal = tmp_path / "journal.sqlite3"
    burners: list[subprocess.Popen[bytes]] = []
    try:
        eventually(lambda: sum(journal_states(journal).values()) == 5, what="journaled")
        if loaded:
            burners = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(2 * (os.cpu_count() or 1))
            ]
        time.sleep(1.0)  # the requests wait on the slow controller (the cores are busy)
        started = time.monotonic()
        code = stop_agent(agent)
        elapsed = time.monotonic() - started
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        stop_agent(agent)
    print(f"stop mid-request ({'loaded' if loaded else 'quiet'}): {elapsed:.2f} s")
    assert code == 0 and elapsed <= 5.0, f"exit {code} after {elapsed:.1f} s"
    assert journal_states(journal) == {"pending": 5}  # nothing lost, nothing marked sent
