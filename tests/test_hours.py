"""Opening hours: when a silent meter is news (agent.hours, [agent] opening_hours)."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from agent.hours import ALWAYS, parse_hours
from tests.conftest import cli, write_config


@pytest.mark.parametrize(
    ("text", "open_at", "closed_at"),
    [
        ("07:00-22:00", ["07:00", "12:30", "21:59"], ["06:59", "22:00", "03:00"]),
        ("07:00-12:00, 13:00-22:00", ["11:59", "13:00"], ["12:00", "12:59"]),
        ("18:00-02:00", ["18:00", "23:59", "00:00", "01:59"], ["02:00", "17:59"]),
        ("00:00-24:00", ["00:00", "23:59"], []),
        ("24h", ["00:00", "12:00", "23:59"], []),
    ],
)
def test_open_and_closed_times(text: str, open_at: list[str], closed_at: list[str]) -> None:
    hours = parse_hours(text)
    assert all(hours.is_open(time.fromisoformat(t)) for t in open_at)
    assert not any(hours.is_open(time.fromisoformat(t)) for t in closed_at)
    assert parse_hours(str(hours)) == hours  # the normal form reads back


@pytest.mark.parametrize(
    ("text", "says"),
    [("7-22", "07:00-22:00"), ("07:00-25:00", "time of day"), ("09:00-09:00", "empty")],
)
def test_bad_hours_say_what_was_expected(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_hours(text)


def test_always_open_by_default() -> None:
    assert str(ALWAYS) == "24h" and ALWAYS.is_open(time(3, 0))


def test_a_bad_value_in_the_config_names_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, "https://controller.example.com/push")
    text = config.read_text().replace("[agent]\n", '[agent]\nopening_hours = "7 to 10"\n', 1)
    config.write_text(text)
    result = cli("check-config", "--config", str(config))
    assert result.returncode == 78
    assert "agent.opening_hours" in result.stderr and "07:00-22:00" in result.stderr


def test_check_config_shows_the_hours(tmp_path: Path) -> None:
    config = write_config(tmp_path, "https://controller.example.com/push")
    text = config.read_text().replace("[agent]\n", '[agent]\nopening_hours = "7:00-22:00"\n', 1)
    config.write_text(text)
    result = cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert 'opening_hours = "07:00-22:00"' in result.stdout
