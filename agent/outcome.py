"""What the controller's answer means for one record (push-api.md, "Decisions").

Pure logic, no I/O: :func:`classify` reads a status, headers and body;
:func:`classify_failure` reads a transport exception. Both return a :class:`Verdict`.

Order of reading: success needs HTTP 200 *and* ``"status": "success"``; otherwise the
``ErrorCode`` decides before the HTTP status does (errors may come under HTTP 200); an
unknown ``ErrorCode`` rejects the record.
"""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx


class Outcome(StrEnum):
    DELIVERED = "delivered"  # 200 + status success: keep the reference_id
    ALREADY_DELIVERED = "already_delivered"  # 9022: an earlier attempt got through
    REJECTED = "rejected"  # the record is refused for good: dead letter, never blocks others
    PAUSED = "paused"  # token or licence wrong: stop sending everything, dead-letter nothing
    TRANSIENT = "transient"  # try again later, forever, with backoff


PAUSE_CODES = frozenset({9000, 9001, 9002})
ALREADY_EXISTS = 9022
REJECT_STATUSES = frozenset({400, 404, 409, 413, 422})
PAUSE_STATUSES = frozenset({401, 403})
TRANSIENT_STATUSES = frozenset({408, 425, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER_S = 3600.0


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    status: int | None = None
    reference_id: str | None = None
    internal_reference_id: str | None = None
    retry_after_s: float | None = None
    unknown: bool = False  # the request may have reached the controller (timeout, reset)

    @property
    def delivered(self) -> bool:
        return self.outcome in (Outcome.DELIVERED, Outcome.ALREADY_DELIVERED)


def classify(status: int, headers: httpx.Headers, body: bytes) -> Verdict:
    doc = _json_object(body)
    if status == 200 and doc is not None and doc.get("status") == "success":
        ref = _text(doc.get("reference_id"))
        internal = _text(doc.get("InternalReferenceID"))
        return Verdict(Outcome.DELIVERED, "accepted", status, ref, internal)

    code = _error_code(doc)
    if code is not None:
        message = _text(doc.get("ErrorMessage") if doc else None) or ""
        reason = f"ErrorCode {code}" + (f": {message}" if message else "") + f" (HTTP {status})"
        if code == ALREADY_EXISTS:
            return Verdict(Outcome.ALREADY_DELIVERED, reason, status)
        if code in PAUSE_CODES:
            return Verdict(Outcome.PAUSED, reason, status)
        return Verdict(Outcome.REJECTED, reason, status)

    reason = f"HTTP {status}"
    if status in PAUSE_STATUSES:
        return Verdict(Outcome.PAUSED, reason, status)
    if status in REJECT_STATUSES:
        return Verdict(Outcome.REJECTED, reason, status)
    if status in TRANSIENT_STATUSES or status >= 500:
        retry_after = (
            parse_retry_after(headers.get("Retry-After"))
            if status in RETRY_AFTER_STATUSES
            else None
        )
        return Verdict(Outcome.TRANSIENT, reason, status, retry_after_s=retry_after)
    if status == 200:
        # 200 without "status": "success" and without an ErrorCode: not a success, and not
        # a refusal of this record either. Retrying is the safe reading.
        return Verdict(Outcome.TRANSIENT, "HTTP 200 without a success body", status)
    return Verdict(Outcome.REJECTED, reason, status)


def classify_failure(exc: Exception) -> Verdict:
    """A transport failure: transient, and *unknown* when the request may have arrived."""
    name = type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return Verdict(Outcome.TRANSIENT, f"{name}: controller unreachable")
    if isinstance(exc, httpx.TimeoutException):
        return Verdict(Outcome.TRANSIENT, f"{name}: no answer in time", unknown=True)
    if isinstance(exc, httpx.TransportError):
        return Verdict(Outcome.TRANSIENT, f"{name}: connection broke", unknown=True)
    return Verdict(Outcome.TRANSIENT, f"{name}", unknown=True)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), capped at an hour."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), MAX_RETRY_AFTER_S)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _error_code(doc: dict[str, Any] | None) -> int | None:
    if doc is None or "ErrorCode" not in doc:
        return None
    code = doc["ErrorCode"]
    if isinstance(code, bool):
        return -1
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.strip().isdigit():
        return int(code)
    return -1  # present but unreadable: an unknown code, so the record is rejected


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
