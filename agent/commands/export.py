"""``export``: the journal as CSV, for reconciliation with the pay station's own reports.

One row per record, with the controller's ``reference_id``; filtered by state and by the
day the agent received the record (in the station's time zone, as a daily report is).
Read in batches, so a year of records streams through without filling memory.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta
from typing import TextIO
from zoneinfo import ZoneInfo

from agent.commands.common import end_progress, load, read_journal, show_progress
from agent.errors import AgentError
from agent.journal import Journal, Record, State
from agent.timestamps import utc_iso

COLUMNS = [
    "id",
    "station",
    "txn",
    "state",
    "received_utc",
    "sent_utc",
    "plate",
    "zone_code",
    "zone",
    "amount",
    "currency",
    "start_utc",
    "end_utc",
    "permit_no",
    "promo_code",
    "reference_id",
    "attempts",
    "already_existed",
    "unknown_outcomes",
    "last_error",
]


def cmd_export(args: argparse.Namespace) -> int:
    config = load(args)
    states = [State(s) for s in args.state] if args.state else None
    with read_journal(config) as journal:
        if args.output:
            try:
                out = open(args.output, "w", newline="", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise AgentError(
                    f"cannot write {args.output}: {exc.strerror}; "
                    "choose a file in a directory that exists and that you may write in"
                ) from None
            with out:
                n = export_csv(
                    journal,
                    out,
                    timezone=config.agent.timezone,
                    states=states,
                    since=args.since,
                    until=args.until,
                    progress=show_progress("exported"),
                )
        else:
            n = export_csv(
                journal,
                sys.stdout,
                timezone=config.agent.timezone,
                states=states,
                since=args.since,
                until=args.until,
                progress=show_progress("exported"),
            )
    end_progress()
    print(f"{n} record(s) exported", file=sys.stderr)
    return 0


def export_csv(
    journal: Journal,
    out: TextIO,
    *,
    timezone: ZoneInfo,
    states: Iterable[State] | None = None,
    since: date | None = None,
    until: date | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the selected records as CSV; return how many were written."""
    low = _day_start(since, timezone) if since else None
    high = _day_start(until + timedelta(days=1), timezone) if until else None
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    written = 0
    for record in journal.records(list(states) if states else None):
        if (low is not None and record.received_at < low) or (
            high is not None and record.received_at >= high
        ):
            continue
        writer.writerow(_row(record))
        written += 1
        if progress is not None and written % 1000 == 0:
            progress(written)
    return written


def _row(r: Record) -> list[str | int]:
    payload = r.payload or {}
    return [
        r.id,
        r.station,
        r.txn or "",
        r.state.value,
        utc_iso(r.received_at),
        utc_iso(r.sent_at) if r.sent_at else "",
        payload.get("LicencePlate") or r.fields.get("PLATE", ""),
        r.zone_code or "",
        payload.get("zone", ""),
        payload.get("Amount", ""),
        payload.get("CurrencyID", ""),
        payload.get("startTime", ""),
        payload.get("endTime", ""),
        payload.get("permitNo", ""),
        payload.get("promoCode", ""),
        r.reference_id or "",
        r.attempts,
        int(r.already_existed),
        r.unknown_outcomes,
        r.last_error or "",
    ]


def _day_start(day: date, zone: ZoneInfo) -> float:
    return datetime.combine(day, time(0), tzinfo=zone).timestamp()
