"""A flag that a signal handler may set, and a main thread may wait on.

A Python signal handler runs on the main thread, between two bytecodes of whatever that
thread was doing. ``threading.Event.set()`` takes the lock that ``Event.wait()`` and
``Event.clear()`` hold for a moment, so a SIGTERM landing in that moment makes the handler
wait for a lock its own thread holds: the process never stops, and systemd has to kill it
(the signal module's documentation warns against locks in handlers). A burst of SIGHUPs
hits that moment within a few hundred signals.

:class:`Flag` does what the service, the meter and the emulator needed from an Event
without a lock: setting it is an assignment and a one-byte write to a pipe, waiting is
``poll()`` on the pipe's other end.
"""

from __future__ import annotations

import contextlib
import math
import os
import select


class Flag:
    """``set``, ``is_set``, ``wait`` and ``clear`` like :class:`threading.Event`; ``set`` is
    safe in a signal handler, also one that interrupts ``wait`` or ``clear``."""

    def __init__(self) -> None:
        self._set = False
        self._read, self._write = os.pipe()  # not inherited by child processes (PEP 446)
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def set(self) -> None:
        self._set = True
        write = self._write
        if write < 0:
            return  # closed: nobody is waiting any more
        with contextlib.suppress(BlockingIOError):  # full of earlier wake-ups: wakes anyway
            os.write(write, b"\0")

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Until set or ``timeout`` seconds; returns whether it is set."""
        if self._set or self._read < 0:
            return self._set
        poller = select.poll()
        poller.register(self._read, select.POLLIN)
        poller.poll(None if timeout is None else math.ceil(max(0.0, timeout) * 1000))
        return self._set

    def clear(self) -> None:
        self._set = False  # before draining: a set() in between keeps its flag
        with contextlib.suppress(OSError):  # BlockingIOError once empty; EBADF once closed
            while os.read(self._read, 4096):
                pass

    def close(self) -> None:
        """Give the pipe back; a later ``set`` (a late signal) only sets the flag."""
        write, read = self._write, self._read
        self._write = self._read = -1  # first, so a handler running after this never writes
        for fd in (write, read):
            if fd >= 0:
                os.close(fd)
