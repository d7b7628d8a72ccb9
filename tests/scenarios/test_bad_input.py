"""Bad input everywhere it can come from a person: every key of the example config with a
value of the wrong type, zone names and codes with quotes and newlines typed into
``zones set``. Each gets a message that names the key, and nothing already accepted is lost.
(Bytes from the wire are fuzzed in test_framing and test_records; absurd dates, amounts and
plates in test_mapping.)
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.errors import EXIT_CONFIG, ConfigErrors
from tests.certs import make_ca
from tests.conftest import ROOT, cli, write_config

EXAMPLE = (ROOT / "config.example.toml").read_text()
WRONG: dict[type, Any] = {str: 12345, int: "fast", float: "slow", bool: "yes", list: 7, dict: 7}


def example_with_every_table(tmp_path: Path) -> str:
    """The example as an installer copies it, with its commented-out tables switched on."""
    token = tmp_path / "api-token"
    token.write_text("EXAMPLE-TOKEN-1\n")
    token.chmod(0o600)
    text = EXAMPLE.replace("/etc/paystation-agent/api-token", str(token))
    # the site network's files, as the site's IT would put them there
    proxy_auth = tmp_path / "proxy-auth"
    proxy_auth.write_text("agent:EXAMPLE-PROXY-PASSWORD\n")
    proxy_auth.chmod(0o600)
    text = text.replace("/etc/paystation-agent/proxy-auth", str(proxy_auth))
    site_ca = make_ca("Example Site CA").write(tmp_path / "site-ca.pem")
    text = text.replace("/etc/paystation-agent/site-ca.pem", str(site_ca))
    text = text.replace("/var/lib/paystation-agent/journal.sqlite3", str(tmp_path / "j.sqlite3"))
    text = text.replace("/var/lib/prometheus/node-exporter", str(tmp_path))
    lines = []
    for line in text.splitlines():
        body = line.removeprefix("# ")
        if line.startswith("# ") and (body.startswith("[") or " = " in body.split("#")[0]):
            line = body  # [metrics], the simulated driver
        lines.append(line)
    return "\n".join(lines) + "\n"


def leaves(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, list[Any], Any]]:
    """(shown path, path for lookup, value) of every value that is not a table of tables."""
    for key, value in table.items():
        shown = f"{prefix}.{key}" if prefix else key
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                for path, keys, leaf in leaves(item, f"{shown}[{i}]"):
                    yield path, [key, i, *keys], leaf
        elif isinstance(value, dict) and key != "renames":
            for path, keys, leaf in leaves(value, shown):
                yield path, [key, *keys], leaf
        else:
            yield shown, [key], value


def render(doc: dict[str, Any]) -> str:
    """Minimal TOML writer for the test's own documents (tables, arrays of tables, values)."""
    import json

    out: list[str] = []

    def table(name: str, body: dict[str, Any], header: str) -> None:
        if header:
            out.append(header)
        subs = []
        for key, value in body.items():
            if (isinstance(value, dict) and key != "renames") or (
                isinstance(value, list) and value and isinstance(value[0], dict)
            ):
                subs.append((key, value))
            elif isinstance(value, dict):
                out.append(f"{json.dumps(key)} = {{ }}")
            else:
                out.append(f"{json.dumps(key)} = {json.dumps(value)}")
        for key, value in subs:
            full = f"{name}.{json.dumps(key)}" if name else json.dumps(key)
            if isinstance(value, list):
                for item in value:
                    table(full, item, f"[[{full}]]")
            else:
                table(full, value, f"[{full}]")

    table("", doc, "")
    return "\n".join(out) + "\n"


def set_path(doc: Any, keys: list[Any], value: Any) -> None:
    for key in keys[:-1]:
        doc = doc[key]
    doc[keys[-1]] = value


def test_the_example_switched_fully_on_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(example_with_every_table(tmp_path))
    config = load_config(path, environ={})
    assert config.metrics.listen is not None and len(config.drivers) == 2


def test_every_key_with_a_wrong_type_is_named_alone(tmp_path: Path) -> None:
    base = tomllib.loads(example_with_every_table(tmp_path))
    checked = []
    for shown, keys, value in leaves(base):
        doc = tomllib.loads(example_with_every_table(tmp_path))
        set_path(doc, keys, WRONG[type(value)])
        path = tmp_path / "bad.toml"
        path.write_text(render(doc))
        with pytest.raises(ConfigErrors) as caught:
            load_config(path, environ={})
        messages = [str(e) for e in caught.value.errors]
        assert any(m.startswith(f"{shown}:") for m in messages), (
            shown,
            messages,
        )
        assert len(messages) == 1, (shown, messages)
        checked.append(shown)
    assert {"agent.timezone", "controller.timeout_s", "drivers[0].baudrate"} <= set(checked)
    assert {"metrics.listen", "drivers[1].rate", "zones.map.4"} <= set(checked)
    assert len(checked) >= 40


def test_every_key_wrong_at_once_is_one_report_and_exit_78(tmp_path: Path) -> None:
    doc = tomllib.loads(example_with_every_table(tmp_path))
    shown_paths = []
    for shown, keys, value in list(leaves(doc)):
        if shown in ("drivers[0].kind", "drivers[1].kind"):
            continue  # an unknown kind hides the driver's other keys
        set_path(doc, keys, WRONG[type(value)])
        shown_paths.append(shown)
    path = tmp_path / "bad.toml"
    path.write_text(render(doc))
    result = cli("check-config", "--config", str(path))
    assert result.returncode == EXIT_CONFIG
    missing = [p for p in shown_paths if f"{p}:" not in result.stderr]
    assert not missing, f"not named: {missing}\n{result.stderr}"
    assert "EXAMPLE-TOKEN" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("code", "name", "stored"),
    [
        ("7", 'Lot "7"', 'Lot "7"'),  # quotes are legal in OPSCOM names: kept exactly
        ("8", "Garage 'North'", "Garage 'North'"),
        ('9"', "Lot 9", "Lot 9"),  # a quote in the code: TOML escapes it
        ("10", "Lot = [x]", "Lot = [x]"),  # TOML syntax in a value stays a value
        ("11", "Lot 11\r\n", "Lot 11"),  # pasted with a line end: trimmed like other blanks
    ],
)
def test_zone_names_with_quotes_round_trip(
    tmp_path: Path, code: str, name: str, stored: str
) -> None:
    config = write_config(tmp_path, "https://controller.example.com/push")
    result = cli("zones", "set", code, name, "--config", str(config))
    assert result.returncode == 0, result.stderr
    loaded = load_config(config, environ={})
    assert loaded.zones.map[code] == stored
    assert loaded.zones.map["4"] == "Lot 4"  # nothing else touched


@pytest.mark.parametrize("name", ["Lot\n8", "Lot\r8", "Lot\t8", "", " " * 3, "L" * 201])
def test_zone_names_that_opscom_cannot_hold_are_refused_and_nothing_written(
    tmp_path: Path, name: str
) -> None:
    config = write_config(tmp_path, "https://controller.example.com/push")
    before = config.read_text()
    result = cli("zones", "set", "8", name, "--config", str(config))
    assert result.returncode != 0
    assert "zones.map.8" in result.stderr and "printable" in result.stderr
    assert config.read_text() == before
