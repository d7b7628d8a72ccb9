"""Records that were not delivered and need a person: ``rejected`` (invalid at the source,
never sent) and ``dead`` (refused by the controller). A technician lists them, looks at one
(the raw hardware bytes, the payload, every attempt's answer), fixes the cause (most often
a zone mapping) and requeues them: they are re-mapped with the current config, so the fix
applies, and the running service is told to pick them up.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from agent.intake import Intake
from agent.journal import Journal, Record, State
from agent.mapping import MappingRules

UNDELIVERED = (State.REJECTED, State.DEAD)


def undelivered(journal: Journal, states: tuple[State, ...] = UNDELIVERED) -> Iterator[Record]:
    return journal.records(list(states))


def list_lines(records: Iterator[Record]) -> Iterator[str]:
    yield (
        f"{'id':>7}  {'state':<8} {'received (UTC)':<19}  {'TXN':<14} {'plate':<10} "
        f"{'zone':<6} reason"
    )
    for r in records:
        plate = (r.fields.get("PLATE") or "")[:10]
        reason = (r.last_error or "").replace("\n", " ")[:70]
        yield (
            f"{r.id:>7}  {r.state.value:<8} {_utc(r.received_at):<19}  {(r.txn or '-')[:14]:<14} "
            f"{plate:<10} {(r.zone_code or '-')[:6]:<6} {reason}"
        )


def show(journal: Journal, record_id: int) -> str | None:
    record = journal.get(record_id)
    if record is None:
        return None
    lines = [
        f"record     {record.id} ({record.state.value})",
        f"station    {record.station}   TXN {record.txn or '-'}   from {record.source}",
        f"received   {_utc(record.received_at)} UTC",
        f"reason     {record.last_error or '-'}",
        f"raw bytes  {record.raw!r}",
        f"fields     {json.dumps(record.fields, ensure_ascii=False)}",
        "payload    "
        + (
            json.dumps(record.payload, ensure_ascii=False) + "   (the token is added at send time)"
            if record.payload
            else "- (never became a payload)"
        ),
    ]
    if record.reference_id:
        lines.append(
            f"delivered  {_utc(record.sent_at or 0)} UTC, reference_id {record.reference_id}"
        )
    failures = journal.attempts(record_id)  # a delivery is on the record, not in this list
    lines.append(f"attempts   {record.attempts}" + (", failures:" if failures else ""))
    for a in failures:
        status = a.status if a.status is not None else "-"
        lines.append(f"  {_utc(a.at)}  {a.outcome:<17} HTTP {status}  {a.error or ''}")
        if a.body:
            lines.append(f"    body: {a.body[:500]}")
    return "\n".join(lines)


def requeue(
    journal: Journal,
    station_id: str,
    rules: MappingRules,
    ids: list[int] | None,
    progress: Callable[[int], None] | None = None,
) -> dict[State, int]:
    """Re-map the given undelivered records (all when ``ids`` is None) with the current
    rules; they become pending, held (zone still unmapped) or stay rejected."""
    intake = Intake(journal, station_id, rules)
    return intake.remap(UNDELIVERED, ids, progress=progress)


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
