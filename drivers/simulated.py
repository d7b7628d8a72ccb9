"""A simulated meter: realistic parking sales, seeded, at a configurable rate.

The sales come from a :class:`SalesGenerator`, paced by :class:`SimulatedDriver`.

Used by the demo and the tests through the same interface as hardware. It behaves like a
meter that keeps a transaction until the agent has stored it: a refused record (disk
full) is offered again a moment later, never skipped.

Options (``[[drivers]] kind = "simulated"``): ``rate`` (sales per second), ``count``
(stop after this many, 0 = forever), ``seed``, ``invalid_rate`` (share of records a real
meter would get wrong: no plate, end before start, a bad amount), ``zones`` (the hardware
zone codes to sell in).
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from drivers.base import Driver, HardwareRecord, Receipt
from drivers.options import option_reader
from drivers.records import format_kv

LOCAL_TIME = "%Y-%m-%dT%H:%M:%S"
HOURLY_RATE = Decimal("2.50")


@dataclass(frozen=True)
class SimulatedOptions:
    """One ``[[drivers]] kind = "simulated"`` table, validated; the field defaults are the
    defaults."""

    rate: float = 1.0
    count: int = 0
    seed: int | None = None
    invalid_rate: float = 0.02
    zones: tuple[str, ...] = ("1", "2", "3", "4")


class SalesGenerator:
    """The sales themselves, separate from pacing so tests and ``simulate`` can reuse it."""

    def __init__(
        self,
        seed: int | None,
        zones: tuple[str, ...],
        invalid_rate: float,
        batch: str | None = None,
    ) -> None:
        self.random = random.Random(seed)
        self.zones = zones
        self.invalid_rate = invalid_rate
        # a per-run batch prefix keeps TXNs unique across restarts, like a meter's batch
        # number; a given one makes meters that number their receipts alike
        self.batch = batch or _base36(int(time.time() * 1000) % 36**6).rjust(6, "0")
        self.sequence = 0

    def next_sale(self, now_local: datetime) -> dict[str, str]:
        self.sequence += 1
        rnd = self.random
        minutes = rnd.choice([15, 30, 30, 60, 60, 90, 120, 180, 240])
        start = now_local.replace(microsecond=0)
        fields = {
            "TXN": f"{self.batch}-{self.sequence:06d}",
            "PLATE": _plate(rnd),
            "ZONE": rnd.choice(self.zones),
            "START": start.strftime(LOCAL_TIME),
        }
        if rnd.random() < 0.3:
            fields["MIN"] = str(minutes)
        else:
            fields["END"] = (start + timedelta(minutes=minutes)).strftime(LOCAL_TIME)
        amount = (HOURLY_RATE * minutes / 60).quantize(Decimal("0.01"))
        if rnd.random() < 0.05:
            fields["PROMO"] = rnd.choice(["FREEPARK", "VALIDATED"])
            amount = Decimal(0)
        fields["AMT"] = f"{amount:.2f}"
        if rnd.random() < self.invalid_rate:
            self._spoil(fields, rnd)
        return fields

    @staticmethod
    def _spoil(fields: dict[str, str], rnd: random.Random) -> None:
        fault = rnd.choice(["plate", "time", "amount"])
        if fault == "plate":
            fields["PLATE"] = ""
        elif fault == "time":
            fields.pop("MIN", None)
            fields["END"] = fields["START"]
        else:
            fields["AMT"] = "1.234"


class SimulatedDriver(Driver):
    kind = "simulated"
    options: SimulatedOptions

    @classmethod
    def parse_options(cls, prefix: str, options: Mapping[str, Any]) -> SimulatedOptions:
        r = option_reader(prefix, options, {"rate", "count", "seed", "invalid_rate", "zones"})
        rate = r.take_number("rate", SimulatedOptions.rate, low=0.001, high=10_000)
        count = r.take("count", int, SimulatedOptions.count)
        r.check("count", count >= 0, f"expected 0 (forever) or a positive count, got {count}")
        seed = r.take("seed", int, 0) if "seed" in options else SimulatedOptions.seed
        invalid = r.take_number("invalid_rate", SimulatedOptions.invalid_rate, low=0.0, high=1.0)
        zones = r.take("zones", list, list(SimulatedOptions.zones))
        r.check(
            "zones",
            bool(zones) and all(isinstance(z, str) and z for z in zones),
            "expected a non-empty array of zone codes (strings)",
        )
        return r.done(lambda: SimulatedOptions(rate, count, seed, invalid, tuple(map(str, zones))))

    def _run(self) -> None:
        opts = self.options
        sales = SalesGenerator(opts.seed, opts.zones, opts.invalid_rate)
        interval = 1.0 / opts.rate
        self.health.connected = True
        next_at = time.monotonic()
        while not self.stopping.is_set() and (opts.count == 0 or sales.sequence < opts.count):
            fields = sales.next_sale(datetime.now(self.context.timezone).replace(tzinfo=None))
            record = HardwareRecord(format_kv(fields), fields, self.name)
            while self.sink.submit(record) is Receipt.REFUSED:
                self.health.frames["refused"] += 1
                if self.stopping.wait(1.0):
                    return
            self.health.frames["ok"] += 1
            self.health.last_frame_at = time.time()
            next_at += interval
            self.stopping.wait(max(0.0, next_at - time.monotonic()))


def _plate(rnd: random.Random) -> str:
    style = rnd.random()
    letters, digits = string.ascii_uppercase, string.digits
    if style < 0.6:  # Ontario: ABCD 123
        return "".join(rnd.choices(letters, k=4)) + " " + "".join(rnd.choices(digits, k=3))
    if style < 0.9:  # New York: ABC-1234
        return "".join(rnd.choices(letters, k=3)) + "-" + "".join(rnd.choices(digits, k=4))
    return "".join(rnd.choices(letters + digits, k=rnd.randint(5, 7)))


def _base36(n: int) -> str:
    chars = string.digits + string.ascii_uppercase
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = chars[r] + out
        if n == 0:
            return out
