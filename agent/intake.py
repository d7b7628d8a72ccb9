"""Intake: where a driver's record becomes a journal row (the drivers' RecordSink).

Maps the record with the current rules, then appends it to the journal, which commits
before returning. The receipt tells the driver whether it may acknowledge: a record that
cannot become a payload is still stored (as rejected, with the reason and raw bytes) and
acknowledged; only a journal that cannot take the record (disk full) makes a NAK.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.errors import JournalError, JournalFullError, MappingError
from agent.journal import Appended, Journal, State
from agent.mapping import Mapped, MappingRules, map_record
from drivers.base import HardwareRecord, Receipt

log = logging.getLogger("agent.intake")
MAKE_ROOM_AFTER_S = 0.0  # any delivered record, oldest first: a sale outweighs its audit copy


class Intake:
    def __init__(self, journal: Journal, station_id: str, rules: MappingRules) -> None:
        self.journal = journal
        self.station_id = station_id
        self.rules = rules
        self._refusing = threading.Event()  # log a full disk once per episode
        self.clock_skew: dict[str, float] = {}  # by driver: latest sale's start - now

    def submit(self, record: HardwareRecord) -> Receipt:
        txn = (record.fields.get("TXN") or "").strip() or None
        mapped: Mapped | None = None
        error = record.error
        if error is None:
            try:
                mapped = map_record(record.fields, self.rules)
            except MappingError as exc:
                error = str(exc)
        if mapped is not None:
            self._note_clock(record.source, mapped.starts_at)
        state = State.REJECTED if mapped is None else State.HELD if mapped.held else State.PENDING

        def append() -> Appended:
            return self.journal.append(
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
            )

        try:
            try:
                appended = append()
            except JournalFullError:
                if self.journal.disk_full or not self._make_room():
                    raise  # deleting rows frees no disk: wait for space to return
                appended = append()
        except JournalFullError as exc:
            self._refuse(
                f"{exc}; new records are refused (the hardware keeps them) until there is room"
            )
            return Receipt.REFUSED
        except JournalError as exc:
            self._refuse(f"cannot store records: {exc}")
            return Receipt.REFUSED
        if self._refusing.is_set():
            self._refusing.clear()
            log.warning("journal accepts records again")
        if appended.duplicate:
            return Receipt.DUPLICATE
        if state is State.REJECTED:
            log.warning(
                "record %d (TXN %s) is invalid and kept as rejected: %s", appended.id, txn, error
            )
            return Receipt.REJECTED
        if state is State.HELD:
            log.info(
                "record %d held: zone code %r has no mapping",
                appended.id,
                mapped and mapped.zone_code,
            )
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
    ) -> dict[State, int]:
        """Re-map stored records with the current rules: releases held records whose zone
        now maps, and repairs requeued ones. Returns how many ended in each state."""

        def mapper(
            fields: dict[str, str], record_id: int
        ) -> tuple[State, dict[str, str] | None, float | None, str | None]:
            try:
                mapped = map_record(fields, self.rules)
            except MappingError as exc:
                return State.REJECTED, None, None, str(exc)
            if mapped.held:
                return State.HELD, None, mapped.ends_at, None
            return State.PENDING, mapped.payload, mapped.ends_at, None

        return self.journal.remap(states, mapper, ids=ids, progress=progress)

    def _refuse(self, message: str) -> None:
        if not self._refusing.is_set():
            self._refusing.set()
            log.error(message)
