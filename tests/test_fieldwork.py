"""Technicians' tools through the real CLI: zone edits, held and dead records, export."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from agent.config import load_config
from agent.emulator import ControllerEmulator
from tests.conftest import (
    agent_env,
    cli,
    eventually,
    simulated_driver,
    start_agent,
    stop_agent,
    write_config,
)
from tests.test_cli import journal_states

KNOWN = 'known = ["Lot 1", "Lot 2", "Lot 3", "Lot 4", "Garage North"]'


def test_a_zone_name_typo_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    config = write_config(tmp_path, "https://controller.example.com/push", known=KNOWN)
    before = config.read_text()
    result = cli("zones", "set", "7", "Garage Nroth", "--config", str(config))
    assert result.returncode == 1
    assert "did you mean 'Garage North'" in result.stderr
    assert config.read_text() == before  # nothing written
    wrong_case = cli("zones", "set", "7", "garage north", "--config", str(config))
    assert wrong_case.returncode == 1 and "case-sensitive" in wrong_case.stderr


def test_zones_set_keeps_comments_and_layout(tmp_path: Path) -> None:
    config = write_config(tmp_path, "https://controller.example.com/push", known=KNOWN)
    result = cli("zones", "set", "7", "Garage North", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "not running" in result.stdout
    text = config.read_text()
    assert "# test station" in text and "# hold | send | reject" in text
    assert text.index('"4" = "Lot 4"') < text.index('7 = "Garage North"')
    loaded = load_config(config, environ={})
    assert loaded.zones.map["7"] == "Garage North" and loaded.zones.map["4"] == "Lot 4"
    assert oct(config.stat().st_mode & 0o777) == oct(0o644)

    removed = cli("zones", "remove", "7", "--config", str(config))
    assert removed.returncode == 0
    assert "7" not in load_config(config, environ={}).zones.map
    listing = cli("zones", "list", "--config", str(config))
    assert "4     →  Lot 4" in listing.stdout.replace("  ", "  ") or "Lot 4" in listing.stdout


def test_zones_set_releases_held_records_in_the_running_service(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    drivers = simulated_driver(count=12, zones=("7",))
    config = write_config(tmp_path, emulator.url, drivers=drivers, known=KNOWN)
    journal = tmp_path / "journal.sqlite3"
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        eventually(lambda: journal_states(journal).get("held", 0) == 12, what="held")
        unmapped = cli("zones", "unmapped", "--config", str(config))
        assert unmapped.returncode == 0
        assert "7" in unmapped.stdout and "12" in unmapped.stdout
        status = json.loads(cli("status", "--json", "--config", str(config)).stdout)
        assert status["held_by_zone"]["7"]["held"] == 12
        assert status["unsent_amounts"]["CAD"] != "0.00"

        result = cli("zones", "set", "7", "Garage North", "--config", str(config))
        assert result.returncode == 0 and "told to reload" in result.stdout
        assert emulator.wait_for(12, timeout=20), (tmp_path / "agent.log").read_text()
    finally:
        assert stop_agent(agent) == 0
    assert {a.payload["zone"] for a in emulator.accepted} == {"Garage North"}
    assert journal_states(journal) == {"sent": 12}


def test_dead_requeue_after_fixing_the_mapping_delivers(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    drivers = simulated_driver(count=5, zones=("7",))
    config = write_config(tmp_path, emulator.url, drivers=drivers, unmapped="reject")
    journal = tmp_path / "journal.sqlite3"
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        eventually(lambda: journal_states(journal).get("rejected", 0) == 5, what="rejected")
        listing = cli("dead", "list", "--config", str(config))
        rows = listing.stdout.splitlines()[1:-1]  # between the header and the legend
        assert [row.split()[1] for row in rows] == ["rejected"] * 5
        assert listing.stdout.splitlines()[-1] == (
            "dead: refused by the controller; rejected: invalid at the source"
        )
        assert "ZONE: zone code '7' has no mapping" in listing.stdout
        shown = cli("dead", "show", "1", "--config", str(config))
        assert "raw bytes" in shown.stdout and "TXN=" in shown.stdout

        assert cli("zones", "set", "7", "Lot 7", "--config", str(config)).returncode == 0
        requeued = cli("dead", "requeue", "--all", "--config", str(config))
        assert requeued.returncode == 0 and "requeued 5: 5 to send" in requeued.stdout
        assert emulator.wait_for(5, timeout=20)
    finally:
        assert stop_agent(agent) == 0
    assert journal_states(journal) == {"sent": 5}


def test_controller_rejection_is_inspectable_and_requeueable(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    emulator.set_fault("error200", count=1, error_code=9033)
    config = write_config(tmp_path, emulator.url, drivers=simulated_driver(count=1))
    journal = tmp_path / "journal.sqlite3"
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        eventually(lambda: journal_states(journal).get("dead", 0) == 1, what="dead")
        shown = cli("dead", "show", "1", "--config", str(config))
        assert "ErrorCode 9033" in shown.stdout and "body:" in shown.stdout
        assert "attempts   1, failures:" in shown.stdout
        requeued = cli("dead", "requeue", "1", "--config", str(config))
        assert requeued.returncode == 0, requeued.stderr
        assert emulator.wait_for(1, timeout=20)
    finally:
        assert stop_agent(agent) == 0
    shown = cli("dead", "show", "1", "--config", str(config))
    assert "attempts   2, failures:" in shown.stdout and "reference_id" in shown.stdout
    nothing = cli("dead", "requeue", "1", "--config", str(config))
    assert nothing.returncode == 1


def test_export_round_trips_through_csv(tmp_path: Path, emulator: ControllerEmulator) -> None:
    drivers = simulated_driver(count=30, invalid_rate=0.2, zones=("1", "9"))
    config = write_config(tmp_path, emulator.url, drivers=drivers)
    journal = tmp_path / "journal.sqlite3"
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        eventually(
            lambda: (
                sum(journal_states(journal).values()) == 30
                and journal_states(journal).get("pending", 0) == 0
            ),
            what="journaled and sent",
        )
    finally:
        assert stop_agent(agent) == 0
    states = journal_states(journal)
    result = cli("export", "--config", str(config))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 30
    assert {s: sum(r["state"] == s for r in rows) for s in states} == states
    sent = [r for r in rows if r["state"] == "sent"]
    refs = {a.reference_id for a in emulator.accepted}
    assert {r["reference_id"] for r in sent} == refs and all(r["permit_no"] for r in sent)
    only_held = cli("export", "--state", "held", "--config", str(config))
    assert len(list(csv.DictReader(io.StringIO(only_held.stdout)))) == states.get("held", 0)
    out = tmp_path / "later.csv"
    none = cli("export", "--from", "2099-01-01", "-o", str(out), "--config", str(config))
    assert none.returncode == 0 and "0 record(s)" in none.stderr
    assert len(out.read_text().splitlines()) == 1  # the header only


def test_check_config_warns_about_a_readable_token_and_unknown_zone_names(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, "https://controller.example.com/push", known=KNOWN, zones='"4" = "Lot Four"'
    )
    (tmp_path / "api-token").chmod(0o644)
    result = cli("check-config", "--config", str(config), env=agent_env())
    assert result.returncode == 0
    assert "readable by other users" in result.stderr and "chmod 600" in result.stderr
    assert "'Lot Four' is not in zones.known" in result.stderr
    assert "disconnected" in result.stderr


def test_zone_edits_keep_the_config_files_owner_and_mode(tmp_path: Path) -> None:
    import os

    import pytest

    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    config = write_config(tmp_path, "https://controller.example.com/push")
    os.chown(config, 0, 4242)
    config.chmod(0o640)
    assert cli("zones", "set", "7", "Lot 7", "--config", str(config)).returncode == 0
    st = config.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 4242, 0o640)
