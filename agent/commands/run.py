"""``run``: the service, in the foreground (systemd's ``ExecStart``).

Signals are wired here: SIGTERM and SIGINT stop, SIGHUP reloads. Opening the journal may
wait for another process's lock or finish a salvage, so a SIGTERM during it must stop it at
once, with exit 0; the handlers set :class:`~agent.signals.Flag` objects only.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal

from agent.commands.common import load_for_sending
from agent.errors import Stopped
from agent.service import Service, logs
from agent.service.cpu import keep_on_one_cpu
from agent.signals import Flag

log = logging.getLogger("agent.cli")  # the name log lines have always carried


def cmd_run(args: argparse.Namespace) -> int:
    config = load_for_sending(args)
    logs.setup(logging.DEBUG if args.verbose else logging.INFO)
    # SIGABRT is what systemd sends when the watchdog starves (and, with the unit's
    # TimeoutStopFailureMode=abort, when a stop takes too long): the journal then shows where
    # every thread was. Stack frames only, never values, so no token.
    faulthandler.enable()
    if config.agent.one_cpu:
        keep_on_one_cpu()  # before any thread starts: each inherits it
    # opening the journal may wait for another process's lock or finish a salvage: a
    # SIGTERM then must stop it at once, with exit 0 (Flags: see agent.signals)
    stopping, reload = Flag(), Flag()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    try:
        service = Service(config, stopping=stopping)
    except Stopped as exc:
        log.info("%s", exc)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: service.request_stop())
    signal.signal(signal.SIGINT, lambda *_: service.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: service.request_reload())
    if stopping.is_set():
        service.request_stop()
    if reload.is_set():
        service.request_reload()
    reload.close()
    try:
        service.start()
        service.serve()
    finally:
        service.stop()
    return 0
