"""The Push API's record rules, as the controller applies them: one reading of push-api.md.

Why on its own: this is the independent check of the agent's payloads. It is written from
the vendor's documentation (``push-api.md``: field names and their aliases, limits, error
codes) and never from the agent's mapping, so a mistake there is not mirrored here.

Contract: ``validate`` and ``check_token`` return ``(error_code, message)`` for the first
rule broken (the message names the field), or None; ``check_record`` and ``parse_object``
raise ``Rejected`` instead, for the request handling that stops at the first problem.
Nothing here does I/O or keeps state.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

TOKEN_KEY = "apiToken"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
PLATE_MAX = 25
AMOUNT_MAX_CHARS = 9
AMOUNT_MIN = Decimal("0.01")
AMOUNT_MAX = Decimal("999999.99")

# Error codes (vendor's "API Error Codes" page)
E_TOKEN_MISSING = 9001
E_TOKEN_DENIED = 9002
E_PARSE = 9003
E_END_REQUIRED = 9004
E_END_INVALID = 9005
E_PLATE_REQUIRED = 9006
E_PLATE_TOO_LONG = 9021
E_DUPLICATE = 9022
E_TOO_LONG = 9030
E_REQUIRED = 9031
E_INVALID = 9033

DUPLICATE_MESSAGE = "A record already exists with the supplied details"

# canonical field name -> every spelling the controller accepts (the first is the send-as name)
ALIASES: dict[str, tuple[str, ...]] = {
    "LicencePlate": ("LicencePlate", "plate", "LicensePlate"),
    "Amount": ("Amount", "amount"),
    "CurrencyID": ("CurrencyID", "currency"),
    "startTime": ("startTime", "StartDateUtc"),
    "endTime": ("endTime", "EndDateUtc"),
    "permitNo": ("permitNo",),
    "TicketNumber": ("TicketNumber",),
    "zone": ("zone", "ParkingZoneName"),
    "promoCode": ("promoCode",),
}
_CANONICAL = {alias: name for name, aliases in ALIASES.items() for alias in aliases}

# fields whose only rule beyond "a string" is a length limit (too long -> 9030)
_MAX_LENGTHS = {"CurrencyID": 10, "permitNo": 50, "TicketNumber": 50, "promoCode": 50, "zone": 200}

_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")
_AMOUNT_RE = re.compile(r"[0-9]+\.[0-9]{2}")
TOKEN_RE = re.compile(r"[A-Za-z0-9-]{1,50}")

DEDUPE_MODES = ("record", "permit")  # what makes a push a repeat of an accepted one

Problem = tuple[int, str]


class Rejected(Exception):
    """A request the controller refuses: an error code and a message naming the field."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def validate(payload: Mapping[str, object]) -> Problem | None:
    """Check one push payload against the record rules of push-api.md.

    Returns ``(error_code, message)`` for the first rule broken, or None when the record is
    valid. ``apiToken`` may be present (its format is then checked, 9001/9002) or absent:
    whether a token is required and which one is the job of ``check_token``.
    """
    try:
        check_record(payload)
    except Rejected as rejected:
        return rejected.code, rejected.message
    return None


def check_token(payload: Mapping[str, object], expected: str | None) -> Problem | None:
    """Check ``apiToken``: 9001 when missing, 9002 when malformed or not ``expected``."""
    value = payload.get(TOKEN_KEY)
    if value is None or value == "":
        return E_TOKEN_MISSING, f"{TOKEN_KEY}: missing"
    if not isinstance(value, str) or not TOKEN_RE.fullmatch(value):
        return E_TOKEN_DENIED, f"{TOKEN_KEY}: must be 1-50 letters, digits or dashes"
    if expected is not None and not hmac.compare_digest(value, expected):
        return E_TOKEN_DENIED, f"{TOKEN_KEY}: not permitted to create permits"
    return None


def check_record(payload: Mapping[str, object]) -> dict[str, str]:
    """Raise Rejected for the first broken rule; return the fields by canonical name."""
    fields = _canonical_fields(payload)
    _check_plate(fields)
    _check_times(fields)
    _check_amount(fields)
    _check_lengths(fields)
    return fields


def _canonical_fields(payload: Mapping[str, object]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for key, value in payload.items():
        if key == TOKEN_KEY:
            _check_token_format(value)
            continue
        name = _CANONICAL.get(key)
        if name is None:
            raise Rejected(E_PARSE, f"{key!r}: unknown field")
        if name in fields:
            raise Rejected(E_PARSE, f"{key!r}: {name} given twice under different names")
        if not isinstance(value, str):
            raise Rejected(E_INVALID, f"{key}: must be a JSON string, not {_json_type(value)}")
        fields[name] = value
    return fields


def _check_token_format(value: object) -> None:
    if value is None or value == "":
        raise Rejected(E_TOKEN_MISSING, f"{TOKEN_KEY}: missing")
    if not isinstance(value, str) or not TOKEN_RE.fullmatch(value):
        raise Rejected(E_TOKEN_DENIED, f"{TOKEN_KEY}: must be 1-50 letters, digits or dashes")


def _check_plate(fields: Mapping[str, str]) -> None:
    plate = fields.get("LicencePlate", "")
    if not plate.strip():
        raise Rejected(E_PLATE_REQUIRED, "LicencePlate: required")
    if len(plate) > PLATE_MAX:
        raise Rejected(
            E_PLATE_TOO_LONG, f"LicencePlate: {len(plate)} characters, at most {PLATE_MAX}"
        )


def _check_times(fields: Mapping[str, str]) -> None:
    end_text = fields.get("endTime", "")
    if not end_text:
        raise Rejected(E_END_REQUIRED, "endTime: required")
    start_text = fields.get("startTime", "")
    if not start_text:
        raise Rejected(E_REQUIRED, "startTime: required")
    start = _parse_time(start_text)
    if start is None:
        raise Rejected(E_INVALID, f"startTime: {_time_problem(start_text)}")
    end = _parse_time(end_text)
    if end is None:
        raise Rejected(E_END_INVALID, f"endTime: {_time_problem(end_text)}")
    if end <= start:
        raise Rejected(E_END_INVALID, f"endTime: {end_text} is not after startTime {start_text}")


def _parse_time(text: str) -> datetime | None:
    if not _TIME_RE.fullmatch(text):
        return None
    try:
        return datetime.strptime(text, TIME_FORMAT)
    except ValueError:
        return None


def _time_problem(text: str) -> str:
    return f"{_shorten(text)} is not a UTC time formatted YYYY-MM-DDTHH:MM:SS"


def _check_amount(fields: Mapping[str, str]) -> None:
    amount = fields.get("Amount")
    if amount is None:
        return
    if len(amount) > AMOUNT_MAX_CHARS:
        raise Rejected(E_TOO_LONG, f"Amount: {len(amount)} characters, at most {AMOUNT_MAX_CHARS}")
    if not _AMOUNT_RE.fullmatch(amount):
        raise Rejected(E_INVALID, f"Amount: {_shorten(amount)} is not a decimal like 14.50")
    if not AMOUNT_MIN <= Decimal(amount) <= AMOUNT_MAX:
        raise Rejected(E_INVALID, f"Amount: {amount} is outside {AMOUNT_MIN}..{AMOUNT_MAX}")


def _check_lengths(fields: Mapping[str, str]) -> None:
    for name, limit in _MAX_LENGTHS.items():
        value = fields.get(name)
        if value is not None and len(value) > limit:
            raise Rejected(E_TOO_LONG, f"{name}: {len(value)} characters, at most {limit}")


def duplicate_key(fields: Mapping[str, str], dedupe: str) -> tuple[str, ...] | None:
    """What makes a push a repeat (9022) of an accepted one under ``dedupe``; None: never."""
    permit = fields.get("permitNo")
    if permit is None:
        return None
    if dedupe == "permit":
        return (permit,)
    return permit, fields["LicencePlate"], fields["startTime"], fields["endTime"]


def parse_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; Rejected (9003) when it is not one."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected(E_PARSE, f"body: not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise Rejected(E_PARSE, f"body: must be a JSON object, not {_json_type(payload)}")
    return payload


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _shorten(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
