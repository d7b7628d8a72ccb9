"""The technicians' commands as they are used on site: as a user who may read the config
and the journal but not the token (the service's own user: the token file is root's
alone), on a fresh install where the service never ran, and beside a running service;
``status``'s exit codes as a monitoring script reads them; and the exact words of each
message a technician reads.

The user is ``nobody``, reached with ``setpriv`` (root only, skipped elsewhere with the
reason): the test files live in a directory of their own that ``nobody`` may read, the
token file is root's 0600 as the installer writes it, and the service, as under systemd,
reads its own copy of the token from ``$CREDENTIALS_DIRECTORY``.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands import main
from agent.emulator import ControllerEmulator
from agent.intake import FULL_META
from agent.journal import RECOVERED_META, Journal
from agent.service import RunLock
from tests.conftest import (
    ROOT,
    STATUS_CONTRACT_KEYS,
    TOKEN,
    agent_env,
    cli,
    eventually,
    simulated_driver,
    stop_agent,
)
from tests.scenarios.conftest import submit_sale

SETPRIV = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _nobody_can_run_the_agent() -> str | None:
    """Why the tests as another user cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root, to run the commands as the user nobody (setpriv)"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux) to run the commands as the user nobody"
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return "needs the user nobody"
    probe = subprocess.run(
        [*SETPRIV, sys.executable, "-c", "import agent"], capture_output=True, cwd=ROOT
    )
    if probe.returncode != 0:
        return "the user nobody cannot run this checkout's python (its directories are private)"
    return None


needs_another_user = pytest.mark.skipif(
    _nobody_can_run_the_agent() is not None, reason=str(_nobody_can_run_the_agent())
)


class Site:
    """An installed station in a directory ``nobody`` may read: ``etc/`` root's (the config
    0644, the token 0600), ``state/`` the service user's (the journal), ``credentials/``
    the service's copy of the token (as LoadCredential= makes it)."""

    def __init__(self, base: Path, url: str, *, controller: bool = True, drivers: str = "") -> None:
        self.base = base
        base.chmod(0o755)
        etc, state, credentials = base / "etc", base / "state", base / "credentials"
        for directory in (etc, state, credentials):
            directory.mkdir(mode=0o755)
        nobody = pwd.getpwnam("nobody")
        os.chown(state, nobody.pw_uid, nobody.pw_gid)
        self.token_file = etc / "api-token"
        self.token_file.write_text(TOKEN + "\n")
        self.token_file.chmod(0o600)
        copy = credentials / "api-token"
        copy.write_text(TOKEN + "\n")
        copy.chmod(0o400)
        os.chown(copy, nobody.pw_uid, nobody.pw_gid)
        os.chown(credentials, nobody.pw_uid, nobody.pw_gid)
        self.credentials = credentials
        self.journal = state / "journal.sqlite3"
        section = (
            f'[controller]\nurl = "{url}"\ntoken_file = "{self.token_file}"\nbackoff_max_s = 1.0\n'
            if controller
            else ""
        )
        self.config = etc / "config.toml"
        self.config.write_text(
            f'[agent]\nstation_id = "PS-TEST"\ntimezone = "America/Toronto"\n'
            f'journal = "{self.journal}"\n\n{section}\n[zones.map]\n"1" = "Lot 1"\n{drivers}'
        )
        self.config.chmod(0o644)

    def as_nobody(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real CLI as the user nobody, who cannot read the token file."""
        return subprocess.run(
            [*SETPRIV, sys.executable, "-m", "agent", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            env=agent_env(),
            cwd=ROOT,
            timeout=30,
        )

    def start_service(self) -> subprocess.Popen[bytes]:
        """``run`` as the service's user, reading its copy of the token."""
        with open(self.base / "agent.log", "ab") as out:
            return subprocess.Popen(
                [*SETPRIV, sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=agent_env(CREDENTIALS_DIRECTORY=str(self.credentials)),
                cwd=ROOT,
            )


@pytest.fixture
def site_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="paystation-site-"))  # pytest's tmp_path is 0700
    try:
        yield base
    finally:
        shutil.rmtree(base)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


# -- a fresh install, as a user without the token ---------------------------------------


@needs_another_user
@pytest.mark.parametrize("controller", [True, False], ids=["root-only-token", "no-controller"])
def test_every_read_command_works_on_a_fresh_install_without_the_token(
    site_dir: Path, controller: bool
) -> None:
    site = Site(site_dir, "http://127.0.0.1:9/push", controller=controller)

    status = site.as_nobody("status")
    assert status.returncode == 3, status.stderr
    assert "never ran (no journal yet: nothing has been read or sent)" in status.stdout
    assert "backlog       0 pending" in status.stdout and "sent          0" in status.stdout
    assert status.stderr == (
        "paystation-agent: unhealthy: the service has never run (no journal yet) (exit 3)\n"
    )
    doc = json.loads(site.as_nobody("status", "--json").stdout)
    assert doc["running"] is False and doc["never_ran"] is True
    assert {key: doc[key] for key in STATUS_CONTRACT_KEYS} == {
        "pending": 0,
        "held": 0,
        "sent": 0,
        "rejected": 0,
        "dead": 0,
        "active_pending": 0,
        "oldest_pending_s": None,
        "last_success": None,
        "last_error": None,
        "paused": None,
    }

    expected = {
        ("zones", "list"): "1  →  Lot 1\nunmapped codes: hold\n",
        ("zones", "unmapped"): "(none): every zone code in the journal is mapped\n",
        ("dead", "list"): (
            "     id  state    received (UTC)       TXN            plate      zone   reason\n"
            "(none)\n"
        ),
        ("dead", "requeue", "--all"): "nothing to requeue: no dead or rejected records\n",
        ("journal", "acknowledge"): (
            "nothing to acknowledge: the service has never run "
            f"(no journal yet at {site.journal})\n"
        ),
        ("export",): "id,station,txn,state,received_utc,sent_utc,plate,zone_code,zone,amount,"
        "currency,start_utc,end_utc,permit_no,promo_code,reference_id,attempts,"
        "already_existed,unknown_outcomes,last_error\n",
    }
    for command, stdout in expected.items():
        result = site.as_nobody(*command)
        assert (result.returncode, result.stdout) == (0, stdout), (command, result.stderr)
    assert not site.journal.exists()  # nothing made where the service will make its own


@needs_another_user
def test_only_run_and_check_config_need_the_token_and_say_so_as_before(site_dir: Path) -> None:
    site = Site(site_dir, "http://127.0.0.1:9/push")
    for command in ("check-config", "run"):
        result = site.as_nobody(command)
        assert result.returncode == 78, result.stderr
        assert result.stderr == (
            f"paystation-agent: configuration error in {site.config}:\n"
            f"  controller.token_file: cannot read token file {site.token_file}: "
            "PermissionError\n"
        )


# -- beside a running service -----------------------------------------------------------


@needs_another_user
def test_the_service_user_runs_every_command_beside_the_running_service(
    site_dir: Path, emulator: ControllerEmulator
) -> None:
    drivers = simulated_driver(count=6, zones=("1", "7"), seed=3)
    site = Site(site_dir, emulator.url, drivers=drivers)
    service = site.start_service()
    try:

        def journaled() -> bool:
            doc = json.loads(site.as_nobody("status", "--json").stdout or "{}")
            return bool(doc.get("running")) and doc["sent"] + doc["held"] == 6

        eventually(journaled, timeout=30, what="six sales: zone 1's delivered, zone 7's held")
        # the port's health reaches the journal on the service's next health tick
        eventually(
            lambda: "last frame" in site.as_nobody("status").stdout, what="the port's health"
        )
        status = site.as_nobody("status")
        assert status.returncode == 0, (status.stdout, status.stderr)
        assert status.stderr == ""
        assert "service       running\n" in status.stdout
        assert "port meter-1  connected, last frame" in status.stdout
        doc = json.loads(site.as_nobody("status", "--json").stdout)
        assert doc["running"] is True and doc["exit_code"] == 0 and doc["problems"] == []
        assert doc["version"] == doc["service_version"]
        start_line = f"paystation-agent {doc['version']}: station PS-TEST running: 1 driver(s)"
        assert start_line in (site.base / "agent.log").read_text()

        unmapped = site.as_nobody("zones", "unmapped")
        assert unmapped.returncode == 0 and unmapped.stdout.startswith("code ")
        assert "\n7 " in unmapped.stdout
        exported = site.as_nobody("export")
        assert exported.returncode == 0 and len(exported.stdout.splitlines()) == 1 + 6
        for command in (("dead", "list"), ("zones", "list"), ("journal", "acknowledge")):
            result = site.as_nobody(*command)
            assert result.returncode == 0, (command, result.stderr)

        # editing the config needs write access to it: one line, nothing changed
        edit = site.as_nobody("zones", "set", "7", "Lot 7")
        assert edit.returncode == 1
        assert edit.stderr == (
            f"paystation-agent: cannot write {site.config}: Permission denied; nothing was "
            "changed. Run it as a user who may write the config (root, with sudo)\n"
        )
        assert "Lot 7" not in site.config.read_text()
        no_traceback(edit)
    finally:
        assert stop_agent(service) == 0
    stopped = site.as_nobody("status")
    assert stopped.returncode == 3 and "STOPPED" in stopped.stdout
    assert stopped.stderr == "paystation-agent: unhealthy: the service is not running (exit 3)\n"


# -- status's health, as a monitoring script reads it -----------------------------------


def write_site(tmp_path: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\nstation_id = "PS-TEST"\ntimezone = "America/Toronto"\n'
        f'journal = "{tmp_path / "journal.sqlite3"}"\n[zones.map]\n"1" = "Lot 1"\n'
    )
    return config


def status_of(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("status", *extra, "--config", str(config))


HEALTHY_PORT = {"kind": "serial", "connected": True, "last_frame_at": None, "frames": {}}


def test_status_exit_codes_say_what_is_wrong(tmp_path: Path) -> None:
    config = write_site(tmp_path)
    path = tmp_path / "journal.sqlite3"
    lock = RunLock.take(path)  # what a running service holds
    with Journal(path) as journal:
        journal.set_meta({"drivers": json.dumps({"meter-1": HEALTHY_PORT})})
        healthy = status_of(config)
        assert (healthy.returncode, healthy.stderr) == (0, "")
        assert "port meter-1  connected, no frame yet; no frames" in healthy.stdout

        down = {
            "meter-1": {
                **HEALTHY_PORT,
                "connected": False,
                "detail": "cannot open /dev/ttyUSB0: [Errno 2] No such file or directory",
            }
        }
        journal.set_meta({"drivers": json.dumps(down)})
        result = status_of(config)
        assert result.returncode == 6
        assert (
            "port meter-1  DISCONNECTED (cannot open /dev/ttyUSB0: [Errno 2] No such file or "
            "directory), no frame yet" in result.stdout
        )
        assert result.stderr == (
            "paystation-agent: unhealthy: port meter-1 is disconnected: cannot open "
            "/dev/ttyUSB0: [Errno 2] No such file or directory (exit 6)\n"
        )
        journal.set_meta({"drivers": json.dumps({"meter-1": HEALTHY_PORT})})

        with Journal(path, clock=lambda: time.time() - 1200) as earlier:
            submit_sale(earlier, "T1", ZONE="1")  # pending for 20 min: the controller is away
        result = status_of(config)
        assert result.returncode == 7
        assert result.stderr == (
            "paystation-agent: unhealthy: the oldest pending record is 20 min old "
            "(more than --max-pending-age 15 min) (exit 7)\n"
        )
        assert status_of(config, "--max-pending-age", "3600").returncode == 0

        journal.set_meta({RECOVERED_META: "2026-11-28T04:00:00Z: 10 record(s) recovered"})
        result = status_of(config, "--max-pending-age", "3600")
        assert result.returncode == 8
        assert "journal acknowledge" in result.stderr

        full = {"since": time.time(), "cause": "disk", "reason": "disk full"}
        journal.set_meta({FULL_META: json.dumps(full)})
        assert status_of(config).returncode == 5

        journal.set_meta({"paused": "HTTP 401: token refused"})
        result = status_of(config)
        assert result.returncode == 4  # the first problem's code; each one on its own line
        assert result.stderr.splitlines() == [
            "paystation-agent: unhealthy: sending is paused: HTTP 401: token refused (exit 4)",
            "paystation-agent: unhealthy: the journal is full: new sales are refused (NAK) "
            "(exit 5)",
            "paystation-agent: unhealthy: the oldest pending record is 20 min old "
            "(more than --max-pending-age 15 min) (exit 7)",
            "paystation-agent: unhealthy: the journal was recovered from a damaged file and not "
            "yet acknowledged (paystation-agent journal acknowledge) (exit 8)",
        ]
        assert "systemctl reload paystation-agent: it tries again at once" in result.stdout
        doc = json.loads(status_of(config, "--json").stdout)
        assert doc["exit_code"] == 4 and [p["exit_code"] for p in doc["problems"]] == [4, 5, 7, 8]
    lock.release()


def test_status_shows_local_time_beside_utc(tmp_path: Path) -> None:
    config = write_site(tmp_path)
    with Journal(tmp_path / "journal.sqlite3") as journal:
        journal.set_meta({"last_error": "2026-11-28T04:33:05Z record 3 dead: ErrorCode 9033"})
    result = status_of(config)
    assert (
        "last error    2026-11-28T04:33:05Z (2026-11-27 23:33:05 EST local) record 3 dead: "
        "ErrorCode 9033" in result.stdout
    )


def test_version_on_the_command_line_and_in_status(tmp_path: Path) -> None:
    from agent import __version__

    result = cli("--version")
    assert (result.returncode, result.stdout) == (0, f"paystation-agent {__version__}\n")
    assert f"version       {__version__}" in status_of(write_site(tmp_path)).stdout


# -- the words of each message ----------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_zones_set_says_what_it_saved(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_site(tmp_path)
    c = ("--config", str(config))
    code, out, _ = run_cli(capsys, "zones", "set", "7", "Lot 7", *c)
    assert code == 0 and out.splitlines()[0] == f"zone '7' → 'Lot 7' (new); saved to {config}"

    # a code with spaces is the same code, as saved: it replaces, and says so
    code, out, _ = run_cli(capsys, "zones", "set", " 7", "Lot 4", *c)
    assert out.splitlines()[0] == f"zone '7' → 'Lot 4' (was 'Lot 7'); saved to {config}"

    # the name echoed is the name saved
    code, out, _ = run_cli(capsys, "zones", "set", "8", "Lot 8 ", *c)
    assert out.splitlines()[0] == f"zone '8' → 'Lot 8' (new); saved to {config}"
    assert '8 = "Lot 8"\n' in config.read_text()

    # the same mapping again changes nothing and tells no one
    before = config.stat().st_mtime_ns
    code, out, _ = run_cli(capsys, "zones", "set", "8", "Lot 8", *c)
    assert (code, out) == (0, "zone '8' → 'Lot 8' already; nothing changed\n")
    assert config.stat().st_mtime_ns == before


def test_zones_remove_says_what_happens_to_the_codes_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_site(tmp_path)
    code, out, _ = run_cli(capsys, "zones", "remove", "1", "--config", str(config))
    assert code == 0
    assert out.splitlines()[0] == (
        f"zone '1' removed (was 'Lot 1'); saved to {config}; new records with this code will "
        'be held until it is mapped again (zones.unmapped = "hold")'
    )


def test_zones_with_no_action_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_site(tmp_path)
    assert run_cli(capsys, "zones", "--config", str(config)) == (
        0,
        "1  →  Lot 1\nunmapped codes: hold\n",
        "",
    )


def test_dead_requeue_names_the_ids_it_cannot_requeue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_site(tmp_path)
    with Journal(tmp_path / "journal.sqlite3") as journal:
        submit_sale(journal, "T1", ZONE="1")  # pending: not for requeue
    c = ("--config", str(config))
    assert run_cli(capsys, "dead", "requeue", "--all", *c) == (
        0,
        "nothing to requeue: no dead or rejected records\n",
        "",
    )
    code, out, err = run_cli(capsys, "dead", "requeue", "99999", "1", *c)
    assert (code, out) == (1, "")
    assert err == (
        "paystation-agent: record 1 is pending, not dead or rejected: not requeued\n"
        "paystation-agent: record 99999: no such record in the journal\n"
    )


def test_the_emulator_says_it_does_not_read_the_config_it_is_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every command takes --config (contract.md); demo and emulator make their own, and
    say so instead of ignoring it silently (here the emulator then stops on a bad fault)."""
    code, out, err = run_cli(
        capsys, "emulator", "--fault", "nope", "--config", "/etc/paystation-agent/config.toml"
    )
    assert (code, out) == (2, "")
    assert err.splitlines()[0] == (
        "paystation-agent: note: emulator makes its own config; "
        "--config /etc/paystation-agent/config.toml is not read"
    )
    assert "fault kind 'nope'" in err.splitlines()[1]


def test_export_to_a_missing_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_site(tmp_path)
    code, out, err = run_cli(capsys, "export", "-o", "/no/such/dir/x.csv", "--config", str(config))
    assert (code, out) == (1, "")
    assert err == (
        "paystation-agent: cannot write /no/such/dir/x.csv: No such file or directory; "
        "choose a file in a directory that exists and that you may write in\n"
    )


def test_a_file_a_person_names_wrongly_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_cli(
        capsys, "simulate", "--port", "loop://", "--count", "1", "--acked-file", "/no/such/d/a"
    )
    assert (code, err) == (
        1,
        "paystation-agent: /no/such/d/a: No such file or directory; check the path "
        "(its directory must exist)\n",
    )
