"""The journal's SQLite connection: opening it, its PRAGMAs, and the write transaction
every part of the journal goes through. One connection, one lock, short transactions.

Contract:

* A write opened ``durable`` commits with ``synchronous=FULL`` (WAL), one that is not with
  ``synchronous=NORMAL``: the callers say which (see :mod:`agent.journal.outbox`).
* Several processes may open the file at once (the service and the CLI); WAL lets
  ``status`` read while ``run`` writes.
* Another process may hold the write lock for long (a technician's ``sqlite3`` shell inside
  a transaction). A write waits for it up to ``BUSY_TIMEOUT_MS``, but in slices of
  ``BUSY_SLICE_MS`` with the journal's own lock released in between, so other threads
  (``status``, the watchdog) are not stuck behind it; then it fails with
  :class:`JournalBusyError`. After :meth:`Store.stop_waiting` (the service is stopping)
  every write gives up ``STOP_WAIT_S`` after that moment, however many come one after the
  other (the drivers', the forwarder's, the port health), so a stop is never held up by
  another process. Only SQLITE_CORRUPT and SQLITE_NOTADB are :class:`JournalCorruptError`.
* A full disk fails a write with :class:`JournalFullError` and gives the disk reserve back
  (:mod:`agent.journal.reserve`), so that deliveries can still be recorded.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Self

from agent.errors import JournalBusyError, JournalCorruptError, JournalError, JournalFullError
from agent.journal.reserve import DiskReserve
from agent.journal.schema import migrate
from agent.journal.sqlite import is_busy, is_corrupt, is_full, rollback
from agent.signals import Flag

BUSY_TIMEOUT_MS = 10_000  # how long a write waits for another process's write lock
BUSY_SLICE_MS = 100  # SQLite's own wait per try: the longest the journal's lock is held
BUSY_PAUSE_S = 0.05  # between two tries, with the journal's lock released
STOP_WAIT_S = 0.5  # once stopping, the longest a write still waits for another process
PAGE_SIZE = 512
# With a size limit, new records may fill all but 1/RESERVE_FRACTION of it: the rest lets a
# full journal still record deliveries and make room.
RESERVE_FRACTION = 8
WAL_CHECKPOINT_PAGES = 1000  # SQLite's default, kept unless the disk is small


class Store:
    """The connection and its lock, shared by every part of :class:`~agent.journal.Journal`.
    Thread-safe: a part reads with ``self._lock`` held and writes inside :meth:`_write`."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        max_bytes: int | None = None,
        reserve_bytes: int = 0,
        busy_wait_s: float = BUSY_TIMEOUT_MS / 1000,
    ) -> None:
        """Open (creating or migrating) the journal. While another process holds its write
        lock, try again for up to ``busy_wait_s``, then raise :class:`JournalBusyError`."""
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        deadline = time.monotonic() + busy_wait_s
        while True:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(
                    path,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=BUSY_SLICE_MS / 1000,
                )
            except (OSError, sqlite3.Error) as exc:
                raise JournalError(f"cannot open journal {path}: {exc}") from exc
            try:
                self._set_up(max_bytes)
                break
            except sqlite3.Error as exc:
                self._db.close()
                if is_busy(exc) and time.monotonic() < deadline:
                    time.sleep(BUSY_PAUSE_S)
                    continue
                if is_busy(exc):
                    raise JournalBusyError(
                        f"journal {path} is locked by another process ({exc})"
                    ) from exc
                if is_corrupt(exc):
                    raise JournalCorruptError(
                        f"journal {path} is not a usable SQLite database: {exc}"
                    ) from exc
                raise JournalError(f"cannot open journal {path}: {exc}") from exc
            except BaseException:
                self._db.close()
                raise
        self._commits = 0  # commits made through this connection
        self._durable = 0  # of them, how many are known to be on the disk
        self._sync_lock = threading.Lock()
        self._wal_fd: int | None = None
        self._giving_up = Flag()  # set by stop_waiting(), possibly from a signal handler
        self._give_up_at: float | None = None  # monotonic: no write waits past it
        self._reserve = DiskReserve(path.with_name(path.name + "-reserve"), reserve_bytes)
        page = self._db.execute("PRAGMA page_size").fetchone()[0]
        if self._reserve.size and self._reserve.size // page // 2 < WAL_CHECKPOINT_PAGES:
            # the WAL grows until a checkpoint: on a small disk it must not outgrow the
            # reserve that lets a full disk still record deliveries (and checkpoint them)
            pages = max(self._reserve.size // page // 2, 16)
            self._db.execute(f"PRAGMA wal_autocheckpoint = {pages}")

    def _set_up(self, max_bytes: int | None) -> None:
        """The connection's settings and the schema; raises sqlite3.Error as SQLite does."""
        path = self.path
        self._synchronous = ""
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_SLICE_MS}")
        # a new journal gets SQLite's smallest pages: each commit writes whole pages to the
        # WAL (and again at checkpoint), and a commit touches about as many pages whatever
        # their size (the row, an entry in each index). Bytes written per record over its
        # life: 23.6 KB with 1 KB pages, 17.8 KB with 512 (docs/benchmarks.md, "flash
        # wear"); the file's size per record is the same. An existing file keeps its own.
        self._db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise JournalError(f"journal {path}: cannot use WAL mode (got {mode!r})")
        self._set_synchronous("FULL")
        if self._db.execute("PRAGMA synchronous").fetchone()[0] != 2:
            raise JournalError(f"journal {path}: SQLite refused synchronous=FULL")
        self._migrate()
        self._keep_owner()
        self._intake_pages: int | None = None
        if max_bytes is not None:
            page = self._db.execute("PRAGMA page_size").fetchone()[0]
            pages = max(max_bytes // page, 64)
            self._db.execute(f"PRAGMA max_page_count = {pages}")
            self._intake_pages = pages - pages // RESERVE_FRACTION

    def stop_waiting(self) -> None:
        """The service is stopping: writes wait for a lock another process holds until
        ``STOP_WAIT_S`` from now at most, all of them together, not each one. Safe in a
        signal handler (an assignment and a :class:`Flag`)."""
        if self._give_up_at is None:
            self._give_up_at = time.monotonic() + STOP_WAIT_S
        self._giving_up.set()

    def close(self) -> None:
        self._giving_up.set()  # a thread waiting for another process's lock gives up
        with self._lock:
            self._db.close()
        with self._sync_lock:
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
        self._giving_up.close()

    def settle(self) -> None:
        """Make every commit made so far durable, those made with ``synchronous=NORMAL``
        too: one ``fdatasync`` of the WAL (which holds them, in order) covers all, whoever
        made them, so workers that settle at once share it; nothing when the last commit
        was durable already. For what must reach the disk before something goes out (a
        claim, before its request), without making every commit wait for the disk."""
        with self._sync_lock:
            upto = self._commits
            if self._durable >= upto:
                return
            try:
                if self._wal_fd is None:
                    wal = self.path.with_name(self.path.name + "-wal")
                    self._wal_fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
                os.fdatasync(self._wal_fd)  # not under the journal's lock: others go on
            except OSError as exc:
                raise JournalError(f"journal {self.path}: cannot sync its WAL: {exc}") from exc
            self._durable = max(self._durable, upto)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every commit that may give the forwarder work."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def set_meta(self, values: Mapping[str, str | None]) -> None:
        """Service state that ``status`` in another process shows (last error, pause)."""
        with self._write(durable=False) as db:
            put_meta(db, values)

    def meta(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def writable(self) -> bool:
        """True when a write transaction can start now (for the watchdog): takes SQLite's
        write lock and rolls back, so it proves the journal is not wedged without writing
        a byte (an idle agent must not wear the flash)."""
        try:
            self._begin(wait_s=0.0)
        except JournalError:
            return False
        try:
            rollback(self._db)
        finally:
            self._lock.release()
        return True

    def wait_writable(self, wait_s: float) -> None:
        """Return once a write transaction can start (nothing is written); raise
        :class:`JournalBusyError` if another process still holds the lock after ``wait_s``."""
        self._begin(wait_s=wait_s)
        try:
            rollback(self._db)
        finally:
            self._lock.release()

    def quick_check(self) -> str:
        """SQLite's ``PRAGMA quick_check``: "ok", or what is wrong with the file. A lock
        held by another process is :class:`JournalBusyError`, any other failure that is not
        damage a :class:`JournalError`: neither is a reason to move the file aside."""
        with self._lock:
            try:
                rows = self._db.execute("PRAGMA quick_check(5)").fetchall()
            except sqlite3.Error as exc:
                if is_corrupt(exc):
                    return str(exc)
                if is_busy(exc):
                    raise JournalBusyError(
                        f"journal {self.path} is locked by another process ({exc})"
                    ) from exc
                raise JournalError(f"journal {self.path}: quick_check failed: {exc}") from exc
        return "; ".join(str(r[0]) for r in rows)

    def synchronous(self) -> int:
        """The connection's current ``PRAGMA synchronous`` (2 = FULL), read back from SQLite."""
        with self._lock:
            return int(self._db.execute("PRAGMA synchronous").fetchone()[0])

    @contextmanager
    def _write(self, *, durable: bool) -> Iterator[sqlite3.Connection]:
        self._begin(durable=durable)
        try:
            try:
                yield self._db
                self._db.execute("COMMIT")
                self._commits += 1
                if durable:
                    self._durable = self._commits
            except BaseException:
                rollback(self._db)
                raise
        except sqlite3.Error as exc:
            if is_full(exc):
                raise self._disk_full() from exc
            raise JournalError(f"journal {self.path}: {exc}") from exc
        finally:
            self._lock.release()

    def _begin(self, *, durable: bool | None = None, wait_s: float | None = None) -> None:
        """Take the journal's lock and open a write transaction (``synchronous`` FULL when
        ``durable``, NORMAL when not, as it was when None); on return the lock is held.
        While another process holds SQLite's write lock, try again every ``BUSY_PAUSE_S``
        with the journal's lock released, for up to ``wait_s`` (``BUSY_TIMEOUT_MS`` when
        None; no longer than ``STOP_WAIT_S`` past :meth:`stop_waiting`), then raise
        :class:`JournalBusyError`."""
        started = time.monotonic()
        deadline = started + (BUSY_TIMEOUT_MS / 1000 if wait_s is None else wait_s)
        while True:
            self._lock.acquire()
            try:
                if durable is not None:
                    self._set_synchronous("FULL" if durable else "NORMAL")
                self._db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.Error as exc:
                self._lock.release()
                if is_full(exc):
                    raise self._disk_full() from exc
                if not is_busy(exc):
                    raise JournalError(f"journal {self.path}: {exc}") from exc
                now = time.monotonic()
                give_up_at = self._give_up_at
                if give_up_at is not None:
                    deadline = min(deadline, give_up_at)
                if now >= deadline:
                    raise JournalBusyError(
                        f"journal {self.path} is locked by another process "
                        f"(waited {now - started:.1f} s)"
                    ) from exc
            except BaseException:
                self._lock.release()
                raise
            self._giving_up.wait(min(BUSY_PAUSE_S, max(0.0, deadline - time.monotonic())))

    def _disk_full(self) -> JournalFullError:
        """A write failed for want of space: give the reserve back if the disk is full (and
        checkpoint the WAL into the room it leaves), and say so."""
        if self._reserve.release_if_disk_full():
            self._checkpoint()
        return JournalFullError(f"journal {self.path}: disk full")

    def _checkpoint(self) -> None:
        """Copy the WAL into the journal file while the reserve's space is free, so that
        the WAL starts over instead of growing: a WAL that cannot be checkpointed for want
        of space (the file must grow for the pages it holds) would wedge every write."""
        with suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _set_synchronous(self, level: str) -> None:
        if self._synchronous != level:
            self._db.execute(f"PRAGMA synchronous = {level}")
            self._synchronous = level

    def _migrate(self) -> None:
        """Bring the schema to the current version (:func:`agent.journal.schema.migrate`)."""
        migrate(self._db, self.path)

    def _keep_owner(self) -> None:
        """root's CLI must not leave -wal/-shm files the service's user cannot open."""
        if os.geteuid() != 0:
            return
        owner = self.path.stat()
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                if side.stat().st_uid != owner.st_uid:
                    os.chown(side, owner.st_uid, owner.st_gid)


def put_meta(db: sqlite3.Connection, values: Mapping[str, str | None]) -> None:
    """Set (or, for None, delete) ``meta`` keys, inside the caller's transaction."""
    for key, value in values.items():
        if value is None:
            db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
