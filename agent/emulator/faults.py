"""The misbehaviour a test or a vendor can ask of the emulator: what a fault is, and its answer.

Contract: ``make_fault`` checks every option and raises ValueError naming the bad one, so a
fault that exists is always one the emulator can play; ``fault_kwargs`` turns the control
API's JSON into ``ControllerEmulator.set_fault`` keyword arguments (ValueError for unknown
keys); ``fault_reply`` is the answer of every kind that answers at all (``slow`` and
``reset`` are played by the emulator itself, since they decide *whether* and *when* to
answer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from agent.emulator.replies import Reply, json_reply

FAULT_KINDS = ("error", "throttle", "slow", "reset", "auth", "error200")

_FAULT_JSON_KEYS = ("kind", "count", "status", "retry_after", "delay", "error_code", "accept")


@dataclass
class Fault:
    """One armed fault; ``remaining`` counts down the requests it still applies to."""

    kind: str
    remaining: int | None
    status: int
    retry_after: str | None
    delay: float
    error_code: int
    accept: bool


def fault_reply(fault: Fault) -> Reply:
    """The answer to a push request that ``fault`` (not slow, not reset) replaces."""
    outcome = f"fault {fault.kind}"
    retry = (("Retry-After", fault.retry_after),) if fault.retry_after is not None else ()
    if fault.kind == "throttle":
        body = {"Message": "emulated fault: too many requests"}
        return json_reply(429, body, outcome, (("Retry-After", fault.retry_after or "1"),))
    if fault.kind == "error":
        body = {"Message": f"emulated fault: HTTP {fault.status}"}
        return json_reply(fault.status, body, outcome, retry)
    message = "emulated fault: " + ("token refused" if fault.kind == "auth" else "error")
    status = fault.status if fault.kind == "auth" else 200
    return json_reply(status, {"ErrorCode": fault.error_code, "ErrorMessage": message}, outcome)


def make_fault(
    kind: str,
    count: int | None,
    status: int,
    retry_after: str | None,
    delay: float,
    error_code: int,
    accept: bool,
) -> Fault:
    """A checked ``Fault``; see ``ControllerEmulator.set_fault`` for what each option means."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault kind {kind!r}: expected one of {', '.join(FAULT_KINDS)}")
    if count is not None and (not _is_int(count) or count < 1):
        raise ValueError(f"fault count {count!r}: expected a positive integer or None")
    if not _is_int(status) or not 100 <= status <= 599:
        raise ValueError(f"fault status {status!r}: expected an HTTP status 100-599")
    if not _is_int(error_code):
        raise ValueError(f"fault error_code {error_code!r}: expected an integer")
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay):
        raise ValueError(f"fault delay {delay!r}: expected seconds")
    if delay < 0:
        raise ValueError(f"fault delay {delay!r}: expected seconds >= 0")
    if retry_after is not None and not isinstance(retry_after, str):
        raise ValueError(f"fault retry_after {retry_after!r}: expected a string")
    if not isinstance(accept, bool):
        raise ValueError(f"fault accept {accept!r}: expected true or false")
    if kind == "auth" and status == 503:
        status = 401
    if kind == "throttle" and retry_after is None:
        retry_after = "1"
    return Fault(kind, count, status, retry_after, float(delay), error_code, accept)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def fault_kwargs(obj: object) -> dict[str, Any]:
    """The control API's JSON fault description, as ``set_fault`` keyword arguments."""
    if not isinstance(obj, dict):
        raise ValueError("fault: expected a JSON object")
    unknown = sorted(set(obj) - set(_FAULT_JSON_KEYS))
    if unknown:
        raise ValueError(f"fault: unknown keys {unknown}")
    if not isinstance(obj.get("kind"), str):
        raise ValueError("fault: 'kind' is required")
    return dict(obj)
