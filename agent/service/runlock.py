"""The run lock: one ``run`` per journal, and how other processes find it.

``run`` holds an exclusive ``flock`` on ``<journal>.lock`` (beside the journal) for as long
as it runs, with its PID written in the file. The kernel drops the lock when the process
ends, however it ends, so a lock is never stale: ``service_running`` asks the kernel, not
the file's contents. The technicians' commands use it to tell a running service to reload
(SIGHUP) and ``status`` to say whether records are being read and sent.
"""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path
from typing import IO

from agent.errors import AlreadyRunning, JournalError


def lock_path(journal: Path) -> Path:
    return journal.with_name(journal.name + ".lock")


def service_running(journal: Path) -> bool:
    """True while a ``run`` holds this journal's lock (works from any process)."""
    try:
        with open(lock_path(journal), "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


def service_pid(journal: Path) -> int | None:
    """The PID of the ``run`` holding this journal, or None when none is running."""
    if not service_running(journal):
        return None
    try:
        return int(lock_path(journal).read_text().strip())
    except (OSError, ValueError):
        return None


def signal_reload(journal: Path) -> bool:
    """Ask a running service to reload (SIGHUP); False when no service is running."""
    pid = service_pid(journal)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    return True


class RunLock:
    """This process's hold on a journal's run lock, from :meth:`take` to :meth:`release`."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle: IO[bytes] | None = handle

    @classmethod
    def take(cls, journal: Path) -> RunLock:
        """Take the lock before anything may touch the journal; :class:`AlreadyRunning`
        when another ``run`` holds it."""
        try:
            journal.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock_path(journal), "ab")  # noqa: SIM115 - held while running
        except OSError as exc:
            raise JournalError(
                f"cannot use the journal's directory {journal.parent}: {exc}"
            ) from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AlreadyRunning(
                f"another paystation-agent run is using the journal {journal}"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        return cls(handle)

    def release(self) -> None:
        """Give the lock back (closing the file drops the flock); idempotent."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
