"""A fleet after an outage: K agents, each with a backlog, resume at once against one
controller of limited capacity. Run for a fixed send window (``adaptive_concurrency =
false``, every agent ``concurrency`` in flight) and for the adaptive one, in the same run.

    python -m bench --only fleet           # 12 agents x 300 records
    python -m bench --only fleet --quick   # 4 agents x 60

The controller (the emulator, its own process) takes ``MAX_IN_FLIGHT`` requests at once,
each for ``SERVICE_S``; beyond that it answers 503 with Retry-After 1, as an overloaded
server does. The capacity allows ``MAX_IN_FLIGHT / SERVICE_S`` records a second: the fleet's
backlog cannot drain faster than ``total / that``, the "capacity time" each drain is
compared with. A new sale is sold on one agent's serial line in the middle of the drain;
its latency is from the agent's ACK to the controller holding it.

Two servers: one that queues up to ``QUEUE`` requests before it refuses (as IIS's
application pool, or a gunicorn or nginx backlog, does: the goals are judged on it), and
one that refuses the moment all its slots are busy. For the second, Erlang's loss formula
says what uncoordinated clients can do at best: its row is that bound, for random arrivals.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.backlog import fill, sale_bytes, session_times
from bench.common import (
    Agent,
    Emulator,
    Pty,
    Row,
    free_port,
    serial_driver,
    wait_for,
    write_config,
)
from drivers.framing import ACK, StxEtxFramer

MAX_IN_FLIGHT = 8
QUEUE = MAX_IN_FLIGHT  # requests the first server holds waiting, beyond those it handles
SERVICE_S = 0.02
CONCURRENCY = 4
REFUSED_GOAL = 0.05


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def fleet_drain(
    work: Path, agents: int, backlog: int, *, adaptive: bool, queue: int
) -> dict[str, float]:
    """One outage and recovery; the figures of its drain."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/OC-TOMA/v1/permits/push"
    pty = Pty()
    running: list[Agent] = []
    emulator: Emulator | None = None
    try:
        for n in range(agents):
            home = work / f"agent-{n:02d}"
            home.mkdir(parents=True)
            fill(home / "journal.sqlite3", backlog, station=f"FLEET-{n:02d}", prefix=f"F{n}")
            config = write_config(
                home,
                url,
                controller=f"concurrency = {CONCURRENCY}\n"
                f"adaptive_concurrency = {str(adaptive).lower()}",
                drivers=serial_driver(pty.path) if n == 0 else "",
                # twelve stations have twelve PCs: each agent keeping its threads on "its"
                # CPU would put all twelve on this machine's last one
                agent="one_cpu = false",
            )
            text = config.read_text().replace('"PS-BENCH"', f'"FLEET-{n:02d}"', 1)
            config.write_text(text)
            running.append(Agent(config, home / "agent.log"))
        running[0].wait_log(f"port {pty.path} open")
        for agent in running:
            agent.wait_log("controller unreachable")  # the outage, seen by every agent
        emulator = Emulator(port)
        base = url.split("/api/")[0] + "/_emulator"
        limits = {"max_in_flight": MAX_IN_FLIGHT, "service_time": SERVICE_S, "queue": queue}
        _post(base + "/capacity", limits)
        started = time.monotonic()
        total = agents * backlog

        def accepted() -> int:
            return int(_get(base + "/counts")["counts"]["accepted"])

        wait_for(lambda: accepted() >= total * 0.3, 600, "a third of the backlog")
        latency = _new_sale(pty, base)
        wait_for(lambda: accepted() >= total + 1, 600, "the whole backlog", every=0.1)
        drained = time.monotonic() - started
        state = _get(base + "/counts")
    finally:
        for agent in running:
            agent.stop()
        if emulator is not None:
            emulator.stop()
        pty.close()
    counts, capacity = state["counts"], state["capacity"]
    return {
        "drain_s": drained,
        "capacity_s": total / (MAX_IN_FLIGHT / SERVICE_S),
        "peak_in_flight": capacity["peak_in_flight"],
        "refused_share": counts["overloaded"] / max(1, counts["total"]),
        "requests": counts["total"],
        "duplicates": counts["duplicate"],
        "new_sale_s": latency,
    }


def _new_sale(pty: Pty, base: str) -> float:
    """Sell one session now on agent 0's line; seconds from its ACK to the controller."""
    _, (start, end) = session_times()
    os.write(pty.master, StxEtxFramer().encode(sale_bytes("NEW-1", 1, start, end)))
    if pty.read_answers(1) != bytes([ACK]):
        raise RuntimeError("the new sale was NAKed")
    acked = time.monotonic()

    def arrived() -> bool:
        try:
            _get(base + "/permits/FLEET-00-meter-1-NEW-1")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    wait_for(arrived, 120, "the new sale at the controller", every=0.01)
    return time.monotonic() - acked


def erlang_b(servers: int, offered: float) -> float:
    """The share of random arrivals refused by ``servers`` slots and no queue, at
    ``offered`` erlangs (the classic recurrence)."""
    blocked = 1.0
    for n in range(1, servers + 1):
        blocked = offered * blocked / (n + offered * blocked)
    return blocked


def least_drain_s(total: int, refused: float) -> float:
    """Erlang's bound: the shortest drain of ``total`` records by random arrivals at the
    no-queue server while at most ``refused`` of them are refused."""
    low, high = 0.0, float(MAX_IN_FLIGHT)
    for _ in range(60):  # the offered load at which exactly ``refused`` are refused
        middle = (low + high) / 2
        low, high = (middle, high) if erlang_b(MAX_IN_FLIGHT, middle) < refused else (low, middle)
    carried = low * (1 - erlang_b(MAX_IN_FLIGHT, low))  # slots busy on average
    return total * SERVICE_S / carried


def bench_fleet(work: Path, quick: bool) -> list[Row]:
    agents, backlog = (4, 60) if quick else (12, 300)
    label = f"{agents} agents x {backlog}, {CONCURRENCY} each, controller {MAX_IN_FLIGHT} at once"
    rows: list[Row] = []
    for queue in (QUEUE, 0):
        server = f"queue {queue}" if queue else "no queue"
        runs = {}
        for adaptive in (False, True):
            runs[adaptive] = fleet_drain(
                work / f"queue-{queue}-adaptive-{adaptive}",
                agents,
                backlog,
                adaptive=adaptive,
                queue=queue,
            )
        capacity_s = runs[True]["capacity_s"]
        rows.append(Row("fleet", f"{server}: capacity time ({label})", capacity_s, "s"))
        if not queue:
            least = least_drain_s(agents * backlog, REFUSED_GOAL)
            rows.append(
                Row(
                    "fleet",
                    f"{server}: least drain time at <= 5 % refused, random arrivals (Erlang B)",
                    least,
                    "s",
                    "capacity time",
                    capacity_s,
                )
            )
        for adaptive, run in runs.items():
            rows += _rows(
                f"{server}, {'adaptive' if adaptive else 'fixed'}", run, adaptive and queue > 0
            )
    return rows


def _rows(kind: str, run: dict[str, float], goal: bool) -> list[Row]:
    """The figures of one drain; the goals (the adaptive window's, at the queueing server)
    where ``goal``."""
    return [
        Row(
            "fleet",
            f"{kind}: drain time",
            run["drain_s"],
            "s",
            "capacity time",
            run["capacity_s"],
            "<= 1.2 x" if goal else "",
            run["drain_s"] <= 1.2 * run["capacity_s"] if goal else None,
        ),
        Row("fleet", f"{kind}: controller's peak in flight", run["peak_in_flight"], "requests"),
        Row(
            "fleet",
            f"{kind}: requests refused 503 (share)",
            100 * run["refused_share"],
            "%",
            goal="<= 5 %" if goal else "",
            met=run["refused_share"] <= REFUSED_GOAL if goal else None,
        ),
        Row("fleet", f"{kind}: duplicates at the controller", run["duplicates"], "records"),
        Row(
            "fleet",
            f"{kind}: a new sale, ACK -> controller, mid-drain",
            run["new_sale_s"],
            "s",
            goal="<= 1 s" if goal else "",
            met=run["new_sale_s"] <= 1.0 if goal else None,
        ),
    ]
