"""The framers, as pure functions of a byte stream: properties over any input (hypothesis),
plus the reference protocol's own examples."""

from __future__ import annotations

from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.framing import (
    CHECKSUMS,
    ETX,
    STX,
    BadFrame,
    Checksum,
    Event,
    Fault,
    Frame,
    LineFramer,
    StxEtxFramer,
    compute_checksum,
    matching_checksums,
)

REFERENCE = (
    b"TXN=000123|PLATE=PL8RDR|ZONE=4|AMT=14.50|CUR=CAD|START=2018-07-02T05:00:00"
    b"|END=2018-07-02T05:30:00|PROMO=DISCOUNT20|TICKET=T-99"
)

checksums = st.sampled_from(CHECKSUMS)
payloads = st.binary(max_size=60).map(lambda b: b.replace(b"\x02", b"").replace(b"\x03", b""))
noise = st.binary(max_size=30).map(lambda b: b.replace(b"\x02", b""))


def framer_for(kind: Checksum, includes_etx: bool = True, max_frame: int = 4096) -> StxEtxFramer:
    return StxEtxFramer(kind, checksum_includes_etx=includes_etx, max_frame=max_frame)


def feed_in_chunks(
    framer: StxEtxFramer | LineFramer, stream: bytes, cuts: list[int]
) -> list[Event]:
    events: list[Event] = []
    start = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        events += framer.feed(stream[start:cut])
        start = max(start, cut)
        assert framer.buffered < framer.max_frame + 2
    return events


# -- the reference protocol ---------------------------------------------------------------


def test_reference_frame_is_stx_payload_etx_lrc() -> None:
    lrc = reduce(lambda a, b: a ^ b, REFERENCE + bytes([ETX]), 0)
    frame = StxEtxFramer().encode(REFERENCE)
    assert frame == bytes([STX]) + REFERENCE + bytes([ETX, lrc])
    assert StxEtxFramer().feed(b"\xff\x00noise" + frame) == [Frame(REFERENCE, 7)]


def test_checksum_variants() -> None:
    assert compute_checksum(b"AB\x03", "xor") == bytes([0x41 ^ 0x42 ^ 0x03])
    assert compute_checksum(b"AB\x03", "sum") == bytes([0x86])
    assert compute_checksum(b"\xff\xff", "sum") == bytes([0xFE])  # mod 256
    assert compute_checksum(b"AB\x03", "none") == b""
    assert StxEtxFramer("none").encode(b"AB") == b"\x02AB\x03"
    assert StxEtxFramer(checksum_includes_etx=False).encode(b"AB") == b"\x02AB\x03\x03"


def test_a_bad_lrc_is_reported_with_its_offset_and_the_next_frame_is_found() -> None:
    good = StxEtxFramer().encode(b"TXN=2")
    bad = bytearray(StxEtxFramer().encode(b"TXN=1"))
    bad[-1] ^= 0x01
    events = StxEtxFramer().feed(b"zz" + bytes(bad) + good)
    assert [type(e) for e in events] == [BadFrame, Frame]
    assert isinstance(events[0], BadFrame) and events[0].fault is Fault.BAD_CHECKSUM
    assert events[0].offset == 2 and events[0].raw == bytes(bad)
    assert events[1] == Frame(b"TXN=2", 2 + len(bad))


def test_encode_refuses_control_bytes_in_a_payload() -> None:
    with pytest.raises(ValueError):
        StxEtxFramer().encode(b"A\x03B")


# -- properties ------------------------------------------------------------------------------


@given(st.binary(max_size=600), st.lists(st.integers(0, 600)), checksums, st.booleans())
def test_any_stream_never_crashes_and_every_frame_verifies(
    stream: bytes, cuts: list[int], kind: Checksum, includes_etx: bool
) -> None:
    framer = framer_for(kind, includes_etx, max_frame=64)
    for event in feed_in_chunks(framer, stream, cuts):
        assert 0 <= event.offset < len(stream)
        if isinstance(event, Frame):
            encoded = framer.encode(event.payload)
            assert stream[event.offset : event.offset + len(encoded)] == encoded


@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=8), checksums)
def test_chunking_never_changes_the_events(stream: bytes, cuts: list[int], kind: Checksum) -> None:
    whole = framer_for(kind, max_frame=48).feed(stream)
    assert feed_in_chunks(framer_for(kind, max_frame=48), stream, cuts) == whole


@given(
    st.lists(st.tuples(noise, payloads), max_size=8),
    noise,
    st.lists(st.integers(0, 800)),
    checksums,
    st.booleans(),
)
def test_every_valid_frame_in_noise_is_found(
    parts: list[tuple[bytes, bytes]],
    tail: bytes,
    cuts: list[int],
    kind: Checksum,
    includes_etx: bool,
) -> None:
    framer = framer_for(kind, includes_etx)
    stream, expected = b"", []
    for junk, payload in parts:
        stream += junk
        expected.append(Frame(payload, len(stream)))
        stream += framer.encode(payload)
    stream += tail
    assert feed_in_chunks(framer, stream, cuts) == expected


@given(payloads, payloads, checksums)
def test_a_new_stx_inside_a_frame_reports_the_partial_and_starts_over(
    lost: bytes, payload: bytes, kind: Checksum
) -> None:
    framer = framer_for(kind)
    partial = bytes([STX]) + lost  # its ETX never came
    events = framer.feed(partial + framer.encode(payload))
    assert events == [
        BadFrame(Fault.BROKEN, 0, f"new STX at +{len(partial)}, no ETX", partial),
        Frame(payload, len(partial)),
    ]


@given(st.integers(16, 64), st.binary(min_size=1, max_size=300), payloads, checksums)
def test_an_oversize_frame_is_dropped_and_the_buffer_stays_bounded(
    max_frame: int, garbage: bytes, payload: bytes, kind: Checksum
) -> None:
    framer = framer_for(kind, max_frame=max_frame)
    body = garbage.replace(b"\x02", b"a").replace(b"\x03", b"b") * (max_frame // len(garbage) + 1)
    events = feed_in_chunks(framer, bytes([STX]) + body, list(range(0, len(body), 7)))
    assert len(events) == 1 and isinstance(events[0], BadFrame)
    assert events[0].fault is Fault.BROKEN and events[0].offset == 0
    assert framer.buffered < max_frame
    good = framer.encode(payload)
    if len(good) <= max_frame:
        assert framer.feed(good) == [Frame(payload, 1 + len(body))]


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=20))
def test_garbage_never_grows_the_buffer(stream: bytes, cuts: list[int]) -> None:
    framer = StxEtxFramer(max_frame=32)
    events = feed_in_chunks(framer, stream, cuts)
    assert framer.buffered < 32
    assert all(len(e.raw) <= 32 for e in events if isinstance(e, BadFrame))


# -- line mode -------------------------------------------------------------------------------

lines = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").rstrip(b"\r"))


@given(st.lists(lines, max_size=10), st.lists(st.integers(0, 500)), st.booleans())
def test_every_line_is_found_with_crlf_stripped_and_empty_lines_skipped(
    found: list[bytes], cuts: list[int], crlf: bool
) -> None:
    ending = b"\r\n" if crlf else b"\n"
    stream, expected = b"", []
    for line in found:
        if line:
            expected.append(Frame(line, len(stream)))
        stream += line + ending
    assert feed_in_chunks(LineFramer(), stream, cuts) == expected


@given(st.binary(max_size=1000), st.lists(st.integers(0, 1000), max_size=20), st.booleans())
def test_any_stream_never_grows_the_line_buffer(stream: bytes, cuts: list[int], crlf: bool) -> None:
    framer = LineFramer(b"\r\n" if crlf else b"\n", max_frame=24)
    for event in feed_in_chunks(framer, stream, cuts):
        assert len(event.payload if isinstance(event, Frame) else event.raw) <= 24
    assert framer.buffered <= 24 + 1


def test_an_overlong_line_is_reported_once_and_the_next_line_is_found() -> None:
    framer = LineFramer(max_frame=8)
    events = framer.feed(b"0123456789") + framer.feed(b"abcdef") + framer.feed(b"gh\nTXN=1\n")
    assert events == [
        BadFrame(Fault.BROKEN, 0, "line longer than max_frame (8 bytes)", b"01234567"),
        Frame(b"TXN=1", 19),
    ]


def test_a_terminator_split_across_reads_is_found() -> None:
    framer = LineFramer(b"\r\n", max_frame=4)
    assert framer.feed(b"ABCD\r") == []
    assert framer.feed(b"\nEF\r\n") == [Frame(b"ABCD", 0), Frame(b"EF", 6)]


@pytest.mark.parametrize("kind", ["xor", "sum"])
@pytest.mark.parametrize("includes_etx", [True, False])
def test_a_frame_failing_its_checksum_names_the_setting_the_meter_uses(
    kind: Checksum, includes_etx: bool
) -> None:
    frame = StxEtxFramer(kind, checksum_includes_etx=includes_etx).encode(REFERENCE)
    assert (kind, includes_etx) in matching_checksums(frame)
    no_checksum = StxEtxFramer("none").encode(REFERENCE) + bytes([STX])  # the next frame's
    assert matching_checksums(no_checksum) == [("none", True)]
    assert matching_checksums(b"\x02broken") == []


def test_bad_frames_are_summarised_at_most_once_per_interval() -> None:
    """A thousand bad frames a second make one log line per interval, not a thousand; the
    first after a quiet spell is logged at once."""
    import logging

    from drivers.faults import FaultSummary

    lines: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger("test.faults")
    log.addHandler(Lines())
    log.propagate = False
    log.setLevel(logging.INFO)
    now = [0.0]
    faults = FaultSummary(
        "meter-1", log, checksum="xor", checksum_includes_etx=True, every_s=10, clock=lambda: now[0]
    )
    wrong = StxEtxFramer("sum").encode(REFERENCE)
    event = StxEtxFramer().feed(wrong)[0]
    assert isinstance(event, BadFrame)
    for n in range(1, 30_001):  # 30 s at 1 000 bad frames a second
        now[0] = n / 1000
        faults.add(event)
    assert len(lines) == 3, lines
    assert lines[0].startswith("bad frame on meter-1 at byte 0")
    assert lines[1].startswith("10000 frames failed their checksum in the last 10 s on meter-1")
    assert lines[1].endswith('a meter sending SUM checksums would match checksum = "sum"')
    now[0] += 60
    faults.tick()  # the rest, once due, while the line is quiet
    assert len(lines) == 4 and lines[-1].startswith("9999 frames failed their checksum")
    faults.add(event)  # after a quiet minute: at once, in detail
    assert len(lines) == 5 and lines[-1].startswith("bad frame on meter-1")
