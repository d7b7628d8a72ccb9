"""Fixtures that build real things: a running controller emulator on a free loopback port,
a SQLite journal in a temp dir, config files and token files on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.emulator import ControllerEmulator
from agent.journal import Journal

# Distinctive, so a leak anywhere (logs, journal bytes, status) is easy to find.
TOKEN = "SECRET-TOKEN-7f3a9c1e"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def emulator() -> Iterator[ControllerEmulator]:
    with ControllerEmulator(token=TOKEN) as emu:
        yield emu


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.sqlite3") as j:
        yield j


# the keys contract.md promises in `status --json`
STATUS_CONTRACT_KEYS = (
    "pending",
    "held",
    "sent",
    "rejected",
    "dead",
    "active_pending",
    "oldest_pending_s",
    "last_success",
    "last_error",
    "paused",
)


def write_config(
    directory: Path,
    url: str,
    *,
    drivers: str = "",
    zones: str = '"1" = "Lot 1"\n"2" = "Lot 2"\n"3" = "Lot 3"\n"4" = "Lot 4"',
    unmapped: str = "hold",
    controller_extra: str = "",
    known: str = "",
) -> Path:
    """A real config file and a 0600 token file, as an installer would write them."""
    token_file = directory / "api-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config = directory / "config.toml"
    config.write_text(
        f"""# test station
[agent]
station_id = "PS-TEST"
timezone   = "America/Toronto"
journal    = "{directory / "journal.sqlite3"}"

[controller]
url        = "{url}"
token_file = "{token_file}"
currency   = "CAD"
backoff_max_s = 1.0
timeout_s  = 5.0
{controller_extra}

[zones]
unmapped = "{unmapped}"   # hold | send | reject
{known}
[zones.map]
{zones}
{drivers}
"""
    )
    return config


def simulated_driver(
    count: int,
    rate: float = 200.0,
    invalid_rate: float = 0.0,
    seed: int = 7,
    zones: tuple[str, ...] = ("1", "2", "3", "4"),
) -> str:
    zone_list = ", ".join(f'"{z}"' for z in zones)
    return f"""
[[drivers]]
kind = "simulated"
name = "meter-1"
rate = {rate}
count = {count}
seed = {seed}
invalid_rate = {invalid_rate}
zones = [{zone_list}]
"""


def agent_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PAYSTATION_", "NOTIFY_", "JOURNAL_"))
    }
    env.pop("CREDENTIALS_DIRECTORY", None)
    env.pop("STATE_DIRECTORY", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        env=env or agent_env(),
        timeout=timeout,
        cwd=ROOT,
    )


def start_agent(
    config: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env or agent_env(),
            cwd=ROOT,
        )


def stop_agent(agent: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM, as systemd stops the service; its exit code. An agent that does not stop is
    killed, so the failure stays with the test that found it."""
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
    try:
        return agent.wait(timeout)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()
        pytest.fail(f"the agent did not stop within {timeout:g} s of SIGTERM")


def eventually(
    check: Callable[[], Any],
    timeout: float = 15.0,
    what: str = "condition",
    *,
    interval: float = 0.02,
) -> Any:
    """Wait for a condition the system reaches by itself (never asserts on elapsed time),
    looking every ``interval`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
