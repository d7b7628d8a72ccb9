"""``tap``: the wire of one meter, frame by frame, for a technician onboarding a new model.

Per frame: the raw bytes (hex and printable, ``hexdump -C`` style, offsets in the stream),
the framing verdict (ok; a bad checksum with the received and computed values and the
setting that would match; a broken frame), the fields after ``renames``, and the payload
the record would become with the config's zones and time zone, or why it would be held
or rejected. It is the driver's own reading (the same framer, parser and mapping), minus
the journal: nothing is stored and nothing is answered, so a meter keeps every sale it
shows here and resends it to the service later.

Why it does not watch beside a running service: the service holds its port exclusively
(an ``flock``, see :mod:`drivers.serial_port`), because two readers of one serial line
each get some of the bytes; a tap beside it would take frames from the service and break
others in two. So a port the service holds is refused, naming the holder, with the way to
watch it: stop the service, tap, start it again. The meter keeps what was not ACKed (the
reference protocol resends), so nothing is lost meanwhile, except on a line-mode device,
which never resends: the header says so. What the service saw is in its log (bad frames
summarised with the matching checksum setting) and in ``dead show`` (the raw bytes of
every rejected record), which ``dead requeue`` reads again once the config is fixed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import closing

import serial

from agent.commands.common import load
from agent.config import Config
from agent.errors import AgentError, MappingError
from agent.mapping import FIELDS, MappingRules, map_record
from agent.signals import Flag
from drivers.faults import describe_setting
from drivers.framing import BadFrame, Event, Fault, compute_checksum, matching_checksums
from drivers.ports import busy_reason, holders
from drivers.records import PARSERS, is_text
from drivers.serial_port import Port, SerialOptions

HEX_PER_LINE = 16
ON_BUSY = (
    "tap cannot read beside it. To watch this meter, stop the service "
    "(systemctl stop paystation-agent: the meter keeps every sale not acknowledged and "
    "resends it), run tap, then start the service again (systemctl start paystation-agent)"
)


def cmd_tap(args: argparse.Namespace) -> int:
    config = load(args)
    name, options = line_of(config, args)
    rules = MappingRules.from_config(config)
    stop = Flag()  # set by a signal handler: see agent.signals
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    port = _open(options)
    with closing(port):
        for line in header(options):
            print(line, flush=True)
        framer = options.framer()
        shown = 0
        while not stop.is_set() and (not args.count or shown < args.count):
            for event in framer.feed(port.read(max(1, port.in_waiting))):
                shown += 1
                print()
                for line in report(shown, event, options, rules, name):
                    print(line, flush=True)
                if shown == args.count:
                    break
    return 0


def line_of(config: Config, args: argparse.Namespace) -> tuple[str, SerialOptions]:
    """The driver's name and line settings: ``--driver``'s (or the config's one serial
    driver) with any setting given on the command line over them, or ``--port``'s alone."""
    serial_drivers: dict[str, SerialOptions] = {
        d.name: d.options for d in config.drivers if isinstance(d.options, SerialOptions)
    }
    name = args.driver
    if name is None and args.port is None:
        if len(serial_drivers) != 1:
            names = ", ".join(serial_drivers) or "none in the config"
            raise AgentError(f"tap: which line? --driver NAME ({names}) or --port PATH")
        name = next(iter(serial_drivers))
    if name is not None:
        if name not in serial_drivers:
            names = ", ".join(serial_drivers) or "none"
            raise AgentError(f"tap: no serial driver named {name!r} in the config ({names})")
        options = serial_drivers[name]
    else:
        options = SerialOptions(port=args.port)
        name = "tap"
    given = {
        key: getattr(args, key)
        for key in ("port", "baudrate", "framing", "format", "checksum")
        if getattr(args, key) is not None
    }
    if args.rename:
        given["renames"] = {**options.renames, **_renames(args.rename)}
    return name, dataclasses.replace(options, **given)


def header(options: SerialOptions) -> Iterator[str]:
    checked = "the payload and ETX" if options.checksum_includes_etx else "the payload"
    check = f", checksum {options.checksum} over {checked}" if options.framing == "stx-etx" else ""
    renames = ", ".join(f"{k} → {v}" for k, v in options.renames.items())
    yield (
        f"tap on {options.port}: {options.line_settings}{check}"
        + (f", renames {renames}" if renames else "")
    )
    if options.framing == "line":
        yield (
            "nothing is stored: a line-mode device does not resend, so the sales shown here "
            "reach no journal. ^C ends"
        )
    else:
        yield (
            "nothing is stored or answered: the meter keeps each sale and resends it "
            "(the same frame may show again). ^C ends"
        )


def report(
    number: int, event: Event, options: SerialOptions, rules: MappingRules, source: str
) -> Iterator[str]:
    """What the service would do with one frame, in lines for a person."""
    raw = event.raw if isinstance(event, BadFrame) else options.framer().encode(event.payload)
    size = f"{len(raw)} byte" + ("s" if len(raw) != 1 else "")
    yield f"frame {number} at byte {event.offset}, {size}"
    yield from hexdump(raw, event.offset)
    if isinstance(event, BadFrame):
        yield f"  framing  {_fault(event, options)}; the service answers NAK"
        return
    yield "  framing  " + (
        f"ok, checksum {raw[-1:].hex()}"
        if options.framing == "stx-etx" and options.checksum != "none"
        else "ok"
    )
    if not is_text(event.payload):
        yield (
            "  noise    well framed but not text: the service answers NAK, and keeps it as "
            "rejected if the device sends it again at once"
        )
        return
    fields, error = options.read_fields(event.payload)
    if error is not None:
        yield f"  rejected {error} (the service keeps it as rejected, with its raw bytes)"
        return
    yield f"  fields   {json.dumps(fields, ensure_ascii=False)}"
    yield from _names(event.payload, options)
    try:
        mapped = map_record(fields, rules, source=source)
    except MappingError as exc:
        yield f"  rejected {exc} (the service keeps it as rejected, with its raw bytes)"
        return
    if mapped.payload is None:
        yield (
            f"  held     zone code {mapped.zone_code!r} has no mapping; map it: "
            f'paystation-agent zones set {mapped.zone_code} "OPSCOM zone name"'
        )
        return
    yield f"  payload  {json.dumps(mapped.payload, ensure_ascii=False)}"


def hexdump(data: bytes, offset: int) -> Iterator[str]:
    """``hexdump -C``'s lines: stream offset, 16 bytes in hex, the printable ones."""
    for at in range(0, len(data), HEX_PER_LINE):
        chunk = data[at : at + HEX_PER_LINE]
        left = " ".join(f"{b:02x}" for b in chunk[:8])
        right = " ".join(f"{b:02x}" for b in chunk[8:])
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        yield f"  {offset + at:08x}  {left:<23}  {right:<23}  |{text}|"


def _fault(event: BadFrame, options: SerialOptions) -> str:
    if event.fault is not Fault.BAD_CHECKSUM:
        return f"broken: {event.detail}"
    size = len(compute_checksum(b"", options.checksum))
    body = event.raw[: len(event.raw) - size]
    checked = body[1:] if options.checksum_includes_etx else body[1:-1]
    computed = compute_checksum(checked, options.checksum)
    text = f"bad checksum: received {event.raw[-size:].hex()}, computed {computed.hex()}"
    matches = matching_checksums(event.raw)
    if not matches:
        return text + "; no checksum setting matches (a damaged frame)"
    kind, includes_etx = matches[0]
    return f"{text}; {describe_setting(kind, includes_etx, options.checksum_includes_etx)}"


def _names(payload: bytes, options: SerialOptions) -> Iterator[str]:
    """The renames that applied, and the device's field names that mapping does not read."""
    try:
        device_names = list(PARSERS[options.format](payload, None))
    except AgentError:  # a rename that made the record readable: nothing more to say
        return
    renamed = [f"{k} → {options.renames[k]}" for k in device_names if k in options.renames]
    if renamed:
        yield f"  renamed  {', '.join(renamed)}"
    unused = [k for k in device_names if options.renames.get(k, k) not in FIELDS]
    if unused:
        yield (
            f"  unused   {', '.join(unused)} (the agent reads {', '.join(FIELDS)}; a device's "
            'other names need renames = { DEVICE_NAME = "PLATE" })'
        )


def _renames(pairs: list[str]) -> dict[str, str]:
    table = {}
    for pair in pairs:
        key, sep, name = pair.partition("=")
        if not sep or not key.strip() or not name.strip():
            raise AgentError(
                f"--rename: expected DEVICE_KEY=NAME such as PLATENO=PLATE, got {pair!r}"
            )
        table[key.strip().upper()] = name.strip().upper()
    return table


def _open(options: SerialOptions) -> Port:
    """The port, exclusively, as the driver opens it: one the service holds is refused."""
    try:
        port = options.open_port()
    except (serial.SerialException, OSError, ValueError) as exc:
        busy = busy_reason(options.port, exc)
        if busy:
            raise AgentError(f"{busy}; {ON_BUSY}") from None
        raise AgentError(f"tap: {exc}") from None
    others = holders(options.port, exclude=(os.getpid(),))
    if others.seen:
        print(
            f"note: {options.port} is also open in {others.describe()}, which takes no "
            "lock: if it reads, some frames go to it and not here",
            file=sys.stderr,
        )
    return port
