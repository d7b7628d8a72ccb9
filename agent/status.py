"""What ``paystation-agent status`` shows: read from the journal, so it works from another
process while ``run`` holds it (WAL lets readers in), and whether the service is running
is read from the run lock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agent.journal import Journal, State
from agent.service import service_running


def collect(journal: Journal) -> dict[str, Any]:
    counts = journal.counts()
    summary = journal.summary()
    meta = journal.meta()
    last_sent = summary["last_sent_at"]
    return {
        "running": service_running(journal.path),
        "pending": counts[State.PENDING],
        "held": counts[State.HELD],
        "sent": counts[State.SENT],
        "rejected": counts[State.REJECTED],
        "dead": counts[State.DEAD],
        "active_pending": summary["active_pending"],
        "oldest_pending_s": summary["oldest_pending_s"],
        "last_success": _iso(last_sent) if last_sent else None,
        "last_error": meta.get("last_error"),
        "paused": meta.get("paused"),
        "controller": meta.get("controller_state", "unknown"),
        "unknown_outcomes": summary["unknown_outcomes"],
        "already_existed": summary["already_existed"],
        "journal": str(journal.path),
    }


def render(status: dict[str, Any]) -> str:
    if status["paused"]:
        service = f"running, PAUSED: {status['paused']}" if status["running"] else "stopped"
    else:
        service = "running" if status["running"] else "stopped"
    oldest = status["oldest_pending_s"]
    backlog = f"{status['pending']} pending"
    if status["pending"]:
        backlog += f" (oldest {_age(oldest)}, {status['active_pending']} sessions still running)"
    rows = [
        ("service", service),
        ("controller", status["controller"]),
        ("backlog", backlog),
        ("held", f"{status['held']} (zone without a mapping)"),
        ("sent", str(status["sent"])),
        ("rejected", f"{status['rejected']} (invalid at the source)"),
        ("dead", f"{status['dead']} (refused by the controller)"),
        ("last success", status["last_success"] or "never"),
        ("last error", status["last_error"] or "none"),
        (
            "duplicates",
            f"{status['unknown_outcomes']} unknown outcome(s), "
            f"{status['already_existed']} already at the controller",
        ),
        ("journal", status["journal"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def one_line(status: dict[str, Any]) -> str:
    """The sd_notify STATUS= summary."""
    text = f"{status['pending']} pending, {status['sent']} sent"
    if status["paused"]:
        text += ", PAUSED"
    return text + f", last success {status['last_success'] or 'never'}"


__all__ = ["collect", "one_line", "render"]
