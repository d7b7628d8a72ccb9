"""The one seam between the forwarder's decisions and the network.

:class:`Sender` posts one payload and returns the controller's raw answer; everything above
it (classification, retries, journal bookkeeping) is plain logic. :class:`HttpSender` is
the real one: a keep-alive httpx transport with timeouts, certificate verification against
the system trust store, and the site's proxy. The API token is added here, at send time, so
a rotated token applies to the backlog, and it is never stored with the record.

An answer is read up to :data:`BODY_MAX` bytes and within a deadline for the whole answer
(the request's timeout): a success body is tiny, and an endless or trickling body must
neither grow the agent's memory nor hold a worker. Either cut is a failure to answer: the
answer was not read, so the outcome is unknown and the record is retried.

Site networks (:class:`Route`): the proxy is ``controller.proxy`` if set (``"direct"``:
none), else the environment's, read as curl and httpx read it (``HTTPS_PROXY`` /
``HTTP_PROXY`` / ``ALL_PROXY``, lower case first, ``NO_PROXY`` for hosts that go direct);
the controller's URL is one, so the choice is made once, not per request. A loopback IP
address (the emulator) never goes through the environment's proxy: a proxy elsewhere
would reach its own loopback, not this PC's. HTTPS goes
through the proxy's CONNECT tunnel, end to end. Certificates are checked against the
system trust store (``truststore``: what the site's IT added with update-ca-certificates,
and ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` as OpenSSL reads them), plus ``controller.ca_file``
when set. There is no way to turn verification off.

The seam speaks the agent's types only: a :class:`Reply` holds plain values, and every
failure, httpx's or a cut answer, is one :class:`~agent.errors.SendError` whose
``reason``, ``cause`` (a metrics label) and ``unknown`` are decided here, so nothing above
this module knows httpx. The reason keeps what happened, never a secret:

    reason (as journaled)                              cause      unknown
    ConnectError: controller unreachable: DNS cannot resolve HOST
                                                       dns        False
    ConnectError: controller unreachable: connection refused by HOST:PORT
                                                       refused    False
    ConnectError: certificate verify failed for HOST (issuer ...; why)
                                                       tls        False
    ConnectError: TLS handshake with HOST failed: ... tls        False
    ConnectTimeout: controller unreachable: no connection within N s
                                                       timeout    False
    ConnectError: proxy unreachable: ... (the same causes, for the proxy)
                                                       proxy      False
    ProxyError: proxy P refused ... (407: credentials, 403: the tunnel, 5xx: upstream)
                                                       proxy      False
    <timeout>: no answer in time (N s)                 timeout    True
    <error>: connection broke                          broken     True
    AnswerTooLarge: <why> / AnswerTooSlow: <why>       answer     True
    <error>                                            other      True

"unknown" is False when no connection to the controller was made: the request never left.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from agent.config import ProxyAuth, Secret
from agent.errors import SendError

USER_AGENT = "paystation-agent/0.1"
BODY_MAX = 64 * 1024  # bytes of an answer's body read at most (a success body is ~150)
CONNECT_MAX_S = 5.0  # a connection (and its TLS handshake) takes at most this long
ISSUER_MEMORY_S = 60.0  # a certificate's issuer, looked up once per minute at most
DIRECT = "direct"  # controller.proxy = "direct": no proxy, whatever the environment says

# the answer's headers the decisions read (agent.forwarder.outcome); only these are copied out
READ_HEADERS = ("location", "retry-after")
_BODY = json.JSONEncoder(ensure_ascii=False)  # json.dumps() with an option builds one per call


@dataclass(frozen=True)
class Reply:
    """The controller's answer: its status, the headers the decisions read
    (:data:`READ_HEADERS`, by lower-case name, absent ones left out) and the body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Sender(Protocol):
    def post(self, payload: dict[str, str]) -> Reply:
        """Send one record; raise a :class:`~agent.errors.SendError` when no answer came."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Route:
    """How requests reach the controller: ``proxy`` (a URL without credentials, or None
    for a direct connection) and where that choice came from, as a person reads it."""

    proxy: str | None
    source: str

    def __str__(self) -> str:
        return f"through proxy {self.proxy} ({self.source})" if self.proxy else self.source


def choose_route(url: str, configured: str | None, environ: Mapping[str, str]) -> Route:
    """The proxy for ``url``: ``configured`` (``controller.proxy``) wins; else the
    environment's, as urllib (and so curl and httpx) read it, NO_PROXY included."""
    if configured == DIRECT:
        return Route(None, 'direct (controller.proxy = "direct")')
    if configured:
        return Route(configured, "controller.proxy")
    parts = urlsplit(url)
    if _loopback_ip(parts.hostname or ""):
        return Route(None, "direct (a loopback address: no proxy elsewhere can reach it)")
    names = {"https": ("https", "all"), "http": ("http", "all")}.get(parts.scheme, ("all",))
    proxies = _environment_proxies(environ)
    for name in names:
        if proxies.get(name):
            host = parts.hostname or ""
            where = f"{host}:{parts.port}" if parts.port else host
            # urllib's NO_PROXY reading, public since Python 2 but not in typeshed
            if urllib.request.proxy_bypass_environment(where, proxies):  # type: ignore[attr-defined]
                return Route(None, f"direct ({host} is in NO_PROXY)")
            return Route(_without_userinfo(proxies[name]), f"{name.upper()}_PROXY")
    return Route(None, "direct (no proxy configured)")


def _loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _environment_proxies(environ: Mapping[str, str]) -> dict[str, str]:
    """``*_proxy`` variables by scheme, lower case winning, as urllib reads os.environ."""
    proxies: dict[str, str] = {}
    for name, value in environ.items():
        if value and name.lower().endswith("_proxy") and name[-6:] != "_PROXY":
            proxies[name[:-6].lower()] = value
    for name, value in environ.items():
        if value and name.endswith("_PROXY"):
            proxies.setdefault(name[:-6].lower(), value)
    return proxies


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc).geturl()


def proxy_secrets(environ: Mapping[str, str]) -> list[str]:
    """Passwords written into a ``*_PROXY`` URL of the environment, for redaction."""
    found = []
    for name, value in environ.items():
        if name.lower().endswith("_proxy") and "@" in value:
            netloc = urlsplit(value if "://" in value else f"http://{value}").netloc
            password = netloc.rpartition("@")[0].partition(":")[2]
            if password:
                found.append(password)
    return found


def trust_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Verification against the system trust store (and ``ca_file`` besides)."""
    import truststore  # only where TLS is spoken: an http:// start skips it

    context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def _trusting_nothing() -> ssl.SSLContext:
    """For a sender that never makes a handshake (plain http, no https proxy): building
    the trust store costs ~25 ms of every start. Should TLS ever happen through it, it
    still verifies, against no certificate at all, so it refuses every peer."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class HttpSender:
    """POSTs payloads to the Push API endpoint over one keep-alive connection pool.

    It talks to httpx's transport (its public low-level API) rather than through
    ``httpx.Client``: one request shape to one URL needs none of the client's cookie jar,
    redirect, auth or URL-merging machinery, which was half of the CPU a delivery cost
    (docs/benchmarks.md). What the client would take from the environment (the proxy, the
    trust store) is chosen here once (:func:`choose_route`, :func:`trust_context`). The
    timeout goes in the request's extensions, where the client would have put it.
    Redirects are never followed (the token would go to another address): a 3xx comes back
    as it is.

    ``timeout_s`` bounds each network read and also the reading of the whole body, from
    the moment the request is sent; a read blocked on header bytes that trickle in is
    bounded only per read (httpcore reads the headers in one call), which is why the
    forwarder also tells the watchdog about a worker stuck in one request.
    """

    def __init__(
        self,
        url: str,
        token: Callable[[], Secret],
        *,
        timeout_s: float = 10.0,
        max_connections: int = 4,
        proxy: str | None = None,
        proxy_auth: ProxyAuth | None = None,
        ca_file: Path | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.url = httpx.URL(url)  # parsed once, not for every request
        self.route = choose_route(url, proxy, environ)
        self._token = token
        self._timeout_s = timeout_s
        self._connect_s = min(timeout_s, CONNECT_MAX_S)
        self._timeout = httpx.Timeout(timeout_s, connect=self._connect_s).as_dict()
        self._headers = httpx.Headers(
            {
                "Accept": "application/json",
                "Cache-Control": "no-cache",
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            }
        )
        self._proxy = self._proxy_for(proxy_auth, environ)
        self._ca_file = ca_file
        self._context = trust_context(ca_file) if self._speaks_tls(ca_file) else _trusting_nothing()
        self._transport = httpx.HTTPTransport(
            verify=self._context,
            proxy=self._proxy,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self._issuer_lock = threading.Lock()
        self._issuer: tuple[float, str] | None = None

    def _speaks_tls(self, ca_file: Path | None) -> bool:
        """Whether any connection of this sender makes a TLS handshake: an https URL, an
        https proxy, or a site CA someone configured (checked, so a wrong path fails)."""
        proxy = self._proxy.url.scheme if self._proxy is not None else ""
        return self.url.scheme == "https" or proxy == "https" or ca_file is not None

    def _proxy_for(self, auth: ProxyAuth | None, environ: Mapping[str, str]) -> httpx.Proxy | None:
        if self.route.proxy is None:
            return None
        if auth is not None:
            return httpx.Proxy(self.route.proxy, auth=(auth.user, auth.password.reveal()))
        if self.route.source.endswith("_PROXY"):  # the environment's URL, with its userinfo
            name = self.route.source.removesuffix("_PROXY").lower()
            return httpx.Proxy(_environment_proxies(environ)[name])
        return httpx.Proxy(self.route.proxy)

    def post(self, payload: dict[str, str]) -> Reply:
        body = {"apiToken": self._token().reveal(), **payload}
        request = httpx.Request(
            "POST",
            self.url,
            headers=self._headers,
            content=_BODY.encode(body).encode(),
            extensions={"timeout": self._timeout},
        )
        deadline = time.monotonic() + self._timeout_s
        try:
            response = self._transport.handle_request(request)
            try:
                content = _read_bounded(response, deadline, self._timeout_s)
            finally:
                response.close()  # a body not read to its end closes the connection
        except httpx.HTTPError as exc:
            raise self._send_error(exc) from exc
        raw = response.headers
        headers = {name: value for name in READ_HEADERS if (value := raw.get(name)) is not None}
        return Reply(response.status_code, headers, content)

    def handshake(self) -> str:
        """Connect (through the proxy, if any) and, for https, complete a verified TLS
        handshake, sending no request: what was checked, or a :class:`SendError`."""
        der = self._connect_only(self._context)
        if der is None:
            return f"connected to {_where(self.url)} (plain http, no TLS)"
        return f"certificate of {self.url.host} verified (issuer: {_issuer_of(der)})"

    def close(self) -> None:
        self._transport.close()

    def _connect_only(self, context: ssl.SSLContext) -> bytes | None:
        """A connection of its own, ended by :class:`_Peek` right after the TLS handshake,
        before any request byte: the peer's certificate. (A plain-http URL has no
        handshake: its request is a HEAD, which the emulator answers harmlessly.)"""
        peek = _Peek(context)
        transport = httpx.HTTPTransport(verify=peek, proxy=self._proxy)  # type: ignore[arg-type]
        request = httpx.Request("HEAD", self.url, extensions={"timeout": self._timeout})
        try:
            transport.handle_request(request).close()
        except _Peeked:
            pass
        except httpx.HTTPError as exc:
            raise self._send_error(exc) from exc
        finally:
            transport.close()
        return peek.der

    def _send_error(self, exc: httpx.HTTPError) -> SendError:
        """The agent's error for an httpx failure: *unknown* unless no connection was made;
        the cause named as a person can act on it."""
        name = type(exc).__name__
        detail = str(exc)
        proxied = self.route.proxy is not None
        if isinstance(exc, httpx.ProxyError):
            return SendError(
                f"{name}: {_proxy_refusal(detail, self.route, _where(self.url))}",
                unknown=False,
                cause="proxy",
            )
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            whom = (
                f"proxy unreachable ({self.route.proxy})" if proxied else "controller unreachable"
            )
            why = f"no connection within {self._connect_s:g} s"
            return SendError(
                f"{name}: {whom}: {why}",
                unknown=False,
                detail=detail,
                cause="proxy" if proxied else "timeout",
            )
        if isinstance(exc, httpx.ConnectError):
            return self._connect_error(exc, name, detail)
        if isinstance(exc, httpx.TimeoutException):
            why = f"no answer in time ({self._timeout_s:g} s)"
            return SendError(f"{name}: {why}", unknown=True, detail=detail, cause="timeout")
        if isinstance(exc, httpx.TransportError):
            return SendError(
                f"{name}: connection broke", unknown=True, detail=detail, cause="broken"
            )
        return SendError(name, unknown=True, detail=detail, cause="other")

    def _connect_error(self, exc: httpx.ConnectError, name: str, detail: str) -> SendError:
        """No connection: the name, the port, the certificate, each said apart. Through a
        proxy, the TCP connection is the proxy's; TLS is still the controller's."""
        root = _root_cause(exc)
        host = self.url.host
        if isinstance(root, ssl.SSLCertVerificationError):
            issuer = self._issuer_for()
            why = f"issuer: {issuer}; {root.verify_message}" if issuer else root.verify_message
            return SendError(
                f"{name}: certificate verify failed for {host} ({why}); trust its CA in the "
                "system store (update-ca-certificates) or controller.ca_file",
                unknown=False,
                detail=detail,
                cause="tls",
            )
        if isinstance(root, ssl.SSLError):
            return SendError(
                f"{name}: TLS handshake with {host} failed ({root.reason or root}): not the "
                "controller's TLS; a proxy or captive portal may answer instead",
                unknown=False,
                detail=detail,
                cause="tls",
            )
        if self.route.proxy is not None:
            proxy = urlsplit(self.route.proxy)
            whom, where = f"proxy unreachable ({self.route.proxy})", proxy.hostname or ""
            port = proxy.port or (443 if proxy.scheme == "https" else 80)
            cause = "proxy"
        else:
            whom, where, cause = "controller unreachable", host, ""
            port = self.url.port or (443 if self.url.scheme == "https" else 80)
        if isinstance(root, socket.gaierror):
            why, cause = f"DNS cannot resolve {where}", cause or "dns"
        elif isinstance(root, ConnectionRefusedError):
            why, cause = f"connection refused by {where}:{port}", cause or "refused"
        else:
            why, cause = f"{type(root).__name__}: {root}", cause or "other"
        return SendError(f"{name}: {whom}: {why}", unknown=False, detail=detail, cause=cause)

    def _issuer_for(self) -> str:
        """The issuer of the certificate the controller's address presents, read over an
        unverified handshake that sends nothing; remembered for a minute (several workers
        see one failure); "" if it cannot be read."""
        with self._issuer_lock:
            if self._issuer is not None and time.monotonic() - self._issuer[0] < ISSUER_MEMORY_S:
                return self._issuer[1]
            unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            unverified.check_hostname = False
            unverified.verify_mode = ssl.CERT_NONE  # only to read whom it names, then closed
            try:
                der = self._connect_only(unverified)
            except SendError:
                der = None
            issuer = _issuer_of(der) if der else ""
            self._issuer = (time.monotonic(), issuer)
            return issuer


class _Peeked(Exception):
    """Ends a connection right after its TLS handshake, before any request byte."""


class _Peek:
    """An SSL context for httpcore that completes the handshake, keeps the peer's
    certificate and raises :class:`_Peeked`: a TLS check that sends no HTTP request."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self.der: bytes | None = None

    def wrap_socket(self, sock: socket.socket, **kwargs: Any) -> ssl.SSLSocket:
        wrapped = self._context.wrap_socket(sock, **kwargs)
        self.der = wrapped.getpeercert(binary_form=True)
        wrapped.close()
        raise _Peeked

    def __getattr__(self, name: str) -> Any:  # set_alpn_protocols and the like
        return getattr(self._context, name)


def _issuer_of(der: bytes) -> str:
    # imported here, when a certificate failed to verify: cryptography costs every agent
    # about 8 MB of memory at import, for a name that most never need
    from cryptography import x509

    try:
        return x509.load_der_x509_certificate(der).issuer.rfc4514_string() or "(empty)"
    except ValueError:
        return "(unreadable certificate)"


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost error under httpx's and httpcore's (the OSError, the SSL error)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


def _where(url: httpx.URL) -> str:
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{url.host}:{port}"


def _proxy_refusal(detail: str, route: Route, target: str) -> str:
    """A proxy's refusal of the CONNECT tunnel (httpcore's message: "407 Proxy ...")."""
    status_text, _, phrase = detail.partition(" ")
    status = int(status_text) if status_text.isdigit() else 0
    answer = f"{status} {phrase}".strip() if status else detail
    if status in (401, 407):  # tinyproxy answers a wrong password with 401
        why = (
            "asks for credentials or refused them (user:password in the proxy-auth "
            "credential or controller.proxy_auth_file)"
        )
    elif status == 403:
        why = f"refused the tunnel to {target} (the site's proxy rules)"
    elif status >= 500:
        why = f"could not reach the controller at {target}"
    else:
        why = f"refused the tunnel to {target}"
    return f"proxy {route.proxy} {why} ({answer})"


def _read_bounded(response: httpx.Response, deadline: float, timeout_s: float) -> bytes:
    """The body, or a :class:`~agent.errors.SendError` once it passes BODY_MAX bytes or the
    deadline (a body whose Content-Length is all there is read is complete, whatever the
    time)."""
    length = response.headers.get("Content-Length", "")
    readable = length.isascii() and length.isdigit() and len(length) <= 18
    expected = int(length) if readable else None
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_raw():
        size += len(chunk)
        if size > BODY_MAX:
            why = f"the answer's body exceeds {BODY_MAX // 1024} KiB; not read"
            raise SendError(f"AnswerTooLarge: {why}", unknown=True, cause="answer")
        chunks.append(chunk)
        if time.monotonic() > deadline and size != expected:
            why = f"the answer was not complete in time ({timeout_s:g} s)"
            raise SendError(f"AnswerTooSlow: {why}", unknown=True, cause="answer")
    return b"".join(chunks)
