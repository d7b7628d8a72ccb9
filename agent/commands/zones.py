"""``zones``: technicians' zone mappings, hardware zone code → OPSCOM zone name.

``list`` shows them, ``set`` and ``remove`` edit the config file (checked and written by
:mod:`agent.config_editing`) and tell a running service to reload, so held records are
released without a restart; ``unmapped`` shows the zone codes seen in the journal without
a mapping, with their held records.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import dataclass

from agent.commands.common import load, read_journal, tell_service
from agent.commands.status import format_age
from agent.config.editing import remove_zone, set_zone
from agent.journal import Journal


@dataclass(frozen=True)
class UnmappedZone:
    code: str
    held: int
    oldest_held_s: float | None
    records: int


def unmapped_zones(journal: Journal, zone_map: Mapping[str, str]) -> list[UnmappedZone]:
    """Zone codes seen in the journal without a mapping, with their held records."""
    now = time.time()
    return [
        UnmappedZone(code, held, now - oldest if oldest is not None else None, records)
        for code, held, oldest, records in journal.zone_codes()
        if code not in zone_map
    ]


def cmd_list(args: argparse.Namespace) -> int:
    config = load(args)
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


UNMAPPED_WORDS = {
    "hold": "held until it is mapped again",
    "send": "sent with the hardware's code as the zone name",
    "reject": "rejected (invalid at the source)",
}


def cmd_set(args: argparse.Namespace) -> int:
    config = load(args)
    edit = set_zone(config, args.code, args.name, force=args.force)
    if not edit.changed:
        print(f"zone {edit.code!r} → {edit.name!r} already; nothing changed")
        return 0
    change = f"was {edit.previous!r}" if edit.previous is not None else "new"
    print(f"zone {edit.code!r} → {edit.name!r} ({change}); saved to {config.source}")
    tell_service(config)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    config = load(args)
    edit = remove_zone(config, args.code)
    policy = config.zones.unmapped
    print(
        f"zone {edit.code!r} removed (was {edit.previous!r}); saved to {config.source}; "
        f"new records with this code will be {UNMAPPED_WORDS[policy]} "
        f'(zones.unmapped = "{policy}")'
    )
    tell_service(config)
    return 0


def cmd_unmapped(args: argparse.Namespace) -> int:
    config = load(args)
    with read_journal(config) as journal:
        rows = unmapped_zones(journal, config.zones.map)
    if not rows:
        print("(none): every zone code in the journal is mapped")
        return 0
    print(f"{'code':<10} {'held':>6} {'oldest held':>12} {'records':>8}")
    for row in rows:
        print(f"{row.code:<10} {row.held:>6} {format_age(row.oldest_held_s):>12} {row.records:>8}")
    print('map one with: paystation-agent zones set CODE "OPSCOM zone name"')
    return 0
