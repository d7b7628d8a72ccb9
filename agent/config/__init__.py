"""The agent's configuration: one TOML file, validated at start into small frozen objects.

Here live the model (``model``: the settings dataclasses, each default written once), the
loader (``loading``: one function per section, every problem named by its TOML key path),
the secrets (``token``: the API token and the proxy's credentials, found outside the file,
held in a redacted :class:`Secret`), and
two views of the file for technicians: ``editing`` (``zones set``/``remove`` change the
TOML in place, comments kept) and ``rendering`` (``check-config`` prints the resolved
config as TOML).
It may import the agent's domain modules (errors, permits, currency) and drivers (their
registry validates each ``[[drivers]]`` table); drivers never import it.

The public names are re-exported here: ``from agent.config import Config, load_config``.
"""

from __future__ import annotations

from agent.config.loading import check_url, config_warnings, is_loopback, load_config, parse_config
from agent.config.model import (
    APP_NAME,
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    DEFAULT_URL,
    UNMAPPED_POLICIES,
    AgentSettings,
    Config,
    ControllerSettings,
    DriverSettings,
    MetricsSettings,
    UnmappedPolicy,
    ZoneSettings,
    default_config_path,
    default_journal_path,
)
from agent.config.token import (
    TOKEN_ENV,
    TOKEN_PATTERN,
    ProxyAuth,
    Secret,
    resolve_proxy_auth,
    resolve_token,
)
from drivers.options import DRIVER_KEYS, suggest

__all__ = [
    "APP_NAME",
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_URL",
    "DRIVER_KEYS",
    "TOKEN_ENV",
    "TOKEN_PATTERN",
    "UNMAPPED_POLICIES",
    "AgentSettings",
    "Config",
    "ControllerSettings",
    "DriverSettings",
    "MetricsSettings",
    "ProxyAuth",
    "Secret",
    "UnmappedPolicy",
    "ZoneSettings",
    "check_url",
    "config_warnings",
    "default_config_path",
    "default_journal_path",
    "is_loopback",
    "load_config",
    "parse_config",
    "resolve_proxy_auth",
    "resolve_token",
    "suggest",
]
