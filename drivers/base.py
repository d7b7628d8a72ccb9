"""The driver interface: how a source of hardware records feeds the agent.

A driver reads transactions from somewhere (a serial port, a simulated meter), turns each
into a :class:`HardwareRecord` and hands it to a :class:`RecordSink`. The sink journals it
and answers with a :class:`Receipt`; only a receipt whose ``safe`` is true may be
acknowledged to the hardware, because only then is the record committed to disk.

Subclasses implement one method, :meth:`Driver._run`, the read loop, which must return
promptly once :attr:`Driver.stopping` is set (wait with ``self.stopping.wait(t)``, never
``time.sleep``). Like python-can's ``BusABC``, the simulated feed is a driver like any
other, so tests and the demo use the same path as hardware.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class HardwareRecord:
    """One transaction as the hardware sent it.

    ``fields`` use the reference protocol's names (TXN, PLATE, ZONE, AMT, ...). ``error``
    is set when the bytes were well framed but could not be read as a record: the record
    is still journaled (as rejected, with its raw bytes) so nothing is silently dropped.
    """

    raw: bytes
    fields: Mapping[str, str]
    source: str
    error: str | None = None


class Receipt(StrEnum):
    STORED = "stored"  # committed as a new record: ACK
    DUPLICATE = "duplicate"  # this TXN is already journaled: ACK, the meter may stop resending
    REJECTED = "rejected"  # committed, but as an invalid record kept for a person: ACK
    REFUSED = "refused"  # not stored (disk full, journal broken): NAK, the meter keeps it

    @property
    def safe(self) -> bool:
        return self is not Receipt.REFUSED


class RecordSink(Protocol):
    def submit(self, record: HardwareRecord) -> Receipt: ...


@runtime_checkable
class BatchSink(RecordSink, Protocol):
    """A sink that stores several records in one durable commit (the intake does)."""

    def submit_many(self, records: Sequence[HardwareRecord]) -> list[Receipt]: ...


@dataclass(frozen=True)
class DriverContext:
    """What every driver may need to know about the station."""

    station_id: str
    timezone: ZoneInfo


@dataclass
class DriverHealth:
    connected: bool = False
    last_frame_at: float | None = None
    frames: Counter[str] = field(default_factory=Counter)  # by result: ok, bad_checksum, ...
    detail: str = ""


class Driver(ABC):
    """Base of every driver; a registry maps the config's ``kind`` to a subclass."""

    kind: ClassVar[str]

    def __init__(self, name: str, options: Any, sink: RecordSink, context: DriverContext) -> None:
        self.name = name
        self.options = options
        self.sink = sink
        self.context = context
        self.health = DriverHealth()
        self.stopping = threading.Event()
        self.failed = False  # the read loop ended on an unexpected error
        self.log = logging.getLogger(f"drivers.{name}")
        self._thread: threading.Thread | None = None

    @classmethod
    @abstractmethod
    def parse_options(cls, prefix: str, options: Mapping[str, Any]) -> Any:
        """Validate this kind's config keys; raise ConfigErrors naming ``prefix.key``."""

    @abstractmethod
    def _run(self) -> None:
        """The read loop; returns when :attr:`stopping` is set (or the source ends)."""

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._guarded_run, name=f"driver-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def finished(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def _guarded_run(self) -> None:
        try:
            self._run()
        except Exception:
            self.log.exception("driver %s stopped on an unexpected error", self.name)
            self.health.connected = False
            self.failed = True
