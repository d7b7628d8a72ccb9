"""sd_notify without libsystemd: one datagram per message to ``$NOTIFY_SOCKET``.

Abstract sockets (``@name``) are supported. Without ``NOTIFY_SOCKET`` every call is a
no-op, so the service runs the same under systemd, in a terminal and in tests.

A send never blocks: the socket is non-blocking, and a message that does not fit (the
receiver's queue is full because systemd is busy or hung) is dropped. A datagram socket
that blocks would stop the main loop, and with it the stop, the watchdog and reloads.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = environ if environ is not None else dict(os.environ)
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_for_us = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and watchdog_for_us else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        )
        # systemd gone, not listening or its queue full (EAGAIN): nothing useful to do
        with sock, contextlib.suppress(OSError):
            sock.sendto("\n".join(lines).encode(), self.address)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
