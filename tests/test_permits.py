"""Permit numbers (agent/permits.py): unique across meters and stations by default, a
per-driver form, config validation of forms that could collide, records without a receipt
number, and requeue applying the current numbering. Journals are real SQLite files; the
requeue runs the real CLI."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.config import Config, load_config
from agent.errors import ConfigErrors, MappingError
from agent.intake import Intake
from agent.journal import Attempt, Journal, State
from agent.mapping import MappingRules, map_record
from agent.permits import PermitForm
from drivers.base import HardwareRecord
from drivers.records import format_kv, parse_kv
from tests.conftest import ROOT, TOKEN, cli, write_config
from tests.test_serial import sale

ENV = {"PAYSTATION_AGENT_TOKEN": TOKEN}


def config_text(station: str = "PS-0001", *drivers: dict[str, str], zones: str = "") -> str:
    tables = "".join(
        "\n[[drivers]]\nkind = 'simulated'\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in d.items())
        for d in drivers
    )
    return (
        f'[agent]\nstation_id = "{station}"\ntimezone = "America/Toronto"\n'
        f"[controller]\n[zones.map]\n{zones}\n{tables}"
    )


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path, environ={**ENV, "STATE_DIRECTORY": str(tmp_path)})


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(tmp_path, text)
    return [str(e) for e in info.value.errors]


def permit_of(config: Config, driver: str, **fields: str) -> str:
    rules = replace(MappingRules.from_config(config), unmapped="send")
    payload = map_record(parse_kv(sale("000123", **fields)), rules, source=driver).payload
    assert payload is not None
    return payload["permitNo"]


# --- the default and per-driver forms --------------------------------------------------------


def test_the_default_permit_number_is_station_meter_and_receipt(tmp_path: Path) -> None:
    config = load(tmp_path, config_text("PS-0001", {"name": "meter-1"}, {"name": "meter-2"}))
    assert permit_of(config, "meter-1") == "PS-0001-meter-1-000123"
    assert permit_of(config, "meter-2") == "PS-0001-meter-2-000123"
    assert permit_of(config, "meter-2", PERMIT="P-9") == "PS-0001-meter-2-P-9"
    assert permit_of(config, "renamed-since") == "PS-0001-renamed-since-000123"


def test_a_driver_chooses_its_form_with_permit_no(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        config_text(
            "PS-0001",
            {"name": "meter-1", "permit_no": "A-{txn}"},
            {"name": "meter-2", "permit_no": "N{driver}/{txn}."},
        ),
    )
    assert permit_of(config, "meter-1") == "A-000123"
    assert permit_of(config, "meter-2") == "Nmeter-2/000123."
    unique_receipts = load(tmp_path, config_text("PS-0001", {"name": "m", "permit_no": "{txn}"}))
    assert permit_of(unique_receipts, "m") == "000123"
    assert 'permit_no = "{station}-{driver}-{txn}"' in (ROOT / "config.example.toml").read_text()


def test_a_permit_number_over_50_is_rejected_with_its_form_never_cut(tmp_path: Path) -> None:
    config = load(tmp_path, config_text("PS-0001", {"name": "meter-1"}, zones='"4" = "Lot 4"'))
    rules = MappingRules.from_config(config)
    fields = parse_kv(sale("7" * 30))  # 16 + 30 characters: fits
    assert map_record(fields, rules, source="meter-1").payload["permitNo"].endswith("7" * 30)  # type: ignore[index]
    with pytest.raises(MappingError) as info:
        map_record(parse_kv(sale("7" * 35)), rules, source="meter-1")
    assert info.value.field == "TXN"
    assert "51 characters, over the limit of 50" in str(info.value)
    assert "PS-0001-meter-1-{txn}" in str(info.value)


# --- config validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{station}-{meter}-{txn}", "unknown placeholder {meter}"),
        ("{txn:>8}", "unknown placeholder {txn:>8}"),
        ("{station}-{driver}", "must contain {txn} (the receipt number) exactly once, found 0"),
        ("{txn}-{txn}", "exactly once, found 2"),
        ("{station-{txn}", "write { and } only around a name"),
    ],
)
def test_a_bad_permit_no_template_is_named_by_key(
    tmp_path: Path, template: str, problem: str
) -> None:
    text = config_text("PS-0001", {"name": "a"}, {"name": "b", "permit_no": template})
    (error,) = errors(tmp_path, text)
    assert error.startswith("drivers[1].permit_no: ") and problem in error


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"name": "a", "permit_no": "{txn}"}, {"name": "b", "permit_no": "{txn}"}),
        (
            {"name": "a", "permit_no": "{station}-{txn}"},
            {"name": "b", "permit_no": "{station}-{txn}"},
        ),
        ({"name": "a", "permit_no": "X-{txn}"}, {"name": "b", "permit_no": "X-1{txn}"}),
        ({"name": "meter"}, {"name": "meter-2"}),  # "meter" + "-2-5" = "meter-2" + "-5"
    ],
)
def test_two_drivers_that_could_give_one_permit_number_are_refused_naming_both(
    tmp_path: Path, first: dict[str, str], second: dict[str, str]
) -> None:
    (error,) = errors(tmp_path, config_text("PS-0001", first, second))
    assert error.startswith("drivers[1].permit_no: drivers[0] (")
    assert "could give two sales the same permit number" in error


def test_forms_that_can_never_meet_are_accepted(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        config_text(
            "PS-0001",
            {"name": "meter-1"},
            {"name": "meter-2"},
            {"name": "meter-10"},
            {"name": "x", "permit_no": "X-{txn}-north"},
            {"name": "y", "permit_no": "X-{txn}-south"},
        ),
    )
    assert len(config.drivers) == 5


def test_a_station_id_and_name_that_leave_no_room_for_the_receipt_are_refused(
    tmp_path: Path,
) -> None:
    station, name = "S" * 32, "meter-with-a-long-name"
    (error,) = errors(tmp_path, config_text(station, {"name": name}))
    assert error.startswith("drivers[0].permit_no: permit numbers ")
    assert "leave 0 of 50 characters for the receipt number, at least 16 needed" in error
    assert "shorten agent.station_id or drivers[0].name, or set a shorter permit_no" in error
    assert load(tmp_path, config_text(station, {"name": name, "permit_no": "{txn}"}))


def test_permit_forms_meet_exactly_when_prefixes_and_suffixes_nest() -> None:
    def form(template: str, driver: str = "d") -> PermitForm:
        return PermitForm.parse(template, "S", driver)

    assert form("{txn}").could_equal(form("{txn}"))
    assert form("A{txn}").could_equal(form("{txn}"))  # txn "A1" of the second
    assert not form("A{txn}").could_equal(form("B{txn}"))
    assert not form("{txn}-a").could_equal(form("{txn}-b"))
    assert not form("{station}-{driver}-{txn}", "m1").could_equal(
        form("{station}-{driver}-{txn}", "m10")
    )


# --- numbering in the journal -------------------------------------------------------------


def rules_for(tmp_path: Path, *drivers: dict[str, str], zones: str = "") -> MappingRules:
    return MappingRules.from_config(load(tmp_path, config_text("PS-TEST", *drivers, zones=zones)))


def payload_row(journal: Path, record_id: int) -> tuple[str, dict[str, str] | None]:
    with sqlite3.connect(journal) as db:
        state, payload = db.execute(
            "SELECT state, payload FROM records WHERE id = ?", (record_id,)
        ).fetchone()
    return state, json.loads(payload) if payload else None


def last_id(journal: Journal) -> int:
    with sqlite3.connect(journal.path) as db:
        return int(db.execute("SELECT max(id) FROM records").fetchone()[0])


def test_a_record_without_a_receipt_number_gets_station_and_journal_id(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    meter = {"name": "meter-1"}
    with Journal(path) as journal:
        intake = Intake(journal, "PS-TEST", rules_for(tmp_path, meter, zones='"4" = "Lot 4"'))
        ids = []
        for zone in ("4", "9"):  # zone 9 is not mapped yet: held
            raw = format_kv({k: v for k, v in parse_kv(sale("-", ZONE=zone)).items() if k != "TXN"})
            intake.submit(HardwareRecord(raw, parse_kv(raw), "meter-1"))
            ids.append(last_id(journal))
        held = ids[1]
        assert payload_row(path, held) == ("held", None)

        intake.rules = rules_for(tmp_path, meter, zones='"4" = "Lot 4"\n"9" = "Lot 9"')
        assert intake.remap((State.HELD,)) == {State.PENDING: 1}
    for record_id in ids:
        state, payload = payload_row(path, record_id)
        assert state == "pending" and payload is not None
        assert payload["permitNo"] == f"PS-TEST-J{record_id}"  # stable: its journal id


def test_a_reused_receipt_number_gets_its_own_permit_number(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        rules = rules_for(tmp_path, {"name": "meter-1"}, zones='"4" = "Lot 4"')
        intake = Intake(journal, "PS-TEST", rules)
        intake.submit(HardwareRecord(sale("000001"), parse_kv(sale("000001")), "meter-1"))
        again = sale("000001", PLATE="OTHER1")  # the meter's counter was reset
        intake.submit(HardwareRecord(again, parse_kv(again), "meter-1"))
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT txn, payload FROM records ORDER BY id").fetchall()
    assert [(txn, json.loads(p)["permitNo"]) for txn, p in rows] == [
        ("000001", "PS-TEST-meter-1-000001"),
        ("000001~2", "PS-TEST-meter-1-000001~2"),
    ]


def test_requeue_maps_dead_records_again_with_the_current_numbering(tmp_path: Path) -> None:
    """A sale refused because its number was taken (numbered by the receipt alone) is sent
    under the fleet-unique number after ``dead requeue``."""
    config = write_config(
        tmp_path,
        "http://127.0.0.1:9/api/OC-TOMA/v1/permits/push",
        drivers='\n[[drivers]]\nkind = "simulated"\nname = "meter-2"\n',
    )
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        by_receipt_alone = MappingRules(ZoneInfo("America/Toronto"), "CAD", {"4": "Lot 4"})
        Intake(journal, "PS-TEST", by_receipt_alone).submit(
            HardwareRecord(sale("000001"), parse_kv(sale("000001")), "meter-2")
        )
        (claim,) = journal.claim(1)
        assert claim.payload["permitNo"] == "000001"
        journal.record_attempt(
            claim.id,
            Attempt("rejected", State.DEAD, 200, "ErrorCode 9022: permit number taken", "{}"),
        )

    result = cli("dead", "requeue", "--all", "--config", str(config))

    assert result.returncode == 0, result.stderr
    assert "requeued 1: 1 to send" in result.stdout
    assert payload_row(path, claim.id) == (
        "pending",
        {**claim.payload, "permitNo": "PS-TEST-meter-2-000001"},
    )


def test_check_config_shows_each_drivers_permit_form_and_refuses_a_clash(tmp_path: Path) -> None:
    def driver(name: str, permit_no: str = "") -> str:
        form = f'permit_no = "{permit_no}"\n' if permit_no else ""
        return f'\n[[drivers]]\nkind = "simulated"\nname = "{name}"\n{form}'

    config = write_config(tmp_path, "http://127.0.0.1:9/push", drivers=driver("meter-1"))
    shown = cli("check-config", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert 'permit_no = "{station}-{driver}-{txn}"' in shown.stdout

    drivers = driver("meter-1", "{txn}") + driver("meter-2", "{txn}")
    config = write_config(tmp_path, "http://127.0.0.1:9/push", drivers=drivers)
    refused = cli("check-config", "--config", str(config))
    assert refused.returncode == 78
    assert "drivers[1].permit_no: drivers[0] ('meter-1': '{txn}') and drivers[1]" in refused.stderr
