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
    """POSTs payloads to the Push API endpoint over one keep-alive connection pool.

    It talks to httpx's transport (its public low-level API) rather than through
    ``httpx.Client``: one request shape to one URL needs none of the client's cookie jar,
    redirect, auth or URL-merging machinery, which was half of the CPU a delivery cost
    (docs/benchmarks.md). The timeout goes in the request's extensions, where the client
    would have put it; certificates are verified as by the client.
    """

    def __init__(
        self,
        url: str,
        token: Callable[[], Secret],
        *,
        timeout_s: float = 10.0,
        max_connections: int = 4,
    ) -> None:
        self.url = httpx.URL(url)  # parsed once, not for every request
        self._token = token
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)).as_dict()
        self._headers = httpx.Headers(
            {
                "Accept": "application/json",
                "Cache-Control": "no-cache",
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            }
        )
        self._transport = httpx.HTTPTransport(
            verify=True,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    def post(self, payload: dict[str, str]) -> Reply:
        body = {"apiToken": self._token().reveal(), **payload}
        request = httpx.Request(
            "POST",
            self.url,
            headers=self._headers,
            content=json.dumps(body, ensure_ascii=False).encode(),
            extensions={"timeout": self._timeout},
        )
        response = self._transport.handle_request(request)
        try:
            content = response.read()
        finally:
            response.close()
        return Reply(response.status_code, response.headers, content)

    def close(self) -> None:
        self._transport.close()
