"""A full disk, on purpose: the journal is given a size limit it must honour (always) or put
on a real 2 MB tmpfs (where this machine lets the test mount one). New frames are NAKed
with one clear log line, the meter keeps them, forwarding goes on, delivered records give
way to new sales, and the agent takes frames again by itself. Nothing ACKed is lost and the
journal passes SQLite's integrity check at the end.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.emulator import ControllerEmulator
from drivers.framing import ACK, NAK
from tests.conftest import cli, eventually, write_config
from tests.scenarios.conftest import report
from tests.test_serial import FRAMER, Pty, run_agent, sale, serial_driver, stop


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
        with open(self.filler, "wb") as out, contextlib.suppress(OSError):
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
        refused = None
        for n in range(20_000):
            txn = f"F-{n}"
            if n == 50:
                tiny.fill()
            device.write(FRAMER.encode(sale(txn, PLATE=f"P{n:07d}")))
            if device.answer() == NAK:
                refused = txn
                break
            acked.append(txn)
        assert refused is not None and len(acked) >= 50, "the journal never filled"
        eventually(lambda: "new records are refused" in log.read_text(), what="the log line")
        device.write(FRAMER.encode(sale(refused, PLATE="NAKED")))  # the meter retries
        assert device.answer() == NAK  # nothing delivered yet, so nothing may give way
        status = cli("status", "--config", str(config))
        assert status.returncode == 0 and f"{len(acked)}" in status.stdout

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
    assert text.count("the hardware keeps them") == 1, "one log line per episode"
    assert "journal accepts records again" in text
    if tiny.filesystem:
        assert "reserve of 2 MB given back" in text and "reserve laid down again" in text
    else:
        assert "pruned early to make room" in text
    delivered = [a.payload["permitNo"] for a in emulator.accepted]
    assert sorted(delivered) == sorted(acked), "an ACKed sale was lost or sent twice"
    db = sqlite3.connect(journal)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        unsent = db.execute("SELECT count(*) FROM records WHERE state != 'sent'").fetchone()[0]
        assert unsent == 0
    finally:
        db.close()
    report("disk-full", filesystem=tiny.filesystem, acked_before_full=len(acked) - 301)
