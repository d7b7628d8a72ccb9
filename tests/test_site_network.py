"""Site networks, with real parts on loopback: a real forward proxy (tinyproxy, its own
process) between the agent and an HTTPS emulator whose certificate a test CA signed.

What a site's installer notices: sales reach the controller through the site's proxy once
the site's CA is trusted (``controller.ca_file``, or the trust store OpenSSL reads,
``SSL_CERT_FILE`` here standing for update-ca-certificates); without it nothing is sent and
the log names the certificate's issuer; ``NO_PROXY`` sends direct; a proxy that wants
credentials gets them from the credential file; the proxy's password and the token appear
in no log line. Each failure says its cause (name, refusal, certificate, proxy) apart.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import ProxyAuth, Secret
from agent.emulator import PUSH_PATH, ControllerEmulator
from agent.errors import SendError
from agent.forwarder import HttpSender, classify_failure
from tests.certs import Authority, make_ca, server_context
from tests.conftest import (
    TOKEN,
    agent_env,
    cli,
    eventually,
    simulated_driver,
    start_agent,
    stop_agent,
    write_config,
)

PASSWORD = "pr0xy-Pa55-9b7e"  # distinctive, so a leak anywhere is easy to find
PAYLOAD = {
    "Amount": "2.00",
    "CurrencyID": "CAD",
    "LicencePlate": "PL8RDR",
    "zone": "Lot 4",
    "permitNo": "NET-1",
    "startTime": "2026-07-02T09:00:00",
    "endTime": "2026-07-02T09:30:00",
}
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")

pytestmark = pytest.mark.skipif(
    shutil.which("tinyproxy") is None,
    reason="tinyproxy is needed for a real forward proxy (apt-get install tinyproxy; "
    ".ci/run installs it)",
)


@dataclass
class Proxy:
    url: str
    log: Path

    def requests(self) -> list[str]:
        """The request lines the proxy logged (``CONNECT localhost:PORT HTTP/1.1``)."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [line.split("): ", 1)[1] for line in lines if "Request (file descriptor" in line]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    """Start a tinyproxy on a free loopback port: ``auth`` (user, password) makes it ask for
    Basic credentials (407 without them); ``deny`` a host name it refuses (403)."""
    running: list[subprocess.Popen[bytes]] = []

    def start(auth: tuple[str, str] | None = None, deny: str | None = None) -> Proxy:
        port = free_port()
        directory = tmp_path / f"proxy-{port}"
        directory.mkdir()
        lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 10", "LogLevel Info",
                 "MaxClients 20", "Allow 127.0.0.1"]  # fmt: skip
        if auth:
            lines.append(f"BasicAuth {auth[0]} {auth[1]}")
        if deny:
            (directory / "filter").write_text(f"^{deny}$\n")
            lines += [f'Filter "{directory / "filter"}"', "FilterType ere", "FilterURLs Off"]
        (directory / "tinyproxy.conf").write_text("\n".join(lines) + "\n")
        log = directory / "tinyproxy.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                ["tinyproxy", "-d", "-c", str(directory / "tinyproxy.conf")],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        running.append(process)

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                assert process.poll() is None, log.read_text()
                return False
            return True

        eventually(listening, what="tinyproxy listening")
        return Proxy(f"http://127.0.0.1:{port}", log)

    yield start
    for process in running:
        process.terminate()
        process.wait(10)


@pytest.fixture
def site_ca() -> Authority:
    return make_ca("Site Test CA")


@pytest.fixture
def controller(site_ca: Authority, tmp_path: Path) -> Iterator[ControllerEmulator]:
    """The emulator over HTTPS, its certificate signed by the site's CA."""
    with ControllerEmulator(token=TOKEN, tls=server_context(site_ca, tmp_path)) as emu:
        yield emu


@pytest.fixture(autouse=True)
def no_proxy_of_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever proxy this machine's environment names, the tests choose their own."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def url_of(emulator: ControllerEmulator) -> str:
    """By name, as a site's controller is: the proxy resolves it, TLS checks it."""
    return f"https://localhost:{emulator.port}{PUSH_PATH}"


def sender(url: str, **kwargs: object) -> HttpSender:
    return HttpSender(url, lambda: Secret(TOKEN), timeout_s=5.0, **kwargs)  # type: ignore[arg-type]


def post_fails(s: HttpSender) -> SendError:
    try:
        with pytest.raises(SendError) as caught:
            s.post(PAYLOAD)
    finally:
        s.close()
    return caught.value


# --- delivery through the proxy ------------------------------------------------------------


def test_a_sale_goes_through_the_sites_proxy_with_its_credentials_and_ca_file(
    controller: ControllerEmulator,
    start_proxy: Callable[..., Proxy],
    site_ca: Authority,
    tmp_path: Path,
) -> None:
    """The whole agent, as installed on such a site: controller.proxy, controller.ca_file,
    the proxy's credentials from LoadCredential= (the credentials directory). Every sale
    arrives; the proxy saw the tunnel; neither the password nor the token is in the log."""
    proxy = start_proxy(auth=("parking", PASSWORD))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "proxy-auth").write_text(f"parking:{PASSWORD}\n")
    ca_file = site_ca.write(tmp_path / "site-ca.pem")
    config = write_config(
        tmp_path,
        url_of(controller),
        drivers=simulated_driver(count=5),
        controller_extra=f'proxy = "{proxy.url}"\nca_file = "{ca_file}"',
    )
    log = tmp_path / "agent.log"
    agent = start_agent(config, log, agent_env(CREDENTIALS_DIRECTORY=str(credentials)))
    try:
        eventually(lambda: len(controller.accepted) == 5, what="5 sales through the proxy")
    finally:
        stop_agent(agent)
    assert f"CONNECT localhost:{controller.port} HTTP/1.1" in proxy.requests()
    text = log.read_text()
    assert f"through proxy {proxy.url} (controller.proxy)" in text
    assert PASSWORD not in text and TOKEN not in text


def test_the_environments_proxy_and_trust_store_are_used(
    controller: ControllerEmulator,
    start_proxy: Callable[..., Proxy],
    site_ca: Authority,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTPS_PROXY as curl reads it; the CA in the trust store OpenSSL reads (SSL_CERT_FILE
    stands here for what update-ca-certificates installs)."""
    proxy = start_proxy()
    monkeypatch.setenv("SSL_CERT_FILE", str(site_ca.write(tmp_path / "store.pem")))
    s = sender(url_of(controller), environ={"HTTPS_PROXY": proxy.url})
    try:
        reply = s.post(PAYLOAD)
    finally:
        s.close()
    assert reply.status == 200
    assert [a.payload["permitNo"] for a in controller.accepted] == ["NET-1"]
    assert s.route.source == "HTTPS_PROXY"
    assert f"CONNECT localhost:{controller.port} HTTP/1.1" in proxy.requests()


def test_without_the_sites_ca_nothing_is_sent_and_the_issuer_is_named(
    controller: ControllerEmulator, start_proxy: Callable[..., Proxy]
) -> None:
    proxy = start_proxy()
    error = post_fails(sender(url_of(controller), proxy=proxy.url))
    assert error.reason.startswith(
        "ConnectError: certificate verify failed for localhost (issuer: "
        "CN=Site Test CA,O=Test Parking Site; unable to get local issuer certificate); "
    )
    assert classify_failure(error).cause == "tls"
    assert controller.accepted == []


def test_no_proxy_sends_direct_and_an_unreachable_proxy_is_named(
    controller: ControllerEmulator, site_ca: Authority, tmp_path: Path
) -> None:
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    ca_file = site_ca.write(tmp_path / "ca.pem")
    direct = sender(
        url_of(controller),
        ca_file=ca_file,
        environ={"https_proxy": dead_proxy, "no_proxy": "example.org,localhost"},
    )
    try:
        assert direct.post(PAYLOAD).status == 200
    finally:
        direct.close()
    assert str(direct.route) == "direct (localhost is in NO_PROXY)"
    loopback = sender(
        f"https://127.0.0.1:{controller.port}{PUSH_PATH}", environ={"HTTPS_PROXY": dead_proxy}
    )
    assert loopback.route.proxy is None
    loopback.close()

    error = post_fails(
        sender(url_of(controller), ca_file=ca_file, environ={"https_proxy": dead_proxy})
    )
    port = dead_proxy.rsplit(":", 1)[1]
    assert error.reason == (
        f"ConnectError: proxy unreachable ({dead_proxy}): connection refused by 127.0.0.1:{port}"
    )
    assert classify_failure(error).cause == "proxy"


def test_a_proxy_that_wants_credentials_is_told_apart_and_the_password_never_shows(
    controller: ControllerEmulator,
    start_proxy: Callable[..., Proxy],
    site_ca: Authority,
    tmp_path: Path,
) -> None:
    proxy = start_proxy(auth=("parking", PASSWORD))
    ca_file = site_ca.write(tmp_path / "ca.pem")
    error = post_fails(sender(url_of(controller), proxy=proxy.url, ca_file=ca_file))
    assert error.reason.startswith(f"ProxyError: proxy {proxy.url} asks for credentials")
    assert error.reason.endswith("(407 Proxy Authentication Required)")

    wrong = ProxyAuth("parking", Secret("not-" + PASSWORD))
    error = post_fails(
        sender(url_of(controller), proxy=proxy.url, proxy_auth=wrong, ca_file=ca_file)
    )
    assert error.reason == (
        f"ProxyError: proxy {proxy.url} asks for credentials or refused them (user:password in "
        "the proxy-auth credential or controller.proxy_auth_file) (401 Unauthorized)"
    )
    assert PASSWORD not in str(error)

    right = ProxyAuth("parking", Secret(PASSWORD))
    s = sender(url_of(controller), proxy=proxy.url, proxy_auth=right, ca_file=ca_file)
    try:
        assert s.post(PAYLOAD).status == 200
    finally:
        s.close()
    assert len(controller.accepted) == 1


def test_a_proxy_that_refuses_the_tunnel_is_not_taken_for_the_controller(
    controller: ControllerEmulator,
    start_proxy: Callable[..., Proxy],
    site_ca: Authority,
    tmp_path: Path,
) -> None:
    proxy = start_proxy(deny="localhost")
    error = post_fails(
        sender(url_of(controller), proxy=proxy.url, ca_file=site_ca.write(tmp_path / "ca.pem"))
    )
    assert error.reason == (
        f"ProxyError: proxy {proxy.url} refused the tunnel to localhost:{controller.port} "
        "(the site's proxy rules) (403 Filtered)"
    )
    assert error.unknown is False and controller.accepted == []


# --- the cause of "controller unreachable" -------------------------------------------------


def test_a_name_that_does_not_resolve_and_a_refused_port_are_told_apart() -> None:
    dns = post_fails(sender("https://controller.invalid/api/push"))
    assert (
        dns.reason == "ConnectError: controller unreachable: DNS cannot resolve controller.invalid"
    )
    port = free_port()
    refused = post_fails(sender(f"https://127.0.0.1:{port}/api/push"))
    assert refused.reason == (
        f"ConnectError: controller unreachable: connection refused by 127.0.0.1:{port}"
    )
    assert [classify_failure(e).cause for e in (dns, refused)] == ["dns", "refused"]


# --- check-config --online -----------------------------------------------------------------


def online(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return cli("check-config", "--online", "--config", str(config), env=agent_env(**env))


def online_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.split("# online checks\n", 1)[1].splitlines()


def test_check_config_online_through_the_proxy(
    controller: ControllerEmulator,
    start_proxy: Callable[..., Proxy],
    site_ca: Authority,
    tmp_path: Path,
) -> None:
    proxy = start_proxy()
    config = write_config(
        tmp_path,
        url_of(controller),
        controller_extra=f'ca_file = "{site_ca.write(tmp_path / "ca.pem")}"',
    )
    result = online(config, HTTPS_PROXY=proxy.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert online_lines(result) == [
        f"ok    route: through proxy {proxy.url} (HTTPS_PROXY)",
        "ok    DNS: localhost is resolved by the proxy",
        "ok    connection: certificate of localhost verified (issuer: CN=Site Test CA,O=Test "
        "Parking Site)",
        "ok    token accepted (the empty test record was refused, as it should be: ErrorCode "
        "9006: LicencePlate: required (HTTP 400))",
        "warn  no [[drivers]] configured: nothing is read from a pay station",
    ]
    assert controller.accepted == [] and TOKEN not in result.stdout + result.stderr


def test_check_config_online_names_what_fails(
    site_ca: Authority, tmp_path: Path, controller: ControllerEmulator
) -> None:
    other_token = ControllerEmulator(token="ANOTHER-TOKEN", tls=server_context(site_ca, tmp_path))
    with other_token:
        ca = f'ca_file = "{site_ca.write(tmp_path / "ca.pem")}"'
        config = write_config(
            tmp_path,
            url_of(other_token),
            controller_extra=ca,
            drivers='[[drivers]]\nkind = "serial"\nname = "gone"\nport = "/dev/ttyNOSUCH9"\n',
        )
        result = online(config)
    assert result.returncode == 69, result.stdout + result.stderr
    lines = online_lines(result)
    assert lines[0] == "ok    route: direct (no proxy configured)"
    assert lines[1].startswith("ok    DNS: localhost resolves to ")
    assert lines[3] == (
        "FAIL  token refused: ErrorCode 9002: apiToken: not permitted to create permits (HTTP 403)"
    )
    assert lines[4] == "FAIL  driver 'gone': port /dev/ttyNOSUCH9: no such device"
    assert TOKEN not in result.stdout + result.stderr

    no_ca = write_config(tmp_path, url_of(controller))
    lines = online_lines(online(no_ca))
    assert lines[2].startswith(
        "FAIL  ConnectError: certificate verify failed for localhost (issuer: CN=Site Test CA"
    )


def test_check_config_online_finds_a_busy_port(
    controller: ControllerEmulator, site_ca: Authority, tmp_path: Path
) -> None:
    import serial

    controller_fd, device_fd = os.openpty()
    device = os.ttyname(device_fd)
    holder = serial.Serial(device, exclusive=True)
    try:
        config = write_config(
            tmp_path,
            url_of(controller),
            controller_extra=f'ca_file = "{site_ca.write(tmp_path / "ca.pem")}"',
            drivers=f'[[drivers]]\nkind = "serial"\nname = "meter"\nport = "{device}"\n',
        )
        busy = online(config)
        holder.close()
        free = online(config)
    finally:
        holder.close()
        os.close(controller_fd)
        os.close(device_fd)
    assert busy.returncode == 69
    assert online_lines(busy)[-1] == (
        f"FAIL  driver 'meter': port {device}: busy: another process holds it open (a running "
        "agent, a stray screen); stop it to check the port"
    )
    assert free.returncode == 0, free.stdout
    assert (
        online_lines(free)[-1]
        == f"ok    driver 'meter': port {device} opens exclusively (closed again)"
    )
