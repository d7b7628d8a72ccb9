"""The README's by-hand install guide, run as written, line by line, under a real systemd.

The guide's shell block is read from README.md and run by ``sh -e`` in a checkout of the
repository inside a volatile systemd-nspawn container (the package test's, tests/test_deb.py),
as root, as a technician would type it. Where the guide hands over to a person, a stand-in
does what they would: ``$EDITOR`` writes this station's config and the token, and
``journalctl -f`` is watched for a few seconds and left. The controller is the emulator on
the host's loopback. The container's volatile /etc is given the host's /etc/ssl, as a
Debian PC has it (pip reaches PyPI over TLS). Needs what the package test needs but the
packaging tools (root, systemd-nspawn) and pip reaching PyPI from the container; skipped
elsewhere with the reason, a failure under CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from agent.emulator import ControllerEmulator
from tests.conftest import ROOT, TOKEN
from tests.test_deb import Container, until

GUIDE_HEADING = "## Install on a pay-station PC"
CHECKOUT = "/srv/checkout"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's, for root

# The technician's editor: the config of this station (a simulated meter, the controller on
# the host's loopback), and the token, one line. The meter's sales are all valid (by default
# one in fifty is not, as a real meter's: then fewer than ten would reach the controller).
EDITOR = """#!/bin/sh
case "$1" in
  */config.toml) cat /srv/station.toml > "$1" ;;
  */api-token) echo "{token}" > "$1" ;;
  *) echo "unexpected edit: $1" >&2; exit 1 ;;
esac
"""

STATION = """[agent]
station_id = "PS-GUIDE"
timezone   = "America/Toronto"

[controller]
url        = "{url}"
token_file = "/etc/paystation-agent/api-token"

[zones.map]
"1" = "Lot 1"
"2" = "Lot 2"

[[drivers]]
kind  = "simulated"
name  = "meter-1"
rate  = 5.0
count = 10
zones = ["1", "2"]
invalid_rate = 0.0
"""

# ``journalctl -f`` follows forever: the person reads it a moment, then presses Ctrl-C.
WATCH = 'journalctl() { timeout 3 /usr/bin/journalctl --no-pager "$@" || true; }\n'


def guide() -> str:
    """The first ```sh block under the guide's heading, exactly as the README has it."""
    text = (ROOT / "README.md").read_text()
    section = text.split(GUIDE_HEADING, 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "no shell block in the install guide"
    return match.group(1)


def _missing() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool, package in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    return missing


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    missing = _missing()
    if missing and os.environ.get("CI"):
        pytest.fail("the install guide must run under CI; missing: " + ", ".join(missing))
    if missing:
        pytest.skip("the install guide under a real systemd needs: " + ", ".join(missing))
    work = tmp_path_factory.mktemp("guide")
    checkout = work / "checkout" / "paystation-agent"
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            target = checkout / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (work / "container").mkdir()
    container = Container(work / "container", (), binds=((work / "checkout", CHECKOUT),))
    try:
        # what a Debian PC has in /etc and the volatile one lacks: its trust store (pip
        # reaches PyPI over TLS)
        etc = subprocess.run(
            ["tar", "-C", "/", "-ch", "etc/ssl"], capture_output=True, check=True
        ).stdout
        container.run("tar", "-C", "/", "-x", input=etc)
        yield container
    finally:
        container.stop()


def _evidence(box: Container) -> str:
    """What a technician would look at: the status and the service's log."""
    status = box.run("paystation-agent", "status", check=False)
    log = box.run("journalctl", "-u", "paystation-agent", "--no-pager", "-n", "60", check=False)
    return f"status:\n{status.stdout}{status.stderr}\nlog:\n{log.stdout}"


def _refusals(emulator: ControllerEmulator) -> str:
    return "".join(f"refused: {refusal}\n" for refusal in emulator.refusals[:5])


@pytest.fixture(scope="module")
def emulator() -> Iterator[ControllerEmulator]:
    with ControllerEmulator(token=TOKEN) as emu:
        yield emu


def test_the_install_guide_as_written_gets_sales_to_the_controller(
    box: Container, emulator: ControllerEmulator
) -> None:
    box.write("/srv/station.toml", STATION.format(url=emulator.url))
    box.write("/srv/editor", EDITOR.format(token=TOKEN), mode="0755")
    script = f"export EDITOR=/srv/editor PATH={ROOT_PATH}\n{WATCH}cd {CHECKOUT}\n{guide()}"
    result = box.run("sh", "-ec", script, check=False, timeout=600)
    assert result.returncode == 0, f"the guide stopped:\n{result.stdout}\n{result.stderr}"

    assert box.run("systemctl", "is-active", "paystation-agent").stdout.strip() == "active"
    try:
        until(lambda: len(emulator.accepted) >= 10, timeout=60, what="the sales at the controller")
    except AssertionError as missing:
        there = f"{len(emulator.accepted)} there\n{_refusals(emulator)}"
        raise AssertionError(f"{missing}: {there}{_evidence(box)}") from None
    assert {a.payload["permitNo"].split("-")[1] for a in emulator.accepted} == {"GUIDE"}
    assert "PS-GUIDE" in result.stdout  # the guide's `paystation-agent status`
    modes = box.sh("stat -c '%a %U %G %n' /etc/paystation-agent /etc/paystation-agent/*").stdout
    assert "750 root paystation-agent /etc/paystation-agent\n" in modes
    assert "600 root root /etc/paystation-agent/api-token" in modes
    warnings = box.run("journalctl", "-u", "paystation-agent", "--no-pager").stdout
    assert "mode is different" not in warnings, "the unit and the guide disagree on modes"
    assert TOKEN not in warnings
