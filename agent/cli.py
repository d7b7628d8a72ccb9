"""The ``paystation-agent`` command line (contract.md §2).

Every command takes ``--config PATH`` before or after its own arguments. Exit codes:
0 success, 1 failure, 2 usage, 78 configuration error (systemd does not restart on it).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import logs
from agent.config import Config, default_config_path, load_config, resolve_token
from agent.errors import EXIT_CONFIG, AgentError, ConfigError, ConfigErrors

log = logging.getLogger("agent.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        result: int = args.handler(args)
        return result
    except ConfigErrors as exc:
        _config_failure(exc, args)
        return EXIT_CONFIG
    except ConfigError as exc:
        _config_failure(ConfigErrors([exc]), args)
        return EXIT_CONFIG
    except AgentError as exc:
        print(f"paystation-agent: {logs.redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="config file (default: $PAYSTATION_AGENT_CONFIG, /etc/paystation-agent/config.toml, "
        "then the user config dir)",
    )
    parser = argparse.ArgumentParser(
        prog="paystation-agent",
        description="Forward pay-station parking sessions to the OPSCOM Push API; lose none.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run", parents=[common], help="the service: drivers → journal → controller"
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log every request")
    run.set_defaults(handler=cmd_run)

    status = sub.add_parser(
        "status", parents=[common], help="journal counts, backlog, last success and error"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)

    check = sub.add_parser(
        "check-config", parents=[common], help="validate the config and print it resolved"
    )
    check.set_defaults(handler=cmd_check_config)

    emulator = sub.add_parser(
        "emulator", parents=[common], help="a local controller emulator with faults"
    )
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8080)
    emulator.add_argument(
        "--token", help="the one token to accept (default: any well-formed token)"
    )
    emulator.add_argument(
        "--zone", action="append", help="an OPSCOM zone name (repeat); others count as disconnected"
    )
    emulator.add_argument(
        "--fault",
        metavar="KIND[:N]",
        help="start with this fault on, for N requests or until cleared: "
        "error, throttle, slow, reset, auth, error200",
    )
    emulator.add_argument("-v", "--verbose", action="store_true", help="log every request")
    emulator.set_defaults(handler=cmd_emulator)

    demo = sub.add_parser(
        "demo", parents=[common], help="emulator + simulated meter + agent, with an outage"
    )
    demo.add_argument(
        "--seconds", type=float, default=24.0, help="how long the meter sells (default 24)"
    )
    demo.add_argument("--rate", type=float, default=8.0, help="sales per second (default 8)")
    demo.add_argument("--keep", type=Path, help="keep the demo's journal in this directory")
    demo.set_defaults(handler=cmd_demo)
    return parser


def _config(args: argparse.Namespace) -> Config:
    path = getattr(args, "config", None) or default_config_path()
    return load_config(path)


def _config_failure(exc: ConfigErrors, args: argparse.Namespace) -> None:
    path = getattr(args, "config", None) or default_config_path()
    print(f"paystation-agent: configuration error in {path}:", file=sys.stderr)
    for error in exc.errors:
        print(f"  {logs.redact(str(error))}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.service import Service

    config = _config(args)
    logs.setup(logging.DEBUG if args.verbose else logging.INFO)
    service = Service(config)
    signal.signal(signal.SIGTERM, lambda *_: service.request_stop())
    signal.signal(signal.SIGINT, lambda *_: service.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: service.request_reload())
    try:
        service.start()
        service.serve()
    finally:
        service.stop()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from agent.journal import Journal
    from agent.status import collect, render

    config = _config(args)
    if not config.agent.journal.exists():
        print(
            f"no journal yet at {config.agent.journal} (the service has not run)", file=sys.stderr
        )
        return 1
    with Journal(config.agent.journal) as journal:
        status = collect(journal)
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    resolve_token(config.controller)  # raises a ConfigError naming the source if unreadable
    print(f"# {config.source}: OK (token found, not shown)")
    print(_render_config(config))
    return 0


def _render_config(config: Config) -> str:
    lines = [
        "[agent]",
        f"station_id = {json.dumps(config.agent.station_id)}",
        f"timezone = {json.dumps(str(config.agent.timezone))}",
        f"journal = {json.dumps(str(config.agent.journal))}",
        f"retention_days = {config.agent.retention_days}",
        f"keep_plate_separators = {str(config.agent.keep_plate_separators).lower()}",
        "",
        "[controller]",
        f"url = {json.dumps(config.controller.url)}",
        f"token_file = {json.dumps(str(config.controller.token_file or ''))}",
        'token = "********"',
        f"currency = {json.dumps(config.controller.currency)}",
        f"timeout_s = {config.controller.timeout_s}",
        f"concurrency = {config.controller.concurrency}",
        f"backoff_max_s = {config.controller.backoff_max_s}",
        "",
        "[zones]",
        f"unmapped = {json.dumps(config.zones.unmapped)}",
        "[zones.map]",
        *(f"{json.dumps(code)} = {json.dumps(name)}" for code, name in config.zones.map.items()),
    ]
    for driver in config.drivers:
        lines += [
            "",
            "[[drivers]]",
            f"kind = {json.dumps(driver.kind)}",
            f"name = {json.dumps(driver.name)}",
        ]
        lines += [f"{k} = {_toml_value(v)}" for k, v in vars(driver.options).items()]
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    if value is None:
        return '""'
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


def cmd_emulator(args: argparse.Namespace) -> int:
    from agent.emulator import serve

    return serve(args.host, args.port, args.token, args.zone, args.fault, args.verbose)


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(seconds=args.seconds, rate=args.rate, keep=args.keep)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
