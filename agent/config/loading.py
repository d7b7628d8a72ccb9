"""Reading the config file: TOML in, a :class:`~agent.config.model.Config` out, or every
problem at once.

Validation collects every problem in one pass and names each by its key path
(``drivers[0].baudrate: expected an integer, got "fast"``), so a technician fixes the file
once, not once per restart. Unknown keys are errors: a typo must not be silently ignored.
One small function per section, in the file's order; each driver kind's own keys are read
by the driver (:func:`drivers.registry.parse_options`), which knows them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.config.model import (
    UNMAPPED_POLICIES,
    AgentSettings,
    Config,
    ControllerSettings,
    DriverSettings,
    MetricsSettings,
    ZoneSettings,
    default_journal_path,
)
from agent.config.token import resolve_proxy_auth, resolve_token
from agent.currency import CURRENCY_CODE
from agent.errors import ConfigError, ConfigErrors
from agent.hours import parse_hours
from agent.permits import RECEIPT_ROOM, PermitForm, conflict
from drivers.options import DRIVER_KEYS, Problems, TableReader, show, suggest
from drivers.registry import BACKENDS, parse_options

SECTIONS = {"agent", "controller", "zones", "drivers", "metrics"}
STATION_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")


def load_config(
    path: Path, environ: Mapping[str, str] = os.environ, *, sending: bool = True
) -> Config:
    """Read and validate ``path``; raise :class:`ConfigErrors` listing every problem.

    ``sending`` is for what talks to the controller (``run``, ``check-config``, a reload):
    ``[controller]`` is required and the token is resolved with the rest, so every problem
    is named at once. The commands that only read the journal or edit zones load with
    ``sending=False``: no token is read (the token file is root's alone, and a technician
    may be the service's user) and ``[controller]`` may be left out; the keys that are
    there are checked all the same."""
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
    return parse_config(data, environ=environ, source=path, sending=sending)


def parse_config(
    data: Mapping[str, Any],
    environ: Mapping[str, str] = os.environ,
    source: Path | None = None,
    *,
    sending: bool = True,
) -> Config:
    """Validate a parsed TOML document into a :class:`Config` (``sending``: see
    :func:`load_config`)."""
    problems = Problems()
    TableReader("", data, SECTIONS, problems)
    agent = _agent(problems, data.get("agent"), environ)
    controller = _controller(problems, data.get("controller"), required=sending)
    zones = _zones(problems, data.get("zones"))
    drivers = _drivers(problems, data.get("drivers", []), agent.station_id)
    metrics = _metrics(problems, data.get("metrics"))
    if sending:
        for resolve in (resolve_token, resolve_proxy_auth):
            try:
                resolve(controller, environ)
            except ConfigError as exc:
                problems.add(exc)
    problems.raise_any()
    return Config(agent, controller, zones, drivers, source=source, metrics=metrics)


def _keys(settings: type) -> set[str]:
    """A section's keys: its settings' field names."""
    return {f.name for f in dataclasses.fields(settings)}


def _agent(problems: Problems, value: Any, environ: Mapping[str, str]) -> AgentSettings:
    table = problems.table("agent", value, required=True)
    r = TableReader("agent", table, _keys(AgentSettings), problems)
    station_id = r.take("station_id", str, "", required=True)
    if station_id and not STATION_ID.fullmatch(station_id):
        r.error("station_id", f"expected 1-32 letters, digits, '.', '_' or '-', got {station_id!r}")
    tz_name = r.take("timezone", str, "UTC", required=True)
    timezone = ZoneInfo("UTC")
    try:
        timezone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        r.error(
            "timezone", f'expected an IANA time zone such as "America/Toronto", got {tz_name!r}'
        )
    journal_s = r.take("journal", str, "")
    journal = Path(journal_s) if journal_s else default_journal_path(environ)
    retention = r.take("retention_days", int, AgentSettings.retention_days)
    if retention < 1:
        r.error("retention_days", f"expected a number of days >= 1, got {retention}")
    keep_sep = r.take("keep_plate_separators", bool, AgentSettings.keep_plate_separators)
    max_mb = r.take("journal_max_mb", int, 0)
    if "journal_max_mb" in r and max_mb < 1:
        r.error("journal_max_mb", f"expected a size in MB >= 1, got {max_mb}")
    hours_text = r.take("opening_hours", str, str(AgentSettings.opening_hours))
    hours = AgentSettings.opening_hours
    try:
        hours = parse_hours(hours_text)
    except ValueError as exc:
        r.error("opening_hours", str(exc))
    one_cpu = r.take("one_cpu", bool, AgentSettings.one_cpu)
    return AgentSettings(
        station_id,
        timezone,
        journal,
        retention,
        keep_sep,
        max_mb if max_mb > 0 else AgentSettings.journal_max_mb,
        hours,
        one_cpu,
    )


def _controller(problems: Problems, value: Any, *, required: bool) -> ControllerSettings:
    table = problems.table("controller", value, required=required)
    r = TableReader("controller", table, _keys(ControllerSettings), problems)
    url = r.take("url", str, ControllerSettings.url)
    url_problem = check_url(url)
    if url_problem:
        r.error("url", url_problem)
    token_file = r.take("token_file", str, "")
    currency = r.take("currency", str, ControllerSettings.currency).upper()
    if not CURRENCY_CODE.fullmatch(currency):
        r.error("currency", f'expected a currency code such as "CAD", got {currency!r}')
    default = ControllerSettings
    timeout_s = r.take_number("timeout_s", default.timeout_s, low=0.5, high=120.0)
    concurrency = r.take("concurrency", int, default.concurrency)
    if not 1 <= concurrency <= 32:
        r.error("concurrency", f"expected 1 to 32 requests in flight, got {concurrency}")
    adaptive = r.take("adaptive_concurrency", bool, default.adaptive_concurrency)
    backoff_max = r.take_number("backoff_max_s", default.backoff_max_s, low=1.0, high=3600.0)
    auth_retry = r.take_number("auth_retry_s", default.auth_retry_s, low=1.0, high=3600.0)
    proxy = r.take("proxy", str, "") or default.proxy
    proxy_problem = check_proxy(proxy) if proxy else None
    if proxy_problem:
        r.error("proxy", proxy_problem)
    auth_file = r.take("proxy_auth_file", str, "")
    ca_text = r.take("ca_file", str, "")
    ca_file = Path(ca_text) if ca_text else default.ca_file
    ca_problem = check_ca_file(ca_file) if ca_file is not None else None
    if ca_problem:
        r.error("ca_file", ca_problem)
    return ControllerSettings(
        url=url,
        token_file=Path(token_file) if token_file else default.token_file,
        currency=currency,
        timeout_s=timeout_s,
        concurrency=concurrency,
        backoff_max_s=backoff_max,
        auth_retry_s=auth_retry,
        proxy=proxy,
        proxy_auth_file=Path(auth_file) if auth_file else default.proxy_auth_file,
        ca_file=ca_file,
        adaptive_concurrency=adaptive,
    )


def check_proxy(proxy: str) -> str | None:
    """``"direct"``, or an http(s):// proxy URL: a host and a port, no credentials (they
    belong in the proxy-auth credential file, never in the config file)."""
    if proxy == "direct":
        return None
    parts = urlsplit(proxy)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return f"the port in {parts.netloc.rpartition('@')[2]!r} is not a valid port number"
    if "@" in parts.netloc:
        return (
            "credentials do not belong in the config file: put user:password in "
            "controller.proxy_auth_file (or LoadCredential=proxy-auth:...) and write the "
            "proxy's URL without them"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return (
            f'expected a proxy URL such as "http://proxy.example:3128" or "direct", got {proxy!r}'
        )
    if parts.path not in ("", "/") or parts.query:
        return f"expected a proxy URL with no path, got {proxy!r}"
    return None


def check_ca_file(path: Path) -> str | None:
    """A readable PEM bundle with at least one certificate in it."""
    try:
        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        return f"CA file {path} does not exist"
    except PermissionError:
        return f"cannot read CA file {path}: PermissionError"
    except (ssl.SSLError, OSError, ValueError) as exc:
        return f"{path} holds no PEM certificate ({exc.__class__.__name__})"
    return None


def _zones(problems: Problems, value: Any) -> ZoneSettings:
    table = problems.table("zones", value, required=False)
    r = TableReader("zones", table, _keys(ZoneSettings), problems)
    unmapped = r.take("unmapped", str, ZoneSettings.unmapped)
    if unmapped not in UNMAPPED_POLICIES:
        r.error("unmapped", f'expected one of "hold", "send", "reject", got {unmapped!r}')
        unmapped = ZoneSettings.unmapped
    zone_map: dict[str, str] = {}
    for code, name in problems.table("zones.map", table.get("map"), required=False).items():
        key = f"zones.map.{_quote_key(code)}"
        if code != code.strip() or not code:
            problems.error(key, "a zone code must not be empty or start or end with spaces")
        elif not isinstance(name, str):
            problems.error(key, f"expected an OPSCOM zone name (a string), got {show(name)}")
        elif not name.strip() or len(name) > 200 or not name.isprintable():
            problems.error(
                key, "expected a zone name of 1-200 printable characters, exactly as in OPSCOM"
            )
        else:
            zone_map[code] = name
    known = r.take("known", list, [])
    if not all(isinstance(name, str) and name for name in known):
        r.error("known", "expected an array of OPSCOM zone names (strings)")
        known = []
    return ZoneSettings(unmapped, zone_map, tuple(known))


def _drivers(problems: Problems, value: Any, station_id: str) -> tuple[DriverSettings, ...]:
    """Every ``[[drivers]]`` table: the keys all drivers have here, the kind's own keys by
    the kind's driver; then no two drivers may give one permit number."""
    if not isinstance(value, list):
        problems.error("drivers", "expected an array of tables ([[drivers]])")
        value = []
    drivers: list[DriverSettings] = []
    names: set[str] = set()
    forms: dict[str, tuple[str, PermitForm]] = {}  # by driver key: (name, form)
    for i, table in enumerate(value):
        key = f"drivers[{i}]"
        if not isinstance(table, dict):
            problems.error(key, "expected a table")
            continue
        r = TableReader(key, table, None, problems)
        kind = r.take("kind", str, "", required=True)
        name = r.take("name", str, f"{kind or 'driver'}{i}")
        permit_no = r.take("permit_no", str, DriverSettings.permit_no)
        form = _permit_form(problems, key, permit_no, station_id, name)
        if name in names:
            problems.error(f"{key}.name", f"{name!r} is used by another driver")
        elif form is not None:
            forms[key] = (name, form)
        names.add(name)
        if not kind:
            continue
        if kind not in BACKENDS:
            problems.error(f"{key}.kind", f"unknown driver kind {kind!r}")
            continue
        options = {k: val for k, val in table.items() if k not in DRIVER_KEYS}
        try:
            drivers.append(DriverSettings(kind, name, parse_options(kind, key, options), permit_no))
        except ConfigError as exc:  # one problem or several (ConfigErrors)
            for error in exc.errors:
                problems.add(error)

    clash = conflict({key: form for key, (_, form) in forms.items()})
    if clash is not None:
        (first_name, first), (second_name, second) = forms[clash[0]], forms[clash[1]]
        problems.error(
            f"{clash[1]}.permit_no",
            f"{clash[0]} ({first_name!r}: {first.shape!r}) and {clash[1]} ({second_name!r}: "
            f"{second.shape!r}) could give two sales the same permit number; put {{driver}} "
            "in both permit_no forms, or give the drivers names that do not start one "
            "another",
        )
    return tuple(drivers)


def _permit_form(
    problems: Problems, key: str, template: str, station_id: str, name: str
) -> PermitForm | None:
    """A driver's permit number form, or None (and an error under ``key.permit_no``)."""
    try:
        form = PermitForm.parse(template, station_id, name)
    except ValueError as exc:
        problems.error(f"{key}.permit_no", str(exc))
        return None
    if form.room < RECEIPT_ROOM:
        problems.error(
            f"{key}.permit_no",
            f"permit numbers {form.shape!r} leave {max(form.room, 0)} of 50 characters for "
            f"the receipt number, at least {RECEIPT_ROOM} needed; shorten agent.station_id "
            f"or {key}.name, or set a shorter permit_no",
        )
    return form


def _metrics(problems: Problems, value: Any) -> MetricsSettings:
    table = problems.table("metrics", value, required=False)
    r = TableReader("metrics", table, _keys(MetricsSettings), problems)
    listen_s = r.take("listen", str, "")
    listen = MetricsSettings.listen
    if listen_s:
        host, _, port_s = listen_s.rpartition(":")
        host = host.strip("[]")
        if not is_loopback(host) or not port_s.isdigit() or not 0 < int(port_s) < 65536:
            r.error(
                "listen",
                f'expected a loopback address and port such as "127.0.0.1:9464", got {listen_s!r}'
                " (metrics are never exposed beyond this PC)",
            )
        else:
            listen = (host, int(port_s))
    textfile_s = r.take("textfile", str, "")
    textfile = Path(textfile_s) if textfile_s else MetricsSettings.textfile
    if textfile is not None and not textfile.parent.is_dir():
        r.error("textfile", f"directory {textfile.parent} does not exist")
    elif textfile is not None and textfile.suffix != ".prom":
        r.error("textfile", f"node_exporter reads only *.prom files, got {textfile.name}")
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
        if is_loopback(parts.hostname):
            return None
        return f"plain http is allowed only to a loopback address, got {url!r}; use https://"
    return f"expected an https:// URL, got {url!r}"


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1): never beyond this PC."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def _quote_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'
