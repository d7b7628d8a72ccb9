"""Serial ports: ``paystation-agent ports``, and a port another reader holds (busy).

Real ptys stand for the meters' ports; a real second process holds one. The "no ports at
all" case runs the command in a mount namespace whose /dev is empty, a PC with no serial
port as pyserial sees it (needs root and util-linux's unshare).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.emulator import ControllerEmulator
from drivers.framing import ACK, StxEtxFramer
from tests.conftest import ROOT, agent_env, cli, eventually, write_config
from tests.test_serial import Pty, journal_rows, run_agent, sale, serial_driver, stop

FRAMER = StxEtxFramer()


@pytest.fixture
def port() -> Iterator[Pty]:
    """The meter's serial line: a real pty (see tests.test_serial.Pty)."""
    line = Pty()
    yield line
    line.close()


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _private_dev() -> bool:
    """Can this machine give a process a mount namespace with /dev of its own (root with
    CAP_SYS_ADMIN, util-linux's unshare)? Containers often cannot."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--mount", "sh", "-c", "mount -t tmpfs none /dev"]
    return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0


@pytest.mark.skipif(
    not _private_dev(),
    reason="an empty /dev needs a private mount namespace: root, CAP_SYS_ADMIN and unshare",
)
def test_ports_says_plainly_when_the_pc_has_none() -> None:
    command = f"mount -t tmpfs none /dev && exec {sys.executable} -m agent ports"
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", command],
        capture_output=True,
        text=True,
        env=agent_env(),
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "no serial ports found on this PC; a USB adapter shows as /dev/ttyUSB* or "
        "/dev/ttyACM* once plugged in (if it does not, see: dmesg | tail)\n"
    )
    assert result.stderr == ""


def test_ports_shows_a_configured_port_and_who_holds_it(tmp_path: Path, port: Pty) -> None:
    link = tmp_path / "ttyMETER"  # the configured name, like a udev symlink
    link.symlink_to(port.path)
    drivers = serial_driver(str(link)) + serial_driver("/dev/ttyUSB9").replace("meter-1", "meter-2")
    config = write_config(tmp_path, "http://127.0.0.1:9/push", drivers=drivers)
    holder = subprocess.Popen(  # a stray terminal program with the port open
        [sys.executable, "-c", f"import sys; f = open({port.path!r}, 'rb'); sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )
    try:
        eventually(lambda: _holds(holder.pid, port.path), what="the holder has the port open")
        result = cli("ports", "--config", str(config))
        names = ", ".join(f"{comm(pid)} (pid {pid})" for pid in sorted((os.getpid(), holder.pid)))
    finally:
        holder.communicate(timeout=10)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    at = lines.index(port.path)  # a pty has no USB description
    assert lines[at + 1 : at + 3] == [
        f"  driver       meter-1 (port = '{link}')",
        f"  open in      {names}",  # the test keeps its end of the pty open too
    ]
    assert lines[-1] == "/dev/ttyUSB9 (driver meter-2) is not here"


def _port_health(config: Path) -> dict[str, object] | None:
    """meter-1's health in ``status --json``, once the service has published a reason."""
    status = cli("status", "--json", "--config", str(config))
    health: dict[str, object] = json.loads(status.stdout)["drivers"].get("meter-1", {})
    return health if health.get("detail") else None


def _holds(pid: int, device: str) -> bool:
    try:
        return any(os.path.realpath(f) == device for f in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def test_a_second_agent_on_a_held_port_is_refused_and_says_who_holds_it(
    tmp_path: Path, emulator: ControllerEmulator, port: Pty
) -> None:
    """Two readers of one line each get some of the frames, and the sales land in two
    journals; the second agent must stay off the port, say why, and take over when the
    first one is gone."""
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    first_cfg = write_config(first_dir, emulator.url, drivers=serial_driver(port.path))
    second_cfg = write_config(second_dir, emulator.url, drivers=serial_driver(port.path))
    first_log, second_log = first_dir / "agent.log", second_dir / "agent.log"
    first = run_agent(first_cfg, first_log)
    second = None
    try:
        eventually(lambda: "open (9600 8N1" in first_log.read_text(), what="first agent open")
        second = run_agent(second_cfg, second_log)
        eventually(lambda: "busy" in second_log.read_text(), what="second agent refused")
        for n in range(5):
            port.write(FRAMER.encode(sale(f"B-{n}")))
            assert port.answer() == ACK
        detail = eventually(lambda: _port_health(second_cfg), what="busy in status")
        assert detail["connected"] is False
        assert detail["detail"].startswith(
            f"busy: {port.path} is locked by another reader (open in "
        )
        assert f"(pid {first.pid})" in detail["detail"]

        stop(first)  # the first agent is gone: the second one takes the line
        eventually(lambda: "is back after" in second_log.read_text(), what="second takes over")
        port.write(FRAMER.encode(sale("B-5")))
        assert port.answer() == ACK
    finally:
        stop(first)
        if second is not None:
            stop(second)
    warning = next(line for line in second_log.read_text().splitlines() if "busy" in line)
    assert warning.endswith("two readers would split the frames between them, retrying"), warning
    assert f"port {port.path} busy: {port.path} is locked by another reader (open in " in warning
    assert [txn for txn, _, _ in journal_rows(first_dir / "journal.sqlite3")] == [
        f"B-{n}" for n in range(5)
    ]
    assert [txn for txn, _, _ in journal_rows(second_dir / "journal.sqlite3")] == ["B-5"]


def test_ports_lists_the_ports_even_when_the_config_does_not_load(
    tmp_path: Path, port: Pty
) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/push", drivers=serial_driver(port.path))
    config.write_text(
        config.read_text().replace('timezone   = "America/Toronto"', 'timezone = "Mars"')
    )
    result = cli("ports", "--config", str(config))
    assert result.returncode == 0
    assert result.stderr == (
        f"paystation-agent: {config} does not load (1 problem(s), see: paystation-agent "
        "check-config); its drivers are not shown\n"
    )
    assert "driver" not in result.stdout
