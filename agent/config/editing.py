"""Editing the config file in place, for the technician's commands.

A technician's zone edit (``zones set``, ``zones remove``) changes the TOML file itself.
A zone name that does not match OPSCOM exactly turns a paid permit into a "disconnected
record" that enforcement never sees, so edits are checked against ``[zones] known`` (this
site's OPSCOM zone names) when it is set, with a "did you mean" hint. Edits keep the config
file's comments and layout (tomlkit), are atomic (a temp file renamed over the original,
with its mode kept), and are validated as a whole config before they are written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tomlkit
from tomlkit.items import Table

from agent.config.loading import parse_config
from agent.config.model import Config
from agent.errors import ConfigErrors, ZoneEditError
from agent.files import atomic_write
from drivers.options import suggest


@dataclass(frozen=True)
class ZoneEdit:
    """What an edit did, as saved: the code and name trimmed, the name it replaced (None:
    a new mapping), and whether the file changed at all (the same name again: it did not)."""

    code: str
    name: str | None
    previous: str | None

    @property
    def changed(self) -> bool:
        return self.name != self.previous


def set_zone(config: Config, code: str, name: str, *, force: bool = False) -> ZoneEdit:
    """Map ``code`` to ``name``, both trimmed as they are saved; nothing is written when the
    mapping is already so."""
    code, name = code.strip(), name.strip()
    if not code:
        raise ZoneEditError("the zone code is empty")
    if not name:
        raise ZoneEditError(
            f"zones.map.{code}: the zone name is empty; expected a zone name of 1-200 "
            "printable characters, exactly as in OPSCOM"
        )
    if config.zones.known and name not in config.zones.known and not force:
        raise ZoneEditError(
            f"{name!r} is not one of this site's OPSCOM zones (zones.known)"
            f"{suggest(name, config.zones.known)}; use --force to map it anyway"
        )

    edit = ZoneEdit(code, name, config.zones.map.get(code))
    if not edit.changed:
        return edit

    def change(zone_map: Any) -> None:
        zone_map[code] = name

    _edit(config, change)
    return edit


def remove_zone(config: Config, code: str) -> ZoneEdit:
    code = code.strip()
    if code not in config.zones.map:
        hint = suggest(code, list(config.zones.map))
        raise ZoneEditError(f"zone code {code!r} has no mapping{hint}")

    def change(zone_map: Any) -> None:
        del zone_map[code]

    _edit(config, change)
    return ZoneEdit(code, None, config.zones.map[code])


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
        parse_config(tomlkit.parse(text).unwrap(), source=path, sending=False)
    except ConfigErrors as exc:
        raise ZoneEditError(f"the edit would make the config invalid:\n{exc}") from None
    try:
        atomic_write(path, text)
    except OSError as exc:
        raise ZoneEditError(
            f"cannot write {path}: {exc.strerror or exc}; nothing was changed. "
            "Run it as a user who may write the config (root, with sudo)"
        ) from None
