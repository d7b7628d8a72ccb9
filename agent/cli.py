"""The ``paystation-agent`` command line (contract.md §2).

Every command takes ``--config PATH`` before or after its own arguments. Exit codes:
0 success, 1 failure, 2 usage, 78 configuration error (systemd does not restart on it).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import logs
from agent.config import (
    Config,
    config_warnings,
    default_config_path,
    load_config,
    resolve_token,
)
from agent.errors import EXIT_CONFIG, AgentError, ConfigError, ConfigErrors
from agent.fieldwork import add_commands as add_technician_commands

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
    except BrokenPipeError:  # `status | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


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
    status.add_argument(
        "--watch", type=float, nargs="?", const=2.0, metavar="SECONDS", help="refresh in place"
    )
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

    simulate = sub.add_parser(
        "simulate",
        parents=[common],
        help="be a meter: send simulated sales in the reference serial protocol to a port",
    )
    simulate.add_argument(
        "--port", required=True, help="the meter's end of the line: a device path or pyserial URL"
    )
    simulate.add_argument("--baudrate", type=int, default=9600, help="default 9600")
    simulate.add_argument("--rate", type=float, default=1.0, help="sales per second (default 1)")
    simulate.add_argument(
        "--count", type=int, default=0, help="stop after this many sales (default 0: until ^C)"
    )
    simulate.add_argument("--seed", type=int, help="repeatable sales and line faults")
    simulate.add_argument(
        "--noise", type=float, default=0.0, help="probability of line noise before a frame"
    )
    simulate.add_argument(
        "--corrupt",
        type=float,
        default=0.0,
        help="probability a sale is first sent once with a flipped bit (the agent must NAK it)",
    )
    simulate.add_argument(
        "--invalid-rate", type=float, default=0.0, help="share of sales a real meter gets wrong"
    )
    simulate.add_argument(
        "--answer-timeout",
        type=float,
        default=2.0,
        help="seconds to wait for ACK/NAK before resending (default 2)",
    )
    simulate.add_argument(
        "--timezone", help="the meter's clock zone (default: the config's, else UTC)"
    )
    simulate.add_argument(
        "--acked-file", type=Path, help="append every ACKed TXN to this file, one per line"
    )
    simulate.set_defaults(handler=cmd_simulate)

    add_technician_commands(sub, common, _config)
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
    # SIGABRT is what systemd sends when the watchdog starves (and, with the unit's
    # TimeoutStopFailureMode=abort, when a stop takes too long): the journal then shows where
    # every thread was. Stack frames only, never values, so no token.
    faulthandler.enable()
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
        while True:
            status = collect(journal, config.controller.currency)
            text = json.dumps(status, indent=2) if args.json else render(status)
            if not args.watch:
                print(text)
                return 0
            # home the cursor and clear: the table refreshes in place
            print("\033[H\033[2J" + text, flush=True)
            time.sleep(args.watch)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    resolve_token(config.controller)  # raises a ConfigError naming the source if unreadable
    warnings = config_warnings(config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
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
        f"known = {_toml_value(list(config.zones.known))}",
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


def cmd_simulate(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from agent.signals import Flag
    from drivers.meter import MeterSettings, run_meter

    zone_name = args.timezone
    if zone_name is None:
        has_config = getattr(args, "config", None) is not None
        zone_name = str(_config(args).agent.timezone) if has_config else "UTC"
    try:
        timezone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise AgentError(f"--timezone: not an IANA time zone: {zone_name!r}") from None
    settings = MeterSettings(
        port=args.port,
        baudrate=args.baudrate,
        rate=args.rate,
        count=args.count,
        seed=args.seed,
        noise=args.noise,
        corrupt=args.corrupt,
        invalid_rate=args.invalid_rate,
        answer_timeout_s=args.answer_timeout,
        timezone=timezone,
    )
    stop = Flag()  # set by a signal handler: see agent.signals
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return run_meter(settings, stop, args.acked_file)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
