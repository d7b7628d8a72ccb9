"""``paystation-agent emulator``: the controller emulator in the foreground, for vendors.

Contract: ``serve`` prints the push URL on stdout once it listens, runs until SIGINT or
SIGTERM, and returns the command's exit code (0 after a signal, 2 for a bad token, fault or
dedupe mode, 1 when the port cannot be bound).
"""

from __future__ import annotations

import signal
import sys

from agent.emulator.controller import ControllerEmulator


def serve(
    host: str,
    port: int,
    token: str | None,
    zones: list[str] | None,
    fault: str | None,
    verbose: bool,
    dedupe: str = "record",
) -> int:
    """Run the emulator in the foreground until SIGINT or SIGTERM; print its URL first.

    ``fault`` is a fault kind, optionally with a count: ``"error"``, ``"throttle:3"``.
    Returns 0 after a signal, 2 for a bad token or fault, 1 when the port cannot be bound.
    """
    try:
        emulator = ControllerEmulator(
            host, port, token=token, zones=zones, verbose=verbose, dedupe=dedupe
        )
        if fault:
            kind, _, count = fault.partition(":")
            emulator.set_fault(kind, count=int(count) if count else None)
    except ValueError as exc:
        print(f"opscom-emulator: {exc}", file=sys.stderr, flush=True)
        return 2
    # No handler: a handler that sets a threading.Event can deadlock on the lock the main
    # thread holds inside Event.wait(). The signals stay blocked (the server's threads inherit
    # the mask) until sigwait takes one here.
    signals = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        try:
            emulator.start()
        except OSError as exc:
            print(f"opscom-emulator: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        try:
            print(emulator.url, flush=True)
            signal.sigwait(signals)
        finally:
            emulator.stop()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return 0
