"""A corrupt journal must not leave the agent looking healthy but stuck, nor be replaced
silently. The real agent is started on a journal that is not SQLite at all, on one with a
damaged index page (every row still readable) and on one with a damaged table page (some
rows lost): each time the file is moved aside with a timestamp, a fresh journal is started,
the event is CRITICAL in the log and shown by ``status``, whatever can still be read is
recovered with its state (delivered sales are not sent again, undelivered ones are), and
the agent goes on taking and delivering sales.
"""

from __future__ import annotations

import functools
import json
import random
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from agent.emulator import ControllerEmulator
from tests.conftest import (
    cli,
    eventually,
    simulated_driver,
    start_agent,
    stop_agent,
    write_config,
)
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


def test_sigkill_at_random_points_of_a_salvage_loses_and_duplicates_nothing(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    """A 20 000-row journal with a damaged index page and a damaged table page. The agent is
    killed (SIGKILL) again and again while it salvages: at random moments after it starts,
    and at random points of its progress. The start after the last kill finishes the
    salvage: every readable row is in the new journal exactly once, with its state, the
    damaged file is moved aside once, and status is loud about it."""
    import shutil
    import signal

    from tests.test_recovery import (
        build_journal,
        expected_rows,
        journal_rows,
        pages_of,
        rowids_on,
        ruin,
    )

    rnd = random.Random(SEED)
    journal = tmp_path / "journal.sqlite3"
    pristine = tmp_path / "pristine.sqlite3"
    build_journal(pristine)
    shutil.copyfile(pristine, journal)
    table = pages_of(journal, "records", "leaf")
    damaged = [table[rnd.randrange(len(table))]]
    lost = rowids_on(journal, damaged[0])
    damaged.append(rnd.choice(pages_of(journal, "records_unsent", "leaf")))
    ruin(journal, damaged)
    expected = expected_rows(pristine, lost)

    config = write_config(tmp_path, emulator.url)
    emulator.go_down()  # the salvaged backlog stays in the journal for the comparison
    log = tmp_path / "agent.log"
    marker = tmp_path / "journal.sqlite3.salvage"
    kills = mid_salvage = 0
    stops: list[float] = []
    targets = sorted(rnd.uniform(5, 95) for _ in range(6))
    # early kills while it starts and opens the journal (a salvage of 20 000 rows may take
    # under a second on a fast machine), then kills at points of the salvage's own progress
    schedule: list[tuple[str, float]] = [("after", rnd.uniform(0.05, 0.4)) for _ in range(3)]
    schedule += [("progress", t) for t in targets]
    for n, (how, at) in enumerate(schedule):
        offset = log.stat().st_size if log.exists() else 0
        agent = start_agent(config, log)
        point = functools.partial(kill_point, log, offset, agent, time.monotonic(), how, at)
        eventually(point, timeout=60, what=f"the kill point {how} {at:.2f}")
        if "running" in log.read_text()[offset:]:
            stop(agent)  # past the salvage: a kill now would only add unknown outcomes
            break
        time.sleep(rnd.uniform(0, 0.05))
        if n == 5:  # once, a clean stop (SIGTERM) in the middle of the salvage
            started = time.monotonic()
            assert stop_agent(agent) == 0
            stops.append(time.monotonic() - started)
        else:
            agent.send_signal(signal.SIGKILL)
            agent.wait()
            kills += 1
        mid_salvage += marker.exists()
    agent = start_agent(config, log)
    try:
        eventually(lambda: "running" in log.read_text(), timeout=120, what="the agent running")
        status = cli("status", "--config", str(config)).stdout
    finally:
        stop(agent)
    rows = journal_rows(journal)
    aside = [p for p in tmp_path.glob("journal.sqlite3.corrupt-*") if "-" not in p.name[-4:]]
    report(
        "salvage-kills",
        rows=len(expected) + len(lost),
        readable=len(expected),
        recovered=len(rows),
        kills=kills,
        kills_mid_salvage=mid_salvage,
        sigterm_mid_salvage_s=[round(s, 2) for s in stops],
    )
    assert rows == expected, f"{len(rows)} rows in the journal, {len(expected)} readable"
    assert mid_salvage >= 3, f"only {mid_salvage} of {kills} kills landed during the salvage"
    assert all(s <= 5.0 for s in stops), f"SIGTERM during the salvage took {stops} s"
    assert len(aside) == 1 and not marker.exists()
    assert status.startswith("JOURNAL") and "RECOVERED" in status.splitlines()[0], status


def kill_point(
    log: Path,
    offset: int,
    agent: subprocess.Popen[bytes],
    started: float,
    how: str,
    at: float,
) -> bool:
    """``at`` seconds after the start ("after"), or the salvage ``at`` % done ("progress");
    or the agent is past the salvage already."""
    text = log.read_text()[offset:]
    if "running" in text or agent.poll() is not None:
        return True
    if how == "after":
        return time.monotonic() - started >= at
    done = [int(p) for p in re.findall(r"salvage of \S+: (\d+)%", text)]
    return bool(done) and done[-1] >= at
