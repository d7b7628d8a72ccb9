"""``tap`` on real ptys: the technician's view of a new meter's wire, line by line.

The test is the meter on a pty's master; ``paystation-agent tap`` runs as a subprocess on
the slave, as it would on /dev/ttyUSB0. Nothing may be answered or stored.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.emulator import ControllerEmulator
from drivers.framing import STX, StxEtxFramer
from tests.conftest import ROOT, agent_env, eventually, write_config
from tests.test_serial import Pty, run_agent, serial_driver, stop

FRAMER = StxEtxFramer()


@pytest.fixture
def port() -> Iterator[Pty]:
    """The meter's serial line: a real pty (see tests.test_serial.Pty)."""
    line = Pty()
    yield line
    line.close()


GOOD = b"TXN=T-1|PLATENO=PL8RDR|ZONE=4|AMT=2.50|START=2030-07-02T05:00:00|END=2030-07-02T06:00:00"
HELD = b"TXN=T-2|PLATE=AB1|ZONE=7|START=2030-07-02T05:00:00|MIN=30"


def tap(config: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "tap", "--config", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=agent_env(),
        cwd=ROOT,
    )


def started(process: subprocess.Popen[str]) -> str:
    """The header, once tap has the port open (so bytes written next are read)."""
    assert process.stdout is not None
    return process.stdout.readline() + process.stdout.readline()


def sum_checksum(payload: bytes) -> bytes:
    """A frame as a meter set to SUM checksums sends it."""
    body = bytes([STX]) + payload + b"\x03"
    return body + bytes([sum(body[1:]) % 256])


def test_tap_shows_good_bad_checksum_and_broken_frames(tmp_path: Path, port: Pty) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/push", drivers=serial_driver(port.path))
    process = tap(config, "--count", "4", "--rename", "PLATENO=PLATE")
    header = started(process)
    port.write(FRAMER.encode(GOOD) + sum_checksum(HELD) + b"\x02TXN=T-3|PL")
    port.write(FRAMER.encode(HELD.replace(b"PLATE=AB1|", b"")))
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert header.splitlines() == [
        f"tap on {port.path}: 9600 8N1, stx-etx/kv, checksum xor over the payload and ETX, "
        "renames PLATENO → PLATE",
        "nothing is stored or answered: the meter keeps each sale and resends it (the same "
        "frame may show again). ^C ends",
    ]
    frames = out.strip("\n").split("\n\n")
    assert frames[0].splitlines() == [
        "frame 1 at byte 0, 91 bytes",
        "  00000000  02 54 58 4e 3d 54 2d 31  7c 50 4c 41 54 45 4e 4f  |.TXN=T-1|PLATENO|",
        "  00000010  3d 50 4c 38 52 44 52 7c  5a 4f 4e 45 3d 34 7c 41  |=PL8RDR|ZONE=4|A|",
        "  00000020  4d 54 3d 32 2e 35 30 7c  53 54 41 52 54 3d 32 30  |MT=2.50|START=20|",
        "  00000030  33 30 2d 30 37 2d 30 32  54 30 35 3a 30 30 3a 30  |30-07-02T05:00:0|",
        "  00000040  30 7c 45 4e 44 3d 32 30  33 30 2d 30 37 2d 30 32  |0|END=2030-07-02|",
        "  00000050  54 30 36 3a 30 30 3a 30  30 03 3f                 |T06:00:00.?|",
        "  framing  ok, checksum 3f",
        '  fields   {"TXN": "T-1", "PLATE": "PL8RDR", "ZONE": "4", "AMT": "2.50", '
        '"START": "2030-07-02T05:00:00", "END": "2030-07-02T06:00:00"}',
        "  renamed  PLATENO → PLATE",
        '  payload  {"Amount": "2.50", "CurrencyID": "CAD", "LicencePlate": "PL8RDR", '
        '"zone": "Lot 4", "permitNo": "PS-TEST-meter-1-T-1", '
        '"startTime": "2030-07-02T09:00:00", "endTime": "2030-07-02T10:00:00"}',
    ]
    assert frames[1].splitlines()[0] == "frame 2 at byte 91, 60 bytes"
    assert frames[1].splitlines()[-1] == (
        "  framing  bad checksum: received 18, computed 3c; a meter sending SUM checksums "
        'would match checksum = "sum"; the service answers NAK'
    )
    assert frames[2].splitlines() == [
        "frame 3 at byte 151, 11 bytes",
        "  00000097  02 54 58 4e 3d 54 2d 33  7c 50 4c                 |.TXN=T-3|PL|",
        "  framing  broken: new STX at +11, no ETX; the service answers NAK",
    ]
    assert frames[3].splitlines()[-2:] == [
        '  fields   {"TXN": "T-2", "ZONE": "7", "START": "2030-07-02T05:00:00", "MIN": "30"}',
        "  rejected PLATE: missing (the service keeps it as rejected, with its raw bytes)",
    ]
    assert port.nothing_written(0.3)  # no ACK, no NAK: the meter keeps every sale
    assert not (tmp_path / "journal.sqlite3").exists()  # and nothing was stored


def test_tap_names_unused_fields_and_an_unmapped_zone(tmp_path: Path, port: Pty) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/push")
    process = tap(config, "--port", port.path, "--count", "2")
    started(process)
    port.write(FRAMER.encode(GOOD) + FRAMER.encode(HELD))
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    first, second = out.strip("\n").split("\n\n")
    assert first.splitlines()[-2:] == [
        "  unused   PLATENO (the agent reads TXN, PERMIT, PLATE, ZONE, AMT, CUR, START, END, "
        'MIN, PROMO, TICKET; a device\'s other names need renames = { DEVICE_NAME = "PLATE" })',
        "  rejected PLATE: missing (the service keeps it as rejected, with its raw bytes)",
    ]
    assert second.splitlines()[-1] == (
        "  held     zone code '7' has no mapping; map it: "
        'paystation-agent zones set 7 "OPSCOM zone name"'
    )


def test_tap_refuses_the_port_the_service_holds_and_says_how_to_watch(
    tmp_path: Path, emulator: ControllerEmulator, port: Pty
) -> None:
    config = write_config(tmp_path, emulator.url, drivers=serial_driver(port.path))
    log = tmp_path / "agent.log"
    agent = run_agent(config, log)
    try:
        eventually(lambda: "open (9600 8N1" in log.read_text(), what="port open")
        process = tap(config, "--driver", "meter-1", "--count", "1")
        out, err = process.communicate(timeout=20)
        port.write(FRAMER.encode(HELD))
        assert port.answer() == 6  # the service still has the line: it stored and ACKed
    finally:
        stop(agent)
    assert process.returncode == 1 and out == ""
    line = err.strip()
    assert line.startswith(
        f"paystation-agent: busy: {port.path} is locked by another reader (open in "
    )
    assert f"(pid {agent.pid})" in line
    assert line.endswith(
        "two readers would split the frames between them; tap cannot read beside it. To "
        "watch this meter, stop the service (systemctl stop paystation-agent: the meter "
        "keeps every sale not acknowledged and resends it), run tap, then start the service "
        "again (systemctl start paystation-agent)"
    )
