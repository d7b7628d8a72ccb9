"""A long outage: a backlog journaled while the controller was down (10 000 records in
``make test``, 100 000 in ``make soak``), then the controller returns. Everything drains,
each sale once; sessions still running go first; and the agent's memory does not grow with
the backlog: its peak RSS draining the big backlog is compared with its peak draining a
small one, in the same run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from agent.emulator import ControllerEmulator
from tests.conftest import TOKEN, cli, eventually, start_agent, write_config
from tests.scenarios.conftest import SOAK, fill_fast, peak_rss_mb, report
from tests.test_serial import stop

BIG = 100_000 if SOAK else 10_000
SMALL = 500
RUNNING = 40


def drain(tmp_path: Path, count: int) -> tuple[float, float, list[str]]:
    """Journal ``count`` records, start the agent, wait until a controller of its own has
    them all: (peak RSS in MB, seconds to drain, TXNs in the order they arrived)."""
    tmp_path.mkdir()
    with ControllerEmulator(token=TOKEN) as emulator:
        peak, seconds = _drain(tmp_path, emulator, count)
        return peak, seconds, [a.payload["permitNo"] for a in emulator.accepted]


def _drain(tmp_path: Path, emulator: ControllerEmulator, count: int) -> tuple[float, float]:
    fill_fast(tmp_path / "journal.sqlite3", count, running=RUNNING)
    config = write_config(tmp_path, emulator.url)
    log = tmp_path / "agent.log"
    agent = start_agent(config, log)
    started = time.monotonic()
    try:
        eventually(
            lambda: len(emulator.accepted) >= count,
            timeout=count / 50 + 60,
            what=f"{count} records delivered",
        )
        seconds = time.monotonic() - started
        peak = peak_rss_mb(agent.pid)
        status = json.loads(cli("status", "--json", "--config", str(config)).stdout)
    finally:
        stop(agent)
    assert status["pending"] == 0 and status["sent"] == count
    return peak, seconds


def test_a_long_outage_drains_running_sessions_first_in_flat_memory(tmp_path: Path) -> None:
    small_peak, _, _ = drain(tmp_path / "small", SMALL)
    big_peak, seconds, delivered = drain(tmp_path / "big", BIG)
    assert len(delivered) == len(set(delivered)) == BIG, "each sale exactly once"
    running = {f"L-{n}" for n in range(BIG - RUNNING, BIG)}
    first = delivered[: RUNNING + 8]  # a few requests in flight may overtake
    assert running <= set(first), "sessions still running did not go first"
    grew = f"{small_peak:.0f} MB for {SMALL}, {big_peak:.0f} MB for {BIG}"
    assert big_peak < small_peak + 15, f"memory grew with the backlog: {grew}"
    report(
        "long-outage",
        records=BIG,
        drain_s=round(seconds, 1),
        records_per_s=round(BIG / seconds),
        peak_rss_mb_small=round(small_peak, 1),
        peak_rss_mb_big=round(big_peak, 1),
    )
