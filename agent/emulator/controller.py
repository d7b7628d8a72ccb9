"""A local emulator of the OPSCOM controller's "Push API: Permit Create" endpoint.

What it is for: tests, the ``demo`` command and pay-station vendors need a controller that
speaks the push protocol on 127.0.0.1 without a licence, a network or a real OPSCOM tenant,
and that can be told to misbehave (errors, throttling, slowness, dropped connections) on
demand. It validates payloads with its own reading of ``push-api.md`` (``rules``); it shares
no code with the agent, so a bug in the agent's payload mapping is not mirrored here.

Why one module of about 480 lines: ``ControllerEmulator`` is one lock (``_cond``) guarding
the stored records, the counts, the armed fault and the open connections; the lifecycle,
the request handling and the control API all take it, and reading them together is how its
invariants are checked. What needs no lock lives beside it: rules, faults, replies, sockets.

Contract:

* ``POST PUSH_PATH`` with one JSON object per parking session. Every name the vendor accepts
  is accepted (``ALIASES``); any other key is rejected with 9003.
* Success: HTTP 200, ``{"status": "success", "reference_id": <uuid4>,
  "InternalReferenceID": <same>}``; the record is kept as an ``Accepted``.
* Errors: ``{"ErrorCode": code, "ErrorMessage": "<field>: <why>"}`` with HTTP 400 (record
  rules, see ``validate``), 401 (9001 token missing) or 403 (9002 token refused).
* A repeat of an accepted record (same ``permitNo``, plate, start and end): HTTP 200 with
  ErrorCode 9022, not stored again. With ``dedupe="permit"`` (``--dedupe permit``) a repeated
  ``permitNo`` alone is a repeat, whatever the rest of the record says, as a controller
  that keys permits by their number may answer: two meters that both send permit "1"
  then see 9022 for the second sale.
* A zone outside the configured ``zones`` is accepted, as the real controller does, and also
  listed in ``disconnected``.
* Other paths answer 404, other methods on the push path 405. HTTP/1.1 keep-alive works.
* Faults (``set_fault``) replace the handling of the next push requests; they never apply to
  the control API: ``/_emulator/state`` (everything), ``/_emulator/counts`` (the counts and
  the capacity, without the records), ``/_emulator/permits/<permitNo>`` (the records stored
  under that number), ``/_emulator/fault`` and ``/_emulator/capacity`` (POST to set).
* Capacity (``set_capacity``): beyond so many push requests at once (once so many more
  wait their turn in a queue) or per second, HTTP 503 with Retry-After (counted
  ``overloaded``), as an overloaded server answers a fleet that resumes at once after an
  outage; checked before faults.
* ``go_down`` closes the listening socket (connections are refused) and every open
  connection; ``come_up`` listens again on the same port. State survives both.
* The API token is never logged, stored or echoed.
* ``tls`` (an ``ssl.SSLContext`` for the server side, its certificate loaded) serves HTTPS
  instead of plain HTTP, for tests of the agent's trust store, CA file and proxy tunnel;
  ``url`` then starts with ``https://``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from agent.emulator.capacity import Capacity, make_limits
from agent.emulator.faults import Fault, fault_kwargs, fault_reply, make_fault
from agent.emulator.http_server import Server, Server6
from agent.emulator.replies import Reply, error_reply, json_reply
from agent.emulator.rules import (
    DEDUPE_MODES,
    DUPLICATE_MESSAGE,
    E_DUPLICATE,
    E_TOKEN_MISSING,
    TOKEN_KEY,
    TOKEN_RE,
    Rejected,
    check_record,
    check_token,
    duplicate_key,
    parse_object,
)

PUSH_PATH = "/api/OC-TOMA/v1/permits/push"
STATE_PATH = "/_emulator/state"
FAULT_PATH = "/_emulator/fault"
CAPACITY_PATH = "/_emulator/capacity"
COUNTS_PATH = "/_emulator/counts"
PERMITS_PREFIX = "/_emulator/permits/"
CONTROL_PREFIX = "/_emulator/"

OUTCOMES = ("accepted", "duplicate", "invalid", "auth", "fault", "overloaded", "total")


@dataclass(frozen=True)
class Accepted:
    """One permit the emulator stored."""

    payload: dict[str, str]  # the request JSON with "apiToken" removed
    reference_id: str
    received_at: float  # time.time()


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
        dedupe: str = "record",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if token is not None and not TOKEN_RE.fullmatch(token):
            raise ValueError("token: must be 1-50 letters, digits or dashes")
        if dedupe not in DEDUPE_MODES:
            raise ValueError(f"dedupe: expected one of {', '.join(DEDUPE_MODES)}, got {dedupe!r}")
        self.dedupe = dedupe
        self.tls = tls
        self.verbose = verbose
        self._host = host
        self._port = port
        self._token = token
        self._zones = frozenset(zones) if zones is not None else None
        self._cond = threading.Condition()
        self._accepted: list[Accepted] = []
        self._disconnected: list[Accepted] = []
        self._refusals: list[str] = []
        self._seen: dict[tuple[str, ...], str] = {}
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._fault: Fault | None = None
        self._capacity = Capacity()
        self._open: set[socket.socket] = set()
        self._connections = 0
        self._generation = 0
        self._stopping = threading.Event()
        self._life = threading.Lock()
        self._server: Server | None = None
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
            server_class = Server6 if ":" in self._host else Server
            server = server_class((self._host, self._port), self, self._generation, self.tls)
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
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{_url_host(self._host)}:{self.port}{PUSH_PATH}"

    @property
    def accepted(self) -> list[Accepted]:
        with self._cond:
            return list(self._accepted)

    @property
    def disconnected(self) -> list[Accepted]:
        with self._cond:
            return list(self._disconnected)

    @property
    def refusals(self) -> list[str]:
        """Why each refused (``invalid``) request was refused: "ErrorCode: message"."""
        with self._cond:
            return list(self._refusals)

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
                "capacity": self._capacity.state(),
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
        fault = make_fault(kind, count, status, retry_after, delay, error_code, accept)
        with self._cond:
            self._fault = fault

    def set_capacity(
        self,
        max_in_flight: int | None = None,
        *,
        per_second: float | None = None,
        retry_after: str | None = "1",
        service_time: float = 0.0,
        queue: int = 0,
    ) -> None:
        """Answer push requests beyond ``max_in_flight`` at once (after up to ``queue`` of
        them wait their turn), or beyond ``per_second`` started in one second, with 503 and
        Retry-After ``retry_after``, as an overloaded server does (None: no Retry-After);
        each one handled takes at least ``service_time`` seconds. No argument: no limit.
        See ``capacity``."""
        limits = make_limits(max_in_flight, per_second, retry_after, service_time, queue)
        self._capacity.set(limits)

    @property
    def peak_in_flight(self) -> int:
        """The most push requests ever handled at once."""
        return self._capacity.peak_in_flight

    def clear_fault(self) -> None:
        with self._cond:
            self._fault = None

    def _take_fault(self) -> Fault | None:
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

    def _route(self, method: str, path: str, body: bytes) -> Reply:
        """Answer one HTTP request (called by the request handler)."""
        if path == PUSH_PATH:
            if method != "POST":
                allow = (("Allow", "POST"),)
                return json_reply(405, {"Message": "use POST"}, "method not allowed", allow)
            return self._push(body)
        if path.startswith(CONTROL_PREFIX):
            return self._control(method, path, body)
        return json_reply(404, {"Message": f"no such path: {path}"}, "not found")

    def _push(self, body: bytes) -> Reply:
        if not self._capacity.admit(self._stopping):
            with self._cond:
                self._counts["total"] += 1
                self._counts["overloaded"] += 1
            return self._capacity.refusal()
        try:
            service_time = self._capacity.limits.service_time
            if service_time:
                self._stopping.wait(service_time)
            return self._handle_push(body)
        finally:
            self._capacity.release()

    def _handle_push(self, body: bytes) -> Reply:
        fault = self._take_fault()
        if fault is None:
            return self._process(body)
        if fault.kind == "slow":
            return self._slow(fault, body)
        self._count("fault")
        if fault.kind == "reset":
            handled = self._process(body).outcome if fault.accept else "not handled"
            return Reply(0, b"", f"fault reset ({handled})", reset=True)
        return fault_reply(fault)

    def _slow(self, fault: Fault, body: bytes) -> Reply:
        with self._cond:
            generation = self._generation
        self._stopping.wait(fault.delay)
        with self._cond:
            went_down = generation != self._generation
        if went_down:
            self._count("fault")
            return Reply(0, b"", "dropped: went down while slow", reset=True)
        return self._process(body)

    def _process(self, body: bytes) -> Reply:
        try:
            payload = parse_object(body)
        except Rejected as rejected:
            return self._reject(rejected)
        problem = check_token(payload, self._token)
        if problem is not None:
            self._count("auth")
            status = 401 if problem[0] == E_TOKEN_MISSING else 403
            return error_reply(status, problem[0], problem[1], "auth")
        try:
            fields = check_record(payload)
        except Rejected as rejected:
            return self._reject(rejected)
        return self._store(payload, fields)

    def _reject(self, rejected: Rejected) -> Reply:
        self._count("invalid")
        with self._cond:
            self._refusals.append(f"{rejected.code}: {rejected.message}")
        return error_reply(400, rejected.code, rejected.message, "invalid")

    def _store(self, payload: Mapping[str, object], fields: Mapping[str, str]) -> Reply:
        key = duplicate_key(fields, self.dedupe)
        record = Accepted(
            payload={k: v for k, v in payload.items() if k != TOKEN_KEY and isinstance(v, str)},
            reference_id=str(uuid.uuid4()),
            received_at=time.time(),
        )
        with self._cond:
            if key is not None and key in self._seen:
                self._counts["duplicate"] += 1
                return error_reply(200, E_DUPLICATE, DUPLICATE_MESSAGE, "duplicate")
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
        return json_reply(200, body, f"accepted {ref}")

    def _count(self, outcome: str) -> None:
        with self._cond:
            self._counts[outcome] += 1

    # control API ------------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> Reply:
        if path == STATE_PATH:
            if method in ("GET", "HEAD"):
                return json_reply(200, self.state(), "control state")
            return json_reply(405, {"Message": "use GET"}, "control method not allowed")
        if path == COUNTS_PATH and method in ("GET", "HEAD"):
            counts = {"counts": self.counts(), "capacity": self._capacity.state()}
            return json_reply(200, counts, "control counts")
        if path.startswith(PERMITS_PREFIX) and method in ("GET", "HEAD"):
            return self._permit(unquote(path.removeprefix(PERMITS_PREFIX)))
        if path == CAPACITY_PATH:
            return self._control_capacity(method, body)
        if path != FAULT_PATH:
            return json_reply(404, {"Message": f"no such path: {path}"}, "not found")
        if method == "DELETE":
            self.clear_fault()
            return json_reply(200, {"fault": None}, "control fault cleared")
        if method != "POST":
            return json_reply(405, {"Message": "use POST or DELETE"}, "control method not allowed")
        try:
            self.set_fault(**fault_kwargs(json.loads(body.decode("utf-8") or "null")))
        except (ValueError, TypeError) as exc:
            return json_reply(400, {"Message": str(exc)}, "control fault refused")
        return json_reply(200, {"fault": self.state()["fault"]}, "control fault set")

    def _control_capacity(self, method: str, body: bytes) -> Reply:
        if method in ("GET", "HEAD"):
            return json_reply(200, self._capacity.state(), "control capacity")
        if method != "POST":
            return json_reply(405, {"Message": "use GET or POST"}, "control method not allowed")
        try:
            options = json.loads(body.decode("utf-8") or "{}")
            if not isinstance(options, dict):
                raise ValueError("capacity: expected a JSON object")
            self.set_capacity(**options)
        except (ValueError, TypeError) as exc:
            return json_reply(400, {"Message": str(exc)}, "control capacity refused")
        return json_reply(200, self._capacity.state(), "control capacity set")

    def _permit(self, permit_no: str) -> Reply:
        with self._cond:
            found = [r for r in self._accepted if r.payload.get("permitNo") == permit_no]
        if not found:
            return json_reply(404, {"Message": f"no permit {permit_no!r}"}, "control no permit")
        return json_reply(200, [_record_json(r) for r in found], "control permit")

    # logging ----------------------------------------------------------------------------------

    def _log_request(self, client: str, method: str, path: str, reply: Reply) -> None:
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
