"""A station's opening hours, in its own local time: when a silent meter is news.

A meter that sells nothing for two hours at 3 a.m. is a quiet night; at noon it is a
broken printer, a jammed coin slot or a cut cable, and customers are parking without a
permit. ``[agent] opening_hours`` says which is which; the metrics export whether the
station is open now, so one alerting rule serves every station of a fleet, whatever its
time zone (Prometheus' own ``hour()`` is UTC).

Contract: :func:`parse_hours` reads ``"07:00-22:00"``, several ranges separated by commas
(``"07:00-12:00, 13:00-22:00"``), a range past midnight (``"18:00-02:00"``) or ``"24h"``
(the default: always open); anything else raises ValueError saying what was expected.
:meth:`OpeningHours.is_open` takes a local wall-clock time. ``str()`` gives the text back
in its normal form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time

ALWAYS_TEXT = "24h"
_RANGE = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")
_DAY = 24 * 60


@dataclass(frozen=True)
class OpeningHours:
    ranges: tuple[tuple[int, int], ...] = ()  # minutes after midnight, [start, end); () = always

    def is_open(self, local: time) -> bool:
        if not self.ranges:
            return True
        minute = local.hour * 60 + local.minute
        for start, end in self.ranges:
            if start < end and start <= minute < end:
                return True
            if start > end and (minute >= start or minute < end):  # past midnight
                return True
        return False

    def __str__(self) -> str:
        if not self.ranges:
            return ALWAYS_TEXT
        return ", ".join(f"{_clock(start)}-{_clock(end)}" for start, end in self.ranges)


ALWAYS = OpeningHours()


def parse_hours(text: str) -> OpeningHours:
    if text.strip().lower() == ALWAYS_TEXT:
        return ALWAYS
    ranges = []
    for part in text.split(","):
        match = _RANGE.fullmatch(part.strip())
        if match is None:
            raise ValueError(
                f'expected ranges of local time such as "07:00-22:00" (or "24h"), got {text!r}'
            )
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or h1 * 60 + m1 > _DAY or h2 * 60 + m2 > _DAY:
            raise ValueError(f"{part.strip()!r} is not a time of day (00:00 to 24:00)")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end:
            raise ValueError(f"{part.strip()!r} is empty: it opens and closes at once")
        ranges.append((start % _DAY, end if end == _DAY else end % _DAY))
    return OpeningHours(tuple(ranges))


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
