"""A full disk, on purpose: the journal is given a size limit it must honour (always) or put
on a real 2 MB tmpfs (where this machine lets the test mount one). New frames are NAKed
with one clear log line, the meter keeps them, forwarding goes on, delivered records give
way to new sales, and the agent takes frames again by itself. Nothing ACKed is lost and the
journal passes SQLite's integrity check at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.emulator import ControllerEmulator
from drivers.framing import ACK, NAK
from tests.conftest import cli, eventually, write_config
from tests.scenarios.conftest import report
from tests.test_serial import FRAMER, Pty, receipts, run_agent, sale, serial_driver, stop


class Tiny:
    """Where the journal lives and how it runs out of space."""

    def __init__(self, where: Path, agent_line: str, filesystem: bool) -> None:
        self.where = where
        self.agent_line = agent_line  # for [agent]
        self.filesystem = filesystem
        self.filler = where / "other-program.log"

    def fill(self) -> None:
        """Another program fills the disk (only on a real filesystem)."""
        if not self.filesystem:
            return
        with open(self.filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(bytes(65536))
                out.flush()

    def free(self) -> None:
        """Space returns: the technician deletes the other program's file."""
        self.filler.unlink(missing_ok=True)


@pytest.fixture(params=["size-limit", "tmpfs"])
def tiny(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tiny]:
    if request.param == "size-limit":
        yield Tiny(tmp_path, "journal_max_mb = 1", filesystem=False)
        return
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the size-limit case covers the same path")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield Tiny(mount, "", filesystem=True)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_journal_naks_keeps_forwarding_and_recovers_by_itself(
    tmp_path: Path, tiny: Tiny, emulator: ControllerEmulator
) -> None:
    journal = tiny.where / "journal.sqlite3"
    device = Pty()
    config = write_config(tmp_path, emulator.url, drivers=serial_driver(device.path))
    text = config.read_text().replace(str(tmp_path / "journal.sqlite3"), str(journal))
    config.write_text(text.replace("[controller]", f"{tiny.agent_line}\n\n[controller]"))
    log = tmp_path / "agent.log"
    emulator.go_down()
    agent = run_agent(config, log)
    acked: list[str] = []
    try:
        eventually(lambda: "open (9600" in log.read_text(), what="the agent's port open")

        # 1. controller down: sales pile up until the journal is full, then NAK
        def sell_until_refused(first: int) -> tuple[str, int]:
            for n in range(first, 20_000):
                txn = f"F-{n}"
                if n == 50:
                    tiny.fill()
                device.write(FRAMER.encode(sale(txn, PLATE=f"P{n:07d}")))
                if device.answer() == NAK:
                    return txn, n + 1
                acked.append(txn)
            raise AssertionError("the journal never filled")

        refused, n = sell_until_refused(0)
        assert len(acked) >= 50, "the journal filled before the disk did"
        eventually(lambda: "new records are refused" in log.read_text(), what="the log line")
        # The meter retries. Nothing is delivered yet, so nothing may give way; but when a
        # write found the disk full meanwhile, the reserve was given back, and the room it
        # leaves beyond the backlog's deliveries takes a few more sales: the meter then
        # sells on until it is refused again, for good this time (the reserve is gone).
        while True:
            device.write(FRAMER.encode(sale(refused, PLATE="NAKED")))
            if device.answer() == NAK:
                break
            assert "KB given back" in log.read_text(), "a sale taken from a full disk"
            acked.append(refused)
            refused, n = sell_until_refused(n)
        status = cli("status", "--config", str(config))
        assert status.returncode == 5 and f"{len(acked)}" in status.stdout  # 5: disk full
        assert "FULL" in status.stdout and "new sales refused (NAK) since" in status.stdout

        # 2. the controller returns: the backlog drains on a full journal
        emulator.come_up()
        eventually(
            lambda: len(emulator.accepted) == len(acked), timeout=120, what="backlog delivered"
        )

        # 3. room again (delivered records give way, or the disk is cleaned up): the refused
        # sale and new ones are ACKed
        tiny.free()
        device.write(FRAMER.encode(sale(refused, PLATE="NAKED")))
        assert device.answer() == ACK
        acked.append(refused)
        for n in range(20_000, 20_300):
            device.write(FRAMER.encode(sale(f"F-{n}")))
            assert device.answer() == ACK, f"F-{n} refused after room was made"
            acked.append(f"F-{n}")
        eventually(lambda: len(emulator.accepted) == len(acked), timeout=60, what="all delivered")
    finally:
        stop(agent)
        device.close()
    text = log.read_text()
    refusals = text.count("the hardware keeps them")
    assert refusals == text.count("journal accepts records again") >= 1, "a line per episode"
    if tiny.filesystem:
        assert "KB given back" in text and "reserve laid down again" in text
    else:
        assert "pruned early to make room" in text
    delivered = receipts(emulator)
    assert sorted(delivered) == sorted(acked), "an ACKed sale was lost or sent twice"
    db = sqlite3.connect(journal)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        unsent = db.execute("SELECT count(*) FROM records WHERE state != 'sent'").fetchone()[0]
        assert unsent == 0
    finally:
        db.close()
    report("disk-full", filesystem=tiny.filesystem, acked_before_full=len(acked) - 301)


@contextlib.contextmanager
def small_filesystem(where: Path, size_kib: int) -> Iterator[Path]:
    """A real tmpfs of ``size_kib`` mounted at ``where`` (skipped where mounting is not
    allowed: the size-limit case above covers the journal's side of a full disk)."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def leave_free(mount: Path, free_bytes: int) -> Path:
    """Another program's file takes all but ``free_bytes`` of the filesystem."""
    filler = mount / "other-program.log"
    with open(filler, "wb") as out:
        while (room := os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize) > free_bytes:
            out.write(bytes(min(65536, room - free_bytes)))
            out.flush()
            os.fsync(out.fileno())
    return filler


def test_a_small_nearly_full_filesystem_takes_the_sales_it_has_room_for_and_resumes(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    """1 MB filesystem, 400 KiB free at start, controller down: sales are taken until the
    disk is full (room for tens of records), then NAKed, and `status` says so. The
    controller returns: the backlog is delivered and recorded on the full disk, delivered
    records give way and the refused sale is taken by itself; once the other program's
    file goes, the reserve is laid down again and `status` is clear."""
    with small_filesystem(tmp_path / "tiny", 1024) as mount:
        filler = leave_free(mount, 400 * 1024)
        journal = mount / "journal.sqlite3"
        device = Pty()
        config = write_config(tmp_path, emulator.url, drivers=serial_driver(device.path))
        config.write_text(
            config.read_text().replace(str(tmp_path / "journal.sqlite3"), str(journal))
        )
        log = tmp_path / "agent.log"
        emulator.go_down()
        agent = run_agent(config, log)
        acked: list[str] = []

        def sell(n: int) -> int:
            device.write(FRAMER.encode(sale(f"S-{n}", PLATE=f"P{n:07d}")))
            answer = device.answer()
            if answer == ACK:
                acked.append(f"P{n:07d}")
            return answer

        try:
            eventually(lambda: "open (9600" in log.read_text(), what="the agent's port open")
            refused = next((n for n in range(3_000) if sell(n) == NAK), None)
            assert refused is not None, "the disk never filled"
            assert len(acked) >= 20, f"only {len(acked)} sales taken with 400 KiB free"
            status = cli("status", "--config", str(config))
            assert "FULL: new sales refused (NAK) since" in status.stdout, status.stdout
            shown = json.loads(cli("status", "--json", "--config", str(config)).stdout)
            assert shown["disk_full"]["cause"] == "disk" and shown["disk_full"]["free_kb"] >= 0

            emulator.come_up()
            eventually(
                lambda: len(emulator.accepted) == len(acked), timeout=60, what="backlog delivered"
            )
            eventually(lambda: sell(refused) == ACK, timeout=30, what="the refused sale taken")
            filler.unlink()
            for n in range(refused + 1, refused + 41):
                assert sell(n) == ACK, f"S-{n} refused after the disk was cleaned up"
            eventually(
                lambda: len(emulator.accepted) == len(acked), timeout=60, what="all delivered"
            )
            eventually(
                lambda: (
                    json.loads(cli("status", "--json", "--config", str(config)).stdout)["disk_full"]
                    is None
                ),
                what="status clear of the full disk",
            )
            reserve = journal.with_name(journal.name + "-reserve")
            reserve_size = reserve.stat().st_size if reserve.exists() else 0
        finally:
            stop(agent)
            device.close()
        # the reserve is in place again: given back on the full disk (when a write found no
        # room) and laid down again once the disk was cleaned up, or never given back (when
        # the room check refused sales before any write failed)
        text = log.read_text()
        assert "KB given back" not in text or "reserve laid down again" in text
        assert reserve_size > 0, "no disk reserve after the disk was cleaned up"
        delivered = sorted(a.payload["LicencePlate"] for a in emulator.accepted)
        assert delivered == sorted(acked), "an ACKed sale was lost or sent twice"
        db = sqlite3.connect(journal)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            states = dict(db.execute("SELECT state, count(*) FROM records GROUP BY state"))
        finally:
            db.close()
        # every row left is recorded as delivered (the oldest delivered ones may have given
        # way to new sales)
        assert set(states) == {"sent"}, f"deliveries were not all recorded: {states}"
        report("small-disk", acked_with_400k_free=refused, acked=len(acked))


def test_a_small_disk_full_of_the_journal_alone_takes_sales_again_by_itself(
    tmp_path: Path,
) -> None:
    """No other program to clean up after: the journal itself fills a 1 MB filesystem
    while sales are delivered. The refusals last only until delivered records give way;
    nothing undelivered is ever deleted."""
    from agent.intake import Intake
    from agent.journal import Attempt, Journal, State
    from drivers.base import HardwareRecord
    from drivers.records import parse_kv
    from tests.test_serial import rules

    with small_filesystem(tmp_path / "tiny", 1024) as mount:
        leave_free(mount, 400 * 1024)
        answers = ""
        with Journal(mount / "journal.sqlite3", reserve_bytes=2 * 2**20) as journal:
            intake = Intake(journal, "PS-TEST", rules())
            for n in range(800):
                raw = sale(f"S-{n}", PLATE=f"P{n:07d}")
                receipt = intake.submit(HardwareRecord(raw, parse_kv(raw), "meter-1"))
                answers += "A" if receipt.safe else "N"
                for claim in journal.claim(5):
                    delivered = Attempt("delivered", State.SENT, 200, None, "", reference_id="R")
                    journal.record_attempt(claim.id, delivered)
            counts = journal.counts()
            assert journal.quick_check() == "ok"
    assert counts[State.SENT] < 800, "the disk never filled: no delivered record gave way"
    assert answers.count("A") >= 700, f"sales were refused for long: {answers}"
    assert answers.endswith("A" * 100), "sales are not taken again"
    assert counts[State.PENDING] == 0 and set(counts.values()) - {0} == {counts[State.SENT]}
    report("small-disk-alone", acked=answers.count("A"), naked=answers.count("N"))


def test_a_disk_another_program_fills_is_noticed_within_a_second_of_ample_room(
    tmp_path: Path,
) -> None:
    """With ample room, one reading of the disk serves the records of the next moment (a
    fast upload's). Another program then takes all but 400 KiB, and sales keep coming, a
    few a second, never enough to fill the disk themselves: within a second of the last
    reading they are refused (a reading that never expired would take them for most of a minute),
    and every sale taken is in the journal."""
    from agent.intake import Intake
    from agent.journal import Journal, State
    from agent.journal.reserve import TRUSTED_S
    from drivers.base import HardwareRecord
    from drivers.records import parse_kv
    from tests.test_serial import rules

    with (
        small_filesystem(tmp_path / "roomy", 32 * 1024) as mount,
        Journal(mount / "journal.sqlite3", reserve_bytes=2 * 2**20) as journal,
    ):
        intake = Intake(journal, "PS-TEST", rules())

        def sell(n: int) -> bool:
            raw = sale(f"S-{n}", PLATE=f"P{n:07d}")
            return intake.submit(HardwareRecord(raw, parse_kv(raw), "meter-1")).safe

        assert all(sell(n) for n in range(20)), "sales refused with 30 MB free"
        read_before = time.monotonic()  # the last sale's reading is no newer than this
        leave_free(mount, 400 * 1024)
        taken, refused_at = 20, None
        while refused_at is None and time.monotonic() - read_before < TRUSTED_S + 4:
            if sell(taken):
                taken += 1
                time.sleep(0.05)
            else:
                refused_at = time.monotonic()
        counts = journal.counts()
    assert refused_at is not None, "sales were still taken 5 s after the disk filled"
    # the reading holds TRUSTED_S; the rest is a margin for a loaded machine
    assert refused_at - read_before <= TRUSTED_S + 1.0, "a reading of the disk held too long"
    assert counts[State.PENDING] == taken, "a sale taken is not in the journal"
