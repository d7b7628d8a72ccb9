"""Record formats (drivers/records.py) and the simulated meter that speaks them.

The kv line is the reference serial protocol of contract.md §4; json is the same keys in one
object, lower-case. Errors must say where a frame went wrong, because a technician reads them
next to a hex dump of the frame.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import MappingError, RecordFormatError
from agent.mapping import MappingRules, map_record
from drivers.records import format_kv, parse_json, parse_kv
from drivers.simulated import SalesGenerator, SimulatedDriver, SimulatedOptions

# contract.md §4, verbatim.
CONTRACT_LINE = (
    b"TXN=000123|PLATE=PL8RDR|ZONE=4|AMT=14.50|CUR=CAD|START=2018-07-02T05:00:00"
    b"|END=2018-07-02T05:30:00|PROMO=DISCOUNT20|TICKET=T-99"
)
CONTRACT_FIELDS = {
    "TXN": "000123",
    "PLATE": "PL8RDR",
    "ZONE": "4",
    "AMT": "14.50",
    "CUR": "CAD",
    "START": "2018-07-02T05:00:00",
    "END": "2018-07-02T05:30:00",
    "PROMO": "DISCOUNT20",
    "TICKET": "T-99",
}
TORONTO = ZoneInfo("America/Toronto")


# --- kv ---------------------------------------------------------------------------------


def test_contract_example_line_parses_to_its_fields() -> None:
    fields = parse_kv(CONTRACT_LINE)
    assert fields == CONTRACT_FIELDS
    assert list(fields) == list(CONTRACT_FIELDS)  # the device's order is kept


def test_contract_example_line_becomes_the_vendor_payload_with_its_ticket() -> None:
    mapped = map_record(parse_kv(CONTRACT_LINE), MappingRules(TORONTO, "CAD", {"4": "Lot 4"}))
    assert mapped.payload == {
        "Amount": "14.50",
        "CurrencyID": "CAD",
        "LicencePlate": "PL8RDR",
        "zone": "Lot 4",
        "permitNo": "000123",
        "startTime": "2018-07-02T09:00:00",
        "endTime": "2018-07-02T09:30:00",
        "promoCode": "DISCOUNT20",
        "TicketNumber": "T-99",
    }


def test_kv_keys_are_case_insensitive_and_blanks_around_fields_are_ignored() -> None:
    assert parse_kv(b" txn = 000123 | Plate=PL8RDR ||zone=4|") == {
        "TXN": "000123",
        "PLATE": "PL8RDR",
        "ZONE": "4",
    }


def test_kv_value_may_contain_an_equals_sign() -> None:
    assert parse_kv(b"TXN=1|PROMO=A=B") == {"TXN": "1", "PROMO": "A=B"}


def test_kv_empty_value_is_kept_as_empty() -> None:
    assert parse_kv(b"TXN=1|PROMO=") == {"TXN": "1", "PROMO": ""}


@pytest.mark.parametrize("payload", [b"", b"|", b" | | ", b"\r\n"])
def test_kv_empty_record_is_an_error(payload: bytes) -> None:
    with pytest.raises(RecordFormatError, match=r"^empty record$"):
        parse_kv(payload)


def test_kv_renames_device_field_names_to_the_reference_names() -> None:
    renames = {"RCPT": "TXN", "LP": "PLATE", "STALL": "ZONE"}
    assert parse_kv(b"RCPT=77|lp=ABC123|STALL=4|AMT=2.00", renames) == {
        "TXN": "77",
        "PLATE": "ABC123",
        "ZONE": "4",
        "AMT": "2.00",
    }


def test_kv_rename_onto_a_field_already_present_is_a_duplicate() -> None:
    with pytest.raises(RecordFormatError) as info:
        parse_kv(b"TXN=1|RCPT=2", {"RCPT": "TXN"})
    assert str(info.value) == "field TXN appears twice (character 6)"


def test_kv_non_utf8_names_the_byte_offset() -> None:
    with pytest.raises(RecordFormatError) as info:
        parse_kv(b"TXN=1|PLATE=\xff\xfeRDR")
    assert str(info.value) == "not UTF-8 at byte 12"


def test_kv_truncated_multibyte_character_names_its_byte_offset() -> None:
    # "É" is C3 89 in UTF-8; a frame cut after C3 is not text.
    with pytest.raises(RecordFormatError) as info:
        parse_kv(b"TXN=1|PLATE=\xc3")
    assert str(info.value) == "not UTF-8 at byte 12"


def test_kv_field_without_equals_names_the_character_offset() -> None:
    with pytest.raises(RecordFormatError) as info:
        parse_kv(b"TXN=1|PLATE|ZONE=4")
    assert str(info.value) == "field at character 6 is not KEY=VALUE: 'PLATE'"


def test_kv_offset_counts_characters_not_bytes() -> None:
    # PLATE=ÉTÉ is 9 characters but 11 bytes: the bad field starts at character 10.
    with pytest.raises(RecordFormatError) as info:
        parse_kv("PLATE=ÉTÉ|BROKEN".encode())
    assert str(info.value) == "field at character 10 is not KEY=VALUE: 'BROKEN'"


def test_kv_field_with_empty_key_is_an_error() -> None:
    with pytest.raises(RecordFormatError) as info:
        parse_kv(b"TXN=1|=PL8RDR")
    assert str(info.value) == "field at character 6 is not KEY=VALUE: '=PL8RDR'"


def test_kv_long_bad_field_is_quoted_shortened() -> None:
    with pytest.raises(RecordFormatError) as info:
        parse_kv(b"TXN=1|" + b"X" * 100)
    assert str(info.value) == f"field at character 6 is not KEY=VALUE: {'X' * 40!r}"


def test_kv_duplicated_key_is_an_error_naming_where() -> None:
    with pytest.raises(RecordFormatError) as info:
        parse_kv(b"TXN=1|PLATE=AAA111|plate=BBB222")
    assert str(info.value) == "field PLATE appears twice (character 19)"


@pytest.mark.parametrize(
    "fields",
    [{"PROMO": "A|B"}, {"PRO|MO": "A"}, {"PRO=MO": "A"}],
    ids=["bar-in-value", "bar-in-key", "equals-in-key"],
)
def test_format_kv_refuses_fields_it_cannot_write(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="cannot be written as kv"):
        format_kv({"TXN": "1", **fields})


def test_format_kv_writes_the_contract_line() -> None:
    assert format_kv(CONTRACT_FIELDS) == CONTRACT_LINE


KV_KEYS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", min_size=1, max_size=12)
KV_VALUES = st.text(
    alphabet=st.characters(blacklist_characters="|", blacklist_categories=("Cs",)),
    max_size=30,
).filter(lambda v: v == v.strip())


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(KV_KEYS, KV_VALUES, min_size=1, max_size=12))
def test_kv_round_trip(fields: dict[str, str]) -> None:
    assert parse_kv(format_kv(fields)) == fields


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=80))
def test_kv_arbitrary_bytes_parse_or_raise_record_format_error(payload: bytes) -> None:
    try:
        fields = parse_kv(payload)
    except RecordFormatError:
        return
    assert fields
    assert all(k == k.strip().upper() and k for k in fields)


# --- json -------------------------------------------------------------------------------


def test_json_lower_case_keys_are_upper_cased() -> None:
    doc = {k.lower(): v for k, v in CONTRACT_FIELDS.items()}
    assert parse_json(json.dumps(doc).encode()) == CONTRACT_FIELDS


def test_json_and_kv_of_the_same_record_agree() -> None:
    doc = {k.lower(): v for k, v in CONTRACT_FIELDS.items()}
    assert parse_json(json.dumps(doc).encode()) == parse_kv(CONTRACT_LINE)


def test_json_numbers_become_text_and_null_is_absent() -> None:
    raw = b'{"txn": 123, "plate": "PL8RDR", "amt": 14.50, "zone": 4, "promo": null}'
    assert parse_json(raw) == {"TXN": "123", "PLATE": "PL8RDR", "AMT": "14.5", "ZONE": "4"}


def test_json_renames_apply_after_upper_casing() -> None:
    assert parse_json(b'{"rcpt": "9", "plate": "X1"}', {"RCPT": "TXN"}) == {
        "TXN": "9",
        "PLATE": "X1",
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"txn": "1", "plate": {"nr": "PL8RDR"}}', "field 'plate': expected a scalar, got dict"),
        (b'{"txn": "1", "zone": [4, 5]}', "field 'zone': expected a scalar, got list"),
    ],
)
def test_json_nested_values_are_rejected(raw: bytes, message: str) -> None:
    with pytest.raises(RecordFormatError) as info:
        parse_json(raw)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'["TXN", "1"]', "expected a JSON object, got list"),
        (b'"TXN=1"', "expected a JSON object, got str"),
        (b'{"txn": "1",}', "not JSON: Expecting property name enclosed in double quotes at"),
        (b"", "not JSON: Expecting value at character 0"),
        (b'{"txn": "\xe9"}', "not UTF-8 at byte 9"),
    ],
)
def test_json_that_is_not_a_record_says_why(raw: bytes, message: str) -> None:
    with pytest.raises(RecordFormatError) as info:
        parse_json(raw)
    assert str(info.value).startswith(message)


def test_json_key_duplicated_in_another_case_is_an_error() -> None:
    with pytest.raises(RecordFormatError, match="PLATE appears twice"):
        parse_json(b'{"txn": "1", "plate": "AAA111", "PLATE": "BBB222"}')


# --- the simulated meter ----------------------------------------------------------------


def _local_times(zone: ZoneInfo, start_utc: datetime, hours: int, step_min: int) -> list[datetime]:
    """Wall-clock readings of a meter's clock (never inside a DST gap)."""
    steps = hours * 60 // step_min
    return [
        (start_utc + timedelta(minutes=i * step_min)).astimezone(zone).replace(tzinfo=None)
        for i in range(steps)
    ]


# Both DST changes of 2026 in Toronto, a day each, every 7 minutes.
DST_DAYS = _local_times(TORONTO, datetime(2026, 3, 7, 17, tzinfo=UTC), 24, 7) + _local_times(
    TORONTO, datetime(2026, 10, 31, 17, tzinfo=UTC), 24, 7
)


def _without_batch(sales: list[dict[str, str]], batch: str) -> list[dict[str, str]]:
    out = []
    for sale in sales:
        prefix, _, sequence = sale["TXN"].partition("-")
        assert prefix == batch
        out.append({**sale, "TXN": sequence})
    return out


def test_same_seed_gives_the_same_sales_apart_from_the_batch_prefix() -> None:
    a = SalesGenerator(seed=1138, zones=("4", "5"), invalid_rate=0.2)
    b = SalesGenerator(seed=1138, zones=("4", "5"), invalid_rate=0.2)
    sales_a = [a.next_sale(t) for t in DST_DAYS[:150]]
    sales_b = [b.next_sale(t) for t in DST_DAYS[:150]]
    assert re.fullmatch(r"[0-9A-Z]{6}", a.batch)
    assert _without_batch(sales_a, a.batch) == _without_batch(sales_b, b.batch)
    assert [s["TXN"].partition("-")[2] for s in sales_a] == [f"{i:06d}" for i in range(1, 151)]


def test_another_seed_gives_other_sales() -> None:
    a = SalesGenerator(seed=1, zones=("4", "5"), invalid_rate=0.0)
    b = SalesGenerator(seed=2, zones=("4", "5"), invalid_rate=0.0)
    sales_a = _without_batch([a.next_sale(t) for t in DST_DAYS[:50]], a.batch)
    sales_b = _without_batch([b.next_sale(t) for t in DST_DAYS[:50]], b.batch)
    assert sales_a != sales_b


@pytest.mark.parametrize("seed", [0, 7, 1138])
def test_every_valid_simulated_sale_maps_and_survives_the_wire(seed: int) -> None:
    zones = ("1", "2", "3", "4")
    meter = SalesGenerator(seed=seed, zones=zones, invalid_rate=0.0)
    # unmapped="reject": a sale outside the zone map would fail loudly, not be held.
    rules = MappingRules(TORONTO, "CAD", {z: f"Lot {z}" for z in zones}, unmapped="reject")
    seen_zones = set()
    for now in DST_DAYS:
        sale = meter.next_sale(now)
        assert parse_kv(format_kv(sale)) == sale  # what the driver journals as raw bytes
        mapped = map_record(sale, rules)
        assert mapped.payload is not None
        assert mapped.payload["zone"] == f"Lot {sale['ZONE']}"
        assert mapped.payload["endTime"] > mapped.payload["startTime"]
        seen_zones.add(sale["ZONE"])
    assert seen_zones == set(zones)


def test_simulated_invalid_rate_one_spoils_every_sale() -> None:
    meter = SalesGenerator(seed=5, zones=("4",), invalid_rate=1.0)
    rules = MappingRules(TORONTO, "CAD", {"4": "Lot 4"})
    faults = set()
    for now in DST_DAYS[:60]:
        with pytest.raises(MappingError) as info:
            map_record(meter.next_sale(now), rules)
        faults.add(info.value.field)
    assert faults == {"PLATE", "END", "AMT"}


def test_simulated_options_defaults_and_values() -> None:
    assert SimulatedDriver.parse_options("drivers[0]", {}) == SimulatedOptions(
        1.0, 0, None, 0.02, ("1", "2", "3", "4")
    )
    options = {"rate": 5, "count": 3, "seed": 9, "invalid_rate": 0.5, "zones": ["A", "B"]}
    assert SimulatedDriver.parse_options("drivers[0]", options) == SimulatedOptions(
        5.0, 3, 9, 0.5, ("A", "B")
    )
