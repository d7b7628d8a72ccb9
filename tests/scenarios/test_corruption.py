"""A corrupt journal must not leave the agent looking healthy but stuck, nor be replaced
silently. The real agent is started on a journal that is not SQLite at all, on one with a
damaged index page (every row still readable) and on one with a damaged table page (some
rows lost): each time the file is moved aside with a timestamp, a fresh journal is started,
the event is CRITICAL in the log and shown by ``status``, whatever can still be read is
recovered with its state (delivered sales are not sent again, undelivered ones are), and
the agent goes on taking and delivering sales.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
from pathlib import Path

import pytest

from agent.emulator import ControllerEmulator
from tests.conftest import cli, eventually, simulated_driver, start_agent, write_config
from tests.scenarios.conftest import SEED, fill_journal, report
from tests.test_serial import stop


def damage(path: Path, how: str) -> None:
    rnd = random.Random(SEED)
    if how == "not-sqlite":
        path.write_bytes(bytes(rnd.randrange(256) for _ in range(12_288)))
        return
    db = sqlite3.connect(path)
    try:
        if how == "index-page":
            name, kind = "records_txn", "leaf"
        else:
            name, kind = "records", "leaf"
        size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = [
            row[0]
            for row in db.execute(
                "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = ? ORDER BY pageno",
                (name, kind),
            )
        ]
    finally:
        db.close()
    assert pages, f"no {kind} page of {name}"
    page = pages[len(pages) // 2]
    with open(path, "r+b") as f:
        f.seek((page - 1) * size + 8)  # keep the page header's type byte, ruin its cells
        f.write(bytes(rnd.randrange(256) for _ in range(size - 8)))


@pytest.mark.parametrize("how", ["not-sqlite", "index-page", "table-page"])
def test_a_corrupt_journal_is_moved_aside_salvaged_and_loud(
    tmp_path: Path, emulator: ControllerEmulator, how: str
) -> None:
    journal = tmp_path / "journal.sqlite3"
    txns = fill_journal(journal, pending=60, sent=40)
    sent, pending = set(txns[:40]), set(txns[40:])
    damage(journal, how)

    config = write_config(tmp_path, emulator.url, drivers=simulated_driver(count=5, seed=3))
    log = tmp_path / "agent.log"
    agent = start_agent(config, log)
    try:
        eventually(lambda: "running" in log.read_text(), what="the agent running")
        text = log.read_text()
        assert "CRITICAL" in text and "was unreadable" in text
        aside = [
            p
            for p in tmp_path.glob("journal.sqlite3.corrupt-*")
            if not p.name.endswith(("-wal", "-shm"))
        ]
        assert len(aside) == 1, "the damaged file is kept for a person to look at"
        status = cli("status", "--config", str(config))
        assert "RECOVERED" in status.stdout and aside[0].name in status.stdout
        salvaged = int(re.search(r"(\d+) record\(s\) recovered", text).group(1))  # type: ignore[union-attr]

        def delivered_all() -> bool:
            now = json.loads(cli("status", "--json", "--config", str(config)).stdout)
            return bool(now["pending"] == 0 and now["sent"] >= 5)

        eventually(delivered_all, timeout=30, what="salvaged and new sales delivered")
    finally:
        stop(agent)
    delivered = [a.payload["permitNo"] for a in emulator.accepted]
    assert not sent & set(delivered), "a sale the controller had was sent again"
    new = [p for p in delivered if p not in pending]
    assert len(new) == 5, "the agent did not go on taking sales"
    resent = pending & set(delivered)
    if how == "not-sqlite":
        assert not resent and salvaged == 0  # nothing could be read
    elif how == "index-page":
        assert resent == pending, "every row was readable: every undelivered sale goes out"
        assert salvaged == len(txns)
    else:
        assert resent and len(resent) < len(pending) and 0 < salvaged < len(txns)
    report(
        f"corruption-{how}",
        records_before=len(txns),
        salvaged_rows=salvaged,
        undelivered_salvaged_and_sent=len(resent),
    )
