"""The unit file as systemd reads it (systemd-analyze works without systemd as PID 1)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

UNIT = ROOT / "systemd" / "paystation-agent.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


@needs_analyze
def test_unit_exposure_is_at_most_1_5() -> None:
    result = subprocess.run(
        [str(ANALYZE), "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.5


def test_unit_does_not_restart_on_a_config_error() -> None:
    text = UNIT.read_text()
    assert "RestartPreventExitStatus=78" in text
    assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
