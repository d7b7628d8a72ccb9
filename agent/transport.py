"""The one seam between the forwarder's decisions and the network.

:class:`Sender` posts one payload and returns the controller's raw answer; everything above
it (classification, retries, journal bookkeeping) is plain logic. :class:`HttpSender` is
the real one: a keep-alive ``httpx.Client`` with timeouts and certificate verification.
The API token is added here, at send time, so a rotated token applies to the backlog, and
it is never stored with the record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx

from agent.config import Secret

USER_AGENT = "paystation-agent/0.1"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: httpx.Headers
    body: bytes


class Sender(Protocol):
    def post(self, payload: dict[str, str]) -> Reply:
        """Send one record; raise an ``httpx.TransportError`` when no answer came."""
        ...

    def close(self) -> None: ...


class HttpSender:
    """POSTs payloads to the Push API endpoint over one keep-alive connection pool."""

    def __init__(
        self,
        url: str,
        token: Callable[[], Secret],
        *,
        timeout_s: float = 10.0,
        max_connections: int = 4,
    ) -> None:
        self.url = url
        self._token = token
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={
                "Accept": "application/json",
                "Cache-Control": "no-cache",
                "User-Agent": USER_AGENT,
            },
            verify=True,
        )

    def post(self, payload: dict[str, str]) -> Reply:
        body = {"apiToken": self._token().reveal(), **payload}
        response = self._client.post(
            self.url,
            content=json.dumps(body, ensure_ascii=False).encode(),
            headers={"Content-Type": "application/json"},
        )
        return Reply(response.status_code, response.headers, response.content)

    def close(self) -> None:
        self._client.close()
