"""Technicians' zone mappings: hardware zone code → OPSCOM zone name.

A zone name that does not match OPSCOM exactly turns a paid permit into a "disconnected
record" that enforcement never sees, so edits are checked against ``[zones] known`` (this
site's OPSCOM zone names) when it is set, with a "did you mean" hint. Edits keep the config
file's comments and layout (tomlkit), are atomic (a temp file renamed over the original,
with its mode kept), are validated as a whole config before they are written, and tell a
running service to reload so held records are released without a restart.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Table

from agent.config import Config, parse_config, suggest
from agent.errors import AgentError, ConfigErrors
from agent.journal import Journal


class ZoneEditError(AgentError):
    """A zone edit refused before anything was written."""


@dataclass(frozen=True)
class UnmappedZone:
    code: str
    held: int
    oldest_held_s: float | None
    records: int


def set_zone(config: Config, code: str, name: str, *, force: bool = False) -> None:
    code, name = code.strip(), name.strip()
    if not code:
        raise ZoneEditError("the zone code is empty")
    if config.zones.known and name not in config.zones.known and not force:
        raise ZoneEditError(
            f"{name!r} is not one of this site's OPSCOM zones (zones.known)"
            f"{suggest(name, config.zones.known)}; use --force to map it anyway"
        )

    def change(zone_map: Any) -> None:
        zone_map[code] = name

    _edit(config, change)


def remove_zone(config: Config, code: str) -> None:
    if code not in config.zones.map:
        hint = suggest(code, list(config.zones.map))
        raise ZoneEditError(f"zone code {code!r} has no mapping{hint}")

    def change(zone_map: Any) -> None:
        del zone_map[code]

    _edit(config, change)


def unmapped_zones(journal: Journal, zone_map: Mapping[str, str]) -> list[UnmappedZone]:
    """Zone codes seen in the journal without a mapping, with their held records."""
    now = time.time()
    return [
        UnmappedZone(code, held, now - oldest if oldest is not None else None, records)
        for code, held, oldest, records in journal.zone_codes()
        if code not in zone_map
    ]


def _edit(config: Config, change: Callable[[Any], None]) -> None:
    path = config.source
    if path is None:
        raise ZoneEditError("this configuration has no file to edit")
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    zones = document.get("zones")
    if zones is None:
        zones = tomlkit.table()
        document["zones"] = zones
    zone_map = zones.get("map")
    if zone_map is None:
        zone_map = tomlkit.table()
        zones["map"] = zone_map
    if not isinstance(zone_map, Table | dict):
        raise ZoneEditError(f"{path}: zones.map is not a table")
    change(zone_map)
    text = tomlkit.dumps(document)
    try:  # the edited file must still be a valid config before it replaces the old one
        parse_config(tomlkit.parse(text).unwrap(), source=path)
    except ConfigErrors as exc:
        raise ZoneEditError(f"the edit would make the config invalid:\n{exc}") from None
    atomic_write(path, text)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old or the new file.

    The new file keeps the old one's mode, owner and group: root editing a config that
    belongs to the service's group must not make it unreadable for the service.
    """
    old = path.stat() if path.exists() else None
    mode = old.st_mode & 0o777 if old else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
