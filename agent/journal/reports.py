"""What the journal tells a person, and the service's figures: counts by state, the summary
``status`` and the metrics show, the records ``export`` and ``dead list`` read, the zone
codes ``zones list`` shows. Reads only; each takes the journal's lock for one statement
(or one batch), so a large journal never holds up the writers for long.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, TypedDict

from agent.journal.records import AttemptRow, Record, State
from agent.journal.schema import UNSENT
from agent.journal.store import Store


class Summary(TypedDict):
    """The figures ``status`` and the metrics show (:meth:`Reports.summary`)."""

    active_pending: int  # records to send whose parking session is still running
    oldest_pending_s: float | None  # age of the oldest record to send, None: none
    last_sent_at: float | None  # epoch of the last delivery still journaled
    unknown_outcomes: int  # sends that may have reached the controller without an answer
    already_existed: int  # deliveries the controller already had (its 9022)


class Reports(Store):
    """The journal's reads; part of :class:`~agent.journal.Journal`."""

    def counts(self) -> dict[State, int]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT state, count(*) FROM records WHERE {UNSENT} GROUP BY state"
            ).fetchall()
            sent = self._db.execute(
                "SELECT count(*) FROM records INDEXED BY records_sent_at WHERE state = 'sent'"
            ).fetchone()[0]
        counts = dict.fromkeys(State, 0)
        counts.update({State(s): n for s, n in rows})
        counts[State.SENT] = sent
        return counts

    def summary(self) -> Summary:
        """The figures ``status`` shows; cheap on a large journal (indexed reads only)."""
        now = self._clock()
        with self._lock:
            db = self._db
            active = db.execute(
                "SELECT count(*) FROM records INDEXED BY records_pending_end "
                "WHERE state = 'pending' AND ends_at > ?",
                (now,),
            ).fetchone()[0]
            oldest = db.execute(
                f"SELECT received_at FROM records WHERE {UNSENT} AND state = 'pending' "
                "ORDER BY id LIMIT 1"
            ).fetchone()
            unknown, existed = db.execute(
                "SELECT coalesce(sum(unknown_outcomes), 0), coalesce(sum(already_existed), 0) "
                "FROM records INDEXED BY records_unusual "
                "WHERE unknown_outcomes > 0 OR already_existed > 0"
            ).fetchone()
        return {
            "active_pending": active,
            "oldest_pending_s": round(now - oldest[0], 1) if oldest else None,
            "last_sent_at": self.last_sent_at(),
            "unknown_outcomes": unknown,
            "already_existed": existed,
        }

    def dead_with_reason(self, prefix: str) -> int:
        """Dead records whose reason starts with ``prefix`` (e.g. permit-number conflicts);
        cheap: dead letters are few, and the state index finds them."""
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT count(*) FROM records "
                    f"WHERE {UNSENT} AND state = 'dead' AND substr(last_error, 1, ?) = ?",
                    (len(prefix), prefix),
                ).fetchone()[0]
            )

    def get(self, record_id: int) -> Record | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records WHERE id = ?", (record_id,)
            ).fetchone()
        return _record(row) if row else None

    def zone_codes(self) -> list[tuple[str, int, float | None, int]]:
        """(zone code, held records, oldest held ``received_at``, all records) per code.
        Reads the whole journal: for the technician's ``zones list``, not for every status."""
        with self._lock:
            return self._db.execute(
                """SELECT zone_code, sum(state = 'held'),
                          min(CASE WHEN state = 'held' THEN received_at END), count(*)
                   FROM records
                   WHERE zone_code IS NOT NULL GROUP BY zone_code ORDER BY zone_code"""
            ).fetchall()

    def held_zones(self) -> list[tuple[str, int, float]]:
        """(zone code, held records, oldest held ``received_at``): indexed, cheap."""
        with self._lock:
            return self._db.execute(
                """SELECT zone_code, count(*), min(received_at)
                   FROM records INDEXED BY records_held_zone
                   WHERE state = 'held' AND zone_code IS NOT NULL
                   GROUP BY zone_code ORDER BY zone_code"""
            ).fetchall()

    def last_sent_at(self) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT max(sent_at) FROM records INDEXED BY records_sent_at WHERE state = 'sent'"
            ).fetchone()
        return row[0] if row else None

    def unsent_amounts(self) -> list[tuple[str | None, int]]:
        """(currency, cents) not yet at the controller: pending payloads and held records.

        Summed as integer cents, never as floats. Held records have no payload yet, so
        their hardware fields are read; a ``None`` currency means the config's default.
        """
        with self._lock:
            return self._db.execute(
                f"""SELECT currency, sum(cents) FROM (
                       SELECT json_extract(payload, '$.CurrencyID') AS currency,
                              CAST(round(json_extract(payload, '$.Amount') * 100) AS INTEGER)
                                  AS cents
                       FROM records WHERE {UNSENT} AND state = 'pending'
                         AND json_extract(payload, '$.Amount') IS NOT NULL
                       UNION ALL
                       SELECT nullif(upper(trim(json_extract(fields, '$.CUR'))), ''),
                              CAST(round(json_extract(fields, '$.AMT') * 100) AS INTEGER)
                       FROM records WHERE {UNSENT} AND state = 'held'
                         AND json_extract(fields, '$.AMT') IS NOT NULL)
                   GROUP BY currency ORDER BY currency"""
            ).fetchall()

    def attempts(self, record_id: int) -> list[AttemptRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, outcome, status, error, body FROM attempts WHERE record_id = ? "
                "ORDER BY at",
                (record_id,),
            ).fetchall()
        return [AttemptRow(*row) for row in rows]

    def records(
        self, states: Sequence[State] | None = None, *, batch: int = 1_000
    ) -> Iterator[Record]:
        """Every record (in ``states``), oldest first, read in batches."""
        last = 0
        where = ""
        params: list[Any] = []
        if states:
            unsent = "" if State.SENT in states else f"{UNSENT} AND "
            where = f"{unsent}state IN ({','.join('?' * len(states))}) AND "
            params = [s.value for s in states]
        while True:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT {_RECORD_COLUMNS} FROM records "
                    f"WHERE {where} id > ? ORDER BY id LIMIT ?",
                    [*params, last, batch],
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _record(row)
            last = rows[-1][0]


_RECORD_COLUMNS = (
    "id, station, txn, source, state, raw, fields, payload, zone_code, received_at, attempts, "
    "unknown_outcomes, last_status, last_error, last_body, reference_id, sent_at, already_existed"
)


def _record(row: Sequence[Any]) -> Record:
    return Record(
        id=row[0],
        station=row[1],
        txn=row[2],
        source=row[3],
        state=State(row[4]),
        raw=bytes(row[5]),
        fields=json.loads(row[6]),
        payload=json.loads(row[7]) if row[7] else None,
        zone_code=row[8],
        received_at=row[9],
        attempts=row[10],
        unknown_outcomes=row[11],
        last_status=row[12],
        last_error=row[13],
        last_body=row[14],
        reference_id=row[15],
        sent_at=row[16],
        already_existed=bool(row[17]),
    )
