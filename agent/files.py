"""Replacing a file so that a crash leaves either the old file or the new one, never half
of either: a temp file beside it, renamed over it. Imports nothing of the agent, so any
module may use it (the config edits, the metrics textfile, the journal's salvage marker)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(
    path: Path, data: str | bytes, *, mode: int | None = None, durable: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically.

    ``mode`` None keeps the old file's mode, owner and group (0644 for a new file): root
    editing a config that belongs to the service's group must not make it unreadable for
    the service. A ``mode`` given is set as is, and the file is this process's.
    ``durable`` also syncs the file and its directory, so the new one survives a power cut;
    a file rewritten every few seconds (the metrics textfile) does without.
    """
    old = path.stat() if mode is None and path.exists() else None
    if mode is None:
        mode = old.st_mode & 0o777 if old else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` survive a power cut (a filesystem that
    cannot sync a directory is left as it is)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
