"""A moment in UTC as people read it in ``status``, exports and acknowledgements:
ISO 8601 to the second with a ``Z`` (``2026-11-28T14:03:07Z``). Imports nothing of the
agent, so any module may use it."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utc_iso(epoch: float | None = None) -> str:
    """``epoch`` (now when None) as ``2026-11-28T14:03:07Z``."""
    return datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
