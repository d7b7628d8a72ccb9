"""What every benchmark needs: real processes (the agent, the emulator), a pseudo-terminal
meter, and readings from /proc (CPU seconds, bytes written, peak RSS)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import tty
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "BENCH-TOKEN-1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Row:
    bench: str
    figure: str
    value: float
    unit: str
    anchor: str = ""
    anchor_value: float | None = None
    goal: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.anchor_value:
            return self.value / self.anchor_value
        return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PAYSTATION_", "NOTIFY_"))}
    clean.pop("CREDENTIALS_DIRECTORY", None)
    clean.pop("STATE_DIRECTORY", None)
    return clean


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every)


class Emulator:
    """The controller emulator in its own process, as the agent meets a real controller."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/api/OC-TOMA/v1/permits/push"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent", "emulator", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env(),
            cwd=ROOT,
        )
        wait_for(self._listening, 10, "the emulator")

    def delay_answers(self, seconds: float) -> None:
        """Every answer from now on comes ``seconds`` late (a WAN or cellular round trip)."""
        body = json.dumps({"kind": "slow", "delay": seconds}).encode()
        url = f"http://127.0.0.1:{self.port}/_emulator/fault"
        urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=5)

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def write_config(
    directory: Path, url: str, *, drivers: str = "", controller: str = "", agent: str = ""
) -> Path:
    token = directory / "api-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    config = directory / "config.toml"
    config.write_text(
        f"""[agent]
station_id = "PS-BENCH"
timezone   = "America/Toronto"
journal    = "{directory / "journal.sqlite3"}"
{agent}
[controller]
url        = "{url}"
token_file = "{token}"
backoff_max_s = 2.0
{controller}
[zones.map]
"1" = "Lot 1"
"2" = "Lot 2"
"3" = "Lot 3"
"4" = "Lot 4"
{drivers}
"""
    )
    return config


def serial_driver(port: str) -> str:
    return f'\n[[drivers]]\nkind = "serial"\nname = "meter-1"\nport = "{port}"\n'


class Agent:
    """``paystation-agent run`` as a subprocess."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env(),
                cwd=ROOT,
            )
        self.pid = self.process.pid

    def wait_log(self, text: str, timeout: float = 30) -> None:
        wait_for(lambda: text in self.log.read_text(), timeout, f"{text!r} in the agent's log")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass(frozen=True)
class Usage:
    """One reading of a process's counters."""

    cpu_s: float
    write_bytes: int
    peak_rss_mb: float

    @classmethod
    def of(cls, pid: int) -> Usage:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        peak = 0.0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
        return cls(cpu, int(io["write_bytes"]), peak)


def count_sent(journal: Path) -> int:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute("SELECT count(*) FROM records WHERE state = 'sent'").fetchone()[0])
    finally:
        db.close()


class Pty:
    """A meter on a pseudo-terminal: the agent opens ``path``; the bench writes frames to
    the master side and reads the answers."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def read_answers(self, count: int, timeout: float = 10) -> bytes:
        import select

        got = b""
        while len(got) < count:
            ready, _, _ = select.select([self.master], [], [], timeout)
            if not ready:
                raise RuntimeError(f"no answer after {len(got)} of {count}")
            got += os.read(self.master, count - len(got))
        return got

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import tempfile

    disk = subprocess.run(
        ["df", "--output=fstype,source", tempfile.gettempdir()], capture_output=True, text=True
    ).stdout.split("\n")[1:2]
    where = " on ".join(disk[0].split()) if disk else "unknown"
    return f"{os.cpu_count()} cores ({cpu}); journals on {where} ({tempfile.gettempdir()})"
