"""``dead``: records that were not delivered and need a person.

``rejected`` (invalid at the source, never sent) and ``dead`` (refused by the controller),
named so wherever a person reads them (:data:`MEANS`):
a technician lists them, looks at one (the raw hardware bytes, the payload, every
attempt's answer), fixes the cause (most often a zone mapping, or while onboarding a new
model a missing ``renames``) and requeues them: rejected ones are read again from their
raw bytes, all are re-mapped with the current config, so the fix applies, and the running
service is told to pick them up.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from agent.commands.common import (
    end_progress,
    load,
    read_journal,
    show_progress,
    tell_service,
)
from agent.commands.status import DEAD_MEANS, REJECTED_MEANS
from agent.config import Config
from agent.intake import Intake
from agent.journal import Journal, Record, Reread, State
from agent.mapping import MappingRules
from drivers.serial_port import SerialOptions

UNDELIVERED = (State.REJECTED, State.DEAD)
MEANS = {State.DEAD: DEAD_MEANS, State.REJECTED: REJECTED_MEANS}
# an attempt's outcome as `dead show` names it: the controller's refusal is not "rejected"
OUTCOME_WORDS = {"rejected": "refused", "conflict": "refused (conflict)"}


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


def show(journal: Journal, record_id: int, timezone: ZoneInfo | None = None) -> str | None:
    record = journal.get(record_id)
    if record is None:
        return None
    lines = [
        f"record     {record.id} ({record.state.value}"
        + (f": {MEANS[record.state]})" if record.state in MEANS else ")"),
        f"station    {record.station}   TXN {record.txn or '-'}   from {record.source}",
        f"received   {_utc(record.received_at)} UTC ({_local(record.received_at, timezone)})",
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
        sent_at = record.sent_at or 0
        lines.append(
            f"delivered  {_utc(sent_at)} UTC ({_local(sent_at, timezone)}), "
            f"reference_id {record.reference_id}"
        )
    failures = journal.attempts(record_id)  # a delivery is on the record, not in this list
    lines.append(f"attempts   {record.attempts}" + (", failures:" if failures else ""))
    for a in failures:
        status = a.status if a.status is not None else "-"
        outcome = OUTCOME_WORDS.get(a.outcome, a.outcome)
        lines.append(f"  {_utc(a.at)}  {outcome:<18} HTTP {status}  {a.error or ''}")
        if a.body:
            lines.append(f"    body: {a.body[:500]}")
    return "\n".join(lines)


def requeue(
    journal: Journal,
    station_id: str,
    rules: MappingRules,
    ids: list[int] | None,
    progress: Callable[[int], None] | None = None,
    reread: Reread | None = None,
) -> dict[State, int]:
    """Re-map the given undelivered records (all when ``ids`` is None) with the current
    rules; they become pending, held (zone still unmapped) or stay rejected. With
    ``reread``, rejected records are first read again from their raw bytes."""
    intake = Intake(journal, station_id, rules)
    return intake.remap(UNDELIVERED, ids, progress=progress, reread=reread)


def reader(config: Config) -> Reread:
    """Reads a rejected record's raw bytes as its driver now would: the serial drivers'
    current ``format`` and ``renames`` (the raw bytes are the payload inside the frame,
    so the framing has been checked already). A record of another kind of driver, or
    of one no longer configured, keeps its fields."""
    readers = {
        d.name: d.options.read_fields
        for d in config.drivers
        if isinstance(d.options, SerialOptions)
    }

    def reread(raw: bytes, source: str) -> tuple[dict[str, str], str | None] | None:
        read = readers.get(source)
        return None if read is None else read(raw)

    return reread


def cmd_list(args: argparse.Namespace) -> int:
    config = load(args)
    states = (State(args.state),) if args.state else UNDELIVERED
    with read_journal(config) as journal:
        lines = list_lines(undelivered(journal, states))
        count = 0
        for line in lines:
            print(line)
            count += 1
    if count == 1:
        print("(none)")
    else:
        print(f"dead: {DEAD_MEANS}; rejected: {REJECTED_MEANS}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    config = load(args)
    record_id: int = args.id
    with read_journal(config) as journal:
        text = show(journal, record_id, config.agent.timezone)
    if text is None:
        print(
            f"paystation-agent: no record {record_id} in the journal; see: dead list",
            file=sys.stderr,
        )
        return 1
    print(text)
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    config = load(args)
    ids: list[int] | None = None if args.all else args.ids
    rules = MappingRules.from_config(config)
    with read_journal(config) as journal:
        refused = [] if ids is None else _not_undelivered(journal, ids)
        if ids is not None and ids and len(refused) == len(set(ids)):
            for line in refused:
                print(f"paystation-agent: {line}", file=sys.stderr)
            return 1
        counts = requeue(
            journal,
            config.agent.station_id,
            rules,
            ids,
            progress=show_progress("requeued"),
            reread=reader(config),
        )
    end_progress()
    total = sum(counts.values())
    for line in refused:
        print(f"paystation-agent: {line}", file=sys.stderr)
    if ids is None and not total:
        print("nothing to requeue: no dead or rejected records")
        return 0
    print(
        f"requeued {total}: {counts.get(State.PENDING, 0)} to send, "
        f"{counts.get(State.HELD, 0)} held (zone not mapped), "
        f"{counts.get(State.REJECTED, 0)} still invalid"
    )
    if counts.get(State.PENDING):
        tell_service(config)
    return 1 if refused else 0


def _not_undelivered(journal: Journal, ids: list[int]) -> list[str]:
    """One line for each id that cannot be requeued, saying why."""
    lines = []
    for record_id in sorted(set(ids)):
        record = journal.get(record_id)
        if record is None:
            lines.append(f"record {record_id}: no such record in the journal")
        elif record.state not in UNDELIVERED:
            lines.append(
                f"record {record_id} is {record.state.value}, not dead or rejected: not requeued"
            )
    return lines


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _local(epoch: float, zone: ZoneInfo | None) -> str:
    """The same moment in the station's time, for a person beside the UTC one."""
    return datetime.fromtimestamp(epoch, zone or UTC).strftime("%Y-%m-%d %H:%M:%S %Z")
