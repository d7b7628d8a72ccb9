"""Keep the agent's threads on one CPU (``agent.one_cpu``, on by default).

Why: Python runs one thread of a process at a time (the GIL), and the agent's threads (a
driver per port, the forwarder's workers) hand that turn to each other at every SQLite
statement and socket call. Spread over several CPUs, each hand-over wakes a thread on
another CPU, which waits for it to run there; on one CPU the thread that gives the turn
goes on until it waits for something, and the next one runs after it, at no cost. Measured
on a 2-core machine, a backlog draining with 4 requests in flight: 0.69 CPU ms per record
on one CPU, 1.02 spread over two, 1.5 x the records per second (docs/benchmarks.md). The
work the agent waits for (the controller, the disk's flush) happens elsewhere either way.

The CPU is the last one the process may use (the kernel's first CPU takes most interrupts
on a small PC). A process already kept on one CPU (``taskset``, the unit's
``CPUAffinity=``) is left as it is. A refusal is logged and changes nothing else: the agent
runs as well as it did before this existed. The unit allows ``sched_setaffinity``, which
its ``~@resources`` filter would otherwise answer by killing the process.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("agent.service")

TASKS = Path("/proc/self/task")


def keep_on_one_cpu() -> None:
    """Keep every thread of this process, and so every thread it starts later, on the last
    CPU it may use (see the module docstring)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError) as exc:  # not Linux
        log.info("threads not kept on one CPU: %s", exc)
        return
    if len(allowed) < 2:
        return
    cpu = allowed[-1]
    try:
        threads = [int(name) for name in os.listdir(TASKS)]
    except OSError:
        threads = [0]  # this thread alone: those it starts later inherit its CPU
    try:
        for thread in threads:
            try:
                os.sched_setaffinity(thread, {cpu})
            except ProcessLookupError:  # ended since the listing
                continue
    except OSError as exc:
        log.warning(
            "cannot keep the agent's threads on one CPU (%s); they run wherever the kernel "
            "puts them, which costs more CPU per record (set agent.one_cpu = false to not try)",
            exc,
        )
        return
    log.info("threads kept on CPU %d (of %s): agent.one_cpu", cpu, _ranges(allowed))


def _ranges(cpus: list[int]) -> str:
    """``0-3,6`` for [0, 1, 2, 3, 6], as the kernel writes a CPU list."""
    spans: list[list[int]] = []
    for cpu in cpus:
        if spans and cpu == spans[-1][1] + 1:
            spans[-1][1] = cpu
        else:
            spans.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)
