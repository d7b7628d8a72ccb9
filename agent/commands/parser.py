"""The ``paystation-agent`` command line (contract.md §2): the parser and :func:`main`.

Every command takes ``--config PATH`` before or after its own arguments (``demo`` and
``emulator``, which make their own, say that they do not read it). Exit codes: 0 success,
1 the command failed, 2 usage, 3-8 ``status``'s health
(:data:`agent.commands.status.PROBLEM_CODES`), 78 configuration error (systemd does not
restart on it), 130 interrupted. Each command's handler lives in its own module of
:mod:`agent.commands`, imported only when that command runs; this one only says which
arguments each takes and turns errors into messages and exit codes: one line, prefixed
``paystation-agent:``, never a traceback for a person's mistake.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

from agent import __version__
from agent.commands.common import MAX_PENDING_AGE_S, config_path
from agent.errors import EXIT_CONFIG, AgentError, ConfigError
from agent.journal import State
from agent.service import logs


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if args.command in OWN_CONFIG and getattr(args, "config", None) is not None:
        print(  # taken, as every command takes it (contract.md), but never silently ignored
            f"paystation-agent: note: {args.command} makes its own config; "
            f"--config {args.config} is not read",
            file=sys.stderr,
        )
    try:
        result: int = args.handler(args)
        return result
    except ConfigError as exc:  # one problem or several (ConfigErrors)
        _config_failure(exc, args)
        return EXIT_CONFIG
    except AgentError as exc:
        print(f"paystation-agent: {logs.redact(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file a person named, or may not use: one line, no traceback
        print(f"paystation-agent: {_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `status | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


OWN_CONFIG = ("demo", "emulator")  # the commands that make their own config


def _os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    text = f"{where}{exc.strerror or exc}"
    if isinstance(exc, PermissionError):
        return f"{text}; run it as a user who may (root, with sudo)"
    if isinstance(exc, FileNotFoundError):
        return f"{text}; check the path (its directory must exist)"
    return text


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--version", action="version", version=f"paystation-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    command = sub.add_parser(
        "run", parents=[common], help="the service: drivers → journal → controller"
    )
    command.add_argument("-v", "--verbose", action="store_true", help="log every request")
    command.set_defaults(handler=_handler("run", "cmd_run"))

    command = sub.add_parser(
        "status", parents=[common], help="journal counts, backlog, last success and error"
    )
    command.add_argument("--json", action="store_true", help="machine-readable output")
    command.add_argument(
        "--watch", type=float, nargs="?", const=2.0, metavar="SECONDS", help="refresh in place"
    )
    command.add_argument(
        "--max-pending-age",
        type=float,
        default=MAX_PENDING_AGE_S,
        metavar="SECONDS",
        help="a pending record older than this is a problem: exit 7 "
        f"(default {MAX_PENDING_AGE_S:g}, 15 min)",
    )
    command.set_defaults(handler=_handler("status", "cmd_status"))

    command = sub.add_parser("journal", parents=[common], help="the journal file itself")
    jsub = command.add_subparsers(dest="action", metavar="ACTION", required=True)
    jsub.add_parser(
        "acknowledge",
        parents=[common],
        help="a journal recovery has been looked into: status stops showing it",
    ).set_defaults(handler=_handler("journal", "cmd_acknowledge"))

    command = sub.add_parser(
        "check-config", parents=[common], help="validate the config and print it resolved"
    )
    command.add_argument(
        "--online",
        action="store_true",
        help="also check DNS, the connection, TLS, the token and the serial ports "
        "(exit 69 when one fails)",
    )
    command.set_defaults(handler=_handler("check_config", "cmd_check_config"))

    command = sub.add_parser(
        "emulator", parents=[common], help="a local controller emulator with faults"
    )
    command.add_argument("--host", default="127.0.0.1")
    command.add_argument("--port", type=int, default=8080)
    command.add_argument("--token", help="the one token to accept (default: any well-formed token)")
    command.add_argument(
        "--zone", action="append", help="an OPSCOM zone name (repeat); others count as disconnected"
    )
    command.add_argument(
        "--fault",
        metavar="KIND[:N]",
        help="start with this fault on, for N requests or until cleared: "
        "error, throttle, slow, reset, auth, error200",
    )
    command.add_argument(
        "--dedupe",
        choices=("record", "permit"),
        default="record",
        help="what makes a push a repeat (answered 9022): the same permitNo, plate and times "
        "(record), or the same permitNo alone (permit)",
    )
    command.add_argument("-v", "--verbose", action="store_true", help="log every request")
    command.set_defaults(handler=_handler("emulator", "cmd_emulator"))

    command = sub.add_parser(
        "demo", parents=[common], help="emulator + simulated meter + agent, with an outage"
    )
    command.add_argument(
        "--seconds", type=float, default=24.0, help="how long the meter sells (default 24)"
    )
    command.add_argument("--rate", type=float, default=8.0, help="sales per second (default 8)")
    command.add_argument("--keep", type=Path, help="keep the demo's journal in this directory")
    command.set_defaults(handler=_handler("demo", "cmd_demo"))

    command = sub.add_parser(
        "simulate",
        parents=[common],
        help="be a meter: send simulated sales in the reference serial protocol to a port",
    )
    command.add_argument(
        "--port", required=True, help="the meter's end of the line: a device path or pyserial URL"
    )
    command.add_argument("--baudrate", type=int, default=9600, help="default 9600")
    command.add_argument("--rate", type=float, default=1.0, help="sales per second (default 1)")
    command.add_argument(
        "--count", type=int, default=0, help="stop after this many sales (default 0: until ^C)"
    )
    command.add_argument("--seed", type=int, help="repeatable sales and line faults")
    command.add_argument(
        "--noise", type=float, default=0.0, help="probability of line noise before a frame"
    )
    command.add_argument(
        "--corrupt",
        type=float,
        default=0.0,
        help="probability a sale is first sent once with a flipped bit (the agent must NAK it)",
    )
    command.add_argument(
        "--invalid-rate", type=float, default=0.0, help="share of sales a real meter gets wrong"
    )
    command.add_argument(
        "--answer-timeout",
        type=float,
        default=2.0,
        help="seconds to wait for ACK/NAK before resending (default 2)",
    )
    command.add_argument(
        "--timezone", help="the meter's clock zone (default: the config's, else UTC)"
    )
    command.add_argument(
        "--batch",
        help="receipt numbers' batch prefix (default: new each run); "
        "two meters with one batch number their receipts alike",
    )
    command.add_argument(
        "--acked-file", type=Path, help="append every ACKed TXN to this file, one per line"
    )
    command.add_argument(
        "--zones",
        type=_zone_codes,
        default=("1", "2", "3", "4"),
        metavar="CODE,…",
        help="the hardware zone codes the meter sells in (default 1,2,3,4)",
    )
    command.set_defaults(handler=_handler("simulate", "cmd_simulate"))

    command = sub.add_parser(
        "ports",
        parents=[common],
        help="this PC's serial ports: stable names, USB ids, who holds them open",
    )
    command.set_defaults(handler=_handler("ports", "cmd_ports"))

    command = sub.add_parser(
        "tap",
        parents=[common],
        help="show a meter's frames live: bytes, framing, fields, payload; stores nothing",
    )
    command.add_argument("--driver", metavar="NAME", help="the line of this configured driver")
    command.add_argument("--port", help="a device path or pyserial URL (without --driver: alone)")
    command.add_argument("--baudrate", type=int, help="default: the driver's, else 9600")
    command.add_argument("--framing", choices=("stx-etx", "line"))
    command.add_argument("--format", choices=("kv", "json"))
    command.add_argument("--checksum", choices=("xor", "sum", "none"))
    command.add_argument(
        "--rename",
        action="append",
        metavar="KEY=NAME",
        help="try a rename over the driver's (repeat): --rename PLATENO=PLATE",
    )
    command.add_argument(
        "--count", type=int, default=0, help="stop after this many frames (default 0: until ^C)"
    )
    command.set_defaults(handler=_handler("tap", "cmd_tap"))

    command = sub.add_parser(
        "zones", parents=[common], help="hardware zone code → OPSCOM zone name (default: list)"
    )
    command.set_defaults(handler=_handler("zones", "cmd_list"))
    zsub = command.add_subparsers(dest="action", metavar="ACTION")
    zsub.add_parser("list", parents=[common], help="the mappings").set_defaults(
        handler=_handler("zones", "cmd_list")
    )
    zset = zsub.add_parser("set", parents=[common], help="map CODE to the OPSCOM zone NAME")
    zset.add_argument("code")
    zset.add_argument("name")
    zset.add_argument("--force", action="store_true", help="map even a name not in zones.known")
    zset.set_defaults(handler=_handler("zones", "cmd_set"))
    zrm = zsub.add_parser("remove", parents=[common], help="remove the mapping of CODE")
    zrm.add_argument("code")
    zrm.set_defaults(handler=_handler("zones", "cmd_remove"))
    zsub.add_parser(
        "unmapped", parents=[common], help="zone codes seen without a mapping, held records"
    ).set_defaults(handler=_handler("zones", "cmd_unmapped"))

    command = sub.add_parser(
        "dead", parents=[common], help="records refused by the controller or invalid at the source"
    )
    dsub = command.add_subparsers(dest="action", metavar="ACTION", required=True)
    dlist = dsub.add_parser("list", parents=[common], help="dead and rejected records")
    dlist.add_argument("--state", choices=["dead", "rejected"], help="only this state")
    dlist.set_defaults(handler=_handler("dead", "cmd_list"))
    dshow = dsub.add_parser("show", parents=[common], help="one record: raw bytes, attempts")
    dshow.add_argument("id", type=int)
    dshow.set_defaults(handler=_handler("dead", "cmd_show"))
    dreq = dsub.add_parser(
        "requeue", parents=[common], help="re-map with the current config and send again"
    )
    target = dreq.add_mutually_exclusive_group(required=True)
    target.add_argument("ids", nargs="*", type=int, default=[], metavar="ID")
    target.add_argument("--all", action="store_true", help="every dead and rejected record")
    dreq.set_defaults(handler=_handler("dead", "cmd_requeue"))

    command = sub.add_parser(
        "export", parents=[common], help="the journal as CSV, for reconciliation"
    )
    command.add_argument(
        "--from",
        dest="since",
        type=date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="first day (station local time) the record was received",
    )
    command.add_argument(
        "--to",
        dest="until",
        type=date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="last day, inclusive",
    )
    command.add_argument(
        "--state",
        action="append",
        choices=[s.value for s in State],
        help="only these states (repeat)",
    )
    command.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    command.set_defaults(handler=_handler("export", "cmd_export"))
    return parser


def _handler(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command's handler, imported when that command runs: ``run`` starts without the
    code of the other commands (the emulator, export, tap, ...), which costs its start
    tens of milliseconds on a station's CPU (docs/benchmarks.md, ready)."""

    def handle(args: argparse.Namespace) -> int:
        command = getattr(importlib.import_module(f"agent.commands.{module}"), name)
        return int(command(args))

    handle.__qualname__ = f"{module}.{name}"
    return handle


def _zone_codes(text: str) -> tuple[str, ...]:
    codes = tuple(code.strip() for code in text.split(","))
    if not all(codes):
        raise argparse.ArgumentTypeError(f"expected zone codes separated by commas, got {text!r}")
    return codes


def _config_failure(exc: ConfigError, args: argparse.Namespace) -> None:
    path = config_path(args)
    print(f"paystation-agent: configuration error in {path}:", file=sys.stderr)
    for error in exc.errors:
        print(f"  {logs.redact(str(error))}", file=sys.stderr)
