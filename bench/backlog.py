"""A long outage's backlog, built quickly but through the real journal API: each record is
mapped as the intake maps it and appended with group commits (``Journal.append_many``).
Used by the benchmarks and by the long-outage scenario."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from agent.journal import Journal, NewRecord, State
from agent.mapping import MappingRules, map_record
from drivers.records import format_kv, parse_kv

ZONE = ZoneInfo("America/Toronto")
RULES = MappingRules(ZONE, "CAD", {str(n): f"Lot {n}" for n in range(1, 5)})


def sale_bytes(txn: str, n: int, start: str, end: str) -> bytes:
    """A reference-protocol record, as a meter sends it."""
    fields = {
        "TXN": txn,
        "PLATE": f"P{n:07d}",
        "ZONE": str(1 + n % 4),
        "AMT": f"{1 + n % 9}.50",
        "START": start,
        "END": end,
    }
    return format_kv(fields)


def session_times() -> tuple[tuple[str, str], tuple[str, str]]:
    """(START, END) in the station's local time of a session that ended two days ago, and
    of one bought ten minutes ago that runs two more hours."""
    now = time.time()

    def local(offset_s: float) -> str:
        return datetime.fromtimestamp(now + offset_s, ZONE).strftime("%Y-%m-%dT%H:%M:%S")

    return (local(-2 * 86400), local(-2 * 86400 + 3600)), (local(-600), local(7200))


def fill(
    path: Path,
    count: int,
    *,
    running: int = 0,
    station: str = "PS-BENCH",
    batch: int = 1_000,
    prefix: str = "L",
) -> list[str]:
    """Journal ``count`` pending records (the last ``running`` of them sessions that have
    not ended yet); return their TXNs in journal order."""
    ended, still_running = session_times()
    txns = [f"{prefix}-{n}" for n in range(count)]
    with Journal(path) as journal:
        for low in range(0, count, batch):
            records = []
            for n in range(low, min(low + batch, count)):
                start, end = still_running if n >= count - running else ended
                raw = sale_bytes(txns[n], n, start, end)
                fields = parse_kv(raw)
                mapped = map_record(fields, RULES)
                record = NewRecord(
                    station, txns[n], "meter-1", raw, fields, mapped.payload,
                    State.PENDING, mapped.zone_code, mapped.ends_at,
                )  # fmt: skip
                records.append(record)
            journal.append_many(records)
    return txns
