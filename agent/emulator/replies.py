"""What the emulator answers one request with, before it is written to the socket.

A ``Reply`` is a plain value so that the rules, the faults and the routing decide an answer
without touching HTTP plumbing; ``http_server`` alone writes it out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """What to answer one request with; ``reset`` means: no answer, close with RST."""

    status: int
    body: bytes
    outcome: str
    headers: tuple[tuple[str, str], ...] = ()
    reset: bool = False


def json_reply(
    status: int, obj: object, outcome: str, headers: tuple[tuple[str, str], ...] = ()
) -> Reply:
    """``obj`` as a JSON body; ``outcome`` is the verbose log's summary of the answer."""
    return Reply(status, json.dumps(obj).encode("utf-8"), outcome, headers)


def error_reply(status: int, code: int, message: str, outcome: str) -> Reply:
    """The Push API's error body: ``{"ErrorCode": code, "ErrorMessage": message}``."""
    body = {"ErrorCode": code, "ErrorMessage": message}
    return json_reply(status, body, f"{outcome} {code} {message}")
