"""Hardware record → Push API payload, exactly as push-api.md decides.

A driver hands over the fields of one transaction under the reference protocol's names
(``TXN``, ``PLATE``, ``ZONE``, ``AMT``, ``CUR``, ``START``, ``END`` or ``MIN``, ``PROMO``,
``TICKET``, and ``PERMIT`` where a device has a permit number distinct from its receipt).
:func:`map_record` turns them into the payload the controller receives, without the API
token (inserted at send time), or raises :class:`MappingError` naming the field.

* ``permitNo`` is unique across the operator's fleet: station id, driver and receipt
  number by default, or the driver's ``permit_no`` form (see :mod:`agent.permits`).

Decisions that matter to a parking operator:

* Times are the device's local wall-clock time in the station's IANA zone, sent as UTC
  ``%Y-%m-%dT%H:%M:%S``. A local time that does not exist (the spring-forward gap) is read
  with the offset in force before the gap, i.e. moved forward by the gap's length. A local
  time that happens twice (the fall-back overlap) is the earlier instant for ``START``; for
  ``END`` it is the earliest instant that is not before the start, so a session that
  spans the change keeps its real length.
* Amounts are exact decimals with two places; a third decimal place is an error, never
  rounded. Zero means a free session: ``Amount`` (and ``CurrencyID``) are omitted.
* Plates are trimmed, upper-cased and, unless configured otherwise, stripped of spaces and
  dashes (LPR cameras compare plates without them).
* Zones are sent as the OPSCOM zone *name* mapped from the hardware's code. An unmapped code
  is held (the default), sent raw, or rejected, as ``[zones] unmapped`` says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from agent.config import Config, UnmappedPolicy
from agent.currency import CURRENCY_CODE
from agent.errors import MappingError
from agent.permits import DEFAULT_TEMPLATE, RECEIPT_ONLY, PermitForm, PermitNumbering

MAX_AMOUNT = Decimal("999999.99")
MIN_AMOUNT = Decimal("0.01")
CENT = Decimal("0.01")
MAX_SESSION = timedelta(days=31)

# The reference field names mapping reads (a device's other names need ``renames``).
FIELDS = ("TXN", "PERMIT", "PLATE", "ZONE", "AMT", "CUR", "START", "END", "MIN", "PROMO", "TICKET")

# Push API limits (push-api.md), by payload key.
LIMITS = {
    "LicencePlate": 25,
    "Amount": 9,
    "CurrencyID": 10,
    "startTime": 20,
    "endTime": 20,
    "permitNo": 50,
    "TicketNumber": 50,
    "zone": 200,
    "promoCode": 50,
}


@dataclass(frozen=True)
class MappingRules:
    """What mapping needs from the config; rebuilt on reload (SIGHUP, zone edits)."""

    timezone: ZoneInfo
    currency: str
    zone_map: Mapping[str, str]
    unmapped: UnmappedPolicy = "hold"
    keep_plate_separators: bool = False
    numbering: PermitNumbering = RECEIPT_ONLY

    @classmethod
    def from_config(cls, config: Config) -> MappingRules:
        station = config.agent.station_id
        forms = {d.name: PermitForm.parse(d.permit_no, station, d.name) for d in config.drivers}
        return cls(
            timezone=config.agent.timezone,
            currency=config.controller.currency,
            zone_map=dict(config.zones.map),
            unmapped=config.zones.unmapped,
            keep_plate_separators=config.agent.keep_plate_separators,
            numbering=PermitNumbering(station, forms, DEFAULT_TEMPLATE),
        )


@dataclass(frozen=True)
class Mapped:
    """A record ready for the journal: its payload, or ``None`` while its zone is unmapped."""

    payload: dict[str, str] | None
    zone_code: str | None
    ends_at: float  # UTC epoch seconds: sessions still running are sent first after an outage
    starts_at: float = 0.0  # UTC epoch seconds: compared with this PC's clock

    @property
    def held(self) -> bool:
        return self.payload is None


def map_record(
    fields: Mapping[str, str],
    rules: MappingRules,
    *,
    source: str = "",
    txn: str | None = None,
    record_id: int | None = None,
) -> Mapped:
    """Build the Push API payload (without token) from one hardware record's fields.

    Every field is validated before the zone decides whether the record is held, so a held
    record is one that only needs a zone mapping, never one that will fail afterwards.

    ``source`` is the driver's name, ``txn`` the TXN as journaled (it differs from the
    field for a reused receipt number) and ``record_id`` the journal id, when known. A
    record without a receipt number is numbered from its journal id: before it has one,
    its ``permitNo`` is empty and :func:`permit_number` fills it in the journal's insert.
    """
    permit = permit_number(fields, rules, source, txn, record_id)
    plate = normalise_plate(_text(fields, "PLATE", required=True), rules.keep_plate_separators)
    start, end = _session_times(fields, rules.timezone)
    amount = _amount(fields.get("AMT"))
    currency = ""
    if amount is not None:
        currency = _text(fields, "CUR").upper() or rules.currency
        if not CURRENCY_CODE.fullmatch(currency):
            raise MappingError("CUR", f"expected a currency code such as CAD, got {currency!r}")
    promo = _text(fields, "PROMO")
    if promo:
        _limited("PROMO", promo, LIMITS["promoCode"])
    ticket = _text(fields, "TICKET")
    if ticket:
        _limited("TICKET", ticket, LIMITS["TicketNumber"])

    ends_at, starts_at = end.timestamp(), start.timestamp()
    zone_code = _text(fields, "ZONE") or None
    zone = None
    if zone_code is not None:
        zone = rules.zone_map.get(zone_code)
        if zone is None:
            if rules.unmapped == "reject":
                raise MappingError("ZONE", f"zone code {zone_code!r} has no mapping in [zones.map]")
            if rules.unmapped == "hold":
                return Mapped(None, zone_code, ends_at, starts_at)
            zone = zone_code
        zone = _limited("ZONE", zone, LIMITS["zone"])

    payload: dict[str, str] = {}  # in the vendor's key order
    if amount is not None:
        payload["Amount"] = amount
        payload["CurrencyID"] = currency
    payload["LicencePlate"] = plate
    if zone is not None:
        payload["zone"] = zone
    payload["permitNo"] = permit or ""
    payload["startTime"] = wire_time(start)
    payload["endTime"] = wire_time(end)
    if promo:
        payload["promoCode"] = promo
    if ticket:
        payload["TicketNumber"] = ticket
    return Mapped(payload, zone_code, ends_at, starts_at)


def permit_number(
    fields: Mapping[str, str],
    rules: MappingRules,
    source: str,
    txn: str | None = None,
    record_id: int | None = None,
) -> str | None:
    """A record's ``permitNo`` under the rules' numbering (see :mod:`agent.permits`): its
    receipt number is ``PERMIT`` when the device sends one, else the TXN as journaled.
    None while it has no receipt number and no journal id yet."""
    field = "PERMIT" if _text(fields, "PERMIT") else "TXN"
    receipt = _text(fields, "PERMIT") or (txn or "").strip() or _text(fields, "TXN")
    number = rules.numbering.number(source, receipt or None, record_id, field)
    return None if number is None else _limited(field, number, LIMITS["permitNo"])


def normalise_plate(plate: str, keep_separators: bool = False) -> str:
    value = plate.strip(" ").upper()
    if not value.isprintable():
        raise MappingError("PLATE", f"contains control characters: {value!r}")
    if not keep_separators:
        value = re.sub(r"[ -]+", "", value)
    if not value:
        raise MappingError("PLATE", "empty after removing spaces and dashes")
    return _limited("PLATE", value, LIMITS["LicencePlate"])


def to_utc(
    local: str, zone: ZoneInfo, field: str, *, not_before: datetime | None = None
) -> datetime:
    """Read a device timestamp: naive means the station's local time; an offset is honoured."""
    try:
        parsed = datetime.fromisoformat(local.strip())
    except ValueError:
        raise MappingError(
            field, f"expected a time like 2018-07-02T05:00:00, got {local!r}"
        ) from None
    try:
        if parsed.tzinfo is not None:
            return parsed.astimezone(UTC).replace(microsecond=0)
        if parsed.microsecond:
            parsed = parsed.replace(microsecond=0)
        # fold=0: the earlier instant of an overlap; in a gap, the offset before it, which
        # is the later instant. Either way the answer, unless it is before ``not_before``.
        first = parsed.replace(tzinfo=zone, fold=0).astimezone(UTC)
        if not_before is None or first >= not_before:
            return first
        second = parsed.replace(tzinfo=zone, fold=1).astimezone(UTC)
    except (OverflowError, ValueError):
        raise MappingError(field, f"time {local!r} is outside the range that can be sent") from None
    if first <= second and not_before <= second:  # an overlap: its later instant is not before
        return second
    return first


def _session_times(fields: Mapping[str, str], zone: ZoneInfo) -> tuple[datetime, datetime]:
    start = to_utc(_text(fields, "START", required=True), zone, "START")
    end_text, minutes_text = _text(fields, "END"), _text(fields, "MIN")
    if end_text:
        end = to_utc(end_text, zone, "END", not_before=start)
    elif minutes_text:
        try:
            minutes = int(minutes_text)
        except ValueError:
            raise MappingError("MIN", f"expected whole minutes, got {minutes_text!r}") from None
        if minutes <= 0:
            raise MappingError("MIN", f"expected a positive number of minutes, got {minutes}")
        try:
            end = start + timedelta(minutes=minutes)
        except OverflowError:
            raise MappingError("MIN", f"{minutes} minutes is out of range") from None
    else:
        raise MappingError("END", "missing: the record needs END or MIN")
    if end <= start:
        raise MappingError("END", f"ends at or before its start ({end:%Y-%m-%dT%H:%M:%S}Z)")
    if end - start > MAX_SESSION:
        raise MappingError(
            "END" if end_text else "MIN",
            f"a session of {end - start} is longer than {MAX_SESSION.days} days",
        )
    if not (start.year >= 2000 and end.year <= 9998):
        raise MappingError("START", f"year {start.year} is not a plausible sale")
    return start, end


def _amount(text: str | None) -> str | None:
    """The wire form of an amount, or ``None`` for a free session."""
    if text is None or not text.strip():
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise MappingError(
            "AMT", f"expected a decimal amount such as 14.50, got {text!r}"
        ) from None
    if not value.is_finite():
        raise MappingError("AMT", f"expected a decimal amount, got {text!r}")
    if value == 0:
        return None
    if value < MIN_AMOUNT or value > MAX_AMOUNT:
        raise MappingError("AMT", f"{text} is outside 0.01 to 999999.99")
    if value != value.quantize(CENT):
        raise MappingError(
            "AMT", f"{text} has more than two decimal places; amounts are never rounded"
        )
    return f"{value.quantize(CENT):f}"


def wire_time(moment: datetime) -> str:
    """A UTC time as the Push API takes it: ``2018-07-02T05:00:00``, whole seconds, no
    offset (isoformat, a tenth of strftime's cost; years are 2000-9998, four digits)."""
    return moment.isoformat(timespec="seconds")[:19]  # the "+00:00" cut off


def _text(fields: Mapping[str, str], name: str, *, required: bool = False) -> str:
    value = fields.get(name)
    text = "" if value is None else str(value).strip()
    if not text and required:
        raise MappingError(name, "missing")
    return text


def _limited(field: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise MappingError(field, f"{len(value)} characters is over the limit of {limit}")
    if not value.isprintable():
        raise MappingError(field, f"contains control characters: {value!r}")
    return value
