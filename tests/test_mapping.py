"""Hardware record → Push API payload (agent/mapping.py), against push-api.md.

Every payload here is what the controller would receive (minus apiToken, added at send
time); an officer's handheld shows exactly these values, so they are compared exactly.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent.errors import MappingError
from agent.mapping import Mapped, MappingRules, map_record

TORONTO = ZoneInfo("America/Toronto")
LONDON = ZoneInfo("Europe/London")
RULES = MappingRules(TORONTO, "CAD", {"4": "Lot 4"})

VENDOR_FIELDS = {
    "TXN": "L4-1138",
    "PLATE": "PL8RDR",
    "ZONE": "4",
    "AMT": "14.50",
    "CUR": "CAD",
    "START": "2018-07-02T05:00:00",
    "END": "2018-07-02T05:30:00",
    "PROMO": "DISCOUNT20",
}
# push-api.md's vendor example, without apiToken.
VENDOR_PAYLOAD = {
    "Amount": "14.50",
    "CurrencyID": "CAD",
    "LicencePlate": "PL8RDR",
    "zone": "Lot 4",
    "permitNo": "L4-1138",
    "startTime": "2018-07-02T09:00:00",
    "endTime": "2018-07-02T09:30:00",
    "promoCode": "DISCOUNT20",
}
# The vendor's raw HTTP request body (seed-push-api-permit-create.txt), blank lines removed.
VENDOR_TEXT = """{
    "apiToken": "YOUR-API-TOKEN",
    "Amount": "14.50",
    "CurrencyID": "CAD",
    "LicencePlate": "PL8RDR",
    "zone": "Lot 4",
    "permitNo": "L4-1138",
    "startTime": "2018-07-02T09:00:00",
    "endTime": "2018-07-02T09:30:00",
    "promoCode": "DISCOUNT20"
}"""

# push-api.md: the keys the agent sends, and each one's length limit.
VENDOR_LIMITS = {
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
WIRE_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def minimal(**changes: str | None) -> dict[str, str]:
    """A valid record with only the required fields, changed; ``None`` removes a field."""
    fields: dict[str, str | None] = {
        "TXN": "000123",
        "PLATE": "PL8RDR",
        "START": "2018-07-02T05:00:00",
        "END": "2018-07-02T05:30:00",
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not None}


def payload_of(fields: dict[str, str], rules: MappingRules = RULES) -> dict[str, str]:
    mapped = map_record(fields, rules)
    assert mapped.payload is not None
    return mapped.payload


def mapping_error(fields: dict[str, str], rules: MappingRules = RULES) -> MappingError:
    with pytest.raises(MappingError) as info:
        map_record(fields, rules)
    return info.value


def times(
    start: str, end: str | None = None, *, zone: ZoneInfo = TORONTO, **extra: str
) -> tuple[str, str]:
    """(startTime, endTime) sent for a session given in local time."""
    fields = minimal(START=start, END=end, **extra)
    payload = payload_of(fields, MappingRules(zone, "CAD", {}))
    return payload["startTime"], payload["endTime"]


# --- the vendor example -----------------------------------------------------------------


def test_vendor_example_gives_exactly_the_vendor_payload() -> None:
    mapped = map_record(VENDOR_FIELDS, RULES)
    assert mapped == Mapped(
        VENDOR_PAYLOAD,
        "4",
        ends_at=datetime(2018, 7, 2, 9, 30, tzinfo=UTC).timestamp(),
        starts_at=datetime(2018, 7, 2, 9, 0, tzinfo=UTC).timestamp(),
    )
    assert not mapped.held


def test_vendor_example_serialises_in_the_vendor_key_order() -> None:
    payload = payload_of(VENDOR_FIELDS)
    assert json.dumps({"apiToken": "YOUR-API-TOKEN", **payload}, indent=4) == VENDOR_TEXT


def test_ticket_and_a_separate_permit_number_are_sent() -> None:
    payload = payload_of({**VENDOR_FIELDS, "PERMIT": "P-77", "TICKET": "T-99"})
    assert payload["permitNo"] == "P-77"
    assert payload["TicketNumber"] == "T-99"
    assert list(payload)[-1] == "TicketNumber"


def test_record_currency_wins_over_the_station_default() -> None:
    assert payload_of(minimal(AMT="2.00", CUR="usd"))["CurrencyID"] == "USD"
    assert payload_of(minimal(AMT="2.00"))["CurrencyID"] == "CAD"


# --- times and DST ------------------------------------------------------------------------


def test_summer_and_winter_offsets_of_toronto() -> None:
    assert times("2018-07-02T05:00:00", "2018-07-02T05:30:00") == (
        "2018-07-02T09:00:00",
        "2018-07-02T09:30:00",
    )
    assert times("2018-01-15T05:00:00", "2018-01-15T05:30:00") == (
        "2018-01-15T10:00:00",
        "2018-01-15T10:30:00",
    )


def test_spring_forward_gap_is_read_with_the_offset_before_the_gap() -> None:
    # 02:30 does not exist on 2026-03-08 in Toronto. fold=0 reads it as EST (-05:00),
    # i.e. 07:30Z (= 03:30 EDT), the gap's length later than 02:30 EDT would be.
    assert times("2026-03-08T02:30:00", "2026-03-08T04:00:00") == (
        "2026-03-08T07:30:00",
        "2026-03-08T08:00:00",
    )


def test_spring_forward_gap_as_end_time() -> None:
    assert times("2026-03-08T01:30:00", "2026-03-08T02:30:00") == (
        "2026-03-08T06:30:00",
        "2026-03-08T07:30:00",
    )


def test_fall_back_overlap_start_is_the_earlier_instant() -> None:
    # 01:30 happens twice on 2026-11-01: 05:30Z (EDT) and 06:30Z (EST).
    assert times("2026-11-01T01:30:00", "2026-11-01T03:00:00") == (
        "2026-11-01T05:30:00",
        "2026-11-01T08:00:00",
    )


def test_session_spanning_the_fall_back_ends_at_the_second_occurrence() -> None:
    # Paid at 01:50 EDT, 20 minutes, ends at 01:10 EST: the meter's END is before its START.
    assert times("2026-11-01T01:50:00", "2026-11-01T01:10:00") == (
        "2026-11-01T05:50:00",
        "2026-11-01T06:10:00",
    )


def test_session_inside_the_repeated_hour_is_read_as_its_first_occurrence() -> None:
    assert times("2026-11-01T01:10:00", "2026-11-01T01:40:00") == (
        "2026-11-01T05:10:00",
        "2026-11-01T05:40:00",
    )


def test_same_local_start_and_end_in_the_repeated_hour_is_still_rejected() -> None:
    error = mapping_error(minimal(START="2026-11-01T01:40:00", END="2026-11-01T01:40:00"))
    assert error.field == "END"


def test_europe_london_gap_overlap_and_spanning_session() -> None:
    # 2026-03-29: 01:00 GMT -> 02:00 BST; 2026-10-25: 02:00 BST -> 01:00 GMT.
    assert times("2026-03-29T01:30:00", "2026-03-29T03:00:00", zone=LONDON) == (
        "2026-03-29T01:30:00",
        "2026-03-29T02:00:00",
    )
    assert times("2026-10-25T01:30:00", "2026-10-25T02:30:00", zone=LONDON) == (
        "2026-10-25T00:30:00",
        "2026-10-25T02:30:00",
    )
    assert times("2026-10-25T01:50:00", "2026-10-25T01:10:00", zone=LONDON) == (
        "2026-10-25T00:50:00",
        "2026-10-25T01:10:00",
    )


def test_minutes_are_real_minutes_across_spring_forward() -> None:
    # 01:45 EST + 30 real minutes = 03:15 EDT (a wall clock would say 02:15).
    assert times("2026-03-08T01:45:00", None, MIN="30") == (
        "2026-03-08T06:45:00",
        "2026-03-08T07:15:00",
    )


def test_minutes_are_real_minutes_across_fall_back() -> None:
    # 00:45 EDT + 90 real minutes = 01:15 EST.
    assert times("2026-11-01T00:45:00", None, MIN="90") == (
        "2026-11-01T04:45:00",
        "2026-11-01T06:15:00",
    )


def test_minutes_across_london_clock_change() -> None:
    assert times("2026-03-29T00:45:00", None, zone=LONDON, MIN="30") == (
        "2026-03-29T00:45:00",
        "2026-03-29T01:15:00",
    )


def test_explicit_offset_is_honoured_whatever_the_station_zone() -> None:
    assert times("2018-07-02T09:00:00+00:00", "2018-07-02T05:30:00-04:00") == (
        "2018-07-02T09:00:00",
        "2018-07-02T09:30:00",
    )
    assert times("2018-07-02T09:00:00Z", "2018-07-02T09:30:00Z", zone=LONDON) == (
        "2018-07-02T09:00:00",
        "2018-07-02T09:30:00",
    )


def test_fractions_of_a_second_are_dropped() -> None:
    assert times("2018-07-02T05:00:00.750", "2018-07-02T05:30:00.250") == (
        "2018-07-02T09:00:00",
        "2018-07-02T09:30:00",
    )


def test_ends_at_is_the_end_instant() -> None:
    mapped = map_record(minimal(START="2026-11-01T01:50:00", END="2026-11-01T01:10:00"), RULES)
    assert mapped.ends_at == datetime(2026, 11, 1, 6, 10, tzinfo=UTC).timestamp()


# --- required fields and bad sessions --------------------------------------------------------


@pytest.mark.parametrize("field", ["PLATE", "START"])
@pytest.mark.parametrize("absent", [None, "", "   "], ids=["missing", "empty", "blank"])
def test_required_field_missing(field: str, absent: str | None) -> None:
    error = mapping_error(minimal(**{field: absent}))
    assert (error.field, str(error)) == (field, f"{field}: missing")


def test_end_and_minutes_both_missing() -> None:
    error = mapping_error(minimal(END=None))
    assert (error.field, str(error)) == ("END", "END: missing: the record needs END or MIN")


@pytest.mark.parametrize("end", ["2018-07-02T05:00:00", "2018-07-02T04:59:59"])
def test_end_at_or_before_start_is_rejected(end: str) -> None:
    error = mapping_error(minimal(END=end))
    assert error.field == "END"
    assert "ends at or before its start" in str(error)


def test_31_days_is_accepted_and_32_rejected() -> None:
    assert times("2018-07-02T05:00:00", "2018-08-02T05:00:00")[1] == "2018-08-02T09:00:00"
    error = mapping_error(minimal(END="2018-08-03T05:00:00"))
    assert error.field == "END"
    assert str(error) == "END: a session of 32 days, 0:00:00 is longer than 31 days"


@pytest.mark.parametrize("minutes", ["0", "-5", "1.5", "abc", "30min"])
def test_bad_minutes_are_rejected(minutes: str) -> None:
    assert mapping_error(minimal(END=None, MIN=minutes)).field == "MIN"


def test_too_many_minutes_names_the_minutes_field() -> None:
    assert mapping_error(minimal(END=None, MIN="50000")).field == "MIN"


@pytest.mark.parametrize(
    "start",
    [
        "0001-01-01T00:00:00",  # year 1
        "1999-12-31T12:00:00",  # before any sale this agent could see
        "07/02/2018 05:00",
        "2018-13-02T05:00:00",
        "2018-07-02T25:00:00",
        "yesterday",
        "2018-07-02T05:00:00+25:00",
    ],
)
def test_implausible_or_malformed_start_is_rejected(start: str) -> None:
    error = mapping_error(minimal(START=start, END=None, MIN="30"))
    assert error.field == "START"


def test_year_one_says_so() -> None:
    error = mapping_error(minimal(START="0001-01-01T00:00:00", END="0001-01-01T01:00:00"))
    assert str(error) == "START: year 1 is not a plausible sale"


def test_malformed_start_quotes_what_it_got() -> None:
    error = mapping_error(minimal(START="07/02/2018 05:00"))
    assert str(error) == "START: expected a time like 2018-07-02T05:00:00, got '07/02/2018 05:00'"


def test_malformed_end_names_end() -> None:
    assert mapping_error(minimal(END="2018-07-02 5h30")).field == "END"


@pytest.mark.parametrize(
    ("start", "end"),
    [("9999-12-31T22:00:00", "9999-12-31T23:00:00"), ("0001-01-01T00:00:00+01:00", None)],
)
def test_times_outside_what_can_be_sent_are_mapping_errors(start: str, end: str | None) -> None:
    error = mapping_error(minimal(START=start, END=end, MIN="30"))
    assert error.field in {"START", "END"}


# --- field limits -------------------------------------------------------------------------


def test_plate_of_25_is_sent_and_26_rejected() -> None:
    assert payload_of(minimal(PLATE="A" * 25))["LicencePlate"] == "A" * 25
    error = mapping_error(minimal(PLATE="A" * 26))
    assert (error.field, str(error)) == ("PLATE", "PLATE: 26 characters is over the limit of 25")


def test_plate_limit_counts_after_removing_separators() -> None:
    assert payload_of(minimal(PLATE="ABCDE-" * 5))["LicencePlate"] == "ABCDE" * 5


def test_zone_name_of_200_from_the_map_and_201_rejected() -> None:
    ok = MappingRules(TORONTO, "CAD", {"4": "Z" * 200})
    assert payload_of(minimal(ZONE="4"), ok)["zone"] == "Z" * 200
    too_long = MappingRules(TORONTO, "CAD", {"4": "Z" * 201})
    assert mapping_error(minimal(ZONE="4"), too_long).field == "ZONE"


def test_raw_zone_code_of_200_sent_and_201_rejected() -> None:
    send = MappingRules(TORONTO, "CAD", {}, unmapped="send")
    assert payload_of(minimal(ZONE="9" * 200), send)["zone"] == "9" * 200
    error = mapping_error(minimal(ZONE="9" * 201), send)
    assert (error.field, str(error)) == ("ZONE", "ZONE: 201 characters is over the limit of 200")


@pytest.mark.parametrize(
    ("field", "key"), [("PROMO", "promoCode"), ("TICKET", "TicketNumber"), ("TXN", "permitNo")]
)
def test_fifty_character_fields(field: str, key: str) -> None:
    assert payload_of(minimal(**{field: "P" * 50}))[key] == "P" * 50
    error = mapping_error(minimal(**{field: "P" * 51}))
    assert error.field == field
    assert "51 characters" in str(error) and "over the limit of 50" in str(error)


def test_permit_number_of_50_is_sent() -> None:
    assert payload_of(minimal(PERMIT="P" * 50))["permitNo"] == "P" * 50


def test_permit_number_of_51_is_rejected_naming_permit() -> None:
    error = mapping_error(minimal(PERMIT="P" * 51))
    assert error.field == "PERMIT"


def test_currency_of_10_is_sent_and_11_rejected() -> None:
    assert payload_of(minimal(AMT="1.00", CUR="ABCDEFGHIJ"))["CurrencyID"] == "ABCDEFGHIJ"
    error = mapping_error(minimal(AMT="1.00", CUR="ABCDEFGHIJK"))
    assert (error.field, str(error)) == (
        "CUR",
        "CUR: expected a currency code such as CAD, got 'ABCDEFGHIJK'",
    )


@pytest.mark.parametrize(
    ("amount", "sent"),
    [
        ("999999.99", "999999.99"),
        ("0.01", "0.01"),
        ("14.5", "14.50"),
        ("14", "14.00"),
        (" 2.50 ", "2.50"),
    ],
)
def test_amount_is_sent_with_two_decimals(amount: str, sent: str) -> None:
    payload = payload_of(minimal(AMT=amount))
    assert (payload["Amount"], payload["CurrencyID"]) == (sent, "CAD")


@pytest.mark.parametrize("amount", ["0", "0.00", "", "  "])
def test_free_session_has_no_amount_and_no_currency(amount: str) -> None:
    payload = payload_of(minimal(AMT=amount, CUR="USD", PROMO="FREEPARK"))
    assert payload == {
        "LicencePlate": "PL8RDR",
        "permitNo": "000123",
        "startTime": "2018-07-02T09:00:00",
        "endTime": "2018-07-02T09:30:00",
        "promoCode": "FREEPARK",
    }


@pytest.mark.parametrize(
    "amount", ["1000000.00", "1.234", "0.001", "-1", "-0.01", "abc", "NaN", "Infinity", "-inf"]
)
def test_bad_amount_is_rejected_never_rounded(amount: str) -> None:
    error = mapping_error(minimal(AMT=amount))
    assert error.field == "AMT"


def test_amount_with_a_third_decimal_says_it_is_not_rounded() -> None:
    error = mapping_error(minimal(AMT="1.234"))
    assert str(error) == "AMT: 1.234 has more than two decimal places; amounts are never rounded"


# --- plates --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plate", "keep", "sent"),
    [
        (" pl8-rdr ", False, "PL8RDR"),
        ("pl8 rdr", False, "PL8RDR"),
        ("ABCD 123", False, "ABCD123"),
        ("pl8-rdr", True, "PL8-RDR"),
        (" abcd 123 ", True, "ABCD 123"),
        ("Québec1", False, "QUÉBEC1"),
    ],
)
def test_plate_is_normalised(plate: str, keep: bool, sent: str) -> None:
    rules = MappingRules(TORONTO, "CAD", {}, keep_plate_separators=keep)
    assert payload_of(minimal(PLATE=plate), rules)["LicencePlate"] == sent


@pytest.mark.parametrize("plate", ["-", "---", " - - "])
def test_plate_of_only_separators_is_rejected(plate: str) -> None:
    error = mapping_error(minimal(PLATE=plate))
    assert (error.field, str(error)) == ("PLATE", "PLATE: empty after removing spaces and dashes")


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\u200b"])
def test_plate_with_control_characters_is_rejected(char: str, keep: bool) -> None:
    rules = MappingRules(TORONTO, "CAD", {}, keep_plate_separators=keep)
    error = mapping_error(minimal(PLATE=f"PL8{char}RDR"), rules)
    assert error.field == "PLATE"
    assert "control characters" in str(error)


@pytest.mark.parametrize("char", ["\x1c", "\x1f", "\x85"])
def test_plate_with_separator_control_characters_is_rejected(char: str) -> None:
    error = mapping_error(minimal(PLATE=f"PL8{char}RDR"))
    assert error.field == "PLATE"


# --- zones ---------------------------------------------------------------------------------


def test_mapped_zone_code_is_sent_as_the_opscom_name() -> None:
    mapped = map_record(minimal(ZONE=" 4 "), RULES)
    assert mapped.payload is not None
    assert (mapped.payload["zone"], mapped.zone_code) == ("Lot 4", "4")


def test_unmapped_zone_is_held_by_default() -> None:
    mapped = map_record(minimal(ZONE="9"), RULES)
    assert mapped.held
    assert (mapped.payload, mapped.zone_code) == (None, "9")
    assert mapped.ends_at == datetime(2018, 7, 2, 9, 30, tzinfo=UTC).timestamp()


def test_unmapped_zone_sent_raw_when_configured() -> None:
    rules = MappingRules(TORONTO, "CAD", {"4": "Lot 4"}, unmapped="send")
    assert payload_of(minimal(ZONE="9"), rules)["zone"] == "9"
    assert payload_of(minimal(ZONE="4"), rules)["zone"] == "Lot 4"


def test_unmapped_zone_rejected_when_configured() -> None:
    rules = MappingRules(TORONTO, "CAD", {"4": "Lot 4"}, unmapped="reject")
    error = mapping_error(minimal(ZONE="9"), rules)
    assert (error.field, str(error)) == (
        "ZONE",
        "ZONE: zone code '9' has no mapping in [zones.map]",
    )


@pytest.mark.parametrize("zone", [None, "", "  "])
def test_record_without_zone_has_no_zone_key(zone: str | None) -> None:
    mapped = map_record(minimal(ZONE=zone), MappingRules(TORONTO, "CAD", {}, unmapped="reject"))
    assert mapped.payload is not None
    assert "zone" not in mapped.payload
    assert mapped.zone_code is None


def test_unmapped_zone_still_rejects_an_invalid_plate() -> None:
    assert mapping_error(minimal(ZONE="9", PLATE="A" * 26)).field == "PLATE"


@pytest.mark.parametrize("field", ["PROMO", "TICKET", "PERMIT"])
def test_unmapped_zone_still_rejects_an_over_long_field(field: str) -> None:
    mapping_error(minimal(ZONE="9", **{field: "X" * 51}))


# --- properties -----------------------------------------------------------------------------

ZONES = [
    ZoneInfo(name)
    for name in (
        "America/Toronto",
        "Europe/London",
        "Australia/Lord_Howe",
        "Asia/Kolkata",
        "Pacific/Chatham",
        "UTC",
    )
]
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _exists(local: datetime, zone: ZoneInfo) -> bool:
    aware = local.replace(tzinfo=zone)
    return aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == local


@st.composite
def valid_records(draw: st.DrawFn) -> tuple[dict[str, str], MappingRules, datetime, int, bool]:
    zone = draw(st.sampled_from(ZONES))
    start = draw(
        st.datetimes(datetime(2001, 1, 1), datetime(2090, 12, 31), allow_imaginary=False)
    ).replace(microsecond=0)
    assume(_exists(start, zone))  # a meter's clock never shows a time inside a DST gap
    minutes = draw(st.integers(1, 7 * 24 * 60))
    by_minutes = draw(st.booleans())
    fields = {
        "TXN": draw(st.text(ALNUM + "-", min_size=1, max_size=50).filter(str.strip)),
        "PLATE": draw(st.text(ALNUM, min_size=1, max_size=25)),
        "START": start.isoformat(),
    }
    if by_minutes:
        fields["MIN"] = str(minutes)
    else:
        fields["END"] = (start + timedelta(minutes=minutes)).isoformat()
    amount = draw(st.decimals(Decimal(0), Decimal("999999.99"), places=2))
    fields["AMT"] = str(amount)
    codes = ["1", "2", "LOT-A"]
    if draw(st.booleans()):
        fields["ZONE"] = draw(st.sampled_from(codes))
    for name, size in (("PROMO", 50), ("TICKET", 50), ("PERMIT", 50), ("CUR", 10)):
        if draw(st.booleans()):
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if name == "CUR" else ALNUM
            fields[name] = draw(st.text(alphabet, min_size=1, max_size=size))
    printable = st.characters(categories=("L", "M", "N", "P", "S"))  # what isprintable() allows
    zone_names = draw(st.text(printable, min_size=1, max_size=190))
    rules = MappingRules(
        zone,
        "CAD",
        {code: f"{zone_names} {code}" for code in codes},
        unmapped=draw(st.sampled_from(["hold", "send", "reject"])),
        keep_plate_separators=draw(st.booleans()),
    )
    return fields, rules, start, minutes, by_minutes


@settings(max_examples=150, deadline=None)
@given(valid_records())
def test_any_valid_record_gives_a_payload_within_the_vendor_limits(
    case: tuple[dict[str, str], MappingRules, datetime, int, bool],
) -> None:
    fields, rules, start_local, minutes, by_minutes = case
    payload = payload_of(fields, rules)
    assert set(payload) <= set(VENDOR_LIMITS)
    assert {"LicencePlate", "permitNo", "startTime", "endTime"} <= set(payload)
    for key, value in payload.items():
        assert isinstance(value, str)
        assert 0 < len(value) <= VENDOR_LIMITS[key], key
    assert WIRE_TIME_RE.fullmatch(payload["startTime"])
    assert WIRE_TIME_RE.fullmatch(payload["endTime"])
    assert payload["endTime"] > payload["startTime"]
    start_utc = start_local.replace(tzinfo=rules.timezone).astimezone(UTC)
    assert payload["startTime"] == start_utc.strftime("%Y-%m-%dT%H:%M:%S")
    if by_minutes:
        end_utc = start_utc + timedelta(minutes=minutes)
        assert payload["endTime"] == end_utc.strftime("%Y-%m-%dT%H:%M:%S")
    assert payload["LicencePlate"] == fields["PLATE"].upper()
    assert payload["permitNo"] == fields.get("PERMIT", fields["TXN"])
    if Decimal(fields["AMT"]) == 0:
        assert "Amount" not in payload
        assert "CurrencyID" not in payload
    else:
        assert re.fullmatch(r"\d+\.\d{2}", payload["Amount"])
        assert Decimal(payload["Amount"]) == Decimal(fields["AMT"])
        assert payload["CurrencyID"] == fields.get("CUR", "CAD")


FIELD_NAMES = [
    "TXN",
    "PLATE",
    "ZONE",
    "AMT",
    "CUR",
    "START",
    "END",
    "MIN",
    "PROMO",
    "TICKET",
    "PERMIT",
]
TEXTISH = st.one_of(
    st.text(max_size=30),
    st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31)).map(datetime.isoformat),
    st.datetimes(
        datetime(1, 1, 1), datetime(9999, 12, 31), timezones=st.timezones(), allow_imaginary=True
    ).map(datetime.isoformat),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.integers(-(10**30), 10**30).map(str),
    st.text("0123456789-T:.+Z ", max_size=30),
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=5), TEXTISH, max_size=6),
    st.sets(st.sampled_from(FIELD_NAMES), max_size=3),
    st.sampled_from(ZONES),
    st.sampled_from(["hold", "send", "reject"]),
    st.booleans(),
)
def test_any_text_record_maps_or_raises_mapping_error(
    changes: dict[str, str], dropped: set[str], zone: ZoneInfo, unmapped: str, keep: bool
) -> None:
    # Start from a valid record so that the changes reach every check, not only "TXN missing".
    fields = {k: v for k, v in {**minimal(ZONE="4"), **changes}.items() if k not in dropped}
    rules = MappingRules(zone, "CAD", {"4": "Lot 4"}, unmapped, keep)  # type: ignore[arg-type]
    try:
        mapped = map_record(fields, rules, source="meter-1", record_id=1)
    except MappingError as exc:
        assert exc.field in FIELD_NAMES
        return
    if mapped.payload is not None:
        for key, value in mapped.payload.items():
            assert 0 < len(value) <= VENDOR_LIMITS[key]
