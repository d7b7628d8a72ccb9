"""What ``paystation-agent status`` shows.

Everything is read from the journal, so it works from another process while ``run`` holds
it (WAL lets readers in); whether the service is running is read from its run lock, and
what only the service knows (the controller's state, each port's health) it publishes to
the journal's ``meta`` table when it changes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from agent.journal import Journal, State
from agent.service import service_running

CLOCK_TOLERANCE_S = 300.0


def collect(journal: Journal, default_currency: str = "CAD") -> dict[str, Any]:
    counts = journal.counts()
    summary = journal.summary()
    meta = journal.meta()
    last_sent = summary["last_sent_at"]
    running = service_running(journal.path)
    unsent: dict[str, Decimal] = {}
    for currency, cents in journal.unsent_amounts():
        key = currency or default_currency
        unsent[key] = unsent.get(key, Decimal(0)) + Decimal(cents) / 100
    held_by_zone = {
        code: {"held": held, "oldest_s": _age_of(oldest)}
        for code, held, oldest in journal.held_zones()
    }
    return {
        "running": running,
        "pending": counts[State.PENDING],
        "held": counts[State.HELD],
        "sent": counts[State.SENT],
        "rejected": counts[State.REJECTED],
        "dead": counts[State.DEAD],
        "active_pending": summary["active_pending"],
        "oldest_pending_s": summary["oldest_pending_s"],
        "last_success": _iso(last_sent) if last_sent else None,
        "last_error": meta.get("last_error"),
        "paused": meta.get("paused") if running else None,
        "controller": meta.get("controller_state", "unknown") if running else "unknown",
        "unknown_outcomes": summary["unknown_outcomes"],
        "already_existed": summary["already_existed"],
        "held_by_zone": held_by_zone,
        "unsent_amounts": {k: f"{v:.2f}" for k, v in sorted(unsent.items())},
        "drivers": json.loads(meta.get("drivers", "{}")) if running else {},
        "journal": str(journal.path),
        "journal_recovered": meta.get("journal_recovered"),
    }


def render(status: dict[str, Any]) -> str:
    if not status["running"]:
        service = "STOPPED (records are not being read or sent)"
    elif status["paused"]:
        service = f"running, PAUSED: {status['paused']}"
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
    rows = [
        ("service", service),
        ("controller", status["controller"]),
        ("backlog", backlog),
        ("unsent", unsent or "nothing"),
        ("held", held),
        ("sent", str(status["sent"])),
        ("rejected", f"{status['rejected']} (invalid at the source; see: dead list)"),
        ("dead", f"{status['dead']} (refused by the controller; see: dead list)"),
        ("last success", status["last_success"] or "never"),
        ("last error", status["last_error"] or "none"),
        (
            "duplicates",
            f"{status['unknown_outcomes']} possible (no answer came), "
            f"{status['already_existed']} confirmed by the controller (9022)",
        ),
    ]
    for name, port in status["drivers"].items():
        frames = ", ".join(f"{k} {v}" for k, v in sorted(port.get("frames", {}).items()))
        state = "connected" if port.get("connected") else "DISCONNECTED"
        last = port.get("last_frame_at")
        age = format_age(_age_of(last)) if last else "never"
        rows.append((f"port {name}", f"{state}, last frame {age} ago; {frames or 'no frames'}"))
        warning = clock_warning(port.get("clock_skew_s"))
        if warning:
            rows.append((f"clock {name}", warning))
    rows.append(("journal", status["journal"]))
    if status["journal_recovered"]:
        rows.append(("JOURNAL", f"RECOVERED {status['journal_recovered']}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def clock_warning(skew_s: float | None) -> str | None:
    """A station clock more than CLOCK_TOLERANCE_S off this PC's, in words."""
    if skew_s is None or abs(skew_s) <= CLOCK_TOLERANCE_S:
        return None
    direction = "ahead of" if skew_s > 0 else "behind"
    return (
        f"CHECK THE STATION'S CLOCK: its latest sale starts {format_age(abs(skew_s))} "
        f"{direction} this PC's time (records are still sent as the station stamped them)"
    )


def brief(journal: Journal) -> str:
    """The sd_notify STATUS= line, from indexed reads only: it is sent every few seconds,
    whatever the size of the backlog."""
    counts = journal.counts()
    last = journal.last_sent_at()
    text = f"{counts[State.PENDING]} pending, {counts[State.HELD]} held, {counts[State.SENT]} sent"
    if journal.meta().get("paused"):
        text += ", PAUSED"
    return text + f", last success {_iso(last) if last else 'never'}"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
