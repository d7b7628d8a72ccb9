"""Scenario-suite settings: `make test` runs short, seeded versions; `make soak` sets
PAYSTATION_SOAK=1 for long ones. Every figure a scenario measures is printed and, when
PAYSTATION_SOAK_REPORT names a file, appended to it as one JSON line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent.journal import Journal
from drivers.records import parse_kv

SOAK = os.environ.get("PAYSTATION_SOAK") == "1"
SEED = int(os.environ.get("PAYSTATION_SOAK_SEED", "20261128"))


def report(name: str, **figures: Any) -> None:
    line = json.dumps({"scenario": name, "seed": SEED, "soak": SOAK, **figures})
    print(line)
    path = os.environ.get("PAYSTATION_SOAK_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")


def fill_journal(
    path: Path, pending: int, sent: int = 0, prefix: str = "T", running: int = 0
) -> list[str]:
    """A journal as the service leaves it, through the real intake and journal API: ``sent``
    delivered records (with a reference_id), then ``pending`` ones, of which the last
    ``running`` are sessions that have not ended yet. Returns the TXNs in journal order."""
    from agent.journal import Attempt, Journal, State
    from bench.backlog import session_times

    txns = [f"{prefix}-{n}" for n in range(sent + pending)]

    (start, end), (now_start, now_end) = session_times()  # America/Toronto, as rules()
    ended = {"START": start, "END": end}
    still_running = {"START": now_start, "END": now_end}
    with Journal(path) as journal:
        for n, txn in enumerate(txns):
            times = still_running if n >= len(txns) - running else ended
            submit_sale(journal, txn, PLATE=f"P{n:06d}", **times)
        for claim in journal.claim(sent):
            journal.record_attempt(
                claim.id,
                Attempt("delivered", State.SENT, 200, None, "", reference_id=f"R-{claim.id}"),
            )
    return txns


def submit_sale(journal: Journal, txn: str, **fields: str) -> None:
    """One sale through the real intake (mapping, then one durable append), as a driver
    hands it over."""
    from agent.intake import Intake
    from drivers.base import HardwareRecord
    from tests.test_serial import rules, sale

    raw = sale(txn, **fields)
    Intake(journal, "PS-TEST", rules()).submit(HardwareRecord(raw, parse_kv(raw), "meter-1"))


def fill_fast(path: Path, pending: int, running: int = 0) -> list[str]:
    """A long outage's backlog by group commits through the real journal API (the path the
    benchmarks use). The last ``running`` records are sessions that have not ended yet."""
    from bench.backlog import fill

    return fill(path, pending, running=running, station="PS-TEST")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")
