"""Rendering the resolved config as TOML, for ``check-config``.

``check-config`` prints what the agent will run with: every key of every table, defaults
included, as a TOML document (tomlkit) that reads back as the same config. A key that is
not set (no value, where TOML has no null) is shown as a comment. The token never appears:
only where it is read from (``controller.token_file``) and a placeholder in a comment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import tomlkit
from tomlkit.items import KeyType, SingleKey, Table

from agent.config.model import Config
from agent.hours import OpeningHours

TOKEN_NOTE = 'token = "********"  (found, never shown)'


def render_config(config: Config) -> str:
    document = tomlkit.document()
    document.add("agent", _table(_fields(config.agent)))
    document.add("controller", _table(_fields(config.controller), {"token_file": TOKEN_NOTE}))
    zones = _fields(config.zones)
    zone_map = zones.pop("map")
    zones_table = _table(zones)
    codes = tomlkit.table()
    for code, name in zone_map.items():  # quoted, as zone codes are strings ("4")
        codes.add(SingleKey(code, t=KeyType.Basic), name)
    zones_table.add("map", codes)
    document.add("zones", zones_table)
    metrics = _fields(config.metrics)
    listen = metrics["listen"]
    if listen is not None:
        host, port = listen
        metrics["listen"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    document.add("metrics", _table(metrics))
    drivers = tomlkit.aot()
    for driver in config.drivers:
        keys: dict[str, Any] = {
            "kind": driver.kind,
            "name": driver.name,
            "permit_no": driver.permit_no,
        }
        drivers.append(_table(keys | _options(driver.options)))
    if config.drivers:
        document.add("drivers", drivers)
    return tomlkit.dumps(document).rstrip("\n")


def _fields(settings: Any) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


def _options(options: Any) -> dict[str, Any]:
    """A driver's own options, parsed (a dataclass) or as read (a mapping)."""
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        return _fields(options)
    return dict(options)


def _table(keys: Mapping[str, Any], notes: Mapping[str, str] | None = None) -> Table:
    """The keys in order; ``notes`` adds a comment line after the key it names."""
    table = tomlkit.table()
    for key, value in keys.items():
        if value is None:
            table.add(tomlkit.comment(f"{key}: not set"))
        else:
            table.add(key, _value(value))
        if notes and key in notes:
            table.add(tomlkit.comment(notes[key]))
    return table


def _value(value: Any) -> Any:
    if isinstance(value, ZoneInfo | Path | OpeningHours):
        return str(value)
    if isinstance(value, tuple | list):
        return [_value(v) for v in value]
    if isinstance(value, Mapping):  # keys quoted, as the config writes them ("PLATENO")
        inline = tomlkit.inline_table()
        for k, v in value.items():
            inline.append(SingleKey(str(k), t=KeyType.Basic), _value(v))
        return inline
    return value
