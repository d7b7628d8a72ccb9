"""``paystation-agent simulate``: be a meter on a serial line, speaking the reference protocol.

Why: to bench-test an installation (a null-modem cable or a USB pair between a laptop and
the pay-station PC) and to test the agent end to end, with the very bytes a device sends.

Contract — a stop-and-wait meter, like the hardware (contract.md §4):

* each sale (from :class:`drivers.simulated.SalesGenerator`, local time in the station's
  zone) is framed as ``STX · kv payload · ETX · LRC`` and written; the meter then waits
  up to ``answer_timeout_s`` for ACK or NAK;
* on NAK or silence it resends the *same* frame (same TXN) until it is ACKed or the meter
  is stopped; only an ACK moves it to the next sale;
* ``noise`` is the probability of a burst of random bytes (never STX, so it is pure line
  noise) before a send; ``corrupt`` the probability that a sale is first sent once with
  one payload bit flipped (its LRC no longer matches: the agent must NAK it);
* every ACKed TXN is appended to ``acked_file``, flushed at once, for reconciliation.

Exit code 0 when every sale made was ACKed and no corrupted frame was (an ACK for a frame
with a wrong LRC is an agent bug, counted as ``corrupt_acked``).

The counts are ``acked`` (sales ACKed), ``naked`` (NAK answers) and ``resent`` (sends
beyond the first of a sale). Answers left over from an earlier send are discarded before
each send, so a late answer is not taken for the current frame's.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Protocol
from zoneinfo import ZoneInfo

import serial

from agent.errors import MeterError
from agent.signals import Flag
from drivers.framing import ACK, ETX, NAK, STX, StxEtxFramer
from drivers.records import format_kv
from drivers.simulated import SalesGenerator

READ_SLICE_S = 0.05  # one read's wait: bounds how late a stop is noticed
NOISE_BYTES = bytes(b for b in range(256) if b != STX)
MAX_NOISE = 16


@dataclass(frozen=True)
class MeterSettings:
    """The ``simulate`` command's options, validated."""

    port: str
    baudrate: int = 9600
    rate: float = 1.0
    count: int = 0
    seed: int | None = None
    noise: float = 0.0
    corrupt: float = 0.0
    invalid_rate: float = 0.0
    answer_timeout_s: float = 2.0
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    zones: tuple[str, ...] = ("1", "2", "3", "4")
    batch: str | None = None  # the receipts' batch prefix; None: one made from the clock

    def __post_init__(self) -> None:
        if self.batch is not None and not (self.batch.isascii() and self.batch.isalnum()):
            raise MeterError(f"--batch: expected letters and digits, got {self.batch!r}")
        for name in ("noise", "corrupt", "invalid_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise MeterError(f"--{name.replace('_', '-')}: expected 0 to 1, got {value}")
        if self.rate <= 0:
            raise MeterError(f"--rate: expected sales per second > 0, got {self.rate}")
        if self.count < 0:
            raise MeterError(f"--count: expected 0 (forever) or more, got {self.count}")
        if self.answer_timeout_s <= 0:
            raise MeterError(f"--answer-timeout: expected seconds > 0, got {self.answer_timeout_s}")


@dataclass
class Tally:
    acked: int = 0
    naked: int = 0
    resent: int = 0
    unacked: int = 0  # a sale the meter was stopped before it was ACKed
    corrupt_acked: int = 0  # a frame with a wrong LRC that was ACKed: the agent is wrong

    def summary(self) -> str:
        text = f"acked={self.acked} naked={self.naked} resent={self.resent}"
        return text + (f" corrupt_acked={self.corrupt_acked}" if self.corrupt_acked else "")


class Line(Protocol):
    """What the meter uses of a pyserial port."""

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def reset_input_buffer(self) -> None: ...


class SerialMeter:
    """Sells, frames, sends and resends until ACKed; see the module docstring."""

    def __init__(
        self,
        settings: MeterSettings,
        line: Line,
        stop: Flag,
        acked_out: IO[str] | None = None,
    ) -> None:
        self.settings = settings
        self.line = line
        self.stop = stop
        self.acked_out = acked_out
        self.tally = Tally()
        self.framer = StxEtxFramer()
        self.sales = SalesGenerator(
            settings.seed, settings.zones, settings.invalid_rate, settings.batch
        )
        # the line's faults have their own generator, so the sales stay the same per seed
        self.random = random.Random(None if settings.seed is None else settings.seed + 1)

    def run(self) -> Tally:
        interval = 1.0 / self.settings.rate
        next_at = time.monotonic()
        while not self.stop.is_set() and not self._sold_out():
            now_local = datetime.now(self.settings.timezone).replace(tzinfo=None)
            fields = self.sales.next_sale(now_local)
            self._deliver(fields["TXN"], self.framer.encode(format_kv(fields)))
            next_at = max(next_at + interval, time.monotonic())
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        return self.tally

    def _sold_out(self) -> bool:
        return self.settings.count > 0 and self.sales.sequence >= self.settings.count

    def _deliver(self, txn: str, frame: bytes) -> None:
        if self.random.random() < self.settings.corrupt:
            if self._send(self._flip_a_bit(frame)):
                self.tally.corrupt_acked += 1
            self.tally.resent += 1
        while not self.stop.is_set():
            if self._send(frame):
                self.tally.acked += 1
                if self.acked_out is not None:
                    self.acked_out.write(txn + "\n")
                    self.acked_out.flush()
                return
            self.tally.resent += 1
        self.tally.unacked += 1

    def _send(self, frame: bytes) -> bool:
        """Write one frame (with noise before it, sometimes); True once it is ACKed."""
        self.line.reset_input_buffer()
        if self.random.random() < self.settings.noise:
            size = self.random.randint(1, MAX_NOISE)
            self.line.write(bytes(self.random.choices(NOISE_BYTES, k=size)))
        self.line.write(frame)
        answer = self._answer()
        if answer == NAK:
            self.tally.naked += 1
        return answer == ACK

    def _answer(self) -> int | None:
        deadline = time.monotonic() + self.settings.answer_timeout_s
        while time.monotonic() < deadline and not self.stop.is_set():
            for byte in self.line.read(1):
                if byte in (ACK, NAK):
                    return byte
        return None

    def _flip_a_bit(self, frame: bytes) -> bytes:
        """The frame with one payload bit flipped, never into STX or ETX: the frame stays
        whole and only its LRC is wrong."""
        spoiled = bytearray(frame)
        while True:
            at = self.random.randrange(1, len(frame) - 2)
            flipped = frame[at] ^ (1 << self.random.randrange(8))
            if flipped not in (STX, ETX):
                spoiled[at] = flipped
                return bytes(spoiled)


def run_meter(
    settings: MeterSettings,
    stop: Flag,
    acked_file: Path | None = None,
    out: IO[str] = sys.stdout,
) -> int:
    """Be a meter until ``count`` sales are ACKed or ``stop`` is set; print the summary.
    Exit code 0 when every sale made was ACKed."""
    lost: str | None = None
    with ExitStack() as resources:
        acked_out = (
            resources.enter_context(open(acked_file, "a", encoding="utf-8"))
            if acked_file is not None
            else None
        )
        meter = SerialMeter(settings, resources.enter_context(_open(settings)), stop, acked_out)
        try:
            meter.run()
        except (serial.SerialException, OSError) as exc:
            lost = f"port {settings.port} lost: {exc}"
    print(meter.tally.summary(), file=out, flush=True)
    if lost is not None:
        raise MeterError(lost)
    return 0 if meter.tally.unacked == meter.tally.corrupt_acked == 0 else 1


@contextmanager
def _open(settings: MeterSettings) -> Iterator[Line]:
    try:
        port = serial.serial_for_url(
            settings.port, do_not_open=False, baudrate=settings.baudrate, timeout=READ_SLICE_S
        )
    except serial.SerialException as exc:
        raise MeterError(str(exc)) from None  # pyserial's message names the port
    except (OSError, ValueError) as exc:
        raise MeterError(f"cannot open port {settings.port}: {exc}") from None
    try:
        yield port
    finally:
        port.close()
