"""Intake: where a driver's record becomes a journal row (the drivers' RecordSink).

Maps the record with the current rules, then appends it to the journal, which commits
before returning. The receipt tells the driver whether it may acknowledge: a record that
cannot become a payload is still stored (as rejected, with the reason and raw bytes) and
acknowledged; only a journal that cannot take the record (disk full) makes a NAK. A full
journal first lets its oldest delivered records give way (their pages are reused at once,
on a full disk too), and while it refuses, the state is in the journal's meta (key
``intake_full``) for ``status``.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.errors import JournalError, JournalFullError, MappingError
from agent.journal import Appended, Journal, NewRecord, Reread, State
from agent.mapping import Mapped, MappingRules, map_record, permit_number
from drivers.base import HardwareRecord, Receipt

log = logging.getLogger("agent.intake")
GROUP_WAIT_S = 0.001  # how long a commit may wait for another driver's record
PARTNER_ACTIVE_S = 0.05  # a driver that sent this recently is expected to send again soon
MAKE_ROOM_AFTER_S = 0.0  # any delivered record, oldest first: a sale outweighs its audit copy
FULL_META = "intake_full"  # meta key: since when, and why, new records are refused


class Intake:
    def __init__(self, journal: Journal, station_id: str, rules: MappingRules) -> None:
        self.journal = journal
        self.station_id = station_id
        self.rules = rules
        self._refusing = threading.Event()  # log a full disk once per episode
        self._full_shown: bool | None = None  # the refusal is in the journal's meta for status
        self._cond = threading.Condition()
        self._queue: list[_Ticket] = []
        self._committing = False
        self._last_seen: dict[str, float] = {}  # driver -> monotonic time of its last record
        self.clock_skew: dict[str, float] = {}  # by driver: latest sale's start - now

    def submit(self, record: HardwareRecord) -> Receipt:
        return self.submit_many([record])[0]

    def submit_many(self, records: Sequence[HardwareRecord]) -> list[Receipt]:
        """Journal records and say, for each, whether the driver may acknowledge it.

        Group commit: records submitted at the same time (a meter's burst, several drivers)
        share one durable commit. The first caller to find no commit under way writes
        everything queued so far; the others wait for that commit and get their receipts.
        Every receipt is given only after the commit that holds its record returned.

        Several drivers each waiting for their answer would otherwise fall into lockstep,
        one record per commit, each driver's frame arriving while the other's commits. So
        when other drivers sent in the last moments, the leader waits a little (at most
        GROUP_WAIT_S) for their next record to join its commit. A lone driver never waits.
        """
        ticket = _Ticket([self._prepare(r) for r in records])
        with self._cond:
            now = time.monotonic()
            for r in records:
                self._last_seen[r.source] = now
            self._queue.append(ticket)
            self._cond.notify_all()  # a leader may be waiting for this driver
            while ticket.receipts is None and self._committing:
                self._cond.wait()
            if ticket.receipts is not None:
                return ticket.receipts
            self._committing = True
            self._wait_for_partners(now)
            batch, self._queue = self._queue, []
        try:
            self._commit(batch)
        except Exception:  # a bug must not leave other drivers waiting: NAK, they resend
            log.exception("cannot store records")
            for waiting in batch:
                waiting.receipts = waiting.receipts or [Receipt.REFUSED] * len(waiting.rows)
        finally:
            with self._cond:
                self._committing = False
                self._cond.notify_all()
        assert ticket.receipts is not None
        return ticket.receipts

    def _wait_for_partners(self, now: float) -> None:
        """(Leader, holding the condition.) Give drivers active a moment ago the chance to
        join this commit; return as soon as all have queued a record, or at the deadline."""
        active = {s for s, t in self._last_seen.items() if now - t < PARTNER_ACTIVE_S}
        deadline = now + GROUP_WAIT_S
        while True:
            queued = {row.source for ticket in self._queue for row in ticket.rows}
            left = deadline - time.monotonic()
            if active <= queued or left <= 0:
                return
            self._cond.wait(left)

    def _prepare(self, record: HardwareRecord) -> NewRecord:
        """Map a record (outside any lock) into the row to journal."""
        txn = (record.fields.get("TXN") or "").strip() or None
        mapped: Mapped | None = None
        error = record.error
        if error is None:
            try:
                mapped = map_record(record.fields, self.rules, source=record.source)
            except MappingError as exc:
                error = str(exc)
        if mapped is not None:
            self._note_clock(record.source, mapped.starts_at)
        state = State.REJECTED if mapped is None else State.HELD if mapped.held else State.PENDING
        return NewRecord(
            station=self.station_id,
            txn=txn,
            source=record.source,
            raw=record.raw,
            fields=record.fields,
            payload=mapped.payload if mapped else None,
            state=state,
            zone_code=mapped.zone_code if mapped else record.fields.get("ZONE"),
            ends_at=mapped.ends_at if mapped else None,
            error=error,
            permit_no=functools.partial(permit_number, record.fields, self.rules, record.source),
        )

    def _commit(self, batch: list[_Ticket]) -> None:
        rows = [row for ticket in batch for row in ticket.rows]
        try:
            try:
                appended = self.journal.append_many(rows)
            except JournalFullError:
                if not self._make_room():
                    raise  # nothing delivered to give way: wait for space to return
                appended = self.journal.append_many(rows)
        except JournalFullError as exc:
            self._refuse(
                f"{exc}; new records are refused (the hardware keeps them) until there is room",
                full=True,
            )
            appended = None
        except JournalError as exc:
            self._refuse(f"cannot store records: {exc}")
            appended = None
        if appended is None:
            for ticket in batch:
                ticket.receipts = [Receipt.REFUSED] * len(ticket.rows)
            return
        if self._refusing.is_set():
            self._refusing.clear()
            log.warning("journal accepts records again")
        if self._full_shown is not False:
            self._show_full(None)
        results = iter(appended)
        for ticket in batch:
            ticket.receipts = [self._receipt(row, next(results)) for row in ticket.rows]

    def _receipt(self, row: NewRecord, appended: Appended) -> Receipt:
        if appended.duplicate:
            return Receipt.DUPLICATE
        if appended.state is State.REJECTED:
            log.warning(
                "record %d (TXN %s) is invalid and kept as rejected: %s",
                appended.id,
                row.txn,
                row.error or "its permit number is over the limit (see: dead show)",
            )
            return Receipt.REJECTED
        if row.state is State.HELD:
            log.info("record %d held: zone code %r has no mapping", appended.id, row.zone_code)
        return Receipt.STORED

    def _make_room(self) -> bool:
        """Full journal: the oldest delivered records give way to new sales (the controller
        has them, with their reference_id)."""
        try:
            freed = self.journal.make_room(time.time() - MAKE_ROOM_AFTER_S)
        except JournalError:
            return False
        if freed:
            log.warning(
                "journal full: %d delivered record(s) pruned early to make room for new sales",
                freed,
            )
        return freed > 0

    def _note_clock(self, source: str, starts_at: float) -> None:
        """How far a sale's start is from this PC's clock: a station clock set wrong shows
        as a steady offset (sessions bought now start now)."""
        self.clock_skew[source] = round(starts_at - time.time(), 1)

    def remap(
        self,
        states: tuple[State, ...],
        ids: list[int] | None = None,
        progress: Callable[[int], None] | None = None,
        reread: Reread | None = None,
    ) -> dict[State, int]:
        """Re-map stored records with the current rules: releases held records whose zone
        now maps, and repairs requeued ones (``reread``: rejected ones are first read
        again from their raw bytes, see :meth:`Journal.remap`). Returns how many ended in
        each state."""

        def mapper(
            fields: dict[str, str], record_id: int, source: str, txn: str | None
        ) -> tuple[State, dict[str, str] | None, float | None, str | None]:
            try:
                mapped = map_record(fields, self.rules, source=source, txn=txn, record_id=record_id)
            except MappingError as exc:
                return State.REJECTED, None, None, str(exc)
            if mapped.held:
                return State.HELD, None, mapped.ends_at, None
            return State.PENDING, mapped.payload, mapped.ends_at, None

        return self.journal.remap(states, mapper, ids=ids, progress=progress, reread=reread)

    def _refuse(self, message: str, *, full: bool = False) -> None:
        if not self._refusing.is_set():
            self._refusing.set()
            log.error(message)
        if full and not self._full_shown:
            cause = "disk" if self.journal.disk_full or not self.journal.size_limited else "limit"
            self._show_full({"since": time.time(), "cause": cause, "reason": message})

    def _show_full(self, state: dict[str, object] | None) -> None:
        """Tell ``status`` (another process) that new records are refused for want of room,
        or that they are taken again. ``_full_shown`` is None until the first commit of a
        run: a state left by an earlier run is cleared then."""
        try:
            self.journal.set_meta({FULL_META: json.dumps(state) if state else None})
        except JournalError as exc:
            log.warning("cannot show the full journal in status: %s", exc)
            return
        self._full_shown = state is not None


@dataclass
class _Ticket:
    """One caller's records waiting for a group commit, and then their receipts."""

    rows: list[NewRecord]
    receipts: list[Receipt] | None = None
