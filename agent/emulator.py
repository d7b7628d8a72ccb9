"""A local emulator of the OPSCOM controller's "Push API: Permit Create" endpoint.

What it is for: tests, the ``demo`` command and pay-station vendors need a controller that
speaks the push protocol on 127.0.0.1 without a licence, a network or a real OPSCOM tenant,
and that can be told to misbehave (errors, throttling, slowness, dropped connections) on
demand. It validates payloads with its own reading of ``docs/push-api.md``; it shares no code
with the agent, so a bug in the agent's payload mapping is not mirrored here.

Contract:

* ``POST PUSH_PATH`` with one JSON object per parking session. Every name the vendor accepts
  is accepted (``ALIASES``); any other key is rejected with 9003.
* Success: HTTP 200, ``{"status": "success", "reference_id": <uuid4>,
  "InternalReferenceID": <same>}``; the record is kept as an ``Accepted``.
* Errors: ``{"ErrorCode": code, "ErrorMessage": "<field>: <why>"}`` with HTTP 400 (record
  rules, see ``validate``), 401 (9001 token missing) or 403 (9002 token refused).
* A repeat of an accepted record (same ``permitNo``, plate, start and end): HTTP 200 with
  ErrorCode 9022, not stored again.
* A zone outside the configured ``zones`` is accepted, as the real controller does, and also
  listed in ``disconnected``.
* Other paths answer 404, other methods on the push path 405. HTTP/1.1 keep-alive works.
* Faults (``set_fault``) replace the handling of the next push requests; they never apply to
  the control API (``/_emulator/state``, ``/_emulator/fault``).
* ``go_down`` closes the listening socket (connections are refused) and every open
  connection; ``come_up`` listens again on the same port. State survives both.
* The API token is never logged, stored or echoed.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import re
import selectors
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

PUSH_PATH = "/api/OC-TOMA/v1/permits/push"
STATE_PATH = "/_emulator/state"
FAULT_PATH = "/_emulator/fault"
CONTROL_PREFIX = "/_emulator/"

TOKEN_KEY = "apiToken"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
PLATE_MAX = 25
AMOUNT_MAX_CHARS = 9
AMOUNT_MIN = Decimal("0.01")
AMOUNT_MAX = Decimal("999999.99")
MAX_BODY = 1 << 20

# Error codes (vendor's "API Error Codes" page)
E_TOKEN_MISSING = 9001
E_TOKEN_DENIED = 9002
E_PARSE = 9003
E_END_REQUIRED = 9004
E_END_INVALID = 9005
E_PLATE_REQUIRED = 9006
E_PLATE_TOO_LONG = 9021
E_DUPLICATE = 9022
E_TOO_LONG = 9030
E_REQUIRED = 9031
E_INVALID = 9033

DUPLICATE_MESSAGE = "A record already exists with the supplied details"

# canonical field name -> every spelling the controller accepts (the first is the send-as name)
ALIASES: dict[str, tuple[str, ...]] = {
    "LicencePlate": ("LicencePlate", "plate", "LicensePlate"),
    "Amount": ("Amount", "amount"),
    "CurrencyID": ("CurrencyID", "currency"),
    "startTime": ("startTime", "StartDateUtc"),
    "endTime": ("endTime", "EndDateUtc"),
    "permitNo": ("permitNo",),
    "TicketNumber": ("TicketNumber",),
    "zone": ("zone", "ParkingZoneName"),
    "promoCode": ("promoCode",),
}
_CANONICAL = {alias: name for name, aliases in ALIASES.items() for alias in aliases}

# fields whose only rule beyond "a string" is a length limit (too long -> 9030)
_MAX_LENGTHS = {"CurrencyID": 10, "permitNo": 50, "TicketNumber": 50, "promoCode": 50, "zone": 200}

_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")
_AMOUNT_RE = re.compile(r"[0-9]+\.[0-9]{2}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9-]{1,50}")

FAULT_KINDS = ("error", "throttle", "slow", "reset", "auth", "error200")
OUTCOMES = ("accepted", "duplicate", "invalid", "auth", "fault", "total")

Problem = tuple[int, str]


# --------------------------------------------------------------------------- validation


class _Rejected(Exception):
    """A request the controller refuses: an error code and a message naming the field."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def validate(payload: Mapping[str, object]) -> Problem | None:
    """Check one push payload against the record rules of push-api.md.

    Returns ``(error_code, message)`` for the first rule broken, or None when the record is
    valid. ``apiToken`` may be present (its format is then checked, 9001/9002) or absent:
    whether a token is required and which one is the job of ``check_token``.
    """
    try:
        _check_record(payload)
    except _Rejected as rejected:
        return rejected.code, rejected.message
    return None


def check_token(payload: Mapping[str, object], expected: str | None) -> Problem | None:
    """Check ``apiToken``: 9001 when missing, 9002 when malformed or not ``expected``."""
    value = payload.get(TOKEN_KEY)
    if value is None or value == "":
        return E_TOKEN_MISSING, f"{TOKEN_KEY}: missing"
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        return E_TOKEN_DENIED, f"{TOKEN_KEY}: must be 1-50 letters, digits or dashes"
    if expected is not None and not hmac.compare_digest(value, expected):
        return E_TOKEN_DENIED, f"{TOKEN_KEY}: not permitted to create permits"
    return None


def _check_record(payload: Mapping[str, object]) -> dict[str, str]:
    """Raise _Rejected for the first broken rule; return the fields by canonical name."""
    fields = _canonical_fields(payload)
    _check_plate(fields)
    _check_times(fields)
    _check_amount(fields)
    _check_lengths(fields)
    return fields


def _canonical_fields(payload: Mapping[str, object]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for key, value in payload.items():
        if key == TOKEN_KEY:
            _check_token_format(value)
            continue
        name = _CANONICAL.get(key)
        if name is None:
            raise _Rejected(E_PARSE, f"{key!r}: unknown field")
        if name in fields:
            raise _Rejected(E_PARSE, f"{key!r}: {name} given twice under different names")
        if not isinstance(value, str):
            raise _Rejected(E_INVALID, f"{key}: must be a JSON string, not {_json_type(value)}")
        fields[name] = value
    return fields


def _check_token_format(value: object) -> None:
    if value is None or value == "":
        raise _Rejected(E_TOKEN_MISSING, f"{TOKEN_KEY}: missing")
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise _Rejected(E_TOKEN_DENIED, f"{TOKEN_KEY}: must be 1-50 letters, digits or dashes")


def _check_plate(fields: Mapping[str, str]) -> None:
    plate = fields.get("LicencePlate", "")
    if not plate.strip():
        raise _Rejected(E_PLATE_REQUIRED, "LicencePlate: required")
    if len(plate) > PLATE_MAX:
        raise _Rejected(
            E_PLATE_TOO_LONG, f"LicencePlate: {len(plate)} characters, at most {PLATE_MAX}"
        )


def _check_times(fields: Mapping[str, str]) -> None:
    end_text = fields.get("endTime", "")
    if not end_text:
        raise _Rejected(E_END_REQUIRED, "endTime: required")
    start_text = fields.get("startTime", "")
    if not start_text:
        raise _Rejected(E_REQUIRED, "startTime: required")
    start = _parse_time(start_text)
    if start is None:
        raise _Rejected(E_INVALID, f"startTime: {_time_problem(start_text)}")
    end = _parse_time(end_text)
    if end is None:
        raise _Rejected(E_END_INVALID, f"endTime: {_time_problem(end_text)}")
    if end <= start:
        raise _Rejected(E_END_INVALID, f"endTime: {end_text} is not after startTime {start_text}")


def _parse_time(text: str) -> datetime | None:
    if not _TIME_RE.fullmatch(text):
        return None
    try:
        return datetime.strptime(text, TIME_FORMAT)
    except ValueError:
        return None


def _time_problem(text: str) -> str:
    return f"{_shorten(text)} is not a UTC time formatted YYYY-MM-DDTHH:MM:SS"


def _check_amount(fields: Mapping[str, str]) -> None:
    amount = fields.get("Amount")
    if amount is None:
        return
    if len(amount) > AMOUNT_MAX_CHARS:
        raise _Rejected(E_TOO_LONG, f"Amount: {len(amount)} characters, at most {AMOUNT_MAX_CHARS}")
    if not _AMOUNT_RE.fullmatch(amount):
        raise _Rejected(E_INVALID, f"Amount: {_shorten(amount)} is not a decimal like 14.50")
    if not AMOUNT_MIN <= Decimal(amount) <= AMOUNT_MAX:
        raise _Rejected(E_INVALID, f"Amount: {amount} is outside {AMOUNT_MIN}..{AMOUNT_MAX}")


def _check_lengths(fields: Mapping[str, str]) -> None:
    for name, limit in _MAX_LENGTHS.items():
        value = fields.get(name)
        if value is not None and len(value) > limit:
            raise _Rejected(E_TOO_LONG, f"{name}: {len(value)} characters, at most {limit}")


def _duplicate_key(fields: Mapping[str, str]) -> tuple[str, str, str, str] | None:
    permit = fields.get("permitNo")
    if permit is None:
        return None
    return permit, fields["LicencePlate"], fields["startTime"], fields["endTime"]


def _parse_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Rejected(E_PARSE, f"body: not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise _Rejected(E_PARSE, f"body: must be a JSON object, not {_json_type(payload)}")
    return payload


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _shorten(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --------------------------------------------------------------------------- records, faults


@dataclass(frozen=True)
class Accepted:
    """One permit the emulator stored."""

    payload: dict[str, str]  # the request JSON with "apiToken" removed
    reference_id: str
    received_at: float  # time.time()


@dataclass
class _Fault:
    kind: str
    remaining: int | None
    status: int
    retry_after: str | None
    delay: float
    error_code: int
    accept: bool


@dataclass(frozen=True)
class _Reply:
    """What to answer one request with; ``reset`` means: no answer, close with RST."""

    status: int
    body: bytes
    outcome: str
    headers: tuple[tuple[str, str], ...] = ()
    reset: bool = False


def _json_reply(
    status: int, obj: object, outcome: str, headers: tuple[tuple[str, str], ...] = ()
) -> _Reply:
    return _Reply(status, json.dumps(obj).encode("utf-8"), outcome, headers)


def _error_reply(status: int, code: int, message: str, outcome: str) -> _Reply:
    body = {"ErrorCode": code, "ErrorMessage": message}
    return _json_reply(status, body, f"{outcome} {code} {message}")


def _fault_reply(fault: _Fault) -> _Reply:
    outcome = f"fault {fault.kind}"
    retry = (("Retry-After", fault.retry_after),) if fault.retry_after is not None else ()
    if fault.kind == "throttle":
        body = {"Message": "emulated fault: too many requests"}
        return _json_reply(429, body, outcome, (("Retry-After", fault.retry_after or "1"),))
    if fault.kind == "error":
        body = {"Message": f"emulated fault: HTTP {fault.status}"}
        return _json_reply(fault.status, body, outcome, retry)
    message = "emulated fault: " + ("token refused" if fault.kind == "auth" else "error")
    status = fault.status if fault.kind == "auth" else 200
    return _json_reply(status, {"ErrorCode": fault.error_code, "ErrorMessage": message}, outcome)


def _make_fault(
    kind: str,
    count: int | None,
    status: int,
    retry_after: str | None,
    delay: float,
    error_code: int,
    accept: bool,
) -> _Fault:
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
    return _Fault(kind, count, status, retry_after, float(delay), error_code, accept)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_FAULT_JSON_KEYS = ("kind", "count", "status", "retry_after", "delay", "error_code", "accept")


def _fault_kwargs(obj: object) -> dict[str, Any]:
    """The control API's JSON fault description, as ``set_fault`` keyword arguments."""
    if not isinstance(obj, dict):
        raise ValueError("fault: expected a JSON object")
    unknown = sorted(set(obj) - set(_FAULT_JSON_KEYS))
    if unknown:
        raise ValueError(f"fault: unknown keys {unknown}")
    if not isinstance(obj.get("kind"), str):
        raise ValueError("fault: 'kind' is required")
    return dict(obj)


# --------------------------------------------------------------------------- HTTP plumbing


class _BadBody(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: ControllerEmulator) -> None:
        self.emulator = emulator
        self.to_reset: set[socket.socket] = set()
        self.generation = emulator._generation  # which go_down/come_up cycle this server serves
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            super().__init__(address, _Handler)
        except OSError:
            self._close_wake()
            raise

    def serve_until_woken(self) -> None:
        """Accept connections until ``wake``; no polling, so stopping is immediate."""
        self.socket.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is self._wake_r for key, _ in ready):
                    return
                self._accept_one()

    def _accept_one(self) -> None:
        try:
            request, client_address = self.get_request()
        except OSError:
            return  # the listening socket is non-blocking: nothing to accept after all
        request.setblocking(True)
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)

    def wake(self) -> None:
        self._wake_w.send(b"!")

    def server_close(self) -> None:
        super().server_close()
        self._close_wake()

    def _close_wake(self) -> None:
        self._wake_r.close()
        self._wake_w.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn): slow and useless here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def shutdown_request(self, request: Any) -> None:
        if request in self.to_reset:
            self.to_reset.discard(request)
            self.close_request(request)  # no FIN first: with SO_LINGER 0, close() sends RST
            return
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if self.emulator.verbose:
            self.emulator._log(f"{client_address[0]} connection error: {exc!r}")


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "OPSCOM-Emulator/1.0"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.emulator._track(self.connection, self.server.generation)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.emulator._untrack(self.connection)

    def dispatch(self) -> None:
        try:
            body = self._read_body()
        except _BadBody as bad:
            self.close_connection = True
            reply = _json_reply(bad.status, {"Message": bad.message}, f"bad request {bad.status}")
        else:
            path = urlsplit(self.path).path
            reply = self.server.emulator._route(self.command, path, body)
        self._respond(reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = dispatch

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            raise _BadBody(400, "Content-Length is not a number") from None
        if length < 0:
            raise _BadBody(400, "Content-Length is negative")
        if length > MAX_BODY:
            raise _BadBody(413, f"body larger than {MAX_BODY} bytes")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise _BadBody(400, "malformed chunk size") from None
            if size == 0:
                break
            total += size
            if total > MAX_BODY:
                raise _BadBody(413, f"body larger than {MAX_BODY} bytes")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)
        while self.rfile.readline(1024).strip():
            pass  # trailers
        return b"".join(chunks)

    def _respond(self, reply: _Reply) -> None:
        self.server.emulator._log_request(self.client_address[0], self.command, self.path, reply)
        if reply.reset:
            self._reset_connection()
            return
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _reset_connection(self) -> None:
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.to_reset.add(self.connection)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request is written by ControllerEmulator._log_request

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.emulator.verbose:
            self.server.emulator._log(f"{self.client_address[0]} {format % args}")


# --------------------------------------------------------------------------- the emulator


class ControllerEmulator:
    """An OPSCOM controller push endpoint on a local port; see the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        zones: Iterable[str] | None = None,
        verbose: bool = False,
    ) -> None:
        if token is not None and not _TOKEN_RE.fullmatch(token):
            raise ValueError("token: must be 1-50 letters, digits or dashes")
        self.verbose = verbose
        self._host = host
        self._port = port
        self._token = token
        self._zones = frozenset(zones) if zones is not None else None
        self._cond = threading.Condition()
        self._accepted: list[Accepted] = []
        self._disconnected: list[Accepted] = []
        self._seen: dict[tuple[str, str, str, str], str] = {}
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._fault: _Fault | None = None
        self._open: set[socket.socket] = set()
        self._connections = 0
        self._generation = 0
        self._stopping = threading.Event()
        self._life = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -----------------------------------------------------------------------------

    def start(self) -> ControllerEmulator:
        """Bind and serve in a daemon thread (again on the same port after ``stop``)."""
        self._stopping.clear()
        self._listen()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection; safe to call more than once."""
        self._stopping.set()
        self._unlisten()

    def go_down(self) -> None:
        """Close the listening socket and open connections; new ones are refused."""
        self._unlisten()

    def come_up(self) -> None:
        """Listen again on the same port, with the state kept."""
        if self._port == 0:
            raise RuntimeError("come_up before start: no port to listen on again")
        self._listen()

    def __enter__(self) -> ControllerEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _listen(self) -> None:
        with self._life:
            if self._server is not None:
                return
            server_class = _Server6 if ":" in self._host else _Server
            server = server_class((self._host, self._port), self)
            self._port = server.server_port
            thread = threading.Thread(
                target=server.serve_until_woken,
                name=f"opscom-emulator:{self._port}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread

    def _unlisten(self) -> None:
        with self._life:
            server, thread = self._server, self._thread
            if server is None or thread is None:
                return
            self._server = self._thread = None
            with self._cond:
                self._generation += 1
            server.wake()
            thread.join()
            server.server_close()
            self._drop_connections()

    def _track(self, conn: socket.socket, generation: int) -> None:
        """Note an open connection (called by the request handler).

        A connection accepted just before ``go_down`` and not yet noted is closed here.
        """
        with self._cond:
            self._connections += 1
            if generation == self._generation:
                self._open.add(conn)
                return
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)

    def _untrack(self, conn: socket.socket) -> None:
        with self._cond:
            self._open.discard(conn)

    def _drop_connections(self) -> None:
        with self._cond:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by its handler
                conn.shutdown(socket.SHUT_RDWR)

    # observation -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("the emulator has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{_url_host(self._host)}:{self.port}{PUSH_PATH}"

    @property
    def accepted(self) -> list[Accepted]:
        with self._cond:
            return list(self._accepted)

    @property
    def disconnected(self) -> list[Accepted]:
        with self._cond:
            return list(self._disconnected)

    @property
    def connections(self) -> int:
        """TCP connections opened so far (keep-alive reuses one)."""
        with self._cond:
            return self._connections

    def counts(self) -> dict[str, int]:
        """Push requests by outcome; see ``OUTCOMES``.

        ``fault`` counts requests answered by an injected fault (a ``slow`` one is answered
        normally and is not counted there). A ``reset`` with ``accept=True`` is counted both
        under ``fault`` and under the outcome of its normal handling.
        """
        with self._cond:
            return dict(self._counts)

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least ``n`` records are accepted; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._accepted) >= n, timeout)

    def state(self) -> dict[str, Any]:
        """What ``GET /_emulator/state`` answers."""
        with self._cond:
            fault = asdict(self._fault) if self._fault is not None else None
            return {
                "counts": dict(self._counts),
                "accepted": [_record_json(r) for r in self._accepted],
                "disconnected": [_record_json(r) for r in self._disconnected],
                "fault": fault,
            }

    # faults ------------------------------------------------------------------------------------

    def set_fault(
        self,
        kind: str,
        *,
        count: int | None = None,
        status: int = 503,
        retry_after: str | None = None,
        delay: float = 0.0,
        error_code: int = 9001,
        accept: bool = False,
    ) -> None:
        """Make the next ``count`` push requests (all when None) fail in the way ``kind`` says.

        error: HTTP ``status`` with a JSON body and no ErrorCode (plus Retry-After if given);
        throttle: HTTP 429 with Retry-After ``retry_after`` (default "1");
        slow: wait ``delay`` seconds, then handle normally;
        reset: read the request, then close with a TCP RST and no answer; with
        ``accept=True`` the record is handled (and stored when valid) first;
        auth: HTTP ``status`` (401 when left at 503) with ErrorCode ``error_code``;
        error200: HTTP 200 with ErrorCode ``error_code``.
        """
        fault = _make_fault(kind, count, status, retry_after, delay, error_code, accept)
        with self._cond:
            self._fault = fault

    def clear_fault(self) -> None:
        with self._cond:
            self._fault = None

    def _take_fault(self) -> _Fault | None:
        with self._cond:
            self._counts["total"] += 1
            fault = self._fault
            if fault is None:
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._fault = None
            return fault

    # request handling ------------------------------------------------------------------------

    def _route(self, method: str, path: str, body: bytes) -> _Reply:
        """Answer one HTTP request (called by the request handler)."""
        if path == PUSH_PATH:
            if method != "POST":
                allow = (("Allow", "POST"),)
                return _json_reply(405, {"Message": "use POST"}, "method not allowed", allow)
            return self._push(body)
        if path.startswith(CONTROL_PREFIX):
            return self._control(method, path, body)
        return _json_reply(404, {"Message": f"no such path: {path}"}, "not found")

    def _push(self, body: bytes) -> _Reply:
        fault = self._take_fault()
        if fault is None:
            return self._process(body)
        if fault.kind == "slow":
            return self._slow(fault, body)
        self._count("fault")
        if fault.kind == "reset":
            handled = self._process(body).outcome if fault.accept else "not handled"
            return _Reply(0, b"", f"fault reset ({handled})", reset=True)
        return _fault_reply(fault)

    def _slow(self, fault: _Fault, body: bytes) -> _Reply:
        with self._cond:
            generation = self._generation
        self._stopping.wait(fault.delay)
        with self._cond:
            went_down = generation != self._generation
        if went_down:
            self._count("fault")
            return _Reply(0, b"", "dropped: went down while slow", reset=True)
        return self._process(body)

    def _process(self, body: bytes) -> _Reply:
        try:
            payload = _parse_object(body)
        except _Rejected as rejected:
            return self._reject(rejected)
        problem = check_token(payload, self._token)
        if problem is not None:
            self._count("auth")
            status = 401 if problem[0] == E_TOKEN_MISSING else 403
            return _error_reply(status, problem[0], problem[1], "auth")
        try:
            fields = _check_record(payload)
        except _Rejected as rejected:
            return self._reject(rejected)
        return self._store(payload, fields)

    def _reject(self, rejected: _Rejected) -> _Reply:
        self._count("invalid")
        return _error_reply(400, rejected.code, rejected.message, "invalid")

    def _store(self, payload: Mapping[str, object], fields: Mapping[str, str]) -> _Reply:
        key = _duplicate_key(fields)
        record = Accepted(
            payload={k: v for k, v in payload.items() if k != TOKEN_KEY and isinstance(v, str)},
            reference_id=str(uuid.uuid4()),
            received_at=time.time(),
        )
        with self._cond:
            if key is not None and key in self._seen:
                self._counts["duplicate"] += 1
                return _error_reply(200, E_DUPLICATE, DUPLICATE_MESSAGE, "duplicate")
            if key is not None:
                self._seen[key] = record.reference_id
            self._accepted.append(record)
            zone = fields.get("zone")
            if self._zones is not None and zone is not None and zone not in self._zones:
                self._disconnected.append(record)
            self._counts["accepted"] += 1
            self._cond.notify_all()
        ref = record.reference_id
        body = {"status": "success", "reference_id": ref, "InternalReferenceID": ref}
        return _json_reply(200, body, f"accepted {ref}")

    def _count(self, outcome: str) -> None:
        with self._cond:
            self._counts[outcome] += 1

    # control API ------------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> _Reply:
        if path == STATE_PATH:
            if method in ("GET", "HEAD"):
                return _json_reply(200, self.state(), "control state")
            return _json_reply(405, {"Message": "use GET"}, "control method not allowed")
        if path != FAULT_PATH:
            return _json_reply(404, {"Message": f"no such path: {path}"}, "not found")
        if method == "DELETE":
            self.clear_fault()
            return _json_reply(200, {"fault": None}, "control fault cleared")
        if method != "POST":
            return _json_reply(405, {"Message": "use POST or DELETE"}, "control method not allowed")
        try:
            self.set_fault(**_fault_kwargs(json.loads(body.decode("utf-8") or "null")))
        except (ValueError, TypeError) as exc:
            return _json_reply(400, {"Message": str(exc)}, "control fault refused")
        return _json_reply(200, {"fault": self.state()["fault"]}, "control fault set")

    # logging ----------------------------------------------------------------------------------

    def _log_request(self, client: str, method: str, path: str, reply: _Reply) -> None:
        """One line per request on stderr when verbose (the body, and so the token, never)."""
        if self.verbose:
            status = "RST" if reply.reset else str(reply.status)
            self._log(f"{client} {method} {path} -> {status} {reply.outcome}")

    def _log(self, line: str) -> None:
        if self.verbose:
            sys.stderr.write(f"opscom-emulator: {line}\n")
            sys.stderr.flush()


def _record_json(record: Accepted) -> dict[str, Any]:
    return {
        "payload": record.payload,
        "reference_id": record.reference_id,
        "received_at": record.received_at,
    }


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------- foreground


def serve(
    host: str,
    port: int,
    token: str | None,
    zones: list[str] | None,
    fault: str | None,
    verbose: bool,
) -> int:
    """Run the emulator in the foreground until SIGINT or SIGTERM; print its URL first.

    ``fault`` is a fault kind, optionally with a count: ``"error"``, ``"throttle:3"``.
    Returns 0 after a signal, 2 for a bad token or fault, 1 when the port cannot be bound.
    """
    try:
        emulator = ControllerEmulator(host, port, token=token, zones=zones, verbose=verbose)
        if fault:
            kind, _, count = fault.partition(":")
            emulator.set_fault(kind, count=int(count) if count else None)
    except ValueError as exc:
        print(f"opscom-emulator: {exc}", file=sys.stderr, flush=True)
        return 2
    # No handler: a handler that sets a threading.Event can deadlock on the lock the main
    # thread holds inside Event.wait(). The signals stay blocked (the server's threads inherit
    # the mask) until sigwait takes one here.
    signals = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        try:
            emulator.start()
        except OSError as exc:
            print(f"opscom-emulator: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        try:
            print(emulator.url, flush=True)
            signal.sigwait(signals)
        finally:
            emulator.stop()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return 0
