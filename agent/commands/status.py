"""What ``paystation-agent status`` shows.

Everything is read from the journal, so it works from another process while ``run`` holds
it (WAL lets readers in); whether the service is running is read from its run lock, and
what only the service knows (the controller's state, each port's health) it publishes to
the journal's ``meta`` table when it changes.

A recovered journal (moved aside as damaged, its rows salvaged) is shown first and in
capitals until a person acknowledges it (``paystation-agent journal acknowledge``, in
:mod:`agent.commands.journal`); a salvage that was interrupted is shown the same way until
a start has finished it.

Its exit code is the agent's health, for a monitoring script (``systemctl status`` exits 3
for a unit that is not running, and so does this): 0 only when healthy, else the code of
the first problem in :data:`PROBLEM_CODES` order, each problem named on one line of
stderr. A fresh install, where the service never ran, is a stopped service with an empty
journal, not an error.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent import __version__
from agent.commands.common import MAX_PENDING_AGE_S, load, read_journal
from agent.forwarder import CONFLICT_REASON
from agent.intake import FULL_META
from agent.journal import RECOVERED_META, Journal, State, unfinished_salvage
from agent.service import service_running
from agent.timestamps import utc_iso

CLOCK_TOLERANCE_S = 300.0

# status's exit codes, in the order problems are looked for: the first found is the code
EXIT_STOPPED = 3  # as systemctl status and LSB init scripts say "program is not running"
EXIT_PAUSED = 4
EXIT_DISK_FULL = 5
EXIT_PORT_DOWN = 6
EXIT_BACKLOG_OLD = 7
EXIT_JOURNAL_RECOVERED = 8
PROBLEM_CODES = (
    EXIT_STOPPED,
    EXIT_PAUSED,
    EXIT_DISK_FULL,
    EXIT_PORT_DOWN,
    EXIT_BACKLOG_OLD,
    EXIT_JOURNAL_RECOVERED,
)


def cmd_status(args: argparse.Namespace) -> int:
    config = load(args)
    timezone = config.agent.timezone
    with read_journal(config) as journal:
        while True:
            status = collect(
                journal,
                config.controller.currency,
                path=config.agent.journal,
                max_pending_age_s=args.max_pending_age,
            )
            text = json.dumps(status, indent=2) if args.json else render(status, timezone)
            if not args.watch:
                print(text)
                for problem in status["problems"]:
                    print(
                        f"paystation-agent: unhealthy: {problem['why']} "
                        f"(exit {problem['exit_code']})",
                        file=sys.stderr,
                    )
                return int(status["exit_code"])
            # home the cursor and clear: the table refreshes in place
            print("\033[H\033[2J" + text, flush=True)
            time.sleep(args.watch)


def collect(
    journal: Journal,
    default_currency: str = "CAD",
    *,
    path: Path | None = None,
    max_pending_age_s: float = MAX_PENDING_AGE_S,
) -> dict[str, Any]:
    """The status of the journal at ``path`` (default: ``journal``'s own), read through
    ``journal``: an empty stand-in while the service has never run."""
    path = path or journal.path
    never_ran = not path.exists()
    counts = journal.counts()
    summary = journal.summary()
    meta = journal.meta()
    last_sent = summary["last_sent_at"]
    running = not never_ran and service_running(path)
    unsent: dict[str, Decimal] = {}
    for currency, cents in journal.unsent_amounts():
        key = currency or default_currency
        unsent[key] = unsent.get(key, Decimal(0)) + Decimal(cents) / 100
    held_by_zone = {
        code: {"held": held, "oldest_s": _age_of(oldest)}
        for code, held, oldest in journal.held_zones()
    }
    status: dict[str, Any] = {
        "version": __version__,
        "service_version": meta.get("service_version") if running else None,
        "running": running,
        "never_ran": never_ran,
        "pending": counts[State.PENDING],
        "held": counts[State.HELD],
        "sent": counts[State.SENT],
        "rejected": counts[State.REJECTED],
        "dead": counts[State.DEAD],
        "active_pending": summary["active_pending"],
        "oldest_pending_s": summary["oldest_pending_s"],
        "last_success": utc_iso(last_sent) if last_sent else None,
        "last_error": meta.get("last_error"),
        "paused": meta.get("paused") if running else None,
        "next_try_at": _next_try(meta) if running and meta.get("paused") else None,
        "controller": meta.get("controller_state", "unknown") if running else "unknown",
        "controller_reason": meta.get("controller_reason") if running else None,
        "conflicts": journal.dead_with_reason(CONFLICT_REASON),
        "agent_errors": int(meta.get("agent_errors", "0")),
        "agent_error_last": meta.get("agent_error_last"),
        "unknown_outcomes": summary["unknown_outcomes"],
        "already_existed": summary["already_existed"],
        "held_by_zone": held_by_zone,
        "unsent_amounts": {k: f"{v:.2f}" for k, v in sorted(unsent.items())},
        "drivers": json.loads(meta.get("drivers", "{}")) if running else {},
        "journal": str(path),
        "journal_recovered": meta.get(RECOVERED_META),
        "disk_full": _disk_full(journal, meta.get(FULL_META)) if running else None,
        "salvage_unfinished": None if never_ran else _unfinished(journal, meta),
    }
    problems = health(status, max_pending_age_s)
    status["problems"] = [{"exit_code": code, "why": why} for code, why in problems]
    status["exit_code"] = problems[0][0] if problems else 0
    return status


def health(status: dict[str, Any], max_pending_age_s: float) -> list[tuple[int, str]]:
    """What is wrong, in :data:`PROBLEM_CODES` order: (exit code, one line saying why)."""
    problems: list[tuple[int, str]] = []
    if status["never_ran"]:
        problems.append((EXIT_STOPPED, "the service has never run (no journal yet)"))
    elif not status["running"]:
        problems.append((EXIT_STOPPED, "the service is not running"))
    if status["paused"]:
        problems.append((EXIT_PAUSED, f"sending is paused: {status['paused']}"))
    if status["disk_full"]:
        problems.append((EXIT_DISK_FULL, "the journal is full: new sales are refused (NAK)"))
    for name, port in status["drivers"].items():
        if not port.get("connected"):
            detail = port.get("detail") or "not opened yet"
            problems.append((EXIT_PORT_DOWN, f"port {name} is disconnected: {detail}"))
    oldest = status["oldest_pending_s"]
    if status["pending"] and oldest is not None and oldest > max_pending_age_s:
        problems.append(
            (
                EXIT_BACKLOG_OLD,
                f"the oldest pending record is {format_age(oldest)} old "
                f"(more than --max-pending-age {format_age(max_pending_age_s)})",
            )
        )
    if status["journal_recovered"] or status["salvage_unfinished"]:
        problems.append(
            (
                EXIT_JOURNAL_RECOVERED,
                "the journal was recovered from a damaged file and not yet acknowledged "
                "(paystation-agent journal acknowledge)",
            )
        )
    return problems


def _disk_full(journal: Journal, published: str | None) -> dict[str, Any] | None:
    """Since when new records are refused for want of room, why, and what is free now."""
    if not published:
        return None
    state = json.loads(published)
    try:
        free = shutil.disk_usage(journal.path.parent).free
    except OSError:
        free = 0
    return {
        "since": utc_iso(state["since"]),
        "cause": state["cause"],
        "free_kb": free // 1024,
        "reason": state["reason"],
    }


def _unfinished(journal: Journal, meta: dict[str, str]) -> str | None:
    marker = unfinished_salvage(journal.path)
    if marker is None:
        return None
    read = json.loads(meta.get("salvage", "{}")).get("seen", 0)
    return (
        f"of {marker['aside']} ({marker['problem']}): {read} record(s) copied so far; "
        "the next start of the service finishes it"
    )


def render(status: dict[str, Any], timezone: ZoneInfo | None = None) -> str:
    """The table a person reads; moments in UTC and, beside, in ``timezone`` (the
    station's)."""
    zone = timezone or ZoneInfo("UTC")
    if status["never_ran"]:
        service = "never ran (no journal yet: nothing has been read or sent)"
    elif not status["running"]:
        service = "STOPPED (records are not being read or sent)"
    elif status["paused"]:
        service = f"running, PAUSED: {status['paused']} ("
        if status["next_try_at"] is not None:
            left = max(0.0, status["next_try_at"] - time.time())
            service += f"next try in {format_age(left)}; or "
        service += "fix the token, then systemctl reload paystation-agent: it tries again at once)"
    else:
        service = "running"
    backlog = f"{status['pending']} pending"
    if status["pending"]:
        backlog += (
            f", oldest {format_age(status['oldest_pending_s'])}, "
            f"{status['active_pending']} of them sessions still running"
        )
    held = f"{status['held']}"
    if status["held_by_zone"]:
        held += (
            " (zone not mapped: "
            + ", ".join(
                f"code {code!r}: {z['held']}, oldest {format_age(z['oldest_s'])}"
                for code, z in status["held_by_zone"].items()
            )
            + ")"
        )
    unsent = ", ".join(f"{amount} {cur}" for cur, amount in status["unsent_amounts"].items())
    controller = status["controller"]
    if controller == "unreachable" and status.get("controller_reason"):
        controller += f" ({status['controller_reason']})"
    dead = f"{status['dead']} ({DEAD_MEANS}; see: dead list)"
    if status["conflicts"]:
        dead += (
            f"; {status['conflicts']} of them permit number conflicts (another record holds "
            "the same permitNo: fix the numbering, then dead requeue)"
        )
    rows: list[tuple[str, str]] = []
    if status["salvage_unfinished"]:
        rows.append(("JOURNAL", f"SALVAGE UNFINISHED {status['salvage_unfinished']}"))
    if status["journal_recovered"]:
        rows.append(("JOURNAL", f"RECOVERED {status['journal_recovered']}"))
        rows.append(("", "(when it has been looked into: paystation-agent journal acknowledge)"))
    rows += [
        ("service", service),
        ("controller", controller),
        ("backlog", backlog),
        ("unsent", unsent or "nothing"),
        ("held", held),
        ("sent", str(status["sent"])),
        ("rejected", f"{status['rejected']} ({REJECTED_MEANS}; see: dead list)"),
        ("dead", dead),
        ("last success", _with_local(status["last_success"], zone) or "never"),
        ("last error", _with_local(status["last_error"], zone) or "none"),
        (
            "duplicates",
            f"{status['unknown_outcomes']} possible (no answer came), "
            f"{status['already_existed']} confirmed by the controller (9022)",
        ),
    ]
    if status["agent_errors"]:
        rows.append(
            (
                "agent errors",
                f"{status['agent_errors']} while handling answers (records kept, counted as "
                f"possible duplicates; see the log); last: {status['agent_error_last']}",
            )
        )
    for name, port in status["drivers"].items():
        frames = ", ".join(f"{k} {v}" for k, v in sorted(port.get("frames", {}).items()))
        if port.get("connected"):
            state = "connected"
        else:
            state = "DISCONNECTED" + (f" ({port['detail']})" if port.get("detail") else "")
        last = port.get("last_frame_at")
        seen = f"last frame {format_age(_age_of(last))} ago" if last else "no frame yet"
        rows.append((f"port {name}", f"{state}, {seen}; {frames or 'no frames'}"))
        warning = clock_warning(port.get("clock_skew_s"))
        if warning:
            rows.append((f"clock {name}", warning))
    full = status["disk_full"]
    if full:
        what = "FULL" if full["cause"] == "disk" else "journal FULL (journal_max_mb reached)"
        rows.append(
            (
                "disk",
                f"{what}: new sales refused (NAK) since {_with_local(full['since'], zone)}; "
                f"{full['free_kb']} KB free",
            )
        )
    journal = status["journal"] + (" (not created yet)" if status["never_ran"] else "")
    rows.append(("journal", journal))
    version = status["version"]
    running_version = status["service_version"]
    if running_version and running_version != version:
        version += f" (the running service is {running_version}: restart it to run this one)"
    rows.append(("version", version))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


DEAD_MEANS = "refused by the controller"
REJECTED_MEANS = "invalid at the source"
_LEADING_UTC = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)(.*)", re.DOTALL)


def _with_local(text: str | None, zone: ZoneInfo) -> str | None:
    """A text that starts with a UTC moment (``2026-11-28T04:33:05Z …``), with the same
    moment in the station's time beside it: ``2026-11-28T04:33:05Z (23:33:05 EST) …``."""
    if not text:
        return text
    match = _LEADING_UTC.match(text)
    if match is None:
        return text
    moment = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    local = moment.astimezone(zone)
    day = "" if local.date() == moment.date() else local.strftime("%Y-%m-%d ")
    return f"{match[1]} ({day}{local.strftime('%H:%M:%S %Z')} local){match[2]}"


def clock_warning(skew_s: float | None) -> str | None:
    """A station clock more than CLOCK_TOLERANCE_S off this PC's, in words."""
    if skew_s is None or abs(skew_s) <= CLOCK_TOLERANCE_S:
        return None
    direction = "ahead of" if skew_s > 0 else "behind"
    return (
        f"CHECK THE STATION'S CLOCK: its latest sale starts {format_age(abs(skew_s))} "
        f"{direction} this PC's time (records are still sent as the station stamped them)"
    )


def _age_of(epoch: float | None) -> float | None:
    if epoch is None:
        return None
    return round(datetime.now(UTC).timestamp() - epoch, 1)


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _next_try(meta: dict[str, str]) -> float | None:
    try:
        return float(meta["next_try_at"])
    except (KeyError, ValueError):
        return None
