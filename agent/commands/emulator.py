"""``emulator``: a local controller emulator with faults, for a technician or a test."""

from __future__ import annotations

import argparse

from agent.emulator import serve


def cmd_emulator(args: argparse.Namespace) -> int:
    return serve(args.host, args.port, args.token, args.zone, args.fault, args.verbose, args.dedupe)
