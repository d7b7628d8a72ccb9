"""The secrets: the API token and the proxy's credentials, never part of the config file,
never printed.

The token is read from ``controller.token_file``, else ``$CREDENTIALS_DIRECTORY/api-token``
(systemd's LoadCredential=), else the environment variable ``PAYSTATION_AGENT_TOKEN``. It
is held in a :class:`Secret`, whose ``repr`` and ``str`` are redacted, and re-read on
reload so that a rotated token applies to the backlog.

The proxy's credentials, when the site's proxy wants them, are one line ``user:password``
in ``controller.proxy_auth_file``, else ``$CREDENTIALS_DIRECTORY/proxy-auth``
(``LoadCredential=proxy-auth:...``): a :class:`ProxyAuth`, its password a :class:`Secret`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.config.model import ControllerSettings
from agent.errors import ConfigError

TOKEN_ENV = "PAYSTATION_AGENT_TOKEN"
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9-]{1,50}")
PROXY_AUTH_CREDENTIAL = "proxy-auth"


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


@dataclass(frozen=True)
class ProxyAuth:
    """The proxy's Basic credentials; the password redacted in any repr."""

    user: str
    password: Secret


def resolve_proxy_auth(
    controller: ControllerSettings, environ: Mapping[str, str] = os.environ
) -> ProxyAuth | None:
    """The proxy's credentials, or None when neither source holds any; errors never
    include the password."""
    key = "controller.proxy_auth_file"
    path = controller.proxy_auth_file
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    credential = Path(credentials) / PROXY_AUTH_CREDENTIAL if credentials else None
    if (
        credential is not None
        and credential.exists()
        and (path is None or not os.access(path, os.R_OK))
    ):
        path, key = credential, f"$CREDENTIALS_DIRECTORY/{PROXY_AUTH_CREDENTIAL}"
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(key, f"proxy credentials file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            key, f"cannot read proxy credentials file {path}: {exc.__class__.__name__}"
        ) from None
    user, colon, password = text.partition(":")
    if not colon or not user or not password or any(c in text for c in "\r\n"):
        raise ConfigError(
            key,
            f"expected one line user:password in {path} (found {len(text)} characters, not shown)",
        )
    return ProxyAuth(user, Secret(password))
