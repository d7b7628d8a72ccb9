"""Prometheus metrics: what an operator's monitoring needs to page someone before a
customer gets a wrongful ticket (a backlog growing, a port disconnected, a paused token).

Journal figures are read at scrape time (indexed queries only), so metrics never disagree
with ``status``. Exposed on a loopback address when ``[metrics] listen`` is set and/or
written atomically (mode 0644, for node_exporter) to ``[metrics] textfile``. The registry
is the service's own, never the process-global one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.files import atomic_write
from agent.forwarder import CONFLICT_REASON
from agent.intake import FULL_META
from agent.journal import RECOVERED_META, Journal, State
from drivers.base import Driver

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class AgentMetrics:
    """The service's metrics registry; ``observe_request`` is the forwarder's hook."""

    def __init__(
        self,
        journal: Journal,
        drivers: Sequence[Driver],
        controller_state: Callable[[], str],
        clock_skew: Callable[[], dict[str, float]] = dict,
        *,
        station_open: Callable[[], bool] = lambda: True,
        send_window: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "paystation_requests",
            "Requests to the controller, by how the answer was read",
            ["outcome"],
            registry=self.registry,
        )
        self.failures = Counter(
            "paystation_send_failures",
            "Requests that got no answer, by cause (dns, refused, tls, timeout, proxy, broken, "
            "answer, other)",
            ["cause"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "paystation_request_duration_seconds",
            "Time from sending a record to the controller's answer (or failure)",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(
            _JournalCollector(
                journal,
                drivers,
                controller_state,
                clock_skew,
                _Readings(station_open, send_window, started_at=time.time()),
            )
        )
        self._server: Any = None

    def observe_request(self, outcome: str, seconds: float, cause: str = "") -> None:
        self.requests.labels(outcome).inc()
        if cause:
            self.failures.labels(cause).inc()
        self.duration.observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> None:
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)

    def write_textfile(self, path: Path) -> None:
        """Atomically replace ``path``; 0644 so node_exporter (another user) can read it."""
        atomic_write(path, self.text(), mode=0o644, durable=False)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass(frozen=True)
class _Readings:
    """What the service knows beside the journal and the drivers, read at each scrape."""

    station_open: Callable[[], bool]
    send_window: Callable[[], float]
    started_at: float  # the service's start: a port silent since then is silent that long


class _JournalCollector(Collector):
    def __init__(
        self,
        journal: Journal,
        drivers: Sequence[Driver],
        controller_state: Callable[[], str],
        clock_skew: Callable[[], dict[str, float]],
        readings: _Readings,
    ) -> None:
        self.readings = readings
        self.clock_skew = clock_skew
        self.journal = journal
        self.drivers = drivers
        self.controller_state = controller_state
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            counts = self.journal.counts()
            summary = self.journal.summary()
            meta = self.journal.meta()
            agent_errors = int(meta.get("agent_errors", "0"))
            conflicts = self.journal.dead_with_reason(CONFLICT_REASON)
        records = GaugeMetricFamily(
            "paystation_records", "Records in the journal, by state", labels=["state"]
        )
        for state in State:
            records.add_metric([state.value], counts[state])
        yield records
        yield GaugeMetricFamily(
            "paystation_backlog_records",
            "Records waiting to be sent",
            value=counts[State.PENDING],
        )
        yield GaugeMetricFamily(
            "paystation_active_sessions_pending",
            "Pending records whose parking session is still running (wrongful-ticket risk)",
            value=summary["active_pending"],
        )
        yield GaugeMetricFamily(
            "paystation_oldest_pending_age_seconds",
            "Age of the oldest pending record (0 when none)",
            value=summary["oldest_pending_s"] or 0.0,
        )
        yield GaugeMetricFamily(
            "paystation_last_success_timestamp_seconds",
            "When the controller last accepted a record (0 = never)",
            value=summary["last_sent_at"] or 0.0,
        )
        yield GaugeMetricFamily(
            "paystation_possible_duplicates",
            "Sends whose outcome was unknown (no answer came), so the controller may have "
            "the record twice",
            value=summary["unknown_outcomes"],
        )
        yield GaugeMetricFamily(
            "paystation_permit_conflicts",
            "Dead records the controller answered 9022 on a first attempt: another record "
            "holds the same permitNo (fix the numbering, then requeue)",
            value=conflicts,
        )
        yield CounterMetricFamily(
            "paystation_agent_errors",
            "Answers the agent failed to read because of an error in its own code (each is "
            "retried and counted as a possible duplicate)",
            value=agent_errors,
        )
        yield GaugeMetricFamily(
            "paystation_controller_paused",
            "1 while forwarding is paused because the token or licence was refused",
            value=1.0 if self.controller_state() == "paused" else 0.0,
        )
        yield GaugeMetricFamily(
            "paystation_send_window",
            "Requests the forwarder lets be in flight now: fewer while the controller "
            "struggles, up to controller.concurrency",
            value=self.readings.send_window(),
        )
        yield GaugeMetricFamily(
            "paystation_journal_disk_full",
            "1 while new sales are refused (NAKed) for lack of space for the journal",
            value=1.0 if meta.get(FULL_META) else 0.0,
        )
        yield GaugeMetricFamily(
            "paystation_journal_recovered",
            "1 from a recovery of a damaged journal until a technician acknowledges it "
            "(paystation-agent journal acknowledge)",
            value=1.0 if meta.get(RECOVERED_META) else 0.0,
        )
        yield GaugeMetricFamily(
            "paystation_station_open",
            "1 within the station's opening hours (agent.opening_hours, local time)",
            value=1.0 if self.readings.station_open() else 0.0,
        )
        yield from self._ports()

    def _ports(self) -> Iterable[Metric]:
        frames = CounterMetricFamily(
            "paystation_frames",
            "Frames read from the hardware, by result",
            labels=["driver", "result"],
        )
        connected = GaugeMetricFamily(
            "paystation_port_connected", "1 while the driver's port is open", labels=["driver"]
        )
        last_frame = GaugeMetricFamily(
            "paystation_port_last_frame_timestamp_seconds",
            "When the driver last read a frame (the service's start if none since)",
            labels=["driver"],
        )
        for driver in self.drivers:
            for result, n in sorted(driver.health.frames.items()):
                frames.add_metric([driver.name, result], n)
            connected.add_metric([driver.name], 1.0 if driver.health.connected else 0.0)
            seen = driver.health.last_frame_at
            last_frame.add_metric([driver.name], seen or self.readings.started_at)
        yield frames
        yield connected
        yield last_frame
        skew = GaugeMetricFamily(
            "paystation_station_clock_skew_seconds",
            "Latest sale's start time minus this PC's clock (a station clock set wrong)",
            labels=["driver"],
        )
        for name, seconds in sorted(self.clock_skew().items()):
            skew.add_metric([name], seconds)
        yield skew
