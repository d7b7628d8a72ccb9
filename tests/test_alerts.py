"""The shipped alerting rules and dashboard (deploy/): valid for Prometheus, each alert fires
and resolves as its unit tests say, and every metric they name is one a running agent
really exports, so a renamed metric breaks the build instead of silencing a pager."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.emulator import ControllerEmulator
from tests.conftest import (
    ROOT,
    eventually,
    simulated_driver,
    start_agent,
    stop_agent,
    write_config,
)

RULES = ROOT / "deploy" / "prometheus" / "paystation-agent.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "paystation-agent.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "paystation-fleet.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool is not installed (Debian: apt-get install prometheus; .ci/run does)",
)
# the agent's own metrics; `up` and node_exporter's textfile metric come from Prometheus
OWN_METRIC = re.compile(r"\bpaystation_[a-z0-9_]+\b")


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert PROMTOOL is not None, "promtool is required in CI (.ci/run installs it)"
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, timeout=60)


@needs_promtool
def test_rules_are_valid_prometheus_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


@needs_promtool
def test_every_alert_fires_and_resolves_as_its_unit_tests_say() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == set(re.findall(r"- alert: (\w+)", RULES.read_text())), "an untested alert"


def test_every_alert_says_what_to_do_next() -> None:
    blocks = re.split(r"\n\s+- alert: ", RULES.read_text())[1:]
    assert blocks
    for block in blocks:
        name = block.split("\n", 1)[0]
        assert "severity:" in block, name
        assert "paystation-agent " in block or "systemctl" in block, f"{name}: no command"


def test_dashboard_queries_and_rules_name_only_exported_metrics(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    scrape = _scrape_running_agent(tmp_path, emulator)
    exported = {s.name for f in text_string_to_metric_families(scrape) for s in f.samples}
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for source, texts in (("dashboard", queries), ("rules", [RULES.read_text()])):
        named = {name for text in texts for name in OWN_METRIC.findall(text)}
        assert named, source
        assert named <= exported, f"{source} names metrics nobody exports: {named - exported}"


@needs_promtool
def test_a_real_scrape_passes_promtool_check_metrics(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    result = promtool("check", "metrics", stdin=_scrape_running_agent(tmp_path, emulator).encode())
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_the_station_is_closed_outside_its_opening_hours(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    """Hours that end an hour before now (station time): the silent-meter alert holds."""
    now = datetime.now(ZoneInfo("America/Toronto"))
    hours = f"{(now + timedelta(hours=1)):%H}:00-{(now - timedelta(hours=1)):%H}:00"
    scrape = _scrape_running_agent(tmp_path, emulator, f'opening_hours = "{hours}"\n')
    families = {f.name: f for f in text_string_to_metric_families(scrape)}
    assert families["paystation_station_open"].samples[0].value == 0
    [silent] = families["paystation_port_last_frame_timestamp_seconds"].samples
    assert silent.labels["driver"] == "meter-1" and silent.value > time.time() - 60


def _scrape_running_agent(tmp_path: Path, emulator: ControllerEmulator, agent: str = "") -> str:
    """The /metrics page of a real agent that has read, journaled and delivered sales."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path, emulator.url, drivers=simulated_driver(count=5))
    text = config.read_text().replace("[agent]\n", "[agent]\n" + agent, 1)
    config.write_text(text + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        eventually(lambda: len(emulator.accepted) == 5, what="five sales delivered")
        url = f"http://127.0.0.1:{port}/metrics"
        return str(urllib.request.urlopen(url, timeout=5).read().decode())
    finally:
        assert stop_agent(agent) == 0
