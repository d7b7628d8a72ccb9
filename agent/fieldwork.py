"""The technicians' commands: ``zones``, ``dead`` and ``export``.

Technicians work on site, often over SSH with little time: each command says what it did
in one or two lines, refuses mistakes before writing anything (a zone name that is not one
of the site's OPSCOM zones), and tells a running service to reload so that a fix applies
at once. Long operations show progress on a terminal and stay quiet in pipes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.deadletters import UNDELIVERED, list_lines, requeue, show, undelivered
from agent.errors import AgentError
from agent.export import export_csv
from agent.journal import Journal, State
from agent.mapping import MappingRules
from agent.service import signal_reload
from agent.status import format_age
from agent.zones import remove_zone, set_zone, unmapped_zones

ConfigLoader = Callable[[argparse.Namespace], Config]


def add_commands(sub: Any, common: argparse.ArgumentParser, load: ConfigLoader) -> None:
    """Register the commands on the CLI's subparsers."""
    zones = sub.add_parser("zones", parents=[common], help="hardware zone code → OPSCOM zone name")
    zsub = zones.add_subparsers(dest="action", metavar="ACTION", required=True)
    zsub.add_parser("list", parents=[common], help="the mappings").set_defaults(
        handler=lambda a: zones_list(load(a))
    )
    zset = zsub.add_parser("set", parents=[common], help="map CODE to the OPSCOM zone NAME")
    zset.add_argument("code")
    zset.add_argument("name")
    zset.add_argument("--force", action="store_true", help="map even a name not in zones.known")
    zset.set_defaults(handler=lambda a: zones_set(load(a), a.code, a.name, a.force))
    zrm = zsub.add_parser("remove", parents=[common], help="remove the mapping of CODE")
    zrm.add_argument("code")
    zrm.set_defaults(handler=lambda a: zones_remove(load(a), a.code))
    zsub.add_parser(
        "unmapped", parents=[common], help="zone codes seen without a mapping, held records"
    ).set_defaults(handler=lambda a: zones_unmapped(load(a)))

    dead = sub.add_parser(
        "dead", parents=[common], help="records refused by the controller or invalid at the source"
    )
    dsub = dead.add_subparsers(dest="action", metavar="ACTION", required=True)
    dlist = dsub.add_parser("list", parents=[common], help="dead and rejected records")
    dlist.add_argument("--state", choices=["dead", "rejected"], help="only this state")
    dlist.set_defaults(handler=lambda a: dead_list(load(a), a.state))
    dshow = dsub.add_parser("show", parents=[common], help="one record: raw bytes, attempts")
    dshow.add_argument("id", type=int)
    dshow.set_defaults(handler=lambda a: dead_show(load(a), a.id))
    dreq = dsub.add_parser(
        "requeue", parents=[common], help="re-map with the current config and send again"
    )
    target = dreq.add_mutually_exclusive_group(required=True)
    target.add_argument("ids", nargs="*", type=int, default=[], metavar="ID")
    target.add_argument("--all", action="store_true", help="every dead and rejected record")
    dreq.set_defaults(handler=lambda a: dead_requeue(load(a), None if a.all else a.ids))

    export = sub.add_parser(
        "export", parents=[common], help="the journal as CSV, for reconciliation"
    )
    export.add_argument(
        "--from",
        dest="since",
        type=date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="first day (station local time) the record was received",
    )
    export.add_argument(
        "--to",
        dest="until",
        type=date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="last day, inclusive",
    )
    export.add_argument(
        "--state",
        action="append",
        choices=[s.value for s in State],
        help="only these states (repeat)",
    )
    export.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    export.set_defaults(handler=lambda a: export_cmd(load(a), a))


def zones_list(config: Config) -> int:
    if not config.zones.map:
        print("no zone mappings; add one with: paystation-agent zones set CODE NAME")
    width = max((len(code) for code in config.zones.map), default=4)
    for code, name in sorted(config.zones.map.items()):
        flag = (
            "" if not config.zones.known or name in config.zones.known else "   NOT IN zones.known"
        )
        print(f"{code.ljust(width)}  →  {name}{flag}")
    print(f"unmapped codes: {config.zones.unmapped}")
    return 0


def zones_set(config: Config, code: str, name: str, force: bool) -> int:
    previous = config.zones.map.get(code)
    set_zone(config, code, name, force=force)
    change = f"was {previous!r}" if previous is not None else "new"
    print(f"zone {code!r} → {name!r} ({change}); saved to {config.source}")
    _tell_service(config)
    return 0


def zones_remove(config: Config, code: str) -> int:
    remove_zone(config, code)
    print(f"zone {code!r} removed; its records will be {config.zones.unmapped}")
    _tell_service(config)
    return 0


def zones_unmapped(config: Config) -> int:
    with _open(config) as journal:
        rows = unmapped_zones(journal, config.zones.map)
    if not rows:
        print("every zone code in the journal is mapped")
        return 0
    print(f"{'code':<10} {'held':>6} {'oldest held':>12} {'records':>8}")
    for row in rows:
        print(f"{row.code:<10} {row.held:>6} {format_age(row.oldest_held_s):>12} {row.records:>8}")
    print('map one with: paystation-agent zones set CODE "OPSCOM zone name"')
    return 0


def dead_list(config: Config, state: str | None) -> int:
    states = (State(state),) if state else UNDELIVERED
    with _open(config) as journal:
        lines = list_lines(undelivered(journal, states))
        count = 0
        for line in lines:
            print(line)
            count += 1
    if count == 1:
        print("(none)")
    return 0


def dead_show(config: Config, record_id: int) -> int:
    with _open(config) as journal:
        text = show(journal, record_id)
    if text is None:
        print(f"no record {record_id} in the journal", file=sys.stderr)
        return 1
    print(text)
    return 0


def dead_requeue(config: Config, ids: list[int] | None) -> int:
    rules = MappingRules.from_config(config)
    with _open(config) as journal:
        counts = requeue(
            journal, config.agent.station_id, rules, ids, progress=_progress("requeued")
        )
    _end_progress()
    total = sum(counts.values())
    if ids is not None and total < len(set(ids)):
        print(
            f"{len(set(ids)) - total} of the ids are not dead or rejected records", file=sys.stderr
        )
    print(
        f"requeued {total}: {counts.get(State.PENDING, 0)} to send, "
        f"{counts.get(State.HELD, 0)} held (zone not mapped), "
        f"{counts.get(State.REJECTED, 0)} still invalid"
    )
    if counts.get(State.PENDING):
        _tell_service(config)
    return 0 if total else 1


def export_cmd(config: Config, args: argparse.Namespace) -> int:
    states = [State(s) for s in args.state] if args.state else None
    with _open(config) as journal:
        if args.output:
            with open(args.output, "w", newline="", encoding="utf-8") as out:
                n = export_csv(
                    journal,
                    out,
                    timezone=config.agent.timezone,
                    states=states,
                    since=args.since,
                    until=args.until,
                    progress=_progress("exported"),
                )
        else:
            n = export_csv(
                journal,
                sys.stdout,
                timezone=config.agent.timezone,
                states=states,
                since=args.since,
                until=args.until,
                progress=_progress("exported"),
            )
    _end_progress()
    print(f"{n} record(s) exported", file=sys.stderr)
    return 0


def _open(config: Config) -> Journal:
    if not config.agent.journal.exists():
        raise AgentError(f"no journal yet at {config.agent.journal} (the service has not run)")
    return Journal(config.agent.journal)


def _tell_service(config: Config) -> None:
    if signal_reload(config.agent.journal):
        print("the running service was told to reload (SIGHUP)")
    else:
        print("the service is not running; the change applies when it starts")


def _progress(verb: str) -> Callable[[int], None] | None:
    if not sys.stderr.isatty():
        return None
    return lambda n: print(f"\r{verb} {n}…", end="", file=sys.stderr, flush=True)


def _end_progress() -> None:
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr, flush=True)
