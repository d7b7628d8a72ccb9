"""Clock trouble. A pay station whose clock is far ahead of or behind this PC's: its sales
are still delivered with the times the station stamped (the receipt the customer holds),
and the offset is flagged in ``status`` and in the metrics. This PC's own clock jumping
(NTP stepping it, a technician setting it) must not stretch or skip retry waits: backoff
runs on the monotonic clock.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.emulator import ControllerEmulator
from agent.journal import Journal
from drivers.framing import ACK
from tests.conftest import cli, eventually, write_config
from tests.test_forwarder import Pipeline
from tests.test_serial import FRAMER, ZONE, Pty, run_agent, sale, serial_driver, stop


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def station_time(offset: timedelta) -> datetime:
    return datetime.now(ZONE).replace(tzinfo=None, microsecond=0) + offset


def skew_metric(port: int) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith('paystation_station_clock_skew_seconds{driver="meter-1"}'):
            return float(line.split()[-1])
    return None


def test_a_station_clock_far_off_is_flagged_and_its_sales_still_delivered(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    device = Pty()
    port = free_port()
    config = write_config(tmp_path, emulator.url, drivers=serial_driver(device.path))
    config.write_text(config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    log = tmp_path / "agent.log"
    agent = run_agent(config, log)
    try:
        eventually(lambda: "open (9600" in log.read_text(), what="the agent's port open")
        for n, offset in enumerate((timedelta(hours=3), timedelta(hours=-5)), start=1):
            txn = f"K-{n}"
            start = station_time(offset)
            fields = {"START": start.isoformat(), "END": (start + timedelta(hours=1)).isoformat()}
            device.write(FRAMER.encode(sale(txn, **fields)))
            assert device.answer() == ACK
            eventually(lambda n=n: len(emulator.accepted) >= n, what=f"{txn} delivered")
            sent = emulator.accepted[-1].payload
            stamped = start.replace(tzinfo=ZONE).astimezone(UTC)
            assert sent["startTime"] == stamped.strftime("%Y-%m-%dT%H:%M:%S"), "not as stamped"

            direction = "ahead of" if offset > timedelta(0) else "behind"
            eventually(
                lambda direction=direction: (
                    direction in cli("status", "--config", str(config)).stdout
                ),
                what=f"status says the clock is {direction}",
            )
            status = cli("status", "--config", str(config)).stdout
            assert "CHECK THE STATION'S CLOCK" in status and "clock meter-1" in status
            skew = skew_metric(port)
            assert skew is not None and abs(skew - offset.total_seconds()) < 120
    finally:
        stop(agent)
        device.close()


@pytest.mark.parametrize("jump", [+86400.0, -86400.0])
def test_the_pcs_clock_jumping_does_not_stretch_the_backoff(
    journal: Journal, emulator: ControllerEmulator, monkeypatch: pytest.MonkeyPatch, jump: float
) -> None:
    """While the controller is down, the wall clock jumps by a day. If any wait were
    computed from time.time(), a jump back would stall delivery for a day and a jump ahead
    would make waits negative; with monotonic waits the sale goes out as soon as the
    controller returns, within the (test's short) backoff."""
    pipe = Pipeline(journal, emulator)
    emulator.go_down()
    pipe.forwarder.start()
    try:
        record = pipe.sale()
        eventually(lambda: pipe.forwarder.requests["transient"] >= 3, what="retries while down")
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + jump)
        emulator.come_up()
        eventually(lambda: pipe.state_of(record) == "sent", timeout=5, what="delivered")
    finally:
        pipe.forwarder.stop()
