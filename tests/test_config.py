"""The config file (agent/config.py), as installers and technicians write it (contract.md §3).

Every config here is a real TOML file in tmp_path, loaded with an explicit ``environ`` so
the developer's own environment never leaks in. Errors are compared as the technician reads
them: the key path, then what was expected.
"""

from __future__ import annotations

import logging
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.config import (
    DEFAULT_URL,
    AgentSettings,
    Config,
    ControllerSettings,
    DriverSettings,
    Secret,
    ZoneSettings,
    default_journal_path,
    load_config,
    resolve_proxy_auth,
    resolve_token,
)
from agent.errors import ConfigError, ConfigErrors
from agent.mapping import MappingRules, map_record
from drivers.simulated import SimulatedOptions
from tests.certs import make_ca

TOKEN = "TEST-TOKEN-0042"
PUSH_URL = "https://controller.operationscommander.io/api/OC-TOMA/v1/permits/push"


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def token_file(tmp_path: Path, value: str = TOKEN + "\n", name: str = "api-token") -> Path:
    path = tmp_path / name
    path.write_text(value, encoding="utf-8")
    return path


def full_config(tmp_path: Path) -> str:
    """Every key of contract.md §3, with a simulated driver instead of the serial one."""
    return f"""
[agent]
station_id = "PS-0001"              # names this pay station
timezone   = "America/Toronto"
journal    = '{tmp_path / "state" / "journal.sqlite3"}'

[controller]
url        = "{PUSH_URL}"
token_file = '{token_file(tmp_path)}'
currency   = "CAD"

[zones]
unmapped = "hold"
[zones.map]
"4" = "Lot 4"
"12" = "Level 2 - Visitors"

[[drivers]]
kind         = "simulated"
rate         = 2.5
count        = 10
seed         = 42
invalid_rate = 0.0
zones        = ["4", "12"]
"""


# A small valid config; each error case below breaks or adds one thing.
BASE = """
[agent]
station_id = "PS-0001"
timezone = "America/Toronto"

[controller]

[[drivers]]
kind = "simulated"
"""


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    env = {"PAYSTATION_AGENT_TOKEN": TOKEN, "STATE_DIRECTORY": str(tmp_path / "state")}
    return load_config(write(tmp_path, text), environ=env if environ is None else environ)


def errors_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_text(tmp_path, text, environ)
    assert str(info.value) == "\n".join(str(e) for e in info.value.errors)
    return [str(e) for e in info.value.errors]


def only_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    errors = errors_of(tmp_path, text, environ)
    assert len(errors) == 1, errors
    return errors[0]


# --- a valid config -------------------------------------------------------------------------


def test_complete_config_loads_into_the_expected_objects(tmp_path: Path) -> None:
    path = write(tmp_path, full_config(tmp_path))
    config = load_config(path, environ={})
    assert config == Config(
        agent=AgentSettings(
            station_id="PS-0001",
            timezone=ZoneInfo("America/Toronto"),
            journal=tmp_path / "state" / "journal.sqlite3",
            retention_days=30,
            keep_plate_separators=False,
        ),
        controller=ControllerSettings(
            url=PUSH_URL,
            token_file=tmp_path / "api-token",
            currency="CAD",
            timeout_s=10.0,
            concurrency=4,
            backoff_max_s=60.0,
        ),
        zones=ZoneSettings(unmapped="hold", map={"4": "Lot 4", "12": "Level 2 - Visitors"}),
        drivers=(
            DriverSettings(
                kind="simulated",
                name="simulated0",
                options=SimulatedOptions(
                    rate=2.5, count=10, seed=42, invalid_rate=0.0, zones=("4", "12")
                ),
            ),
        ),
        source=path,
    )
    assert isinstance(config.agent.timezone, ZoneInfo)
    assert str(config.agent.timezone) == "America/Toronto"
    assert resolve_token(config.controller, {}).reveal() == TOKEN


def test_complete_config_drives_the_mapping_of_the_vendor_example(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, full_config(tmp_path)), environ={})
    record = {
        "TXN": "L4-1138",
        "PLATE": "PL8RDR",
        "ZONE": "4",
        "AMT": "14.50",
        "START": "2018-07-02T05:00:00",
        "END": "2018-07-02T05:30:00",
    }
    payload = map_record(record, MappingRules.from_config(config)).payload
    assert payload is not None
    assert (payload["zone"], payload["CurrencyID"], payload["startTime"]) == (
        "Lot 4",
        "CAD",
        "2018-07-02T09:00:00",
    )


def test_every_optional_key_given(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
[agent]
station_id = "east.lot_4"
timezone = "Europe/London"
journal = "/srv/agent/journal.sqlite3"
retention_days = 90
keep_plate_separators = true

[controller]
url = "http://127.0.0.1:8080/api/OC-TOMA/v1/permits/push"
currency = "usd"
timeout_s = 2
concurrency = 32
backoff_max_s = 60.5

[zones]
unmapped = "send"

[[drivers]]
kind = "simulated"
name = "east meter"

[[drivers]]
kind = "simulated"
name = "west meter"
zones = ["W1"]
""",
    )
    assert config.agent == AgentSettings(
        "east.lot_4", ZoneInfo("Europe/London"), Path("/srv/agent/journal.sqlite3"), 90, True
    )
    assert config.controller == ControllerSettings(
        "http://127.0.0.1:8080/api/OC-TOMA/v1/permits/push", None, "USD", 2.0, 32, 60.5
    )
    assert config.zones == ZoneSettings("send", {})
    assert [(d.name, d.options.zones) for d in config.drivers] == [
        ("east meter", ("1", "2", "3", "4")),
        ("west meter", ("W1",)),
    ]


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE)
    assert config.agent.retention_days == 30
    assert config.agent.keep_plate_separators is False
    assert config.agent.journal == tmp_path / "state" / "journal.sqlite3"
    assert config.controller == ControllerSettings(DEFAULT_URL, None, "CAD", 10.0, 4, 60.0)
    assert config.controller.url == PUSH_URL
    assert config.zones == ZoneSettings("hold", {})
    assert config.drivers == (DriverSettings("simulated", "simulated0", SimulatedOptions()),)


def test_config_without_drivers_has_none(tmp_path: Path) -> None:
    text = BASE.replace('[[drivers]]\nkind = "simulated"\n', "")
    assert load_text(tmp_path, text).drivers == ()


# --- every error names its key and what was expected ------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "rate = 'fast'",
            'drivers[0].rate: expected a number, got "fast"',
        ),
        (
            "rate = 0",
            "drivers[0].rate: expected a number from 0.001 to 10000, got 0",
        ),
        (
            "count = -1",
            "drivers[0].count: expected 0 (forever) or a positive count, got -1",
        ),
        (
            "count = 1.5",
            "drivers[0].count: expected an integer, got 1.5",
        ),
        (
            "invalid_rate = 2",
            "drivers[0].invalid_rate: expected a number from 0 to 1, got 2",
        ),
        (
            "zones = []",
            "drivers[0].zones: expected a non-empty array of zone codes (strings)",
        ),
        (
            "zones = [4, 5]",
            "drivers[0].zones: expected a non-empty array of zone codes (strings)",
        ),
    ],
)
def test_driver_option_errors(tmp_path: Path, change: str, message: str) -> None:
    assert only_error(tmp_path, BASE + change + "\n") == message


@pytest.mark.parametrize(
    "zone", ["America/Torono", "Toronto", "", "EST-5", "/etc/localtime", "America/", "zone.tab"]
)
def test_timezone_that_is_not_an_iana_zone(tmp_path: Path, zone: str) -> None:
    text = BASE.replace('timezone = "America/Toronto"', f"timezone = '{zone}'")
    assert only_error(tmp_path, text) == (
        f'agent.timezone: expected an IANA time zone such as "America/Toronto", got {zone!r}'
    )


def test_timezone_of_the_wrong_type(tmp_path: Path) -> None:
    text = BASE.replace('timezone = "America/Toronto"', "timezone = -5")
    assert only_error(tmp_path, text) == "agent.timezone: expected a string, got -5"


@pytest.mark.parametrize(
    "url",
    [
        "http://controller.operationscommander.io/api/OC-TOMA/v1/permits/push",
        "http://10.0.0.5:8080/push",
        "http://0.0.0.0:8080/push",
        "http://127.0.0.1.nip.io/push",
        "http://127.0.0.1@evil.example/push",
    ],
)
def test_plain_http_to_a_non_loopback_host_is_refused(tmp_path: Path, url: str) -> None:
    text = BASE.replace("[controller]", f"[controller]\nurl = '{url}'")
    assert only_error(tmp_path, text) == (
        f"controller.url: plain http is allowed only to a loopback address, got {url!r}; "
        "use https://"
    )


@pytest.mark.parametrize(
    "url",
    [
        "ftp://controller.operationscommander.io/push",
        "controller.operationscommander.io/api/OC-TOMA/v1/permits/push",
        "https://",
        "",
    ],
)
def test_url_that_is_not_https(tmp_path: Path, url: str) -> None:
    text = BASE.replace("[controller]", f"[controller]\nurl = '{url}'")
    assert only_error(tmp_path, text) == f"controller.url: expected an https:// URL, got {url!r}"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/api/OC-TOMA/v1/permits/push",
        "http://127.0.0.2/push",
        "http://localhost:8080/push",
        "http://[::1]:8080/push",
        "https://staging.example.org/api/OC-TOMA/v1/permits/push",
        "https://10.0.0.5:8443/push",
        "HTTPS://controller.operationscommander.io/push",
    ],
)
def test_https_anywhere_and_http_to_loopback_are_allowed(tmp_path: Path, url: str) -> None:
    text = BASE.replace("[controller]", f"[controller]\nurl = '{url}'")
    assert load_text(tmp_path, text).controller.url == url


def test_url_with_an_impossible_port_is_refused(tmp_path: Path) -> None:
    text = BASE.replace("[controller]", "[controller]\nurl = 'https://controller.example:99999/p'")
    assert only_error(tmp_path, text).startswith("controller.url: ")


@pytest.mark.parametrize("policy", ["drop", "HOLD", "", "send raw"])
def test_unmapped_policy_must_be_hold_send_or_reject(tmp_path: Path, policy: str) -> None:
    text = BASE + f"[zones]\nunmapped = '{policy}'\n"
    assert only_error(tmp_path, text) == (
        f'zones.unmapped: expected one of "hold", "send", "reject", got {policy!r}'
    )


@pytest.mark.parametrize("policy", ["hold", "send", "reject"])
def test_each_unmapped_policy_loads(tmp_path: Path, policy: str) -> None:
    assert load_text(tmp_path, BASE + f"[zones]\nunmapped = '{policy}'\n").zones.unmapped == policy


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('"4" = 4', "zones.map.4: expected an OPSCOM zone name (a string), got 4"),
        ('"4" = true', "zones.map.4: expected an OPSCOM zone name (a string), got true"),
        ('"4" = ["Lot 4"]', "zones.map.4: expected an OPSCOM zone name (a string), got an array"),
        (
            '"A 1" = {name = "Lot 4"}',
            'zones.map."A 1": expected an OPSCOM zone name (a string), got a table',
        ),
        (
            '"4" = "   "',
            "zones.map.4: expected a zone name of 1-200 printable characters, exactly as in OPSCOM",
        ),
        (
            f'"4" = "{"Z" * 201}"',
            "zones.map.4: expected a zone name of 1-200 printable characters, exactly as in OPSCOM",
        ),
        (
            '"4" = "Lot\\t4"',
            "zones.map.4: expected a zone name of 1-200 printable characters, exactly as in OPSCOM",
        ),
    ],
)
def test_zone_map_entry_errors(tmp_path: Path, entry: str, message: str) -> None:
    assert only_error(tmp_path, BASE + f"[zones.map]\n{entry}\n") == message


def test_zone_name_of_200_characters_loads(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE + f'[zones.map]\n"4" = "{"Z" * 200}"\n')
    assert config.zones.map == {"4": "Z" * 200}


@pytest.mark.parametrize("name", ["Lot 4\\u007f", "Lot\\u00854"])
def test_zone_name_that_mapping_would_reject_is_refused_at_load(tmp_path: Path, name: str) -> None:
    errors = errors_of(tmp_path, BASE + f'[zones.map]\n"4" = "{name}"\n')
    assert [e.split(":")[0] for e in errors] == ["zones.map.4"]


def assert_unknown_key(message: str, head: str, listed: set[str]) -> None:
    """``PATH: unknown key[ (did you mean 'X'?)]; known keys: a, b, ...`` (sorted; the list
    may grow as the project adds keys, but must name at least ``listed``)."""
    shown_head, sep, keys = message.partition("; known keys: ")
    assert (shown_head, sep) == (head, "; known keys: ")
    names = keys.split(", ")
    assert names == sorted(names)
    assert listed <= set(names)


AGENT_KEYS = {
    "station_id",
    "timezone",
    "journal",
    "retention_days",
    "keep_plate_separators",
    "journal_max_mb",
}
CONTROLLER_KEYS = {
    "url",
    "token_file",
    "currency",
    "timeout_s",
    "concurrency",
    "backoff_max_s",
    "auth_retry_s",
}
SIMULATED_KEYS = {"rate", "count", "seed", "invalid_rate", "zones"}


@pytest.mark.parametrize(
    ("text", "head", "listed"),
    [
        (
            BASE.replace("station_id", "station_ld"),
            "agent.station_ld: unknown key (did you mean 'station_id'?)",
            AGENT_KEYS,
        ),
        (
            BASE + "[agnet]\n",
            "agnet: unknown key (did you mean 'agent'?)",
            {"agent", "controller", "zones", "drivers"},
        ),
        (
            BASE.replace("[controller]", "[controller]\ntokenfile = '/x'"),
            "controller.tokenfile: unknown key (did you mean 'token_file'?)",
            CONTROLLER_KEYS,
        ),
        (
            BASE.replace("[controller]", "[controller]\ncolour = 'blue'"),
            "controller.colour: unknown key",
            CONTROLLER_KEYS,
        ),
        (
            BASE + "[zones]\nunmaped = 'hold'\n",
            "zones.unmaped: unknown key (did you mean 'unmapped'?)",
            {"unmapped", "map"},
        ),
        (
            BASE + "seeed = 4\n",
            "drivers[0].seeed: unknown key (did you mean 'seed'?)",
            SIMULATED_KEYS,
        ),
        (
            BASE + "rte = 2\n",
            "drivers[0].rte: unknown key (did you mean 'rate'?)",
            SIMULATED_KEYS,
        ),
    ],
    ids=["agent", "top-level", "controller", "no-near-miss", "zones", "driver", "driver-short"],
)
def test_unknown_keys_at_every_level(
    tmp_path: Path, text: str, head: str, listed: set[str]
) -> None:
    assert_unknown_key(errors_of(tmp_path, text)[0], head, listed)


def test_misspelled_key_is_reported_once_as_unknown_and_once_as_missing(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, BASE.replace("station_id", "station_ld"))
    assert len(errors) == 2
    assert_unknown_key(
        errors[0], "agent.station_ld: unknown key (did you mean 'station_id'?)", AGENT_KEYS
    )
    assert errors[1] == "agent.station_id: missing; expected a string"


@pytest.mark.parametrize(
    "text",
    [
        BASE.replace("[controller]", "[controller]\ncolour = 'blue'"),
        BASE + "[agnet]\n",
        BASE + "[zones]\nunmaped = 'hold'\n",
        BASE + "seeed = 4\n",
    ],
)
def test_an_unknown_key_is_the_only_error_where_nothing_is_missing(
    tmp_path: Path, text: str
) -> None:
    assert len(errors_of(tmp_path, text)) == 1


def test_misspelled_driver_name_gets_a_hint(tmp_path: Path) -> None:
    assert "(did you mean 'name'?)" in only_error(tmp_path, BASE + "nmae = 'east meter'\n")


def test_unknown_driver_kind(tmp_path: Path) -> None:
    text = BASE.replace('kind = "simulated"', 'kind = "modbus"\nunit = 3')
    # the kind's options are not judged: there is no parser to judge them
    assert only_error(tmp_path, text).startswith("drivers[0].kind: unknown driver kind 'modbus'")


def test_driver_without_kind(tmp_path: Path) -> None:
    text = BASE.replace('kind = "simulated"', "rate = 1")
    assert only_error(tmp_path, text) == "drivers[0].kind: missing; expected a string"


def test_two_drivers_with_one_name(tmp_path: Path) -> None:
    text = BASE + "name = 'meter'\n[[drivers]]\nkind = 'simulated'\nname = 'meter'\n"
    assert only_error(tmp_path, text) == "drivers[1].name: 'meter' is used by another driver"


def test_drivers_that_is_not_an_array_of_tables(tmp_path: Path) -> None:
    text = "drivers = 'simulated'\n" + BASE.replace('[[drivers]]\nkind = "simulated"\n', "")
    assert only_error(tmp_path, text) == "drivers: expected an array of tables ([[drivers]])"


def test_missing_agent_table(tmp_path: Path) -> None:
    text = BASE.replace('[agent]\nstation_id = "PS-0001"\ntimezone = "America/Toronto"\n', "")
    assert errors_of(tmp_path, text) == [
        "agent: missing table [agent]",
        "agent.station_id: missing; expected a string",
        "agent.timezone: missing; expected a string",
    ]


def test_missing_controller_table(tmp_path: Path) -> None:
    text = BASE.replace("[controller]\n", "")
    assert only_error(tmp_path, text) == "controller: missing table [controller]"


def test_agent_that_is_not_a_table(tmp_path: Path) -> None:
    text = 'agent = "PS-0001"\n\n[controller]\n'
    assert errors_of(tmp_path, text) == [
        'agent: expected a table, got "PS-0001"',
        "agent.station_id: missing; expected a string",
        "agent.timezone: missing; expected a string",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("[agent]", "[agent]\nretention_days = true"),
            "agent.retention_days: expected an integer, got true",
        ),
        (
            ("[controller]", "[controller]\nconcurrency = false"),
            "controller.concurrency: expected an integer, got false",
        ),
        (
            ("[controller]", "[controller]\ntimeout_s = true"),
            "controller.timeout_s: expected a number, got true",
        ),
        (
            ('kind = "simulated"', 'kind = "simulated"\ncount = true'),
            "drivers[0].count: expected an integer, got true",
        ),
        (
            ('kind = "simulated"', 'kind = "simulated"\nseed = false'),
            "drivers[0].seed: expected an integer, got false",
        ),
        (
            ("[agent]", "[agent]\nkeep_plate_separators = 1"),
            "agent.keep_plate_separators: expected true or false, got 1",
        ),
    ],
)
def test_bool_is_not_a_number_and_a_number_is_not_a_bool(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    assert only_error(tmp_path, BASE.replace(*change)) == message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("[agent]", "[agent]\nretention_days = 0"),
            "agent.retention_days: expected a number of days >= 1, got 0",
        ),
        (
            ("[controller]", "[controller]\nconcurrency = 33"),
            "controller.concurrency: expected 1 to 32 requests in flight, got 33",
        ),
        (
            ("[controller]", "[controller]\ntimeout_s = 0.1"),
            "controller.timeout_s: expected a number from 0.5 to 120, got 0.1",
        ),
        (
            ("[controller]", "[controller]\nbackoff_max_s = nan"),
            "controller.backoff_max_s: expected a number from 1 to 3600, got nan",
        ),
        (
            ("[controller]", "[controller]\ncurrency = 'C4D'"),
            "controller.currency: expected a currency code such as \"CAD\", got 'C4D'",
        ),
        (
            ('station_id = "PS-0001"', 'station_id = "PS 0001"'),
            "agent.station_id: expected 1-32 letters, digits, '.', '_' or '-', got 'PS 0001'",
        ),
        (
            ('station_id = "PS-0001"', "station_id = 1"),
            "agent.station_id: expected a string, got 1",
        ),
    ],
)
def test_values_out_of_range(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    assert only_error(tmp_path, BASE.replace(*change)) == message


def test_toml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nstation_id = "PS-0001\ntimezone = "America/Toronto"\n')
    with pytest.raises(ConfigErrors) as info:
        load_config(path, environ={"PAYSTATION_AGENT_TOKEN": TOKEN})
    [error] = info.value.errors
    assert error.key == ""
    assert str(error).startswith(f"{path} is not valid TOML: ")
    assert "line 2" in str(error)


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "config.toml"
    with pytest.raises(ConfigErrors) as info:
        load_config(path, environ={"PAYSTATION_AGENT_TOKEN": TOKEN})
    assert [str(e) for e in info.value.errors] == [f"config file {path} does not exist"]


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[agent]\nstation_id = "PS-\xe90001"\n')
    with pytest.raises(ConfigErrors) as info:
        load_config(path, environ={"PAYSTATION_AGENT_TOKEN": TOKEN})
    [error] = info.value.errors
    assert str(error).startswith(f"cannot read config file {path}: ")


def test_every_problem_of_one_file_is_reported_at_once(tmp_path: Path) -> None:
    text = """
[agent]
station_ld = "PS-0001"
timezone = "America/Torono"

[controller]
url = "http://controller.operationscommander.io/push"
concurrency = true

[zones]
unmapped = "drop"
[zones.map]
"4" = 4

[[drivers]]
kind = "simulated"
rate = "fast"

[[drivers]]
kind = "modbus"
"""
    with pytest.raises(ConfigErrors) as info:
        load_config(write(tmp_path, text), environ={})
    assert [e.key for e in info.value.errors] == [
        "agent.station_ld",
        "agent.station_id",
        "agent.timezone",
        "controller.url",
        "controller.concurrency",
        "zones.unmapped",
        "zones.map.4",
        "drivers[0].rate",
        "drivers[1].kind",
        "controller.token_file",
    ]
    assert all(isinstance(e, ConfigError) and e.problem for e in info.value.errors)
    assert len(str(info.value).splitlines()) == 10


# --- the API token ----------------------------------------------------------------------------


def token_config(tmp_path: Path, file: Path | None) -> Path:
    line = f"token_file = '{file}'" if file else ""
    return write(tmp_path, BASE.replace("[controller]", f"[controller]\n{line}"))


def credentials(tmp_path: Path, value: str) -> str:
    directory = tmp_path / "credentials"
    directory.mkdir()
    (directory / "api-token").write_text(value, encoding="utf-8")
    return str(directory)


def token_of(path: Path, environ: dict[str, str]) -> str:
    return resolve_token(load_config(path, environ=environ).controller, environ).reveal()


def test_token_file_beats_credentials_directory_and_environment(tmp_path: Path) -> None:
    path = token_config(tmp_path, token_file(tmp_path, "FROM-FILE\n"))
    env = {
        "CREDENTIALS_DIRECTORY": credentials(tmp_path, "FROM-CREDENTIALS"),
        "PAYSTATION_AGENT_TOKEN": "FROM-ENV",
    }
    assert token_of(path, env) == "FROM-FILE"


def test_credentials_directory_beats_environment(tmp_path: Path) -> None:
    path = token_config(tmp_path, None)
    env = {
        "CREDENTIALS_DIRECTORY": credentials(tmp_path, "FROM-CREDENTIALS\n"),
        "PAYSTATION_AGENT_TOKEN": "FROM-ENV",
    }
    assert token_of(path, env) == "FROM-CREDENTIALS"


def test_environment_when_credentials_directory_has_no_token(tmp_path: Path) -> None:
    path = token_config(tmp_path, None)
    (tmp_path / "credentials").mkdir()
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path / "credentials"), "PAYSTATION_AGENT_TOKEN": "E-1"}
    assert token_of(path, env) == "E-1"


@pytest.mark.parametrize("content", ["TOKEN-7\n", "TOKEN-7\r\n", "  TOKEN-7  \n\n"])
def test_whitespace_around_the_token_in_its_file_is_fine(tmp_path: Path, content: str) -> None:
    path = token_config(tmp_path, token_file(tmp_path, content))
    assert token_of(path, {}) == "TOKEN-7"


def test_token_of_exactly_50_characters_is_fine(tmp_path: Path) -> None:
    value = "A1b2-" * 10
    path = token_config(tmp_path, token_file(tmp_path, value))
    assert token_of(path, {}) == value


BAD_TOKENS = [
    "s3cretPART one-two",  # a space inside
    "s3cretPART" * 5 + "X",  # 51 characters
    "s3cretPART_underscore",
    "s3cretPART/slash",
]


@pytest.mark.parametrize("bad", BAD_TOKENS)
def test_bad_token_in_its_file_is_refused_without_showing_it(tmp_path: Path, bad: str) -> None:
    path = token_config(tmp_path, token_file(tmp_path, bad + "\n"))
    with pytest.raises(ConfigErrors) as info:
        load_config(path, environ={})
    [error] = info.value.errors
    assert str(error) == (
        "controller.token_file: the API token must be 1-50 letters, digits or dashes "
        f"(found {len(bad)} characters, not shown)"
    )
    for shown in (str(info.value), repr(info.value), repr(error), str(error.args)):
        assert "s3cretPART" not in shown


@pytest.mark.parametrize("bad", BAD_TOKENS)
def test_bad_token_in_the_environment_is_refused_without_showing_it(
    tmp_path: Path, bad: str
) -> None:
    errors = errors_of(tmp_path, BASE, environ={"PAYSTATION_AGENT_TOKEN": bad})
    assert errors == [
        "PAYSTATION_AGENT_TOKEN: the API token must be 1-50 letters, digits or dashes "
        f"(found {len(bad)} characters, not shown)"
    ]
    assert "s3cretPART" not in "".join(errors)


def test_bad_token_in_credentials_names_where_it_came_from(tmp_path: Path) -> None:
    env = {"CREDENTIALS_DIRECTORY": credentials(tmp_path, "s3cretPART with space")}
    errors = errors_of(tmp_path, BASE, environ=env)
    assert errors == [
        "$CREDENTIALS_DIRECTORY/api-token: the API token must be 1-50 letters, digits or "
        "dashes (found 21 characters, not shown)"
    ]


def test_missing_token_file_names_controller_token_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-token"
    path = token_config(tmp_path, missing)
    with pytest.raises(ConfigErrors) as info:
        load_config(path, environ={"PAYSTATION_AGENT_TOKEN": TOKEN})
    assert [str(e) for e in info.value.errors] == [
        f"controller.token_file: token file {missing} does not exist"
    ]


def test_a_config_for_reading_needs_neither_the_token_nor_the_controller_table(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-token"
    config = load_config(token_config(tmp_path, missing), environ={}, sending=False)
    assert config.controller.token_file == missing  # named, never read
    bare = write(tmp_path, '[agent]\nstation_id = "PS-1"\ntimezone = "UTC"\n')
    assert load_config(bare, environ={}, sending=False).controller.url == DEFAULT_URL
    with pytest.raises(ConfigErrors) as info:  # what sends still needs both
        load_config(bare, environ={})
    assert "controller: missing table [controller]" in [str(e) for e in info.value.errors]


def test_a_config_for_reading_still_names_a_bad_controller_key(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("[controller]", "[controller]\ntimeout_s = 0.1"))
    with pytest.raises(ConfigErrors) as info:
        load_config(path, environ={}, sending=False)
    assert [str(e) for e in info.value.errors] == [
        "controller.timeout_s: expected a number from 0.5 to 120, got 0.1"
    ]


def test_token_file_that_is_a_directory(tmp_path: Path) -> None:
    path = token_config(tmp_path, tmp_path)
    with pytest.raises(ConfigErrors) as info:
        load_config(path, environ={})
    assert [str(e) for e in info.value.errors] == [
        f"controller.token_file: cannot read token file {tmp_path}: IsADirectoryError"
    ]


def test_no_token_anywhere(tmp_path: Path) -> None:
    assert errors_of(tmp_path, BASE, environ={}) == [
        "controller.token_file: no API token: set controller.token_file, or systemd's "
        "LoadCredential=api-token, or the environment variable PAYSTATION_AGENT_TOKEN"
    ]


def test_empty_token_file(tmp_path: Path) -> None:
    path = token_config(tmp_path, token_file(tmp_path, "\n"))
    with pytest.raises(ConfigErrors) as info:
        load_config(path, environ={})
    assert "found 0 characters" in str(info.value)


def test_secret_never_shows_its_value() -> None:
    secret = Secret("s3cretPART-42")
    for shown in (
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        "%s" % secret,  # noqa: UP031 - the old style is what logging uses
        repr([secret]),
        repr({"token": secret}),
    ):
        assert "s3cretPART" not in shown
        assert "42" not in shown
    assert repr(secret) == "Secret('********')"
    assert secret.reveal() == "s3cretPART-42"
    assert secret == Secret("s3cretPART-42")
    assert secret != Secret("other")
    assert secret != "s3cretPART-42"


def test_secret_is_redacted_in_log_records(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret("s3cretPART")
    with caplog.at_level(logging.INFO, logger="test.secret"):
        logging.getLogger("test.secret").info("token is %s / %r", secret, secret)
    assert "s3cretPART" not in caplog.text
    assert "Secret('********')" in caplog.text


# --- the journal's default place --------------------------------------------------------------


def test_default_journal_is_in_the_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "var-lib"
    config = load_text(
        tmp_path, BASE, environ={"STATE_DIRECTORY": str(state), "PAYSTATION_AGENT_TOKEN": TOKEN}
    )
    assert config.agent.journal == state / "journal.sqlite3"


def test_state_directory_list_uses_the_first(tmp_path: Path) -> None:
    environ = {"STATE_DIRECTORY": f"{tmp_path / 'a'}:{tmp_path / 'b'}"}
    assert default_journal_path(environ) == tmp_path / "a" / "journal.sqlite3"


def test_without_state_directory_the_journal_is_in_the_user_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.config.model.SYSTEM_STATE_DIR", tmp_path / "not-installed")
    config = load_text(tmp_path, BASE, environ={"PAYSTATION_AGENT_TOKEN": TOKEN})
    assert config.agent.journal.name == "journal.sqlite3"
    assert config.agent.journal.parent.name == "paystation-agent"


def test_a_technicians_command_finds_the_services_journal_without_a_journal_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's journal is in $STATE_DIRECTORY (/var/lib/paystation-agent); a
    technician's shell has no STATE_DIRECTORY, and must still read that journal, not one
    of its own in root's home ("no journal yet" beside a running service)."""
    system = tmp_path / "var" / "lib" / "paystation-agent"
    system.mkdir(parents=True)
    monkeypatch.setattr("agent.config.model.SYSTEM_STATE_DIR", system)
    assert default_journal_path({}) == system / "journal.sqlite3"
    assert default_journal_path({"STATE_DIRECTORY": str(system)}) == system / "journal.sqlite3"


def test_explicit_journal_beats_the_state_directory(tmp_path: Path) -> None:
    text = BASE.replace("[agent]", "[agent]\njournal = '/srv/j.sqlite3'")
    assert load_text(tmp_path, text).agent.journal == Path("/srv/j.sqlite3")


def test_the_example_config_is_valid_and_shows_every_key(tmp_path: Path) -> None:
    """config.example.toml is what installers copy: it must load as it is."""
    from tests.conftest import ROOT

    token = tmp_path / "api-token"
    token.write_text("EXAMPLE-TOKEN-1\n")
    text = (ROOT / "config.example.toml").read_text()
    text = text.replace("/etc/paystation-agent/api-token", str(token))
    text = text.replace("/var/lib/paystation-agent/journal.sqlite3", str(tmp_path / "j.sqlite3"))
    path = tmp_path / "config.toml"
    path.write_text(text)
    config = load_config(path, environ={})
    assert config.zones.map == {"4": "Lot 4"}
    assert config.drivers[0].kind == "serial"
    serial_keys = set(vars(config.drivers[0].options))
    for key in serial_keys - {"renames"}:
        assert f"\n{key} " in text or f"\n{key}=" in text, f"{key} is not documented"


# --- the site's network: proxy, its credentials, a private CA ----------------------------


def controller_keys(text: str) -> str:
    return BASE.replace("[controller]\n", f"[controller]\n{text}\n")


def test_proxy_ca_file_and_proxy_credentials_load(tmp_path: Path) -> None:
    ca = tmp_path / "site-ca.pem"
    ca.write_text(_any_ca_pem())
    auth = token_file(tmp_path, "alice:pa55-word\n", name="proxy-auth")
    text = controller_keys(
        f'proxy = "http://proxy.site.example:3128"\nca_file = "{ca}"\nproxy_auth_file = "{auth}"'
    )
    config = load_text(tmp_path, text)
    assert config.controller.proxy == "http://proxy.site.example:3128"
    assert config.controller.ca_file == ca
    found = resolve_proxy_auth(config.controller, {})
    assert found is not None and found.user == "alice" and found.password.reveal() == "pa55-word"
    assert "pa55-word" not in repr(found)


def test_proxy_credentials_come_from_the_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "proxy-auth").write_text("bob:hunter-2\n")
    config = load_text(tmp_path, BASE)
    found = resolve_proxy_auth(config.controller, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert found is not None and (found.user, found.password.reveal()) == ("bob", "hunter-2")
    assert resolve_proxy_auth(config.controller, {}) is None


def test_proxy_credentials_in_the_config_file_are_refused(tmp_path: Path) -> None:
    error = only_error(tmp_path, controller_keys('proxy = "http://alice:pa55@proxy:3128"'))
    assert error.startswith("controller.proxy: credentials do not belong in the config file")
    assert "pa55" not in error


@pytest.mark.parametrize(
    "proxy", ["socks5://proxy:1080", "proxy:3128", "http://proxy:3128/path", "http://proxy:99999"]
)
def test_a_proxy_that_is_no_http_proxy_url_is_refused(tmp_path: Path, proxy: str) -> None:
    assert only_error(tmp_path, controller_keys(f'proxy = "{proxy}"')).startswith(
        "controller.proxy: "
    )


def test_direct_overrides_the_environments_proxy(tmp_path: Path) -> None:
    assert load_text(tmp_path, controller_keys('proxy = "direct"')).controller.proxy == "direct"


def test_a_ca_file_that_is_missing_or_holds_no_certificate_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "none.pem"
    assert only_error(tmp_path, controller_keys(f'ca_file = "{missing}"')) == (
        f"controller.ca_file: CA file {missing} does not exist"
    )
    junk = write(tmp_path, "not a certificate\n", name="junk.pem")
    assert only_error(tmp_path, controller_keys(f'ca_file = "{junk}"')).startswith(
        f"controller.ca_file: {junk} holds no PEM certificate"
    )


def test_a_proxy_credentials_file_without_a_password_names_the_key_not_the_text(
    tmp_path: Path,
) -> None:
    auth = token_file(tmp_path, "alice-without-colon\n", name="proxy-auth")
    error = only_error(tmp_path, controller_keys(f'proxy_auth_file = "{auth}"'))
    assert error.startswith("controller.proxy_auth_file: expected one line user:password in")
    assert "alice-without-colon" not in error


def _any_ca_pem() -> str:
    """A certificate to stand for a site's CA (made here: no file of the system's read)."""
    return make_ca("Config Test CA").cert_pem.decode()
