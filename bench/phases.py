"""Where a stop-and-wait meter's frame goes in the running agent: each phase of the serial
driver's loop timed with the driver thread's own CPU clock, and that thread's time on the
CPU and wake-ups per frame (``/proc/<pid>/task/<tid>/schedstat``), beside the ingest
ceiling's thread (bench/ceiling.py), bare and with the agent's framing and mapping
(``--map``), read the same way:

    python -m bench.phases [N [WORK_DIR]]

The agent runs as ``python -m bench.phases --agent run --config ...``: the agent itself,
with a timer around each function of the table below (two clock reads each, which the
figures include). The controller is down, as in the ingest bench.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import CLK_TCK, ROOT, Pty, free_port, serial_driver, wait_for, write_config
from bench.common import env as child_env

PHASES = (  # module, class, function: what the driver thread does for each frame
    ("drivers.serial_port", "_Line", "read", "read (select, then read)"),
    ("drivers.framing", "StxEtxFramer", "feed", "framing"),
    ("agent.intake", "Intake", "_prepare", "mapping"),
    ("agent.intake", "Intake", "submit_many", "intake, in all"),
    ("agent.journal.outbox", "Outbox", "append_many", "  journal append, in all"),
    ("agent.journal.store", "Store", "_begin", "    lock and BEGIN"),
    ("agent.journal.space", "Space", "_check_room", "    room check"),
    ("agent.journal.outbox", "Outbox", "_insert", "    insert"),
    ("drivers.serial_port", "_Line", "write", "ACK write"),
)


def schedstat(pid: int | str, tid: int | str) -> tuple[int, int, int]:
    """(ns on the CPU, times it was put on the CPU, ns of it in the kernel) of one thread;
    the kernel's share is counted in clock ticks (10 ms), fine over a run of seconds."""
    task = Path(f"/proc/{pid}/task/{tid}")
    run, _wait, slices = (task / "schedstat").read_text().split()
    stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
    return int(run), int(slices), int(stat[12]) * 1_000_000_000 // CLK_TCK


def _as_agent(argv: list[str]) -> int:
    """In the agent's process: time the phases, write the totals when the driver stops."""
    import importlib
    import threading

    import drivers.serial_port
    from agent.commands import main

    spent: Counter[str] = Counter()

    def timed(function: Callable[..., Any], label: str) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time_ns()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] += time.thread_time_ns() - started

        return run

    for module, owner, name, label in PHASES:
        cls = getattr(importlib.import_module(module), owner)
        setattr(cls, name, timed(getattr(cls, name), label))
    serve = drivers.serial_port.SerialDriver._serve

    def serve_timed(self: Any, port: Any) -> bool:
        tid = threading.get_native_id()
        first = schedstat(os.getpid(), tid)
        try:
            return serve(self, port)
        finally:
            last = schedstat(os.getpid(), tid)
            totals = {
                "on the CPU": last[0] - first[0],
                "  of it in the kernel": last[2] - first[2],
                "wake-ups": last[1] - first[1],
            }
            Path(os.environ["BENCH_PHASES_OUT"]).write_text(json.dumps({**spent, **totals}))

    drivers.serial_port.SerialDriver._serve = serve_timed  # type: ignore[method-assign]
    return main(argv)


Use = tuple[int, int, int]


def _threads(pid: int) -> dict[str, Use]:
    return {tid: schedstat(pid, tid) for tid in os.listdir(f"/proc/{pid}/task")}


def _busiest(before: dict[str, Use], after: dict[str, Use]) -> list[int]:
    """What the thread that ran most between two readings spent (as :func:`schedstat`)."""
    both = [t for t in after if t in before]
    spent = [[a - b for a, b in zip(after[t], before[t], strict=True)] for t in both]
    return max(spent)


def measure(work: Path, count: int) -> dict[str, float]:
    """µs of the driver thread's CPU per frame by phase, its µs on the CPU and wake-ups per
    frame, and the ceiling's thread's (bare, and ``--map``)."""
    from bench.__main__ import feed, frames, responder

    work.mkdir(parents=True)
    result: dict[str, float] = {}
    pty = Pty()
    out = work / "phases.json"
    dead = f"http://127.0.0.1:{free_port()}/push"
    config = write_config(work, dead, drivers=serial_driver(pty.path))
    log = work / "agent.log"
    with open(log, "ab") as sink:
        agent = subprocess.Popen(
            [sys.executable, "-m", "bench.phases", "--agent", "run", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**child_env(), "BENCH_PHASES_OUT": str(out)},
            cwd=ROOT,
        )
    try:
        wait_for(lambda: f"port {pty.path} open" in log.read_text(), 30, "the agent's port")
        feed(pty, frames(count, "P"), 1)
    finally:
        agent.terminate()
        agent.wait(15)
        pty.close()
    spent = json.loads(out.read_text())
    for key in [label for *_, label in PHASES] + ["on the CPU", "  of it in the kernel"]:
        result[f"agent: {key}"] = spent.get(key, 0) / count / 1000
    result["agent: wake-ups"] = spent["wake-ups"] / count

    for name, extra in (("ceiling", ()), ("ceiling --map", ("--map",))):
        database = str(work / f"{name.replace(' --', '-')}.sqlite3")
        with responder("bench.ceiling", database, *extra) as (pty, ceiling):
            before = _threads(ceiling.pid)
            feed(pty, frames(count, "C"), 1)
            ns, wakeups, kernel = _busiest(before, _threads(ceiling.pid))
        result[f"{name}: on the CPU"] = ns / count / 1000
        result[f"{name}:   of it in the kernel"] = kernel / count / 1000
        result[f"{name}: wake-ups"] = wakeups / count
    return result


def main() -> None:
    if sys.argv[1:2] == ["--agent"]:
        sys.exit(_as_agent(sys.argv[2:]))
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    where = sys.argv[2] if len(sys.argv) > 2 else None
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        figures = measure(Path(tmp) / "phases", count)
    print(f"one meter, stop-and-wait, {count} frames; per frame:")
    for name, value in figures.items():
        unit = "" if name.endswith("wake-ups") else " µs"
        print(f"  {name:38} {value:8.1f}{unit}")


if __name__ == "__main__":
    main()
