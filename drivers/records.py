"""Record formats: the bytes inside a frame ↔ the fields of one transaction.

``kv`` is the reference protocol's ``KEY=VALUE|KEY=VALUE`` in UTF-8; ``json`` is one JSON
object with the same keys (any case). Both are pure functions. A device that uses other
key names is handled by a rename table from the driver's config, not by code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from agent.errors import RecordFormatError


def parse_kv(payload: bytes, renames: Mapping[str, str] | None = None) -> dict[str, str]:
    text = _decode(payload)
    fields: dict[str, str] = {}
    offset = 0
    for part in text.split("|"):
        if part.strip():
            key, sep, value = part.partition("=")
            key = key.strip().upper()
            if not sep or not key:
                raise RecordFormatError(
                    f"field at character {offset} is not KEY=VALUE: {part[:40]!r}"
                )
            key = _rename(key, renames)
            if key in fields:
                raise RecordFormatError(f"field {key} appears twice (character {offset})")
            fields[key] = value.strip()
        offset += len(part) + 1
    if not fields:
        raise RecordFormatError("empty record")
    return fields


def format_kv(fields: Mapping[str, str]) -> bytes:
    for key, value in fields.items():
        if "|" in key + value or "=" in key:
            raise ValueError(f"{key!r}={value!r} cannot be written as kv")
    return "|".join(f"{k}={v}" for k, v in fields.items()).encode("utf-8")


def parse_json(payload: bytes, renames: Mapping[str, str] | None = None) -> dict[str, str]:
    text = _decode(payload)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordFormatError(f"not JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(doc, dict):
        raise RecordFormatError(f"expected a JSON object, got {type(doc).__name__}")
    fields: dict[str, str] = {}
    for key, value in doc.items():
        if value is None:
            continue
        if isinstance(value, dict | list):
            raise RecordFormatError(f"field {key!r}: expected a scalar, got {type(value).__name__}")
        name = _rename(str(key).upper(), renames)
        if name in fields:
            raise RecordFormatError(f"field {name} appears twice (as {key!r})")
        fields[name] = str(value)
    return fields


PARSERS = {"kv": parse_kv, "json": parse_json}
# C0 control characters that no record's text holds (tab, CR and LF may appear)
_CONTROL = frozenset(range(32)) - {0x09, 0x0A, 0x0D}


def is_text(payload: bytes) -> bool:
    """Could ``payload`` be a record at all? Every format is UTF-8 text without control
    characters, and not blank. Random line noise almost never is: of the frames it makes
    that pass an 8-bit checksum by chance (8 per MB), most are not UTF-8 and the commonest
    of the rest is the empty frame ``STX ETX ETX``. So noise is told apart from a device's
    bad record, which is text and is kept for a person to see."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(text.strip()) and not _CONTROL.intersection(payload)


def _decode(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordFormatError(f"not UTF-8 at byte {exc.start}") from None


def _rename(key: str, renames: Mapping[str, str] | None) -> str:
    return renames.get(key, key) if renames else key
