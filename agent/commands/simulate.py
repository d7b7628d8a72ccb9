"""``simulate``: be a meter, sending simulated sales in the reference serial protocol to a
port (a device, a pty or a pyserial URL), with line noise and corrupt frames on request."""

from __future__ import annotations

import argparse
import signal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.commands.common import load
from agent.errors import AgentError
from agent.signals import Flag
from drivers.meter import MeterSettings, run_meter


def cmd_simulate(args: argparse.Namespace) -> int:
    zone_name = args.timezone
    if zone_name is None:
        has_config = getattr(args, "config", None) is not None
        zone_name = str(load(args).agent.timezone) if has_config else "UTC"
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
        batch=args.batch,
        zones=args.zones,
    )
    stop = Flag()  # set by a signal handler: see agent.signals
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return run_meter(settings, stop, args.acked_file)
