"""The serial driver on real pseudo-terminals: the agent opens a pty's slave path exactly as
it opens /dev/ttyUSB0, and the test (or ``simulate``) is the device on the other end.

In-process tests drive :class:`SerialDriver` with the real intake and journal and look at
every answer byte; scenario tests run ``paystation-agent run`` and ``simulate`` as
subprocesses, joined by a null-modem made of two ptys and a relay thread.
"""

from __future__ import annotations

import json
import logging
import os
import random
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.emulator import ControllerEmulator
from agent.errors import ConfigErrors
from agent.intake import Intake
from agent.journal import Journal, State
from agent.mapping import MappingRules
from drivers import serial_port
from drivers.base import DriverContext, HardwareRecord, Receipt
from drivers.framing import ACK, NAK, STX, Frame, StxEtxFramer
from drivers.records import format_kv, parse_kv
from drivers.serial_port import SerialDriver
from tests.conftest import ROOT, agent_env, cli, eventually, stop_agent, write_config

ZONE = ZoneInfo("America/Toronto")
FRAMER = StxEtxFramer()


class Pty:
    """A real pseudo-terminal: a driver opens ``path``, the test is the device on ``master``.

    The slave stays open here too, so the master never reads EIO while the agent is down,
    and it is raw from the start: no echo, no line editing before the driver configures it.
    """

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.closed = False

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def answer(self, timeout: float = 10.0) -> int:
        ready, _, _ = select.select([self.master], [], [], timeout)
        assert ready, "no answer from the driver"
        return os.read(self.master, 1)[0]

    def drain(self, wait: float) -> list[int]:
        """Every answer byte that arrives within ``wait`` seconds of silence."""
        got: list[int] = []
        while select.select([self.master], [], [], wait)[0]:
            got.extend(os.read(self.master, 64))
        return got

    def nothing_written(self, wait: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], wait)
        return not ready

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.master)
            os.close(self.slave)


class Relay:
    """Two ptys' masters joined like a null-modem cable. A byte that finds the other side's
    buffer full is dropped, as on a real line with nobody reading."""

    def __init__(self, a: Pty, b: Pty) -> None:
        self.peers = {a.master: b.master, b.master: a.master}
        for fd in self.peers:
            os.set_blocking(fd, False)
        self.wake_r, self.wake_w = os.pipe()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([*self.peers, self.wake_r], [], [])
            if self.wake_r in ready:
                return
            for fd in ready:
                with suppress(BlockingIOError):
                    os.write(self.peers[fd], os.read(fd, 4096))

    def close(self) -> None:
        os.write(self.wake_w, b"x")
        self.thread.join(5)
        os.close(self.wake_r)
        os.close(self.wake_w)


@pytest.fixture
def pty() -> Iterator[Pty]:
    line = Pty()
    yield line
    line.close()


@pytest.fixture
def null_modem() -> Iterator[tuple[Pty, Pty]]:
    """(the agent's pty, the meter's pty), joined."""
    agent_side, meter_side = Pty(), Pty()
    relay = Relay(agent_side, meter_side)
    yield agent_side, meter_side
    relay.close()
    agent_side.close()
    meter_side.close()


def rules() -> MappingRules:
    return MappingRules(ZONE, "CAD", {str(n): f"Lot {n}" for n in range(1, 5)})


@contextmanager
def running_driver(port: str, sink: Any, **options: Any) -> Iterator[SerialDriver]:
    opts = SerialDriver.parse_options("drivers[0]", {"port": port, **options})
    driver = SerialDriver("meter-1", opts, sink, DriverContext("PS-TEST", ZONE))
    driver.start()
    try:
        eventually(lambda: driver.health.connected, what="port open")
        yield driver
    finally:
        driver.stop()
        assert driver.finished


def sale(txn: str, **extra: str) -> bytes:
    fields = {
        "TXN": txn,
        "PLATE": "PL8RDR",
        "ZONE": "4",
        "AMT": "2.50",
        "START": "2030-07-02T05:00:00",
        "END": "2030-07-02T06:00:00",
        **extra,
    }
    return format_kv(fields)


def journal_rows(path: Path) -> list[tuple[str | None, str, bytes]]:
    db = sqlite3.connect(path, timeout=10)
    try:
        return db.execute("SELECT txn, state, raw FROM records ORDER BY id").fetchall()
    finally:
        db.close()


# -- in process: every answer byte ---------------------------------------------------------


def test_ack_is_written_only_after_the_commit_and_a_refusal_is_naked(
    pty: Pty, journal: Journal
) -> None:
    intake = Intake(journal, "PS-TEST", rules())
    observed: list[tuple[bool, bool]] = []
    refuse = threading.Event()

    class ObservingSink:
        """The real intake, then a look from outside: is the record committed (visible to
        another connection), and has any answer byte reached the device yet?"""

        def submit(self, record: HardwareRecord) -> Receipt:
            if refuse.is_set():
                return Receipt.REFUSED
            receipt = intake.submit(record)
            committed = record.raw in [raw for _, _, raw in journal_rows(journal.path)]
            observed.append((committed, pty.nothing_written(0.2)))
            return receipt

    with running_driver(pty.path, ObservingSink()) as driver:
        pty.write(FRAMER.encode(sale("A-1")))
        assert pty.answer() == ACK
        assert observed == [(True, True)]  # committed, and no ACK had been written before

        refuse.set()
        pty.write(FRAMER.encode(sale("A-2")))
        assert pty.answer() == NAK
        refuse.clear()
        pty.write(FRAMER.encode(sale("A-2")))  # the meter resends the refused one
        assert pty.answer() == ACK
    assert [txn for txn, _, _ in journal_rows(journal.path)] == ["A-1", "A-2"]
    assert driver.health.frames["refused"] == 1 and driver.health.frames["ok"] == 3


def test_a_bad_lrc_is_naked_and_the_resend_stored_once(pty: Pty, journal: Journal) -> None:
    frame = bytearray(FRAMER.encode(sale("B-1")))
    frame[5] ^= 0x10
    with running_driver(pty.path, Intake(journal, "PS-TEST", rules())) as driver:
        pty.write(bytes(frame))
        assert pty.answer() == NAK
        pty.write(FRAMER.encode(sale("B-1")))
        assert pty.answer() == ACK
        pty.write(FRAMER.encode(sale("B-1")))  # its ACK was lost: the meter sends it again
        assert pty.answer() == ACK
    assert [(txn, state) for txn, state, _ in journal_rows(journal.path)] == [("B-1", "pending")]
    frames = driver.health.frames
    assert (frames["bad_checksum"], frames["ok"], frames["duplicate"]) == (1, 2, 1)


def test_a_burst_shares_commits_and_is_answered_in_order(pty: Pty, journal: Journal) -> None:
    """A meter that sends several frames before reading answers: the records share group
    commits (fewer fsyncs than frames), each answer comes after its record's commit, and a
    bad frame in the middle is NAKed in its place."""
    intake = Intake(journal, "PS-TEST", rules())
    commits: list[int] = []
    answers: list[int] = []
    early: list[str] = []

    class ObservingBatchSink:
        """The real intake, watched from the device's side of the line: when a group of
        records is handed over, the device must hold exactly one ACK per record committed
        before (answers for these ones would mean an ACK before the commit)."""

        def submit(self, record: HardwareRecord) -> Receipt:
            return self.submit_many([record])[0]

        def submit_many(self, records: list[HardwareRecord]) -> list[Receipt]:
            answers.extend(pty.drain(0.1))
            if answers.count(ACK) != sum(commits):
                early.append(f"{answers.count(ACK)} ACKs before commit {len(commits) + 1}")
            receipts = intake.submit_many(records)
            commits.append(len(records))
            return receipts

    bad = bytearray(FRAMER.encode(sale("G-3")))
    bad[6] ^= 0x01
    burst = [FRAMER.encode(sale(f"G-{n}")) for n in range(3)] + [bytes(bad)]
    burst += [FRAMER.encode(sale(f"G-{n}")) for n in range(4, 8)]
    with running_driver(pty.path, ObservingBatchSink()):
        pty.write(b"".join(burst))
        eventually(lambda: sum(commits) == 7, what="every record committed")
        answers.extend(pty.drain(0.3))  # the sink reads no more: one reader at a time
    assert not early, early
    assert answers == [ACK] * 3 + [NAK] + [ACK] * 4
    stored = [txn for txn, _, _ in journal_rows(journal.path)]
    assert stored == ["G-0", "G-1", "G-2", "G-4", "G-5", "G-6", "G-7"]
    assert sum(commits) == 7 and max(commits) > 1, f"no group commit: {commits}"


def test_concurrent_submits_share_a_commit_and_each_gets_its_receipt(journal: Journal) -> None:
    intake = Intake(journal, "PS-TEST", rules())
    receipts: dict[str, Receipt] = {}

    def meter(name: str) -> None:
        for n in range(50):
            raw = sale(f"{name}-{n}")
            record = HardwareRecord(
                raw, dict(p.split("=", 1) for p in raw.decode().split("|")), name
            )
            receipts[f"{name}-{n}"] = intake.submit(record)

    threads = [threading.Thread(target=meter, args=(f"m{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(receipts.values()) == {Receipt.STORED} and len(receipts) == 200
    assert len(journal_rows(journal.path)) == 200


def test_noise_is_skipped_and_a_broken_frame_naked(pty: Pty, journal: Journal) -> None:
    rnd = random.Random(5)
    with running_driver(pty.path, Intake(journal, "PS-TEST", rules())) as driver:
        for n in range(20):
            noise = bytes(rnd.choice([b for b in range(256) if b != STX]) for _ in range(20))
            pty.write(noise + FRAMER.encode(sale(f"C-{n}")) + noise[:3])
            assert pty.answer() == ACK
        pty.write(b"\x02TXN=C-99|PLA")  # its ETX never came; the resend starts a new frame
        pty.write(FRAMER.encode(sale("C-99")))
        assert (pty.answer(), pty.answer()) == (NAK, ACK)
    assert len(journal_rows(journal.path)) == 21
    frames = driver.health.frames
    assert (frames["ok"], frames["broken"], frames["bad_checksum"]) == (21, 1, 0)


def test_an_unreadable_record_is_kept_as_rejected_and_acked(pty: Pty, journal: Journal) -> None:
    with running_driver(pty.path, Intake(journal, "PS-TEST", rules())) as driver:
        pty.write(FRAMER.encode(b"this is not key=value|=x"))
        assert pty.answer() == ACK
    assert journal_rows(journal.path) == [(None, "rejected", b"this is not key=value|=x")]
    assert driver.health.frames["unparseable"] == 1


def test_a_record_that_is_not_text_is_kept_when_the_meter_resends_it(
    pty: Pty, journal: Journal
) -> None:
    """A frame whose payload is not UTF-8 is taken for lucky noise and NAKed once; the meter
    resending the very same frame shows it is the meter's (a Latin-1 plate, say): it is kept
    as rejected with its raw bytes and ACKed, so the meter is not stuck on it forever."""
    latin1 = "TXN=L-1|PLATE=ÉTÉ123|ZONE=4|START=2026-11-28T10:00:00|MIN=30".encode("latin-1")
    with running_driver(pty.path, Intake(journal, "PS-TEST", rules())):
        pty.write(FRAMER.encode(latin1))
        assert pty.answer() == NAK
        pty.write(FRAMER.encode(latin1))
        assert pty.answer() == ACK
        pty.write(FRAMER.encode(sale("L-2")))
        assert pty.answer() == ACK
    rows = journal_rows(journal.path)
    assert [state for _, state, _ in rows] == ["rejected", "pending"]
    assert rows[0][2] == latin1


def driver_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the driver logged, but the port's own open and close lines."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "drivers.meter-1"
        and r.levelno >= logging.INFO
        and "open (" not in r.getMessage()
    ]


def test_random_noise_is_summarised_in_the_log_and_makes_no_records(
    pty: Pty, journal: Journal, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 MB of random bytes on the line, STX, ETX and lucky checksums included (about 4 000
    frame starts and, before, 8 garbage "records" per MB): a summary line per interval,
    not a line per bad frame, and no rejected records made of noise."""
    monkeypatch.setattr(serial_port, "FAULT_SUMMARY_EVERY_S", 1.0, raising=False)
    caplog.set_level(logging.INFO)
    noise = random.Random(11).randbytes(2 * 2**20)
    answers: list[int] = []
    with running_driver(pty.path, Intake(journal, "PS-TEST", rules())) as driver:
        started = time.monotonic()
        writer = threading.Thread(
            target=lambda: [pty.write(noise[i : i + 4096]) for i in range(0, len(noise), 4096)]
        )
        writer.start()
        while writer.is_alive():
            answers += pty.drain(0.05)
        answers += pty.drain(0.5)
        writer.join()
        elapsed = time.monotonic() - started
        # a summary is due a second after the line before it: the noise may end sooner
        eventually(
            lambda: any(" in the last " in line for line in driver_lines(caplog)),
            what="a summary of the bad frames",
        )
    frames = driver.health.frames
    bad = frames["bad_checksum"] + frames["broken"] + frames["noise"]
    assert bad > 3_000 and answers.count(NAK) == bad
    lines = driver_lines(caplog)
    assert len(lines) <= 3 + 2 * elapsed, f"{len(lines)} log lines in {elapsed:.1f} s"
    summaries = [line for line in lines if " in the last " in line]
    assert summaries and all("frames failed their checksum" in line for line in summaries)
    assert journal.counts()[State.REJECTED] <= 1, "noise made rejected records"


def test_a_wrong_checksum_setting_is_named_in_a_summary_line(
    pty: Pty, journal: Journal, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The meter sums its checksums, the config says XOR: every frame is NAKed, and the log
    says, in a line or two rather than one per frame, which setting would match."""
    monkeypatch.setattr(serial_port, "FAULT_SUMMARY_EVERY_S", 0.5, raising=False)
    caplog.set_level(logging.INFO)
    meter = StxEtxFramer("sum")
    with running_driver(pty.path, Intake(journal, "PS-TEST", rules())):
        for n in range(60):
            pty.write(meter.encode(sale(f"W-{n}")))
            assert pty.answer() == NAK
        eventually(
            lambda: any('would match checksum = "sum"' in line for line in driver_lines(caplog)),
            what="a line naming the matching checksum setting",
        )
    lines = driver_lines(caplog)
    assert len(lines) < 20, lines
    assert "a meter sending SUM checksums would match" in lines[-1], lines


def test_json_records_with_renamed_keys_and_a_sum_checksum(pty: Pty, journal: Journal) -> None:
    doc = {"TXN": "D-1", "PLATENO": "AB 123", "ZONE": 4, "START": "2030-07-02T05:00:00"}
    doc["MIN"] = 30
    framer = StxEtxFramer("sum")
    sink = Intake(journal, "PS-TEST", rules())
    options = {"format": "json", "checksum": "sum", "renames": {"plateno": "PLATE"}}
    with running_driver(pty.path, sink, **options):
        pty.write(framer.encode(json.dumps(doc).encode()))
        assert pty.answer() == ACK
    record = journal.get(1)
    assert record is not None and record.state == "pending"
    assert record.fields["PLATE"] == "AB 123" and record.payload is not None


def test_line_mode_stores_lines_and_never_writes(pty: Pty, journal: Journal) -> None:
    with running_driver(pty.path, Intake(journal, "PS-TEST", rules()), framing="line"):
        pty.write(sale("E-1") + b"\r\n" + sale("E-2") + b"\n\n")
        eventually(lambda: len(journal_rows(journal.path)) == 2, what="two lines journaled")
        assert pty.nothing_written(0.2)
    assert [txn for txn, _, _ in journal_rows(journal.path)] == ["E-1", "E-2"]


def test_bad_options_are_named_by_key() -> None:
    with pytest.raises(ConfigErrors) as caught:
        SerialDriver.parse_options(
            "drivers[2]",
            {"baudrate": "fast", "parity": "X", "stopbits": 3, "framing": "slip", "ack": 300},
        )
    text = str(caught.value)
    for key in ("port", "baudrate", "parity", "stopbits", "framing", "ack"):
        assert f"drivers[2].{key}:" in text


def test_simulate_explains_a_port_it_cannot_open_and_a_bad_option(tmp_path: Path) -> None:
    missing = cli("simulate", "--port", str(tmp_path / "ttyNONE"), "--count", "1")
    assert missing.returncode == 1
    assert f"could not open port {tmp_path / 'ttyNONE'}" in missing.stderr
    bad = cli("simulate", "--port", "loop://", "--noise", "2")
    assert bad.returncode == 1 and "--noise: expected 0 to 1, got 2.0" in bad.stderr


def test_check_config_shows_a_serial_driver_resolved(tmp_path: Path) -> None:
    drivers = """
[[drivers]]
kind = "serial"
port = "/dev/ttyUSB0"
stopbits = 1.5
renames = { PLATENO = "PLATE" }
"""
    config = write_config(tmp_path, "http://127.0.0.1:9/push", drivers=drivers)
    result = cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert 'kind = "serial"' in result.stdout and "stopbits = 1.5" in result.stdout
    assert '{"PLATENO" = "PLATE"}' in result.stdout and "baudrate = 9600" in result.stdout


# -- scenarios: the real agent and the real simulate, as subprocesses ----------------------


def serial_driver(port: str, **extra: Any) -> str:
    lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in extra.items())
    return f'\n[[drivers]]\nkind = "serial"\nname = "meter-1"\nport = "{port}"\n{lines}\n'


def run_agent(config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=agent_env(),
            cwd=ROOT,
        )


def simulate(port: str, acked: Path, *extra: str) -> subprocess.Popen[str]:
    command = ["simulate", "--port", port, "--acked-file", str(acked), *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=agent_env(),
        cwd=ROOT,
    )


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def lines_of(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def receipts(emulator: ControllerEmulator, meter: str = "meter-1") -> list[str]:
    """The receipt numbers the controller got from one meter: its permit numbers, of the
    default form PS-TEST-<driver>-<TXN>, less station and meter."""
    prefix = f"PS-TEST-{meter}-"
    permits = [a.payload["permitNo"] for a in emulator.accepted]
    return [p.removeprefix(prefix) for p in permits if p.startswith(prefix)]


def test_simulate_every_acked_sale_reaches_the_controller_once(
    tmp_path: Path, emulator: ControllerEmulator, null_modem: tuple[Pty, Pty]
) -> None:
    agent_pty, meter_pty = null_modem
    config = write_config(tmp_path, emulator.url, drivers=serial_driver(agent_pty.path))
    log, acked = tmp_path / "agent.log", tmp_path / "acked.txt"
    agent = run_agent(config, log)
    meter = None
    try:
        eventually(lambda: "open (9600 8N1" in log.read_text(), what="port open")
        meter = simulate(
            meter_pty.path, acked, "--count", "50", "--rate", "500", "--seed", "3",
            "--noise", "0.3", "--corrupt", "0.2", "--answer-timeout", "1", "--config", str(config),
        )  # fmt: skip
        out, err = meter.communicate(timeout=60)
        assert meter.returncode == 0, err
        counts = dict(part.split("=") for part in out.split())
        assert counts["acked"] == "50" and int(counts["naked"]) >= 1
        assert int(counts["resent"]) >= int(counts["naked"])
        assert emulator.wait_for(50, timeout=30), log.read_text()
    finally:
        stop(agent)
        if meter is not None:
            stop(meter)
    assert agent.returncode == 0
    assert sorted(receipts(emulator)) == sorted(lines_of(acked))  # all 50, each once


def test_kill_9_while_the_meter_sends_loses_no_acked_sale(
    tmp_path: Path, emulator: ControllerEmulator, null_modem: tuple[Pty, Pty]
) -> None:
    agent_pty, meter_pty = null_modem
    config = write_config(tmp_path, emulator.url, drivers=serial_driver(agent_pty.path))
    log, acked, journal = (
        tmp_path / "agent.log",
        tmp_path / "acked.txt",
        tmp_path / "journal.sqlite3",
    )
    agent = run_agent(config, log)
    meter = simulate(
        meter_pty.path, acked, "--count", "60", "--rate", "100", "--answer-timeout", "0.3"
    )
    try:
        eventually(lambda: len(lines_of(acked)) >= 15, what="sales acknowledged")
        agent.kill()  # SIGKILL while the meter is sending
        agent.wait()
        acked_before = set(lines_of(acked))
        journaled = {txn for txn, _, _ in journal_rows(journal)}
        assert acked_before <= journaled  # every ACK was preceded by a durable commit

        agent = run_agent(config, log)
        out, err = meter.communicate(timeout=60)
        assert meter.returncode == 0, err
        assert out.startswith("acked=60 ")
        eventually(
            lambda: set(lines_of(acked)) <= set(receipts(emulator)),
            timeout=30,
            what="every acknowledged sale delivered",
        )
    finally:
        stop(agent)
        stop(meter)
    assert {txn for txn, _, _ in journal_rows(journal)} == set(lines_of(acked))


def test_the_port_vanishing_and_returning(tmp_path: Path, emulator: ControllerEmulator) -> None:
    link = tmp_path / "ttyMETER"  # the configured port, like a udev symlink
    repoint(link, first := Pty())
    drivers = serial_driver(str(link), reconnect_max_s=0.5)
    config = write_config(tmp_path, emulator.url, drivers=drivers)
    log = tmp_path / "agent.log"
    agent = run_agent(config, log, "--verbose")  # retries are logged at debug
    second = None
    try:
        eventually(lambda: f"port {link} open" in log.read_text(), what="port open")
        first.write(FRAMER.encode(sale("F-1")))
        assert first.answer() == ACK

        repoint(link, tmp_path / "unplugged")  # the device is gone, its path too
        first.close()
        eventually(lambda: log.read_text().count("still unavailable") >= 3, what="3 retries")

        second = Pty()
        repoint(link, second)  # plugged back in, on a new tty
        eventually(lambda: "is back after" in log.read_text(), what="reconnected")
        second.write(FRAMER.encode(sale("F-2")))
        assert second.answer() == ACK
        assert emulator.wait_for(2, timeout=30)
    finally:
        stop(agent)
        if second is not None:
            second.close()
        first.close()
    text = log.read_text()
    assert text.count(f"port {link} lost:") == 1, text  # one warning per outage, not per retry
    assert set(receipts(emulator)) == {"F-1", "F-2"}


def repoint(link: Path, target: Pty | Path) -> None:
    """Atomically (re)point ``link`` at a pty's slave or at a path."""
    temporary = link.with_name(link.name + ".new")
    temporary.symlink_to(target.path if isinstance(target, Pty) else target)
    temporary.replace(link)


def test_two_meters_on_two_ports_at_once(tmp_path: Path, emulator: ControllerEmulator) -> None:
    first, second = (Pty(), Pty()), (Pty(), Pty())
    relays = [Relay(*first), Relay(*second)]
    drivers = serial_driver(first[0].path) + serial_driver(second[0].path).replace(
        "meter-1", "meter-2"
    )
    config = write_config(tmp_path, emulator.url, drivers=drivers)
    log = tmp_path / "agent.log"
    agent = run_agent(config, log)
    meters = []
    try:
        eventually(lambda: log.read_text().count("open (9600 8N1") == 2, what="both ports open")
        meters = [
            simulate(meter.path, tmp_path / f"acked-{i}.txt", "--count", "20", "--rate", "200",
                     "--seed", str(i))
            for i, (_, meter) in enumerate((first, second))
        ]  # fmt: skip
        for meter in meters:
            out, err = meter.communicate(timeout=60)
            assert meter.returncode == 0 and out.startswith("acked=20 "), err
        assert emulator.wait_for(40, timeout=30), log.read_text()
    finally:
        stop(agent)
        for meter in meters:
            stop(meter)
        for relay in relays:
            relay.close()
        for pair in (first, second):
            for line in pair:
                line.close()
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    sources = {r[0] for r in db.execute("SELECT DISTINCT source FROM records")}
    db.close()
    assert sources == {"meter-1", "meter-2"}
    acked = [
        f"PS-TEST-meter-{i + 1}-{txn}"
        for i in (0, 1)
        for txn in lines_of(tmp_path / f"acked-{i}.txt")
    ]
    assert sorted(a.payload["permitNo"] for a in emulator.accepted) == sorted(acked)


def test_records_rejected_for_a_missing_rename_are_read_again_by_requeue(
    tmp_path: Path, emulator: ControllerEmulator, pty: Pty
) -> None:
    """Onboarding a model that names its fields differently: what it sold before the
    ``renames`` were right is rejected, and once they are, ``dead requeue`` reads the raw
    bytes again, so those sales are delivered instead of stranded."""
    config = write_config(tmp_path, emulator.url, drivers=serial_driver(pty.path))
    log, journal = tmp_path / "agent.log", tmp_path / "journal.sqlite3"
    agent = run_agent(config, log)
    try:
        eventually(lambda: "open (9600 8N1" in log.read_text(), what="port open")
        renamed_plate = sale("R-1").replace(b"PLATE=", b"PLATENO=")
        receipt_number = sale("R-2").replace(b"TXN=", b"RECEIPT=").replace(b"PLATE=", b"PLATENO=")
        for frame in (renamed_plate, receipt_number):
            pty.write(FRAMER.encode(frame))
            assert pty.answer() == ACK
        eventually(lambda: len(journal_rows(journal)) == 2, what="both journaled")
        assert [(txn, state) for txn, state, _ in journal_rows(journal)] == [
            ("R-1", "rejected"),
            (None, "rejected"),
        ]

        config.write_text(
            config.read_text().replace(
                'name = "meter-1"',
                'name = "meter-1"\nrenames = { PLATENO = "PLATE", RECEIPT = "TXN" }',
            )
        )
        requeued = cli("dead", "requeue", "--all", "--config", str(config))
        assert requeued.returncode == 0, requeued.stderr
        assert requeued.stdout.splitlines() == [
            "requeued 2: 2 to send, 0 held (zone not mapped), 0 still invalid",
            "the running service was told to reload (SIGHUP)",
        ]
        assert emulator.wait_for(2, timeout=30), log.read_text()
    finally:
        stop(agent)
    assert [(txn, state) for txn, state, _ in journal_rows(journal)] == [
        ("R-1", "sent"),
        ("R-2", "sent"),
    ]
    assert sorted(receipts(emulator)) == ["R-1", "R-2"]
    assert {a.payload["LicencePlate"] for a in emulator.accepted} == {"PL8RDR"}


def test_simulate_sells_in_the_zones_it_is_given(tmp_path: Path, pty: Pty) -> None:
    meter = simulate(pty.path, tmp_path / "acked.txt", "--count", "3", "--zones", "7, 12")
    framer, zones = StxEtxFramer(), []
    try:
        while len(zones) < 3:
            ready = select.select([pty.master], [], [], 10)[0]
            assert ready, "no frame from simulate"
            for event in framer.feed(os.read(pty.master, 4096)):
                assert isinstance(event, Frame)
                zones.append(parse_kv(event.payload)["ZONE"])
                pty.write(bytes([ACK]))
        out, err = meter.communicate(timeout=20)
    finally:
        stop(meter)
    assert meter.returncode == 0, err
    assert set(zones) <= {"7", "12"} and out.startswith("acked=3 ")
    bad = cli("simulate", "--port", pty.path, "--zones", "7,,12")
    assert bad.returncode == 2
    assert "--zones: expected zone codes separated by commas, got '7,,12'" in bad.stderr


def test_status_right_after_ready_shows_the_port_open(
    tmp_path: Path, pty: Pty, emulator: ControllerEmulator
) -> None:
    """``systemctl start`` returns at READY=1 and the technician's next ``status`` must
    show the port as it is: READY waits for each port's first open (it was sent before,
    and on a loaded PC status said "port meter-1 is disconnected", exit 6)."""
    address = str(tmp_path / "notify.sock")
    config = write_config(tmp_path, emulator.url, drivers=serial_driver(pty.path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        with open(tmp_path / "agent.log", "ab") as out:
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=agent_env(NOTIFY_SOCKET=address),
                cwd=ROOT,
            )
        try:
            while b"READY=1" not in sock.recv(4096):
                pass
            meta = sqlite3.connect(tmp_path / "journal.sqlite3")
            try:
                (published,) = meta.execute(
                    "SELECT value FROM meta WHERE key = 'drivers'"
                ).fetchone()
            finally:
                meta.close()
            result = cli("status", "--config", str(config))
        finally:
            assert stop_agent(agent) == 0
    assert json.loads(published)["meter-1"]["connected"] is True
    assert result.returncode == 0, result.stdout + result.stderr
