"""Receipt numbers that repeat across meters and stations (issue 11, hazard 1).

Two meters on one station and a third on another station all number their receipts from
000001, as meters commonly do. The controller (the emulator with ``dedupe="permit"``) keys
permits by their number alone and answers a repeated ``permitNo`` with 9022. With the
default permit numbering every sale must reach it as its own permit: no 9022 at all.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.emulator import ControllerEmulator
from drivers.framing import ACK
from tests.conftest import TOKEN, cli, eventually, start_agent, stop_agent, write_config
from tests.scenarios.conftest import report
from tests.test_serial import FRAMER, Pty, sale

SALES_PER_METER = 6


def meter(name: str, line: Pty) -> str:
    return f'\n[[drivers]]\nkind = "serial"\nname = "{name}"\nport = "{line.path}"\n'


def station_config(directory: Path, url: str, station: str, meters: dict[str, Pty]) -> Path:
    directory.mkdir()
    config = write_config(directory, url, drivers="".join(meter(n, p) for n, p in meters.items()))
    text = config.read_text().replace('station_id = "PS-TEST"', f'station_id = "{station}"')
    config.write_text(text)
    return config


def status(config: Path) -> dict[str, object]:
    """``status --json`` once healthy: the ports' health reaches the journal on the service's
    next health tick (every 2 s), so a status right after the start may not see them open."""

    def healthy() -> subprocess.CompletedProcess[str] | None:
        result = cli("status", "--json", "--config", str(config))
        return result if result.returncode == 0 else None

    return dict(json.loads(eventually(healthy, what=f"{config} healthy").stdout))


@pytest.fixture
def lines() -> Iterator[list[Pty]]:
    ptys = [Pty() for _ in range(3)]
    yield ptys
    for line in ptys:
        line.close()


def test_meters_and_stations_numbering_from_one_each_reach_the_controller(
    tmp_path: Path, lines: list[Pty]
) -> None:
    meter_a1, meter_a2, meter_b1 = lines
    with ControllerEmulator(token=TOKEN, dedupe="permit") as emulator:
        stations = {
            "PS-NORTH": station_config(
                tmp_path / "north",
                emulator.url,
                "PS-NORTH",
                {"meter-1": meter_a1, "meter-2": meter_a2},
            ),
            "PS-SOUTH": station_config(
                tmp_path / "south", emulator.url, "PS-SOUTH", {"meter-1": meter_b1}
            ),
        }
        agents: list[subprocess.Popen[bytes]] = []
        try:
            for name, config in stations.items():
                log = tmp_path / f"{name}.log"
                agents.append(start_agent(config, log))
                ports = len(config.read_text().split("[[drivers]]")) - 1
                eventually(
                    lambda log=log, ports=ports: log.read_text().count("open (9600") == ports,
                    timeout=30,
                    what=f"{name}'s ports open",
                )
            for n in range(1, SALES_PER_METER + 1):
                for i, line in enumerate(lines):
                    line.write(FRAMER.encode(sale(f"{n:06d}", PLATE=f"CAR{i}X{n}")))
                    assert line.answer(timeout=30) == ACK
            total = SALES_PER_METER * len(lines)
            eventually(
                lambda: emulator.counts()["accepted"] + emulator.counts()["duplicate"] >= total,
                timeout=60,
                what="every sale answered by the controller",
            )
            figures = {name: status(config) for name, config in stations.items()}
        finally:
            for agent in agents:
                stop_agent(agent)

    counts = emulator.counts()
    permits = sorted(a.payload["permitNo"] for a in emulator.accepted)
    report("repeated_receipts", accepted=counts["accepted"], repeats_9022=counts["duplicate"])
    assert counts["duplicate"] == 0, f"{counts['duplicate']} sales answered 9022: {permits}"
    assert len(permits) == len(set(permits)) == total
    assert "PS-NORTH-meter-2-000001" in permits and "PS-SOUTH-meter-1-000001" in permits
    assert figures["PS-NORTH"]["sent"] == 2 * SALES_PER_METER
    assert figures["PS-SOUTH"]["sent"] == SALES_PER_METER
