"""``check-config``: validate the config and print it resolved (every key, defaults
included; the token never, only where it was found). Exit 78 on a configuration error,
with every bad key named.

``--online`` then checks what the file cannot say on its own, one line each, ``ok``,
``warn`` or ``FAIL``: the controller's name resolves (left to the proxy when there is one),
a connection opens and its certificate verifies (a handshake that sends no request), the
token is accepted (one harmless request: an empty record, which a controller checks the
token of and then refuses, storing nothing), each serial port exists and opens exclusively
(then closed at once), and a driver is configured at all. Exit 0 when nothing failed, 69
(EX_UNAVAILABLE) when a check failed. The token and the proxy's password never appear.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import serial

from agent.commands.common import load_for_sending
from agent.config import Config, Secret, config_warnings, resolve_proxy_auth, resolve_token
from agent.config.rendering import render_config
from agent.errors import SendError
from agent.forwarder import HttpSender, Outcome, classify

EXIT_ONLINE_FAILED = 69  # sysexits EX_UNAVAILABLE: the config is valid, the site is not ready

_PORT_ERRORS = {
    errno.ENOENT: "no such device",
    errno.ENODEV: "no such device",
    errno.ENXIO: "no such device",
    errno.EACCES: "permission denied (the service user needs the dialout group)",
    errno.EPERM: "permission denied (the service user needs the dialout group)",
    errno.EAGAIN: "busy: another process holds it open (a running agent, a stray screen); "
    "stop it to check the port",
    errno.EBUSY: "busy: another process holds it open (a running agent, a stray screen); "
    "stop it to check the port",
}


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_for_sending(args)
    token = resolve_token(config.controller)  # a ConfigError naming the source if unreadable
    warnings = config_warnings(config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"# {config.source}: OK (token found, not shown)")
    print(render_config(config))
    if not getattr(args, "online", False):
        return 0
    print("# online checks")
    failed = False
    for verdict, line in online_checks(config, token):
        failed = failed or verdict == "FAIL"
        print(f"{verdict:<5} {line}")
    return EXIT_ONLINE_FAILED if failed else 0


def online_checks(
    config: Config, token: Secret, environ: Mapping[str, str] | None = None
) -> Iterator[tuple[str, str]]:
    """(``ok`` | ``warn`` | ``FAIL``, what was found), check by check."""
    yield from _controller_checks(config, token, environ)
    yield from _port_checks(config)


def _controller_checks(
    config: Config, token: Secret, environ: Mapping[str, str] | None
) -> Iterator[tuple[str, str]]:
    settings = config.controller
    extra: dict[str, Any] = {} if environ is None else {"environ": environ}
    proxy_auth = resolve_proxy_auth(settings, **extra)
    secrets = [token.reveal()] + ([proxy_auth.password.reveal()] if proxy_auth else [])

    def shown(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "********")
        return text

    sender = HttpSender(
        settings.url,
        lambda: token,
        timeout_s=settings.timeout_s,
        max_connections=1,
        proxy=settings.proxy,
        proxy_auth=proxy_auth,
        ca_file=settings.ca_file,
        **extra,
    )
    try:
        yield "ok", f"route: {sender.route}"
        host = urlsplit(settings.url).hostname or ""
        if sender.route.proxy is None:
            try:
                found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as exc:
                yield "FAIL", f"DNS: cannot resolve {host} ({exc})"
                return
            addresses = sorted({str(info[4][0]) for info in found})
            yield "ok", f"DNS: {host} resolves to {', '.join(addresses)}"
        else:
            yield "ok", f"DNS: {host} is resolved by the proxy"
        try:
            yield "ok", f"connection: {sender.handshake()}"
        except SendError as exc:
            yield "FAIL", shown(exc.reason)
            return
        try:
            reply = sender.post({})
        except SendError as exc:
            yield "FAIL", f"token check: {shown(exc.reason)}"
            return
        verdict = classify(reply.status, reply.headers, reply.body)
        reason = shown(verdict.reason)
        if verdict.outcome is Outcome.PAUSED:
            yield "FAIL", f"token refused: {reason}"
        elif verdict.outcome is Outcome.REJECTED:
            yield (
                "ok",
                f"token accepted (the empty test record was refused, as it should be: {reason})",
            )
        elif verdict.delivered:
            yield "warn", "token accepted, but the controller took an empty record as a permit"
        else:
            yield "FAIL", f"the controller does not answer as the Push API does: {reason}"
    finally:
        sender.close()


def _port_checks(config: Config) -> Iterator[tuple[str, str]]:
    if not config.drivers:
        yield "warn", "no [[drivers]] configured: nothing is read from a pay station"
        return
    for driver in config.drivers:
        options = driver.options
        port = (
            options.get("port") if isinstance(options, Mapping) else getattr(options, "port", None)
        )
        if not isinstance(port, str):
            yield "ok", f"driver {driver.name!r} ({driver.kind}): no serial port"
            continue
        try:
            serial.serial_for_url(port, exclusive=True).close()
        except (serial.SerialException, OSError, ValueError) as exc:
            why = _PORT_ERRORS.get(getattr(exc, "errno", None) or 0, str(exc))
            yield "FAIL", f"driver {driver.name!r}: port {port}: {why}"
        else:
            yield "ok", f"driver {driver.name!r}: port {port} opens exclusively (closed again)"
