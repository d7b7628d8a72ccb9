"""``ports``: the serial ports of this PC, to find the ``port`` of a meter just plugged in.

Each with its stable ``/dev/serial/by-id/…`` name (the one to put in the config: it
survives a replug into another USB socket), its USB vendor:product and serial number,
which configured driver uses it, and which processes hold it open (a stray ``screen``,
the service). See :mod:`drivers.ports`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator

from agent.commands.common import config_path, load
from agent.config import Config
from agent.errors import ConfigError
from drivers.ports import SerialPort, serial_ports
from drivers.serial_port import SerialOptions

NONE_FOUND = (
    "no serial ports found on this PC; a USB adapter shows as /dev/ttyUSB* or /dev/ttyACM* "
    "once plugged in (if it does not, see: dmesg | tail)"
)


def cmd_ports(args: argparse.Namespace) -> int:
    configured = _configured(args)
    ports = serial_ports(configured)
    if not ports:
        print(NONE_FOUND)
    for port in ports:
        for line in describe(port, configured):
            print(line)
    missing = [
        f"{path} (driver {name}) is not here"
        for path, name in configured.items()
        if not _exists(path)
    ]
    for line in missing:
        print(line)
    return 0


def describe(port: SerialPort, configured: dict[str, str]) -> Iterator[str]:
    about = ", ".join(
        part
        for part in (
            port.description,
            port.manufacturer,
            f"USB {port.usb}" if port.usb else None,
            f"serial {port.serial_number}" if port.serial_number else None,
        )
        if part
    )
    yield f"{port.device}" + (f"  {about}" if about else "")
    for name in port.by_id:
        yield f"  stable name  {name}"
    real = os.path.realpath(port.device)
    for path, driver in configured.items():
        if os.path.realpath(path) == real:
            yield f"  driver       {driver} (port = {path!r})"
    seen = port.holders
    yield "  open in      " + (
        seen.describe() if seen.seen or seen.unreadable else "nothing (free)"
    )


def _configured(args: argparse.Namespace) -> dict[str, str]:
    """port path -> driver name, of the config's serial drivers (none without a config,
    or with one that does not load: the ports are listed anyway)."""
    if getattr(args, "config", None) is None and not config_path(args).exists():
        return {}
    try:
        config: Config = load(args)
    except ConfigError as exc:
        print(
            f"paystation-agent: {config_path(args)} does not load ({len(exc.errors)} "
            "problem(s), see: paystation-agent check-config); its drivers are not shown",
            file=sys.stderr,
        )
        return {}
    return {d.options.port: d.name for d in config.drivers if isinstance(d.options, SerialOptions)}


def _exists(path: str) -> bool:
    return "://" in path or os.path.exists(path)
