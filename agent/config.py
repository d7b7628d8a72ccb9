"""The agent's configuration: one TOML file, validated at start into small frozen objects.

The keys are the ones installers and technicians write (contract.md §3). Validation collects
every problem in one pass and names each by its key path (``drivers[0].baudrate: expected an
integer, got "fast"``), so a technician fixes the file once, not once per restart. Unknown
keys are errors: a typo must not be silently ignored.

The API token is never part of the file: it is read from ``controller.token_file``, else
``$CREDENTIALS_DIRECTORY/api-token`` (systemd's LoadCredential=), else the environment
variable ``PAYSTATION_AGENT_TOKEN``. It is held in a :class:`Secret`, whose ``repr`` and
``str`` are redacted, and re-read on reload so that a rotated token applies to the backlog.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import platformdirs

from agent.errors import ConfigError, ConfigErrors

APP_NAME = "paystation-agent"
DEFAULT_CONFIG_PATH = Path("/etc/paystation-agent/config.toml")
DEFAULT_URL = "https://controller.operationscommander.io/api/OC-TOMA/v1/permits/push"
TOKEN_ENV = "PAYSTATION_AGENT_TOKEN"
CONFIG_ENV = "PAYSTATION_AGENT_CONFIG"
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9-]{1,50}")

UnmappedPolicy = Literal["hold", "send", "reject"]
UNMAPPED_POLICIES: tuple[UnmappedPolicy, ...] = ("hold", "send", "reject")


class Secret:
    """A value that must never be printed: ``repr``/``str`` show a redaction."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class AgentSettings:
    station_id: str
    timezone: ZoneInfo
    journal: Path
    retention_days: int = 30
    keep_plate_separators: bool = False
    journal_max_mb: int | None = None  # None: as large as the disk allows


@dataclass(frozen=True)
class ControllerSettings:
    url: str = DEFAULT_URL
    token_file: Path | None = None
    currency: str = "CAD"
    timeout_s: float = 10.0
    concurrency: int = 4
    backoff_max_s: float = 60.0
    auth_retry_s: float = 60.0


@dataclass(frozen=True)
class ZoneSettings:
    unmapped: UnmappedPolicy = "hold"
    map: Mapping[str, str] = field(default_factory=dict)
    known: tuple[str, ...] = ()  # this site's OPSCOM zone names; empty = not checked


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics: a loopback listener and/or a node_exporter textfile."""

    listen: tuple[str, int] | None = None
    textfile: Path | None = None


@dataclass(frozen=True)
class DriverSettings:
    """One ``[[drivers]]`` table: its kind, a name for logs, and the kind's own options."""

    kind: str
    name: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class Config:
    agent: AgentSettings
    controller: ControllerSettings
    zones: ZoneSettings
    drivers: tuple[DriverSettings, ...]
    source: Path | None = None
    metrics: MetricsSettings = MetricsSettings()


def default_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$PAYSTATION_AGENT_CONFIG``, then /etc/paystation-agent/config.toml, then the user's."""
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    if DEFAULT_CONFIG_PATH.exists():
        return DEFAULT_CONFIG_PATH
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def default_journal_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$STATE_DIRECTORY`` (systemd's StateDirectory=), else the platform's user data dir."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    base = Path(state) if state else Path(platformdirs.user_data_dir(APP_NAME))
    return base / "journal.sqlite3"


def load_config(path: Path, environ: Mapping[str, str] = os.environ) -> Config:
    """Read and validate ``path``; raise :class:`ConfigErrors` listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigErrors([ConfigError("", f"config file {path} does not exist")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigErrors([ConfigError("", f"cannot read config file {path}: {exc}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([ConfigError("", f"{path} is not valid TOML: {exc}")]) from None
    return parse_config(data, environ=environ, source=path)


def parse_config(
    data: Mapping[str, Any], environ: Mapping[str, str] = os.environ, source: Path | None = None
) -> Config:
    """Validate a parsed TOML document into a :class:`Config`."""
    from drivers import driver_option_parser  # drivers know their own option keys

    v = _Validator()
    v.known_keys("", data, {"agent", "controller", "zones", "drivers", "metrics"})

    agent_t = v.table("agent", data.get("agent"), required=True)
    v.known_keys(
        "agent",
        agent_t,
        {
            "station_id",
            "timezone",
            "journal",
            "retention_days",
            "keep_plate_separators",
            "journal_max_mb",
        },
    )
    station_id = v.get(agent_t, "agent", "station_id", str, required=True, default="")
    if station_id and not re.fullmatch(r"[A-Za-z0-9._-]{1,32}", station_id):
        v.error(
            "agent.station_id",
            f"expected 1-32 letters, digits, '.', '_' or '-', got {station_id!r}",
        )
    tz_name = v.get(agent_t, "agent", "timezone", str, required=True, default="UTC")
    timezone = ZoneInfo("UTC")
    try:
        timezone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        v.error(
            "agent.timezone",
            f'expected an IANA time zone such as "America/Toronto", got {tz_name!r}',
        )
    journal_s = v.get(agent_t, "agent", "journal", str, default="")
    journal = Path(journal_s) if journal_s else default_journal_path(environ)
    retention = v.get(agent_t, "agent", "retention_days", int, default=30)
    if retention < 1:
        v.error("agent.retention_days", f"expected a number of days >= 1, got {retention}")
    keep_sep = v.get(agent_t, "agent", "keep_plate_separators", bool, default=False)
    max_mb = v.get(agent_t, "agent", "journal_max_mb", int, default=0)
    if "journal_max_mb" in agent_t and max_mb < 1:
        v.error("agent.journal_max_mb", f"expected a size in MB >= 1, got {max_mb}")

    ctl_t = v.table("controller", data.get("controller"), required=True)
    v.known_keys(
        "controller",
        ctl_t,
        {
            "url",
            "token_file",
            "currency",
            "timeout_s",
            "concurrency",
            "backoff_max_s",
            "auth_retry_s",
        },
    )
    url = v.get(ctl_t, "controller", "url", str, default=DEFAULT_URL)
    url_problem = check_url(url)
    if url_problem:
        v.error("controller.url", url_problem)
    token_file_s = v.get(ctl_t, "controller", "token_file", str, default="")
    currency = v.get(ctl_t, "controller", "currency", str, default="CAD").upper()
    if not re.fullmatch(r"[A-Z]{1,10}", currency):
        v.error("controller.currency", f'expected a currency code such as "CAD", got {currency!r}')
    timeout_s = v.number(ctl_t, "controller", "timeout_s", 10.0, low=0.5, high=120.0)
    concurrency = v.get(ctl_t, "controller", "concurrency", int, default=4)
    if not 1 <= concurrency <= 32:
        v.error("controller.concurrency", f"expected 1 to 32 requests in flight, got {concurrency}")
    backoff_max = v.number(ctl_t, "controller", "backoff_max_s", 60.0, low=1.0, high=3600.0)
    auth_retry = v.number(ctl_t, "controller", "auth_retry_s", 60.0, low=1.0, high=3600.0)

    zones_t = v.table("zones", data.get("zones"), required=False)
    v.known_keys("zones", zones_t, {"unmapped", "map", "known"})
    unmapped = v.get(zones_t, "zones", "unmapped", str, default="hold")
    if unmapped not in UNMAPPED_POLICIES:
        v.error("zones.unmapped", f'expected one of "hold", "send", "reject", got {unmapped!r}')
        unmapped = "hold"
    zone_map: dict[str, str] = {}
    for code, name in v.table("zones.map", zones_t.get("map"), required=False).items():
        key = f"zones.map.{_quote_key(code)}"
        if code != code.strip() or not code:
            v.error(key, "a zone code must not be empty or start or end with spaces")
        elif not isinstance(name, str):
            v.error(key, f"expected an OPSCOM zone name (a string), got {_show(name)}")
        elif not name.strip() or len(name) > 200 or not name.isprintable():
            v.error(key, "expected a zone name of 1-200 printable characters, exactly as in OPSCOM")
        else:
            zone_map[code] = name

    known = v.get(zones_t, "zones", "known", list, default=[])
    if not all(isinstance(name, str) and name for name in known):
        v.error("zones.known", "expected an array of OPSCOM zone names (strings)")
        known = []

    drivers: list[DriverSettings] = []
    raw_drivers = data.get("drivers", [])
    if not isinstance(raw_drivers, list):
        v.error("drivers", "expected an array of tables ([[drivers]])")
        raw_drivers = []
    names: set[str] = set()
    for i, table in enumerate(raw_drivers):
        key = f"drivers[{i}]"
        if not isinstance(table, dict):
            v.error(key, "expected a table")
            continue
        kind = v.get(table, key, "kind", str, required=True, default="")
        name = v.get(table, key, "name", str, default=f"{kind or 'driver'}{i}")
        if name in names:
            v.error(f"{key}.name", f"{name!r} is used by another driver")
        names.add(name)
        parser = driver_option_parser(kind) if kind else None
        if kind and parser is None:
            v.error(f"{key}.kind", f"unknown driver kind {kind!r}")
            continue
        if parser is None:
            continue
        options = {k: val for k, val in table.items() if k not in {"kind", "name"}}
        try:
            drivers.append(DriverSettings(kind, name, parser(key, options)))
        except ConfigErrors as exc:
            for error in exc.errors:
                v.add(error)
        except ConfigError as exc:
            v.add(exc)

    metrics = _metrics(v, v.table("metrics", data.get("metrics"), required=False))

    token_file = Path(token_file_s) if token_file_s else None
    controller = ControllerSettings(
        url, token_file, currency, timeout_s, concurrency, backoff_max, auth_retry
    )
    try:
        resolve_token(controller, environ)
    except ConfigError as exc:
        v.add(exc)

    if v.errors:
        raise ConfigErrors(v.errors)
    return Config(
        agent=AgentSettings(
            station_id, timezone, journal, retention, keep_sep, max_mb if max_mb > 0 else None
        ),
        controller=controller,
        zones=ZoneSettings(unmapped, zone_map, tuple(known)),  # type: ignore[arg-type]
        drivers=tuple(drivers),
        source=source,
        metrics=metrics,
    )


def _metrics(v: _Validator, table: dict[str, Any]) -> MetricsSettings:
    v.known_keys("metrics", table, {"listen", "textfile"})
    listen_s = v.get(table, "metrics", "listen", str, default="")
    listen: tuple[str, int] | None = None
    if listen_s:
        host, _, port_s = listen_s.rpartition(":")
        host = host.strip("[]")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback or not port_s.isdigit() or not 0 < int(port_s) < 65536:
            v.error(
                "metrics.listen",
                f'expected a loopback address and port such as "127.0.0.1:9464", got {listen_s!r}'
                " (metrics are never exposed beyond this PC)",
            )
        else:
            listen = (host, int(port_s))
    textfile_s = v.get(table, "metrics", "textfile", str, default="")
    textfile = Path(textfile_s) if textfile_s else None
    if textfile is not None and not textfile.parent.is_dir():
        v.error("metrics.textfile", f"directory {textfile.parent} does not exist")
    elif textfile is not None and textfile.suffix != ".prom":
        v.error("metrics.textfile", f"node_exporter reads only *.prom files, got {textfile.name}")
    return MetricsSettings(listen, textfile)


def check_url(url: str) -> str | None:
    """HTTPS anywhere; plain http only to a loopback address (the emulator, tests)."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return f"the port in {url!r} is not a valid port number (1-65535)"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        if host == "localhost":
            return None
        try:
            if ipaddress.ip_address(host).is_loopback:
                return None
        except ValueError:
            pass
        return f"plain http is allowed only to a loopback address, got {url!r}; use https://"
    return f"expected an https:// URL, got {url!r}"


def resolve_token(
    controller: ControllerSettings, environ: Mapping[str, str] = os.environ
) -> Secret:
    """Find and validate the API token; errors never include the token itself."""
    source_key = "controller.token_file"
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    credential = Path(credentials) / "api-token" if credentials else None
    has_credential = credential is not None and credential.exists()
    if controller.token_file is not None and not (
        # Under systemd the file is root's (0600) and LoadCredential= hands the service
        # its own copy of it; root's CLI reads the file itself.
        has_credential and not os.access(controller.token_file, os.R_OK)
    ):
        text = _read_token_file(controller.token_file, source_key)
    elif credential is not None and has_credential:
        source_key = "$CREDENTIALS_DIRECTORY/api-token"
        text = _read_token_file(credential, source_key)
    elif environ.get(TOKEN_ENV):
        source_key = TOKEN_ENV
        text = environ[TOKEN_ENV]
    else:
        raise ConfigError(
            "controller.token_file",
            f"no API token: set controller.token_file, or systemd's LoadCredential=api-token, "
            f"or the environment variable {TOKEN_ENV}",
        )
    token = text.strip()
    if not TOKEN_PATTERN.fullmatch(token):
        raise ConfigError(
            source_key,
            f"the API token must be 1-50 letters, digits or dashes (found {len(token)} "
            "characters, not shown)",
        )
    return Secret(token)


def _read_token_file(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(key, f"token file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read token file {path}: {exc.__class__.__name__}") from None


T = TypeVar("T")


class _Validator:
    """Collects problems instead of stopping at the first one."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def error(self, key: str, problem: str) -> None:
        self.add(ConfigError(key, problem))

    def add(self, error: ConfigError) -> None:
        """Record a problem; a key already found wrong keeps its first (most specific)
        message, so a value of the wrong type is not also reported as out of range, or a
        token file of the wrong type also as "no token"."""
        if not any(e.key == error.key for e in self.errors):
            self.errors.append(error)

    def table(self, key: str, value: Any, *, required: bool) -> dict[str, Any]:
        if value is None:
            if required:
                self.error(key, f"missing table [{key}]")
            return {}
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {_show(value)}")
            return {}
        return value

    def known_keys(self, prefix: str, table: Mapping[str, Any], known: set[str]) -> None:
        for key in table:
            if key not in known:
                path = f"{prefix}.{key}" if prefix else key
                hint = _did_you_mean(key, known)
                self.error(path, f"unknown key{hint}; known keys: {', '.join(sorted(known))}")

    def get(
        self,
        table: Mapping[str, Any],
        prefix: str,
        key: str,
        kind: type[T],
        *,
        default: T,
        required: bool = False,
    ) -> T:
        path = f"{prefix}.{key}"
        if key not in table:
            if required:
                self.error(path, f"missing; expected {_kind_name(kind)}")
            return default
        value = table[key]
        # bool is an int in Python; a TOML true is not a baud rate
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.error(path, f"expected {_kind_name(kind)}, got {_show(value)}")
            return default
        return value

    def number(
        self,
        table: Mapping[str, Any],
        prefix: str,
        key: str,
        default: float,
        *,
        low: float,
        high: float,
    ) -> float:
        path = f"{prefix}.{key}"
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(path, f"expected a number, got {_show(value)}")
            return default
        if not low <= value <= high:
            self.error(path, f"expected a number from {low:g} to {high:g}, got {value}")
            return default
        return float(value)


def option_reader(prefix: str, options: Mapping[str, Any], known: set[str]) -> _OptionReader:
    """A validator for one driver's options, used by the drivers' own parsers."""
    return _OptionReader(prefix, options, known | {"kind", "name"})


class _OptionReader(_Validator):
    def __init__(self, prefix: str, options: Mapping[str, Any], known: set[str]) -> None:
        super().__init__()
        self.prefix = prefix
        self.options = options
        self.known_keys(prefix, options, known)

    def take(self, key: str, kind: type[T], default: T, *, required: bool = False) -> T:
        return self.get(self.options, self.prefix, key, kind, default=default, required=required)

    def take_number(self, key: str, default: float, *, low: float, high: float) -> float:
        return self.number(self.options, self.prefix, key, default, low=low, high=high)

    def check(self, key: str, ok: bool, problem: str) -> None:
        if not ok:
            self.error(f"{self.prefix}.{key}", problem)

    def done(self, build: Callable[[], T]) -> T:
        if self.errors:
            raise ConfigErrors(self.errors)
        return build()


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false", float: "a number"}.get(
        kind, kind.__name__
    )


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def _quote_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'


def _did_you_mean(key: str, known: set[str]) -> str:
    return suggest(key, sorted(known))


def config_warnings(config: Config) -> list[str]:
    """Problems that do not stop the agent but that a technician should fix."""
    warnings = []
    if config.zones.known:
        for code, name in config.zones.map.items():
            if name not in config.zones.known:
                hint = suggest(name, config.zones.known)
                warnings.append(
                    f"zones.map.{_quote_key(code)}: {name!r} is not in zones.known{hint}; "
                    "OPSCOM will file these permits as disconnected records"
                )
    token_file = config.controller.token_file
    if token_file is not None:
        try:
            mode = token_file.stat().st_mode
        except OSError:
            mode = 0
        if mode & 0o077:
            warnings.append(
                f"controller.token_file: {token_file} is readable by other users "
                f"(mode {mode & 0o777:o}); run: chmod 600 {token_file}"
            )
    return warnings


def suggest(name: str, candidates: tuple[str, ...] | list[str]) -> str:
    """A "did you mean" hint for a zone name or key, or an empty string."""
    import difflib

    folded = {c.casefold(): c for c in candidates}
    if name.casefold() in folded:
        return f" (did you mean {folded[name.casefold()]!r}? names are case-sensitive)"
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
