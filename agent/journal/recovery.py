"""Opening the journal at start, whatever state the last run, the disk or another process
left it in.

* **Damage** (SQLITE_CORRUPT, SQLITE_NOTADB, or a failed ``PRAGMA quick_check``) must not
  leave the agent looking healthy but stuck, nor be silently replaced. The file is moved
  aside with a timestamp (``journal.sqlite3.corrupt-20261128T041500Z``, with its -wal and
  -shm), a fresh journal is started, every row that can still be read from the old file is
  copied into the new one (keeping its state, so delivered sales are not sent again and
  undelivered ones are), and the event is logged as critical and shown by ``status`` until
  a person acknowledges it (``paystation-agent journal acknowledge``).
* **A lock held by another process** (a technician's ``sqlite3`` shell inside a
  transaction) is not damage: the start waits up to ``LOCK_WAIT_S``, saying so in the log
  ("journal locked by another process since …") once and every ``LOCK_LOG_EVERY_S``, then
  fails with :class:`JournalBusyError` (exit 1; systemd starts it again). The file is never
  touched.
* A journal from a newer agent, or one this user may not open, is left alone: those are
  errors for a person, not corruption.

The salvage is restartable. Before anything is moved, a marker beside the journal
(``journal.sqlite3.salvage``) names the file it moves aside. A start that finds the marker
finishes the moves and the copy (:mod:`agent.journal.salvage`) from where it stopped
before it does anything else, and only then removes the marker. A kill at any point, or a
SIGTERM (which stops a salvage between two batches), loses nothing.

A person acknowledges a recovery (:func:`acknowledge_recovery`): ``status`` shows it
until then.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from agent.errors import JournalBusyError, JournalCorruptError, Stopped
from agent.files import atomic_write, sync_directory
from agent.journal.journal import Journal
from agent.journal.salvage import id_floor, salvage, skipped_in
from agent.signals import Flag
from agent.timestamps import utc_iso

RECOVERED_META = "journal_recovered"  # meta key: what was recovered, until acknowledged

log = logging.getLogger("agent.recovery")
LOCK_WAIT_S = 30.0
LOCK_LOG_EVERY_S = 10.0
LOCK_RETRY_S = 0.5


def salvage_marker(path: Path) -> Path:
    """The file that says a salvage into ``path`` has started and is not finished."""
    return path.with_name(path.name + ".salvage")


def unfinished_salvage(path: Path) -> dict[str, str] | None:
    """The marker's content (``aside``, ``problem``, ``stamp``), or None.

    A marker cut short by a crash while it was written is dropped: it is written, and
    synced, before anything is moved, so nothing was moved yet."""
    marker = salvage_marker(path)
    try:
        content = json.loads(marker.read_text(encoding="utf-8"))
        if not isinstance(content, dict) or {"aside", "problem", "stamp"} - content.keys():
            raise ValueError("incomplete")
        if Path(content["aside"]).name != content["aside"]:
            raise ValueError(f"not a file name: {content['aside']!r}")
    except FileNotFoundError:
        return None
    except ValueError as exc:
        log.warning("ignoring the unusable salvage marker %s: %s", marker, exc)
        marker.unlink()
        return None
    return {key: str(value) for key, value in content.items()}


def open_journal(
    path: Path,
    max_bytes: int | None = None,
    reserve_bytes: int = 0,
    *,
    lock_wait_s: float = LOCK_WAIT_S,
    stopping: Flag | None = None,
) -> Journal:
    """The journal at ``path``, ready for the service: an unfinished salvage finished, a
    damaged file salvaged, a lock held by another process waited for.

    Raises :class:`JournalBusyError` when the lock is still held after ``lock_wait_s``,
    :class:`Stopped` when ``stopping`` is set meanwhile."""
    started = time.monotonic()
    since = utc_iso()
    next_log = started
    while True:
        try:
            return _open(path, max_bytes, reserve_bytes, stopping)
        except JournalBusyError as exc:
            now = time.monotonic()
            if now - started >= lock_wait_s:
                raise JournalBusyError(
                    f"journal {path} locked by another process since {since} "
                    f"(waited {now - started:.0f} s); not starting. It is not damaged and was "
                    f"left as it is: end the other program's transaction (fuser {path})"
                ) from exc
            if now >= next_log:
                next_log = now + LOCK_LOG_EVERY_S
                log.warning(
                    "journal %s locked by another process since %s (a sqlite3 shell inside a "
                    "transaction?); waiting up to %.0f s",
                    path,
                    since,
                    lock_wait_s,
                )
        if stopping is not None and stopping.wait(LOCK_RETRY_S):
            raise Stopped(f"stopped while waiting for the journal {path}")
        if stopping is None:
            time.sleep(LOCK_RETRY_S)


def _open(path: Path, max_bytes: int | None, reserve_bytes: int, stopping: Flag | None) -> Journal:
    marker = unfinished_salvage(path)
    if marker is not None:
        log.critical("a salvage of %s was interrupted; finishing it now", marker.get("aside"))
        return _salvage_into(path, marker, max_bytes, reserve_bytes, stopping)
    try:
        journal = Journal(path, max_bytes=max_bytes, reserve_bytes=reserve_bytes, busy_wait_s=0.0)
    except JournalCorruptError as exc:
        problem = str(exc)
    else:
        try:
            problem = journal.quick_check()
            if problem == "ok":
                journal.wait_writable(0.0)  # a lock held elsewhere: JournalBusyError, wait
                return journal
        except BaseException:
            journal.close()
            raise
        journal.close()
    # time.gmtime() with no argument reads the kernel's coarse clock, up to a tick behind
    # time.time(): just after a second turns it names the second before, and the id floor
    # taken from this stamp would fall below ids numbered from time.time() a moment ago.
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time()))
    aside, n = f"{path.name}.corrupt-{stamp}", 1
    while path.with_name(aside).exists():  # damaged again within the second of the last
        n += 1
        aside = f"{path.name}.corrupt-{stamp}-{n}"
    marker = {"aside": aside, "problem": problem, "stamp": stamp}
    atomic_write(salvage_marker(path), json.dumps(marker))
    return _salvage_into(path, marker, max_bytes, reserve_bytes, stopping)


def _salvage_into(
    path: Path,
    marker: dict[str, str],
    max_bytes: int | None,
    reserve_bytes: int,
    stopping: Flag | None,
) -> Journal:
    """Move the damaged file aside (if not done yet), copy what can be read into a new
    journal at ``path`` (from where an earlier try stopped), then say so loudly."""
    aside = path.with_name(marker["aside"])
    if not aside.exists():
        # the side files first, the main file last: once it is moved, all of them are
        for suffix in ("-wal", "-shm", ""):
            source = path.with_name(path.name + suffix)
            target = aside.with_name(aside.name + suffix)
            if source.exists() and not target.exists():
                source.rename(target)
        sync_directory(path.parent)
    journal = Journal(path, max_bytes=max_bytes, reserve_bytes=reserve_bytes, busy_wait_s=0.0)
    try:
        recovered, lost = salvage(aside, journal, stopping)
        message = (
            f"journal {path} was unreadable ({marker['problem']}); moved aside to "
            f"{aside.name}, {recovered} record(s) recovered into a new journal"
            + (f", {lost} unreadable" if lost else "")
        )
        log.critical(message)
        floor = id_floor(aside, marker["stamp"])
        journal.keep_ids_above(
            floor,
            {RECOVERED_META: f"{marker['stamp']} {message}", "salvage": None},
            skipped_in(aside),
        )
        log.info("journal %s: new records are numbered above %d", path, floor)
    except BaseException:
        journal.close()
        raise
    salvage_marker(path).unlink()
    sync_directory(path.parent)
    return journal


def acknowledge_recovery(journal: Journal) -> str | None:
    """A person has looked into a journal recovery: ``status`` stops showing it. Returns
    what was acknowledged (kept in ``meta`` as ``journal_recovered_acknowledged``), None if
    there was nothing to acknowledge."""
    recovered = journal.meta().get(RECOVERED_META)
    if recovered is None:
        return None
    stamp = utc_iso()
    journal.set_meta(
        {
            RECOVERED_META: None,
            "journal_recovered_acknowledged": f"{stamp}: {recovered}",
        }
    )
    return recovered
