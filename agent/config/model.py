"""The configuration as the agent uses it: small frozen dataclasses, one per TOML table.

Field names are the keys installers and technicians write (contract.md §3). Each default
is written once, as the field's default (or a module-level value beside it, as httpx's
``_config.py`` keeps ``DEFAULT_TIMEOUT_CONFIG``); the loader (:mod:`agent.config.loading`)
reads it from here, e.g. ``AgentSettings.retention_days``, never a copy of its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from agent.hours import ALWAYS, OpeningHours
from agent.permits import DEFAULT_TEMPLATE

APP_NAME = "paystation-agent"
DEFAULT_CONFIG_PATH = Path("/etc/paystation-agent/config.toml")
SYSTEM_STATE_DIR = Path("/var/lib/paystation-agent")  # the unit's StateDirectory=
DEFAULT_URL = "https://controller.operationscommander.io/api/OC-TOMA/v1/permits/push"
CONFIG_ENV = "PAYSTATION_AGENT_CONFIG"

UnmappedPolicy = Literal["hold", "send", "reject"]
UNMAPPED_POLICIES: tuple[UnmappedPolicy, ...] = ("hold", "send", "reject")


@dataclass(frozen=True)
class AgentSettings:
    station_id: str
    timezone: ZoneInfo
    journal: Path
    retention_days: int = 30
    keep_plate_separators: bool = False
    journal_max_mb: int | None = None  # None: as large as the disk allows
    opening_hours: OpeningHours = ALWAYS  # local time; when a silent meter is news
    one_cpu: bool = True  # keep the agent's threads on one CPU (agent.service.cpu)


@dataclass(frozen=True)
class ControllerSettings:
    url: str = DEFAULT_URL
    token_file: Path | None = None
    currency: str = "CAD"
    timeout_s: float = 10.0
    concurrency: int = 4
    backoff_max_s: float = 60.0
    auth_retry_s: float = 60.0
    proxy: str | None = None  # a proxy URL, or "direct"; None: the environment's (HTTPS_PROXY)
    proxy_auth_file: Path | None = None  # "user:password"; else $CREDENTIALS_DIRECTORY/proxy-auth
    ca_file: Path | None = None  # a PEM bundle trusted besides the system trust store
    adaptive_concurrency: bool = True  # False: always `concurrency` requests in flight


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
    """One ``[[drivers]]`` table: its kind, a name for logs and permit numbers, the form of
    its permit numbers (``permit_no``, see agent.permits), and the kind's own options."""

    kind: str
    name: str
    options: Mapping[str, Any]
    permit_no: str = DEFAULT_TEMPLATE


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
    import platformdirs  # only off a station: the service has /etc and STATE_DIRECTORY

    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def default_journal_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$STATE_DIRECTORY`` (systemd's StateDirectory=, the service), else the installed
    service's /var/lib/paystation-agent when it exists (a technician's shell has no
    STATE_DIRECTORY, and must read the service's journal), else the user's data dir."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / "journal.sqlite3"
    if SYSTEM_STATE_DIR.is_dir():
        return SYSTEM_STATE_DIR / "journal.sqlite3"
    import platformdirs  # only off a station: the service has /etc and STATE_DIRECTORY

    return Path(platformdirs.user_data_dir(APP_NAME)) / "journal.sqlite3"
