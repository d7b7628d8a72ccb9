"""The service's one-line summary, sent to systemd as ``STATUS=`` (``systemctl status``).

It lives beside the service rather than with the ``status`` command, so the service
imports nothing of the commands: the dependency points from the commands to the service.
"""

from __future__ import annotations

from agent.intake import FULL_META
from agent.journal import RECOVERED_META, Journal, State
from agent.timestamps import utc_iso


def brief(journal: Journal) -> str:
    """The sd_notify STATUS= line, from indexed reads only: it is sent every few seconds,
    whatever the size of the backlog."""
    counts = journal.counts()
    last = journal.last_sent_at()
    text = f"{counts[State.PENDING]} pending, {counts[State.HELD]} held, {counts[State.SENT]} sent"
    meta = journal.meta()
    if meta.get("paused"):
        text += ", PAUSED"
    if meta.get(FULL_META):
        text += ", DISK FULL: new sales refused"
    if meta.get(RECOVERED_META):
        text += ", JOURNAL RECOVERED (see status)"
    return text + f", last success {utc_iso(last) if last else 'never'}"
