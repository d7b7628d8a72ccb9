"""What the controller's answer means for one record (push-api.md, "Decisions").

Pure logic, no I/O: :func:`classify` reads a status, headers and body;
:func:`classify_failure` reads a :class:`~agent.errors.SendError` (the transport names the
failure and says whether the request may have arrived). Both return a :class:`Verdict`, for
*any* input: classification is total (a body nested too deep to parse, a number written in
non-ASCII digits, a status nobody documented), so an odd answer can never make the agent
re-send a record in a tight loop.

Order of reading:

* success needs a 2xx status *and* ``"status": "success"``;
* otherwise the ``ErrorCode`` decides before the HTTP status does (errors may come under
  HTTP 200); an unknown ``ErrorCode`` rejects the record. 9022 ("already exists") is this
  record only when an earlier attempt *may have arrived* (its outcome was unknown); on a
  first attempt another record holds the permit number: a conflict, for a person;
* then the status: 401/403 pause, 400/404/409/413/422 reject, a 3xx is never followed (the
  token would go to another address) and is the controller's problem, not the record's;
  every other status, named or not, is transient: never a silent dead letter.

A verdict is *unknown* when the controller may have stored the record although it did not
say so: no answer (a timeout, a reset), a gateway's error (500, 502, 504: the controller
behind it may have stored it) or a 2xx without a success body.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agent.errors import SendError


class Outcome(StrEnum):
    DELIVERED = "delivered"  # 2xx + status success: keep the reference_id
    ALREADY_DELIVERED = "already_delivered"  # 9022 after an unknown outcome: ours got through
    CONFLICT = "conflict"  # 9022 on a first attempt: another record holds the permit number
    REJECTED = "rejected"  # the record is refused for good: dead letter, never blocks others
    PAUSED = "paused"  # token or licence wrong: stop sending everything, dead-letter nothing
    TRANSIENT = "transient"  # try again later, forever, with backoff


# codes as the ASCII digits they are compared by (see _error_code)
PAUSE_CODES = frozenset({"9000", "9001", "9002"})
ALREADY_EXISTS = "9022"
REJECT_STATUSES = frozenset({400, 404, 409, 413, 422})
PAUSE_STATUSES = frozenset({401, 403})
RETRY_AFTER_STATUSES = frozenset({429, 503})
# a gateway or server error after which the controller may have stored the record
MAYBE_STORED_STATUSES = frozenset({500, 502, 504})
MAX_RETRY_AFTER_S = 3600.0
CONFLICT_REASON = "permit number conflict"
MAX_CODE_DIGITS = 12  # an ErrorCode longer than this is no code the vendor documents
MAX_SHOWN = 120  # characters of the controller's own text kept in a reason


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    status: int | None = None
    reference_id: str | None = None
    internal_reference_id: str | None = None
    retry_after_s: float | None = None
    unknown: bool = False  # the record may have reached the controller (timeout, reset)
    redirect: str | None = None  # a 3xx's Location: the configured URL leads elsewhere
    cause: str = ""  # no answer: why, as a metrics label (dns, refused, tls, proxy, ...)

    @property
    def delivered(self) -> bool:
        return self.outcome in (Outcome.DELIVERED, Outcome.ALREADY_DELIVERED)

    @property
    def final(self) -> bool:
        """The record leaves the queue: delivered, or dead for a person."""
        return self.delivered or self.outcome in (Outcome.REJECTED, Outcome.CONFLICT)


def classify(
    status: int, headers: Mapping[str, str], body: bytes, *, may_have_arrived: bool = False
) -> Verdict:
    """The verdict on one answer. ``headers`` by lower-case name (only ``location`` and
    ``retry-after`` are read). ``may_have_arrived``: an earlier attempt of this record had
    an unknown outcome, so a 9022 means that attempt got through."""
    doc = _json_object(body)
    if 200 <= status < 300 and doc is not None and doc.get("status") == "success":
        ref = _text(doc.get("reference_id"))
        internal = _text(doc.get("InternalReferenceID"))
        return Verdict(Outcome.DELIVERED, "accepted", status, ref, internal)

    code = _error_code(doc)
    if doc is not None and code is not None:
        message = _shown(_text(doc.get("ErrorMessage")) or "")
        reason = f"ErrorCode {code}" + (f": {message}" if message else "") + f" (HTTP {status})"
        if code == ALREADY_EXISTS:
            if may_have_arrived:
                return Verdict(Outcome.ALREADY_DELIVERED, reason, status)
            return Verdict(Outcome.CONFLICT, f"{CONFLICT_REASON}: {reason}", status)
        if code in PAUSE_CODES:
            return Verdict(Outcome.PAUSED, reason, status)
        return Verdict(Outcome.REJECTED, reason, status)

    reason = f"HTTP {status}"
    if status in PAUSE_STATUSES:
        return Verdict(Outcome.PAUSED, reason, status)
    if status in REJECT_STATUSES:
        return Verdict(Outcome.REJECTED, reason, status)
    if 300 <= status < 400:
        target = _shown(headers.get("location") or "(no Location)")
        return Verdict(
            Outcome.TRANSIENT,
            f"HTTP {status}: the controller URL redirects to {target} (never followed: "
            "check controller.url, the site's proxy or a captive portal)",
            status,
            redirect=target,
        )
    if 200 <= status < 300:
        # a 2xx without "status": "success" and without an ErrorCode: not a success, and
        # not a refusal of this record either; the controller may have stored it
        return Verdict(Outcome.TRANSIENT, f"{reason} without a success body", status, unknown=True)
    retry_after = None
    if status in RETRY_AFTER_STATUSES:
        retry_after = parse_retry_after(headers.get("retry-after"))
    return Verdict(
        Outcome.TRANSIENT,
        reason,
        status,
        retry_after_s=retry_after,
        unknown=status in MAYBE_STORED_STATUSES,
    )


def classify_failure(exc: SendError) -> Verdict:
    """No answer: transient, and *unknown* when the request may have arrived."""
    return Verdict(Outcome.TRANSIENT, exc.reason, unknown=exc.unknown, cause=exc.cause)


def explain_conflict(verdict: Verdict, permit_no: str) -> Verdict:
    """A conflict's reason as a person reads it: the permit number first (``dead list``
    shows the start of a reason), then the controller's answer and the fix. Any other
    verdict as it is."""
    if verdict.outcome is not Outcome.CONFLICT:
        return verdict
    answer = verdict.reason.removeprefix(f"{CONFLICT_REASON}: ")
    return dataclasses.replace(
        verdict,
        reason=f"{CONFLICT_REASON}: another record already holds permitNo {permit_no} "
        f"({answer}); fix the numbering (drivers[].permit_no) and requeue",
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (ASCII delta-seconds or an HTTP date), capped at an hour;
    None when absent or unreadable (the usual backoff applies)."""
    if not value:
        return None
    value = value.strip()
    if _ascii_digits(value):
        return min(float(value), MAX_RETRY_AFTER_S)  # float(): no int digit limit
    try:
        when = email.utils.parsedate_to_datetime(value)
        stamp = when.timestamp()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    delta = stamp - (time.time() if now is None else now)
    return min(max(delta, 0.0), MAX_RETRY_AFTER_S)


def _ascii_digits(text: str) -> bool:
    """``str.isdigit`` also accepts superscripts and other scripts' digits ("²"): only
    ASCII 0-9 make a number on the wire."""
    return text.isascii() and text.isdigit()


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # RecursionError: nested deeper than the parser's stack
    return doc if isinstance(doc, dict) else None


def _error_code(doc: dict[str, Any] | None) -> str | None:
    """The ``ErrorCode`` as ASCII digits (``9022`` and ``"9022"`` alike), or, when it is not
    a number, as it was written, for the reason: a code that is present but unreadable is
    an unknown code, so the record is rejected."""
    if doc is None or "ErrorCode" not in doc:
        return None
    code = doc["ErrorCode"]
    if isinstance(code, list | dict):
        return f"({type(code).__name__})"
    if isinstance(code, bool) or code is None:
        return f"({json.dumps(code)})"
    text = str(code).strip()  # an int from json has at most 4300 digits: str() takes it
    if _ascii_digits(text) and len(text) <= MAX_CODE_DIGITS:
        return str(int(text))
    return _shown(text)


def _shown(text: str) -> str:
    """The controller's own words, short and on one line, as a reason may quote them."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
