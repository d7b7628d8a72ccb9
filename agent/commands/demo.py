"""``paystation-agent demo``: the whole mission in under a minute, with no config at all.

A controller emulator on loopback, a simulated meter selling parking, and the agent
between them, in a temporary directory. Partway through, the controller first answers 503
and then drops off the network entirely; later it comes back. The demo ends with a
reconciliation: every sale the meter made is in the journal, and every valid one reached
the controller exactly as journaled. Exit 0 only if nothing was lost.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import parse_config
from agent.emulator import ControllerEmulator
from agent.journal import Journal, State
from agent.service import Service, logs

DEMO_TOKEN = "DEMO-TOKEN-0001"
ZONES = {"1": "Lot 1", "2": "Lot 2", "3": "Lot 3 - Garage", "4": "Lot 4"}


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(seconds=args.seconds, rate=args.rate, keep=args.keep)


def run_demo(seconds: float = 24.0, rate: float = 8.0, keep: Path | None = None) -> int:
    logs.setup(logging.WARNING)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        return _demo(keep, seconds, rate)
    with tempfile.TemporaryDirectory(prefix="paystation-demo-") as tmp:
        return _demo(Path(tmp), seconds, rate)


def _demo(workdir: Path, seconds: float, rate: float) -> int:
    out = sys.stdout
    with ControllerEmulator(token=DEMO_TOKEN, zones=ZONES.values()) as emulator:
        config = parse_config(
            _demo_config(workdir, emulator.url, seconds, rate),
            environ={"PAYSTATION_AGENT_TOKEN": DEMO_TOKEN},
        )
        service = Service(config, environ={"PAYSTATION_AGENT_TOKEN": DEMO_TOKEN})
        meter = service.drivers[0]
        print(f"controller emulator  {emulator.url}", file=out)
        print(f"journal              {config.agent.journal}", file=out)
        print(f"simulated meter      {rate:g} sales/s for {seconds:g} s\n", file=out)
        print(
            f"{'time':>5}  {'controller':<22} {'sold':>5} {'journaled':>9} {'delivered':>9} "
            f"{'backlog':>7}",
            file=out,
        )
        service.start()

        def cut_network() -> None:
            emulator.clear_fault()
            emulator.go_down()

        phases: list[tuple[float, str, Callable[[], None]]] = [
            (0.25 * seconds, "answering 503", lambda: emulator.set_fault("error", status=503)),
            (0.35 * seconds, "DOWN (network cut)", cut_network),
            (0.65 * seconds, "back online", emulator.come_up),
        ]
        phase = "online"
        started = time.monotonic()
        deadline = started + seconds + 30
        try:
            while time.monotonic() < deadline:
                elapsed = time.monotonic() - started
                while phases and elapsed >= phases[0][0]:
                    _, phase, action = phases.pop(0)
                    action()
                counts = service.journal.counts()
                sold = meter.health.frames["ok"]
                journaled = sum(counts.values())
                print(
                    f"{elapsed:4.0f}s  {phase:<22} {sold:>5} {journaled:>9} "
                    f"{counts[State.SENT]:>9} {counts[State.PENDING]:>7}",
                    file=out,
                    flush=True,
                )
                if meter.finished and not phases and counts[State.PENDING] == 0:
                    break
                time.sleep(1.0)
            sold = meter.health.frames["ok"]
            return _reconcile(service, emulator, sold)
        finally:
            service.stop()


def _reconcile(service: Service, emulator: ControllerEmulator, sold: int) -> int:
    with Journal(service.journal.path) as journal:
        counts = journal.counts()
        sent_permits = [r.payload["permitNo"] for r in journal.records([State.SENT]) if r.payload]
        summary = journal.summary()
    received = [a.payload.get("permitNo") for a in emulator.accepted]
    journaled = sum(counts.values())
    valid = journaled - counts[State.REJECTED]
    lost = sold - journaled
    undelivered = set(sent_permits) ^ set(received)
    ok = (
        lost == 0
        and counts[State.PENDING] == counts[State.HELD] == counts[State.DEAD] == 0
        and counts[State.SENT] == valid
        and not undelivered
    )
    rows: list[tuple[str, Any]] = [
        ("sold by the meter", sold),
        ("journaled (ACKed)", journaled),
        ("  invalid at the source, kept as rejected", counts[State.REJECTED]),
        ("  valid sales", valid),
        ("delivered (controller's 200 + reference_id)", counts[State.SENT]),
        ("received by the controller (distinct permits)", len(set(received))),
        ("  sent twice: outcome unknown at the time", summary["unknown_outcomes"]),
        ("  controller already had it (9022)", summary["already_existed"]),
        (
            "still pending / held / dead",
            f"{counts[State.PENDING]} / {counts[State.HELD]} / {counts[State.DEAD]}",
        ),
        ("LOST", lost + len(undelivered)),
    ]
    print("\nreconciliation", file=sys.stdout)
    for label, value in rows:
        print(f"  {label:<48} {value:>6}", file=sys.stdout)
    print("\n" + ("OK: read = journaled = delivered, nothing lost" if ok else "FAILED: see above"))
    return 0 if ok else 1


def _demo_config(workdir: Path, url: str, seconds: float, rate: float) -> dict[str, Any]:
    return {
        "agent": {
            "station_id": "DEMO-01",
            "timezone": "America/Toronto",
            "journal": str(workdir / "journal.sqlite3"),
        },
        "controller": {"url": url, "currency": "CAD", "backoff_max_s": 2.0, "timeout_s": 5.0},
        "zones": {"unmapped": "hold", "map": ZONES},
        "drivers": [
            {
                "kind": "simulated",
                "name": "meter-1",
                "rate": rate,
                "count": max(1, int(seconds * rate)),
                "seed": 2026,
                "invalid_rate": 0.03,
                "zones": list(ZONES),
            }
        ],
    }
