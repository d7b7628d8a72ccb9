"""The HTTP plumbing under the emulator: a threading server that stops at once, one handler.

Why on its own: reading bodies (Content-Length or chunked, bounded by ``MAX_BODY``), keep-
alive, answering with a TCP RST and stopping without polling are socket matters; what to
answer is not. The handler hands each request to its ``Endpoint`` (the ``ControllerEmulator``)
and writes the ``Reply`` it gets back, so this module knows nothing of the Push API.

Contract: ``Server.serve_until_woken`` accepts connections until ``wake`` is called (no
polling interval, so a stop is immediate); a connection whose reply says ``reset`` is
closed with SO_LINGER 0, which sends RST instead of FIN; ``server_bind`` skips the reverse
DNS lookup that ``HTTPServer`` does; a body cut short (the client died or gave up between
writing its headers and its body) is no request: nothing is routed, nothing answered.
With a ``tls`` context each accepted connection is wrapped server-side; its handshake runs
in the connection's own thread, so a client that refuses the certificate (or a proxy's
tunnel that never speaks TLS) holds up no other connection.
"""

from __future__ import annotations

import selectors
import socket
import socketserver
import ssl
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from agent.emulator.replies import Reply, json_reply

MAX_BODY = 1 << 20


class Endpoint(Protocol):
    """The hooks a server calls on its emulator (package-internal, hence the underscores)."""

    verbose: bool

    def _track(self, conn: socket.socket, generation: int) -> None: ...

    def _untrack(self, conn: socket.socket) -> None: ...

    def _route(self, method: str, path: str, body: bytes) -> Reply: ...

    def _log_request(self, client: str, method: str, path: str, reply: Reply) -> None: ...

    def _log(self, line: str) -> None: ...


class _BadBody(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _ClientGone(Exception):
    """The connection ended inside a request's body: the client died or gave up mid-send.
    No request was made, so nothing is routed and nothing answered."""


def _read_exactly(rfile: Any, size: int) -> bytes:
    data = rfile.read(size)
    if len(data) < size:
        raise _ClientGone(f"body cut short: {len(data)} of {size} bytes")
    return bytes(data)


class Server(ThreadingHTTPServer):
    """Serves ``emulator`` on ``address``; ``generation`` is the go_down/come_up cycle served."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        emulator: Endpoint,
        generation: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.emulator = emulator
        self.tls = tls
        self.to_reset: set[socket.socket] = set()
        self.generation = generation
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
        if self.tls is not None:
            request = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
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


class Server6(Server):
    """``Server`` on an IPv6 address."""

    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "OPSCOM-Emulator/1.0"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # here, in this connection's thread
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
        except _ClientGone as gone:
            self.close_connection = True
            if self.server.emulator.verbose:
                self.server.emulator._log(f"{self.client_address[0]} {self.command} {gone}")
            return
        except _BadBody as bad:
            self.close_connection = True
            reply = json_reply(bad.status, {"Message": bad.message}, f"bad request {bad.status}")
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
        return _read_exactly(self.rfile, length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n") and len(line) < 1024:
                raise _ClientGone("body cut short inside a chunk size line")
            size_line = line.split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise _BadBody(400, "malformed chunk size") from None
            if size == 0:
                break
            total += size
            if total > MAX_BODY:
                raise _BadBody(413, f"body larger than {MAX_BODY} bytes")
            chunks.append(_read_exactly(self.rfile, size))
            self.rfile.readline(1024)
        while self.rfile.readline(1024).strip():
            pass  # trailers
        return b"".join(chunks)

    def _respond(self, reply: Reply) -> None:
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
