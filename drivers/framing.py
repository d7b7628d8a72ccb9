"""Framing: a byte stream from a serial line ↔ the payloads of whole records. Pure, no I/O.

A serial line delivers bytes, not records: a frame may arrive in pieces, several may arrive
at once, and a line carries noise, dropped bytes and corrupted bits. A framer turns the
stream into *events*, each either a good :class:`Frame` or a :class:`BadFrame` that the
driver answers with NAK so the device resends it.

Two framers, one interface (:class:`Framer`), after pymodbus's framers:

* :class:`StxEtxFramer` — the reference protocol: ``STX · payload · ETX · checksum``.
  :meth:`StxEtxFramer.decode` is the pure core, ``decode(buffer) -> (consumed, event)``;
  :meth:`StxEtxFramer.feed` keeps the buffer between reads and returns the events.
* :class:`LineFramer` — one record per terminated line; never answers.

Resynchronisation rules of :class:`StxEtxFramer`, so one damaged frame costs one frame:

* bytes outside a frame are noise and are skipped (the hunt is for the next STX);
* an STX inside a frame (its ETX was lost) ends the partial frame as *broken*; the new STX
  starts the next frame;
* a frame that reaches ``max_frame`` bytes without its ETX is *broken* and dropped, so
  garbage never grows the buffer: after :meth:`feed` returns the buffer holds fewer than
  ``max_frame`` bytes;
* a checksum that does not match makes the frame *bad_checksum*; the checksum byte is
  consumed with it.

Every event carries ``offset``, the position of its first byte in the whole stream fed so
far, so a technician can find it in a capture.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import reduce
from operator import xor
from typing import Literal, Protocol

STX = 0x02
ETX = 0x03
ACK = 0x06
NAK = 0x15
DEFAULT_MAX_FRAME = 4096

Checksum = Literal["xor", "sum", "none"]
CHECKSUMS: tuple[Checksum, ...] = ("xor", "sum", "none")


class Fault(StrEnum):
    """Why a frame was refused; the values are the driver's health counter names."""

    BAD_CHECKSUM = "bad_checksum"
    BROKEN = "broken"
    NOISE = "noise"  # well framed, checksum and all, but not text: line noise that passed


@dataclass(frozen=True)
class Frame:
    """A whole, verified frame: its payload and where its first byte was in the stream."""

    payload: bytes
    offset: int

    def moved(self, by: int) -> Frame:
        """The same frame, ``by`` bytes further in the stream."""
        return Frame(self.payload, self.offset + by)


@dataclass(frozen=True)
class BadFrame:
    """A frame that must be answered with NAK: a bad checksum or a broken frame."""

    fault: Fault
    offset: int
    detail: str
    raw: bytes

    def moved(self, by: int) -> BadFrame:
        """The same bad frame, ``by`` bytes further in the stream."""
        return BadFrame(self.fault, self.offset + by, self.detail, self.raw)


Event = Frame | BadFrame


@dataclass(frozen=True)
class Answers:
    """The bytes a driver writes back: ACK once a record is stored, NAK to get a resend."""

    ack: int = ACK
    nak: int = NAK


class Framer(Protocol):
    """Bytes in, events out. ``answers`` says whether the protocol has ACK/NAK at all."""

    answers: bool

    def feed(self, data: bytes) -> list[Event]: ...

    def encode(self, payload: bytes) -> bytes: ...


def compute_checksum(data: bytes, kind: Checksum) -> bytes:
    """The check bytes for ``data``: XOR (the reference LRC), sum mod 256, or none."""
    if kind == "xor":
        return bytes([reduce(xor, data, 0)])
    if kind == "sum":
        return bytes([sum(data) % 256])
    return b""


def matching_checksums(frame: bytes) -> list[tuple[Checksum, bool]]:
    """The settings (``checksum``, ``checksum_includes_etx``) under which ``frame``, one
    that failed its one-byte checksum (``STX · payload · ETX · check``), would be good.

    ``("none", True)`` when the check byte is an STX: a meter that sends no checksum at all
    is read that way, its next frame's STX taken for the check byte. The point is to tell a
    technician which setting the meter uses, from the frames that fail.
    """
    if len(frame) < 3 or frame[0] != STX or frame[-2] != ETX:
        return []
    got = frame[-1:]
    if got == bytes([STX]):
        return [("none", True)]
    return [
        (kind, includes_etx)
        for kind in ("xor", "sum")
        for includes_etx in (True, False)
        if compute_checksum(frame[1:-1] if includes_etx else frame[1:-2], kind) == got
    ]


class StxEtxFramer:
    """The reference protocol's framer. :meth:`decode` is pure; :meth:`feed` adds the buffer.

    The payload may hold any byte but STX and ETX (the reference payload is UTF-8 text).
    The checksum byte after ETX may hold any value, STX and ETX included. ``max_frame``
    counts the whole frame, STX to checksum.
    """

    answers = True

    def __init__(
        self,
        checksum: Checksum = "xor",
        *,
        checksum_includes_etx: bool = True,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        if checksum not in CHECKSUMS:
            raise ValueError(f"unknown checksum {checksum!r}")
        self.checksum: Checksum = checksum
        self.checksum_includes_etx = checksum_includes_etx
        self.check_len = len(compute_checksum(b"", checksum))
        if max_frame < 2 + self.check_len:
            raise ValueError(f"max_frame {max_frame} cannot hold even an empty frame")
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._offset = 0  # stream position of the buffer's first byte

    def encode(self, payload: bytes) -> bytes:
        """The whole frame for ``payload``, as a device sends it."""
        if STX in payload or ETX in payload:
            raise ValueError("a payload cannot contain STX or ETX bytes")
        frame = bytes([STX]) + payload + bytes([ETX])
        return frame + compute_checksum(self._checked(frame), self.checksum)

    def decode(self, buffer: bytes) -> tuple[int, Event | None]:
        """Look at ``buffer`` from its start; return how many bytes it used, and the event.

        ``(0, None)``: an incomplete frame, call again with more bytes. ``(n, None)``: ``n``
        bytes of noise skipped. ``(n, event)``: one frame, good or bad, of ``n`` bytes.
        Offsets in the event are relative to ``buffer``.
        """
        start = buffer.find(STX)
        if start != 0:
            return (len(buffer) if start < 0 else start), None
        # an ETX beyond ``limit`` would make the frame longer than max_frame
        limit = min(len(buffer), self.max_frame - self.check_len)
        end = buffer.find(ETX, 1, limit)
        restart = buffer.find(STX, 1, limit if end < 0 else end)
        if restart >= 0:
            detail = f"new STX at +{restart}, no ETX"
            return restart, BadFrame(Fault.BROKEN, 0, detail, buffer[:restart])
        if end < 0:
            if len(buffer) < self.max_frame - self.check_len:
                return 0, None
            detail = f"no ETX within max_frame ({self.max_frame} bytes)"
            return limit, BadFrame(Fault.BROKEN, 0, detail, buffer[:limit])
        size = end + 1 + self.check_len
        if len(buffer) < size:
            return 0, None
        return size, self._verify(buffer[:size])

    def feed(self, data: bytes) -> list[Event]:
        """Add bytes read from the line; return the events they complete, in order."""
        self._buffer += data
        events: list[Event] = []
        while self._buffer:
            used, event = self.decode(bytes(self._buffer))
            if used == 0:
                break
            if event is not None:
                events.append(event.moved(self._offset))
            del self._buffer[:used]
            self._offset += used
        return events

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame (always < ``max_frame``)."""
        return len(self._buffer)

    def _checked(self, frame: bytes) -> bytes:
        """The bytes the checksum covers: the payload, and the ETX if so configured."""
        return frame[1:] if self.checksum_includes_etx else frame[1:-1]

    def _verify(self, frame: bytes) -> Event:
        body = frame[: len(frame) - self.check_len]
        expected = compute_checksum(self._checked(body), self.checksum)
        got = frame[len(body) :]
        if got != expected:
            detail = f"checksum {got.hex()} does not match the computed {expected.hex()}"
            return BadFrame(Fault.BAD_CHECKSUM, 0, detail, frame)
        return Frame(body[1:-1], 0)


class LineFramer:
    """One record per line: ``terminator`` ends it, trailing ``\\r`` are stripped, empty
    lines are skipped. A line longer than ``max_frame`` is reported broken once and the rest
    of it, up to its terminator, is dropped. Line devices have no answer bytes."""

    answers = False

    def __init__(self, terminator: bytes = b"\n", *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not terminator:
            raise ValueError("the line terminator cannot be empty")
        if max_frame < 1:
            raise ValueError(f"max_frame must be positive, got {max_frame}")
        self.terminator = terminator
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._offset = 0  # stream position of the buffer's first byte
        self._dropping = False  # inside a line already reported too long

    def encode(self, payload: bytes) -> bytes:
        return payload + self.terminator

    def feed(self, data: bytes) -> list[Event]:
        """Add bytes read from the line; return the lines they complete, in order."""
        self._buffer += data
        events: list[Event] = []
        while (end := self._buffer.find(self.terminator)) >= 0:
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            if self._dropping:
                self._dropping = False
            elif end > self.max_frame:
                events.append(self._too_long())
            elif line:
                events.append(Frame(line, self._offset))
            self._consume(end + len(self.terminator))
        self._bound(events)
        return events

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for a terminator (at most ``max_frame`` + its length)."""
        return len(self._buffer)

    def _bound(self, events: list[Event]) -> None:
        keep = len(self.terminator) - 1  # the start of a terminator split across reads
        if len(self._buffer) - keep <= self.max_frame:
            return
        if not self._dropping:
            events.append(self._too_long())
            self._dropping = True
        self._consume(len(self._buffer) - keep)

    def _too_long(self) -> BadFrame:
        detail = f"line longer than max_frame ({self.max_frame} bytes)"
        return BadFrame(Fault.BROKEN, self._offset, detail, bytes(self._buffer[: self.max_frame]))

    def _consume(self, used: int) -> None:
        del self._buffer[:used]
        self._offset += used
