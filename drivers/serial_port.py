"""The serial driver: a meter or pay station on an RS-232 / USB serial line (contract.md §4).

Why it is shaped this way: the hardware keeps a transaction until it is acknowledged, so the
one thing this driver must get right is *when* it says ACK. It says it only after the sink
(the journal) has committed the record — ``Receipt.safe`` — and says NAK for a frame it
could not verify or a record the journal could not take, so the device resends. Everything
else (framing, record formats, names) is configuration, because devices differ.

Contract of the read loop:

* each good frame becomes one :class:`~drivers.base.HardwareRecord` (``raw`` = the payload
  bytes); a text payload that is not a record in the configured ``format`` still becomes
  one, with ``error`` set, so it is journaled as rejected and ACKed, never silently
  dropped. A payload that is not even text (not UTF-8, or control characters) is taken
  for line noise that passed the checksum by chance: a bad frame (``noise``), unless the
  device sends the same frame again at once (a resend: then it is a record);
* ACK is written after ``sink.submit`` returns a safe receipt, NAK otherwise; a bad
  checksum, a broken frame or noise is NAKed without reaching the sink (in line mode it
  is skipped), counted, and summarised in the log at most every
  ``FAULT_SUMMARY_EVERY_S`` (:mod:`drivers.faults`), naming the checksum setting the
  failing frames would match;
* line mode (``framing = "line"``) never writes: the device has no answer bytes, so a line
  the journal refuses is offered again until it is stored (the reader does not move on);
* a port that cannot be opened or vanishes (USB unplugged) is closed and reopened with
  capped exponential backoff (0.5 s doubling to ``reconnect_max_s``: tenacity's
  ``wait_exponential``), waiting on :attr:`stopping` so a stop is prompt. One warning per
  outage, one line when it is back;
* the port is opened exclusively (pyserial's ``exclusive=True``: an ``flock`` on the
  device), so a second agent or a ``tap`` on the same port is refused and a port they
  hold is reported *busy*, naming the process (:func:`drivers.ports.busy_reason`), in the
  log and the health detail: two readers would each get some of the frames, and the
  sales would land in two journals. A reader that takes no lock is named in a warning.

Health counters (``health.frames``): ``ok`` (well framed and parsed), ``unparseable``,
``bad_checksum``, ``broken``, ``noise``, and per receipt ``duplicate`` and ``refused``.

A little over 400 lines, and one module still: the options, the port's lifecycle and the
frames' answers are the one story of when a device hears ACK, best read in one sitting.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import serial
import tenacity

from agent.errors import RecordFormatError
from drivers.base import (
    BatchSink,
    Driver,
    DriverContext,
    HardwareRecord,
    Receipt,
    RecordSink,
)
from drivers.faults import FaultSummary
from drivers.framing import (
    ACK,
    CHECKSUMS,
    DEFAULT_MAX_FRAME,
    NAK,
    BadFrame,
    Checksum,
    Event,
    Fault,
    Frame,
    Framer,
    LineFramer,
    StxEtxFramer,
)
from drivers.options import TableReader, option_reader
from drivers.ports import busy_reason, holders
from drivers.records import PARSERS, is_text

READ_TIMEOUT_S = 0.2  # how long one read waits: bounds how late a stop is noticed
WRITE_TIMEOUT_S = 2.0  # an answer byte that cannot leave in this time means a dead port
FIRST_RETRY_S = 0.5
LINE_REFUSED_RETRY_S = 1.0
FAULT_SUMMARY_EVERY_S = 10.0  # at most one log line this often about a port's bad frames
PARITIES = ("N", "E", "O", "M", "S")
STOPBITS = (1, 1.5, 2)
FRAMINGS = ("stx-etx", "line")

Framing = Literal["stx-etx", "line"]

KNOWN_KEYS = {
    "port",
    "baudrate",
    "bytesize",
    "parity",
    "stopbits",
    "framing",
    "format",
    "checksum",
    "checksum_includes_etx",
    "ack",
    "nak",
    "terminator",
    "max_frame",
    "renames",
    "reconnect_max_s",
}


@dataclass(frozen=True)
class SerialOptions:
    """One ``[[drivers]] kind = "serial"`` table, validated. Field names are the keys, and
    field defaults the defaults (``parse_options`` reads them from here)."""

    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    framing: Framing = "stx-etx"
    format: str = "kv"
    checksum: Checksum = "xor"
    checksum_includes_etx: bool = True
    ack: int = ACK
    nak: int = NAK
    terminator: str = "\n"
    max_frame: int = DEFAULT_MAX_FRAME
    renames: Mapping[str, str] = field(default_factory=dict)
    reconnect_max_s: float = 30.0

    def framer(self) -> Framer:
        """A fresh framer: each connection starts with an empty buffer."""
        if self.framing == "line":
            return LineFramer(self.terminator.encode("utf-8"), max_frame=self.max_frame)
        return StxEtxFramer(
            self.checksum,
            checksum_includes_etx=self.checksum_includes_etx,
            max_frame=self.max_frame,
        )

    def open_port(self) -> Port:
        """The line, opened exclusively (flock: a second agent or a ``tap`` is refused, not
        fed half the frames); the driver and ``tap`` open it this one way."""
        port: Port = serial.serial_for_url(
            self.port,
            do_not_open=False,
            baudrate=self.baudrate,
            bytesize=self.bytesize,
            parity=self.parity,
            stopbits=self.stopbits,
            timeout=READ_TIMEOUT_S,
            write_timeout=WRITE_TIMEOUT_S,
            exclusive=True,
        )
        return port

    def read_fields(self, payload: bytes) -> tuple[dict[str, str], str | None]:
        """A frame's payload as the fields of a record, under this ``format`` and
        ``renames``; or no fields and why not (the record is then kept as rejected)."""
        try:
            return PARSERS[self.format](payload, self.renames), None
        except RecordFormatError as exc:
            return {}, f"not a {self.format} record: {exc}"

    @property
    def line_settings(self) -> str:
        stop = f"{self.stopbits:g}"
        return f"{self.baudrate} {self.bytesize}{self.parity}{stop}, {self.framing}/{self.format}"


class Port(Protocol):
    """What the driver uses of a pyserial port."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def close(self) -> None: ...


READ_MAX = 4096  # bytes taken in one read: a burst of frames, at most


class _Line:
    """The open port as the driver reads and answers it: one wait and one read of all
    that arrived, one write per answer byte. pyserial's ``read(n)`` waits in ``select``
    for each call, so a frame took two waits and two reads (the STX alone, then the
    rest); its ``write`` waits in ``select`` again after the byte has gone. Both are
    taken here straight from the descriptor pyserial opened and set up (termios, flock,
    non-blocking); a port without one (a pyserial URL such as ``loop://``) is read and
    written through pyserial."""

    def __init__(self, port: Port) -> None:
        self.port = port
        fileno = getattr(port, "fileno", None)
        try:
            self.fd: int | None = fileno() if callable(fileno) else None
        except (OSError, ValueError, serial.SerialException):
            self.fd = None

    def read(self) -> bytes:
        if self.fd is None:
            return self.port.read(max(1, self.port.in_waiting))
        ready, _, _ = select.select([self.fd], [], [], READ_TIMEOUT_S)
        if not ready:
            return b""
        try:
            data = os.read(self.fd, READ_MAX)
        except BlockingIOError:  # readable, then taken by nobody else: nothing after all
            return b""
        if not data:  # what pyserial says of it, so the port is reported lost the same way
            raise serial.SerialException(
                "device reports readiness to read but returned no data "
                "(device disconnected or multiple access on port?)"
            )
        return data

    def write(self, data: bytes) -> None:
        if self.fd is not None:
            try:
                if os.write(self.fd, data) == len(data):
                    return
            except BlockingIOError:  # the line's output buffer is full: let pyserial wait
                pass
        self.port.write(data)  # waits up to WRITE_TIMEOUT_S, then raises


class SerialDriver(Driver):
    """Reads frames from a serial port, journals them through the sink, answers ACK/NAK."""

    kind = "serial"
    options: SerialOptions

    def __init__(
        self, name: str, options: SerialOptions, sink: RecordSink, context: DriverContext
    ) -> None:
        super().__init__(name, options, sink, context)
        # group commits need a sink that takes several records (checked once: a protocol
        # isinstance is slow enough to show per frame); line mode has no answers to order
        self._batch_sink = (
            sink if options.framing != "line" and isinstance(sink, BatchSink) else None
        )
        self._outage_since: float | None = None  # monotonic start of the current outage
        self._opened_before = False
        self._suspected_noise: bytes | None = None  # a non-text payload NAKed last
        self._faults = FaultSummary(
            name,
            self.log,
            checksum=options.checksum,
            checksum_includes_etx=options.checksum_includes_etx,
            every_s=FAULT_SUMMARY_EVERY_S,
        )

    @classmethod
    def parse_options(cls, prefix: str, options: Mapping[str, Any]) -> SerialOptions:
        r = option_reader(prefix, options, KNOWN_KEYS)
        port = r.take("port", str, "", required=True)
        r.check(
            "port",
            "port" not in options or bool(port.strip()),
            "expected a device path such as /dev/ttyUSB0 or a pyserial URL",
        )
        baudrate = r.take("baudrate", int, SerialOptions.baudrate)
        r.check("baudrate", 50 <= baudrate <= 4_000_000, f"expected a baud rate, got {baudrate}")
        bytesize = r.take("bytesize", int, SerialOptions.bytesize)
        r.check("bytesize", 5 <= bytesize <= 8, f"expected 5, 6, 7 or 8, got {bytesize}")
        parity = r.take("parity", str, SerialOptions.parity).upper()
        r.check("parity", parity in PARITIES, f"expected one of N, E, O, M, S, got {parity!r}")
        stopbits = r.take_number("stopbits", SerialOptions.stopbits, low=1, high=2)
        r.check("stopbits", stopbits in STOPBITS, f"expected 1, 1.5 or 2, got {stopbits:g}")
        framing = r.take("framing", str, SerialOptions.framing)
        r.check("framing", framing in FRAMINGS, f'expected "stx-etx" or "line", got {framing!r}')
        fmt = r.take("format", str, SerialOptions.format)
        r.check("format", fmt in PARSERS, f'expected "kv" or "json", got {fmt!r}')
        checksum = r.take("checksum", str, SerialOptions.checksum)
        r.check(
            "checksum", checksum in CHECKSUMS, f'expected "xor", "sum" or "none", got {checksum!r}'
        )
        includes_etx = r.take("checksum_includes_etx", bool, SerialOptions.checksum_includes_etx)
        ack = _byte_option(r, "ack", SerialOptions.ack)
        nak = _byte_option(r, "nak", SerialOptions.nak)
        r.check("nak", ack != nak, f"ACK and NAK must differ, both are {ack}")
        terminator = r.take("terminator", str, SerialOptions.terminator)
        r.check("terminator", bool(terminator), "expected a non-empty line terminator")
        max_frame = r.take("max_frame", int, SerialOptions.max_frame)
        r.check(
            "max_frame",
            16 <= max_frame <= 1_048_576,
            f"expected 16 to 1048576 bytes, got {max_frame}",
        )
        renames = _renames_option(r)
        reconnect = r.take_number(
            "reconnect_max_s", SerialOptions.reconnect_max_s, low=FIRST_RETRY_S, high=3600.0
        )
        return r.done(
            lambda: SerialOptions(
                port=port,
                baudrate=baudrate,
                bytesize=bytesize,
                parity=parity,
                stopbits=int(stopbits) if stopbits.is_integer() else stopbits,
                framing=framing,  # type: ignore[arg-type]  # checked above
                format=fmt,
                checksum=checksum,  # type: ignore[arg-type]  # checked above
                checksum_includes_etx=includes_etx,
                ack=ack,
                nak=nak,
                terminator=terminator,
                max_frame=max_frame,
                renames=renames,
                reconnect_max_s=reconnect,
            )
        )

    # -- the port's lifecycle ----------------------------------------------------------

    def _run(self) -> None:
        """Connect; after each connection (or failure to open), wait ``FIRST_RETRY_S`` and
        connect again. While connections bring no bytes, the waits double (an outage:
        0.5, 1, 2 ... ``reconnect_max_s``); one that brings bytes starts over."""
        outage = tenacity.Retrying(
            wait=tenacity.wait_exponential(
                multiplier=2 * FIRST_RETRY_S, min=FIRST_RETRY_S, max=self.options.reconnect_max_s
            ),
            retry=tenacity.retry_if_result(
                lambda received: not received and not self.stopping.is_set()
            ),
            sleep=tenacity.nap.sleep_using_event(self.stopping),
        )
        self._connection()
        while not self.stopping.wait(FIRST_RETRY_S):
            outage(self._connection)  # returns after a connection that brought bytes

    def _connection(self) -> bool:
        """Open the port and read until stopped or it fails; True if bytes came in. Nothing
        once stopping (a stop ends the wait before an attempt, not the attempt)."""
        if self.stopping.is_set():
            return False
        port = self._open()
        return port is not None and self._serve(port)

    def _open(self) -> Port | None:
        try:
            port = self.options.open_port()
        except (serial.SerialException, OSError, ValueError) as exc:
            busy = busy_reason(self.options.port, exc)
            self._unavailable("busy" if busy else "unavailable", busy or exc)
            return None
        self._connected()
        return port

    def _serve(self, port: Port) -> bool:
        """Read until stopped or the port fails; always close it. True if bytes came in."""
        received = False
        with closing(port):
            framer = self.options.framer()
            line = _Line(port)
            try:
                while not self.stopping.is_set():
                    data = line.read()
                    received = received or bool(data)
                    self._handle_all(line, [self._screen(e) for e in framer.feed(data)])
                    self._faults.tick()
            except (serial.SerialException, OSError) as exc:
                self._unavailable("lost", exc)
        return received

    def _connected(self) -> None:
        self.health.connected = True
        self.health.detail = f"open: {self.options.line_settings}"
        if self._outage_since is not None:
            down = time.monotonic() - self._outage_since
            self.log.info("port %s is back after %.0f s", self.options.port, down)
        elif not self._opened_before:
            self.log.info("port %s open (%s)", self.options.port, self.options.line_settings)
        if self._outage_since is not None or not self._opened_before:
            self._warn_other_readers()
        self._outage_since = None
        self._opened_before = True

    def _unavailable(self, what: str, cause: Exception | str) -> None:
        """Log the first failure of an outage as a warning, the retries only at debug.
        ``cause`` is the error, or a sentence already saying it (a busy port's holder)."""
        self.health.connected = False
        self.health.detail = cause if isinstance(cause, str) else f"{what}: {cause}"
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            if isinstance(cause, str):
                self.log.warning("port %s %s, retrying", self.options.port, cause)
            else:
                self.log.warning("port %s %s: %s, retrying", self.options.port, what, cause)
        else:
            self.log.debug("port %s still unavailable: %s", self.options.port, cause)

    def _warn_other_readers(self) -> None:
        """The lock keeps out readers that lock (another agent, ``tap``, picocom); one
        that does not (``cat``, some terminals) and opened the port first is only seen in
        /proc: it would take some of the bytes, so it is named."""
        others = holders(self.options.port, exclude=(os.getpid(),))
        if others.seen:
            self.log.warning(
                "port %s is also open in %s: a process reading it takes some of the "
                "frames from the agent; close it",
                self.options.port,
                others.describe(),
            )

    # -- frames --------------------------------------------------------------------------

    def _handle_all(self, line: _Line, events: list[Event]) -> None:
        """Answer the frames of one read in their order. Records that arrived together (a
        burst) are stored in one group commit, then ACKed each; a bad frame is NAKed in
        its place."""
        if self._batch_sink is None:
            for event in events:
                self._handle(line, event)
            return
        run: list[HardwareRecord] = []
        for event in events:
            if isinstance(event, BadFrame):
                self._store_run(line, run)
                run = []
                self._handle(line, event)
            else:
                self.health.last_frame_at = time.time()
                run.append(self._record(event.payload))
        self._store_run(line, run)

    def _store_run(self, line: _Line, run: list[HardwareRecord]) -> None:
        if not run:
            return
        assert self._batch_sink is not None
        for receipt in self._batch_sink.submit_many(run):  # returns once committed
            self._count(receipt)
            self._answer(line, self.options.ack if receipt.safe else self.options.nak)

    def _screen(self, event: Event) -> Event:
        """A frame whose payload is not text is taken for line noise that passed the
        checksum by chance (1 in 256 for random bytes): a bad frame, NAKed. The same frame
        again, next, is the device resending what was NAKed (noise does not repeat itself):
        then it is the device's record, kept as rejected with its raw bytes and ACKed, so
        a meter that really sends such bytes is never stuck on one frame."""
        if not isinstance(event, Frame) or is_text(event.payload):
            self._suspected_noise = None
            return event
        if event.payload == self._suspected_noise:
            self._suspected_noise = None
            return event
        self._suspected_noise = event.payload
        return BadFrame(Fault.NOISE, event.offset, "payload is not text", event.payload)

    def _handle(self, line: _Line, event: Event) -> None:
        self.health.last_frame_at = time.time()
        if isinstance(event, BadFrame):
            self.health.frames[event.fault.value] += 1
            self._faults.add(event)
            self._answer(line, self.options.nak)
            return
        receipt = self._store(self._record(event.payload))
        self._answer(line, self.options.ack if receipt.safe else self.options.nak)

    def _record(self, payload: bytes) -> HardwareRecord:
        fields, error = self.options.read_fields(payload)
        self.health.frames["ok" if error is None else "unparseable"] += 1
        return HardwareRecord(payload, fields, self.name, error=error)

    def _store(self, record: HardwareRecord) -> Receipt:
        receipt = self._submit(record)
        if self.options.framing != "line":
            return receipt  # a NAK makes the device keep it
        while receipt is Receipt.REFUSED:
            if self.stopping.wait(LINE_REFUSED_RETRY_S):
                self.log.error("stopping with a refused line not stored: %r", record.raw[:80])
                break
            receipt = self._submit(record)
        return receipt

    def _submit(self, record: HardwareRecord) -> Receipt:
        receipt = self.sink.submit(record)  # returns once the journal has committed
        self._count(receipt)
        return receipt

    def _count(self, receipt: Receipt) -> None:
        if receipt is Receipt.DUPLICATE:
            self.health.frames["duplicate"] += 1
        elif receipt is Receipt.REFUSED:
            self.health.frames["refused"] += 1

    def _answer(self, line: _Line, byte: int) -> None:
        if self.options.framing != "line":
            line.write(bytes([byte]))


def _byte_option(r: TableReader, key: str, default: int) -> int:
    value = r.take(key, int, default)
    r.check(key, 0 <= value <= 255, f"expected a byte value 0-255, got {value}")
    return value


def _renames_option(r: TableReader) -> dict[str, str]:
    """``renames = { PLATENO = "PLATE" }``: device key -> reference name, upper-cased."""
    table: dict[str, Any] = r.take("renames", dict, {})
    ok = all(isinstance(v, str) and v.strip() and k.strip() for k, v in table.items())
    r.check(
        "renames",
        ok,
        'expected a table of device key = reference name, such as { PLATENO = "PLATE" }',
    )
    if not ok:
        return {}
    return {k.strip().upper(): v.strip().upper() for k, v in table.items()}
