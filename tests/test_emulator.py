"""The controller emulator, exercised over real HTTP on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.emulator import PUSH_PATH, ControllerEmulator, check_token, validate

TOKEN = "TEST-TOKEN-0042"
ZONES = ("Lot 4", "Lot 5")
ROOT = Path(__file__).resolve().parent.parent
# Plain http only: an empty TLS context spares httpx loading CA certificates for each client.
NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

# The vendor's example from push-api.md, with our test token.
VENDOR_EXAMPLE: dict[str, str] = {
    "apiToken": TOKEN,
    "Amount": "14.50",
    "CurrencyID": "CAD",
    "LicencePlate": "PL8RDR",
    "zone": "Lot 4",
    "permitNo": "L4-1138",
    "startTime": "2018-07-02T09:00:00",
    "endTime": "2018-07-02T09:30:00",
    "promoCode": "DISCOUNT20",
}


def payload(*, drop: tuple[str, ...] = (), **changes: Any) -> dict[str, Any]:
    """The vendor example, with keys dropped and/or changed."""
    body: dict[str, Any] = {k: v for k, v in VENDOR_EXAMPLE.items() if k not in drop}
    body.update(changes)
    return body


@pytest.fixture
def emulator() -> Iterator[ControllerEmulator]:
    with ControllerEmulator(token=TOKEN, zones=ZONES) as emu:
        yield emu


@pytest.fixture(scope="module")
def shared() -> Iterator[ControllerEmulator]:
    """One emulator for the read-only validation cases (rejected records are not stored)."""
    with ControllerEmulator(token=TOKEN, zones=ZONES) as emu:
        yield emu


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with new_client() as http:
        yield http


def new_client() -> httpx.Client:
    return httpx.Client(timeout=5.0, verify=NO_TLS)


def push(http: httpx.Client, emu: ControllerEmulator, body: Any) -> httpx.Response:
    return http.post(emu.url, json=body)


# --------------------------------------------------------------------------- success


def test_vendor_example_is_accepted_with_a_reference_id(
    emulator: ControllerEmulator, client: httpx.Client
) -> None:
    response = push(client, emulator, VENDOR_EXAMPLE)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "success"
    assert uuid.UUID(body["reference_id"]).version == 4
    assert body["InternalReferenceID"] == body["reference_id"]
    [record] = emulator.accepted
    assert record.reference_id == body["reference_id"]
    assert record.payload == {k: v for k, v in VENDOR_EXAMPLE.items() if k != "apiToken"}
    assert emulator.disconnected == []
    assert emulator.counts() == {
        "accepted": 1,
        "duplicate": 0,
        "invalid": 0,
        "auth": 0,
        "fault": 0,
        "overloaded": 0,
        "total": 1,
    }


def test_also_accepted_names_are_accepted(
    emulator: ControllerEmulator, client: httpx.Client
) -> None:
    body = {
        "apiToken": TOKEN,
        "plate": "ABC123",
        "amount": "0.50",
        "currency": "USD",
        "StartDateUtc": "2024-03-10T06:59:00",
        "EndDateUtc": "2024-03-10T08:00:00",
        "ParkingZoneName": "Lot 5",
        "TicketNumber": "T-1",
    }
    assert push(client, emulator, body).json()["status"] == "success"
    assert push(client, emulator, payload(drop=("LicencePlate",), LicensePlate="XYZ")).json()[
        "status"
    ] == ("success")
    assert len(emulator.accepted) == 2


def test_optional_fields_may_be_left_out(
    emulator: ControllerEmulator, client: httpx.Client
) -> None:
    minimal = payload(drop=("Amount", "CurrencyID", "zone", "permitNo", "promoCode"))
    assert push(client, emulator, minimal).json()["status"] == "success"


def test_unknown_zone_is_accepted_but_disconnected(
    emulator: ControllerEmulator, client: httpx.Client
) -> None:
    response = push(client, emulator, payload(zone="Lot 99", permitNo="X-1"))

    assert response.json()["status"] == "success"
    assert [r.payload["zone"] for r in emulator.disconnected] == ["Lot 99"]
    assert len(emulator.accepted) == 1


def test_any_well_formed_token_when_none_is_configured(client: httpx.Client) -> None:
    with ControllerEmulator() as emu:
        assert push(client, emu, payload(apiToken="whatever-123")).json()["status"] == "success"
        assert emu.disconnected == []  # no zones configured: every zone is connected


# --------------------------------------------------------------------------- rejections

TOO_LONG = "x" * 51
CASES: list[tuple[str, dict[str, Any], int]] = [
    ("plate missing", payload(drop=("LicencePlate",)), 9006),
    ("plate blank", payload(LicencePlate="  "), 9006),
    ("plate too long", payload(LicencePlate="A" * 26), 9021),
    ("end missing", payload(drop=("endTime",)), 9004),
    ("end not a time", payload(endTime="tomorrow"), 9005),
    ("end before start", payload(endTime="2018-07-02T08:59:59"), 9005),
    ("end equals start", payload(endTime="2018-07-02T09:00:00"), 9005),
    ("start missing", payload(drop=("startTime",)), 9031),
    ("start with zone suffix", payload(startTime="2018-07-02T09:00:00Z"), 9033),
    ("start with fraction", payload(startTime="2018-07-02T09:00:00.5"), 9033),
    ("start with space", payload(startTime="2018-07-02 09:00:00"), 9033),
    ("start impossible date", payload(startTime="2018-02-30T09:00:00"), 9033),
    ("start short fields", payload(startTime="2018-7-2T9:00:00"), 9033),
    ("amount without cents", payload(Amount="14"), 9033),
    ("amount one decimal", payload(Amount="14.5"), 9033),
    ("amount zero", payload(Amount="0.00"), 9033),
    ("amount negative", payload(Amount="-1.00"), 9033),
    ("amount too long", payload(Amount="1000000.00"), 9030),
    ("amount a number", payload(Amount=14.5), 9033),
    ("currency too long", payload(CurrencyID="C" * 11), 9030),
    ("permitNo too long", payload(permitNo=TOO_LONG), 9030),
    ("TicketNumber too long", payload(TicketNumber=TOO_LONG), 9030),
    ("promoCode too long", payload(promoCode=TOO_LONG), 9030),
    ("zone too long", payload(zone="z" * 201), 9030),
    ("zone null", payload(zone=None), 9033),
    ("plate a number", payload(LicencePlate=123), 9033),
    ("unknown key", payload(Colour="red"), 9003),
    ("same field twice", payload(plate="OTHER"), 9003),
]


@pytest.mark.parametrize(("body", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule_gives_its_code(
    shared: ControllerEmulator, client: httpx.Client, body: dict[str, Any], code: int
) -> None:
    before = len(shared.accepted)
    response = push(client, shared, body)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["ErrorCode"] == code
    assert response.json()["ErrorMessage"]
    assert validate(body) is not None and validate(body)[0] == code  # type: ignore[index]
    assert len(shared.accepted) == before


def test_limits_are_inclusive() -> None:
    edge = payload(
        LicencePlate="A" * 25,
        Amount="999999.99",
        CurrencyID="C" * 10,
        permitNo="p" * 50,
        TicketNumber="t" * 50,
        promoCode="c" * 50,
        zone="z" * 200,
    )
    assert validate(edge) is None
    assert validate(payload(Amount="0.01")) is None
    assert validate(payload(Amount="000014.50")) is None


def test_validate_accepts_a_payload_without_token() -> None:
    assert validate(payload(drop=("apiToken",))) is None
    assert check_token(payload(drop=("apiToken",)), None) == (9001, "apiToken: missing")


@pytest.mark.parametrize(
    ("raw", "what"),
    [(b"[]", "array"), (b'"text"', "string"), (b"not json", "garbage"), (b"\xff\xfe", "bytes")],
)
def test_body_that_is_not_a_json_object_gives_9003(
    shared: ControllerEmulator, client: httpx.Client, raw: bytes, what: str
) -> None:
    response = client.post(shared.url, content=raw, headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.json()["ErrorCode"] == 9003


@pytest.mark.parametrize(
    ("token", "status", "code"),
    [
        (None, 401, 9001),
        ("", 401, 9001),
        ("WRONG-TOKEN", 403, 9002),
        ("has space", 403, 9002),
        ("x" * 51, 403, 9002),
        (42, 403, 9002),
    ],
)
def test_token_problems(
    shared: ControllerEmulator, client: httpx.Client, token: Any, status: int, code: int
) -> None:
    body = payload(drop=("apiToken",)) if token is None else payload(apiToken=token)
    response = push(client, shared, body)

    assert response.status_code == status
    assert response.json()["ErrorCode"] == code
    assert TOKEN not in response.text


def test_repeat_gives_9022_and_is_not_stored_again(
    emulator: ControllerEmulator, client: httpx.Client
) -> None:
    first = push(client, emulator, VENDOR_EXAMPLE)
    again = push(client, emulator, VENDOR_EXAMPLE)
    by_alias = push(client, emulator, payload(drop=("LicencePlate",), plate="PL8RDR"))
    other_end = push(client, emulator, payload(endTime="2018-07-02T10:00:00"))

    assert first.json()["status"] == "success"
    for repeat in (again, by_alias):
        assert repeat.status_code == 200
        assert repeat.json() == {
            "ErrorCode": 9022,
            "ErrorMessage": "A record already exists with the supplied details",
        }
    assert other_end.json()["status"] == "success"
    assert len(emulator.accepted) == 2
    assert emulator.counts()["duplicate"] == 2


def test_dedupe_on_permit_number_alone_answers_9022_for_another_sale_with_that_number(
    client: httpx.Client,
) -> None:
    with ControllerEmulator(token=TOKEN, dedupe="permit") as emulator:
        first = push(client, emulator, VENDOR_EXAMPLE)
        other_sale = push(client, emulator, payload(LicencePlate="OTHER1"))
        other_permit = push(client, emulator, payload(permitNo="L4-1139"))

    assert first.json()["status"] == other_permit.json()["status"] == "success"
    assert other_sale.status_code == 200 and other_sale.json()["ErrorCode"] == 9022
    assert [a.payload["permitNo"] for a in emulator.accepted] == ["L4-1138", "L4-1139"]
    with pytest.raises(ValueError, match="dedupe"):
        ControllerEmulator(dedupe="plate")


# --------------------------------------------------------------------------- routing


def test_other_paths_404_and_other_methods_405(
    emulator: ControllerEmulator, client: httpx.Client
) -> None:
    base = emulator.url.removesuffix(PUSH_PATH)

    assert client.post(base + "/api/OC-TOMA/v1/permits/update", json={}).status_code == 404
    assert client.get(base + "/").status_code == 404
    response = client.get(emulator.url)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert client.put(emulator.url, json=VENDOR_EXAMPLE).status_code == 405
    assert emulator.counts()["total"] == 0


def test_keep_alive_two_requests_over_one_connection(
    emulator: ControllerEmulator, client: httpx.Client
) -> None:
    first = push(client, emulator, VENDOR_EXAMPLE)
    second = push(client, emulator, payload(permitNo="L4-1139"))

    assert first.json()["status"] == second.json()["status"] == "success"
    assert first.http_version == "HTTP/1.1"
    assert "close" not in first.headers.get("connection", "")
    assert emulator.connections == 1


def test_chunked_body_is_read(emulator: ControllerEmulator, client: httpx.Client) -> None:
    raw = json.dumps(VENDOR_EXAMPLE).encode()
    response = client.post(emulator.url, content=iter([raw[:10], raw[10:]]))

    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.json()["status"] == "success"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_client_gone_mid_body_is_no_request(emulator: ControllerEmulator, chunked: bool) -> None:
    """An agent killed between writing the headers and the body (httpx writes them apart):
    a real server sees a request cut short, never a payload it refuses (nor one it stores)."""
    raw = json.dumps(VENDOR_EXAMPLE).encode()
    host, port = emulator.url.split("//")[1].split("/")[0].split(":")
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(raw)
    start = b"%x\r\n" % len(raw) if chunked else b""
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST " + PUSH_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n")
        sock.sendall(b"Content-Type: application/json\r\n" + framing + b"\r\n\r\n")
        sock.sendall(start + raw[: len(raw) // 2])
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b"", "an answer to half a request"

    assert emulator.counts()["invalid"] == 0, emulator.refusals
    assert emulator.counts()["accepted"] == 0
    with new_client() as http:  # and the emulator still serves the next one
        assert push(http, emulator, VENDOR_EXAMPLE).json()["status"] == "success"


def test_verbose_logs_one_line_per_request_without_the_token(
    client: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    with ControllerEmulator(token=TOKEN, verbose=True) as emu:
        push(client, emu, VENDOR_EXAMPLE)
        push(client, emu, payload(LicencePlate=""))
    with ControllerEmulator(token=TOKEN) as quiet:
        push(client, quiet, VENDOR_EXAMPLE)

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert "200 accepted" in lines[0]
    assert "400 invalid 9006" in lines[1]
    assert TOKEN not in "\n".join(lines)


# --------------------------------------------------------------------------- faults


def test_fault_error(emulator: ControllerEmulator, client: httpx.Client) -> None:
    emulator.set_fault("error")
    response = push(client, emulator, VENDOR_EXAMPLE)
    emulator.set_fault("error", status=500, count=1)
    response_500 = push(client, emulator, VENDOR_EXAMPLE)

    assert response.status_code == 503
    assert "ErrorCode" not in response.json()
    assert response_500.status_code == 500
    assert emulator.accepted == []
    assert emulator.counts()["fault"] == 2


def test_fault_throttle_sends_retry_after(
    emulator: ControllerEmulator, client: httpx.Client
) -> None:
    emulator.set_fault("throttle")
    default = push(client, emulator, VENDOR_EXAMPLE)
    emulator.set_fault("throttle", retry_after="7")
    custom = push(client, emulator, VENDOR_EXAMPLE)

    assert default.status_code == custom.status_code == 429
    assert default.headers["retry-after"] == "1"
    assert custom.headers["retry-after"] == "7"
    assert emulator.accepted == []


def test_fault_slow_then_normal(emulator: ControllerEmulator, client: httpx.Client) -> None:
    emulator.set_fault("slow", delay=0.2)
    started = time.monotonic()
    response = push(client, emulator, VENDOR_EXAMPLE)

    assert time.monotonic() - started >= 0.19
    assert response.json()["status"] == "success"
    assert len(emulator.accepted) == 1
    assert emulator.counts()["fault"] == 0


def test_fault_slow_times_the_client_out(
    emulator: ControllerEmulator, client: httpx.Client
) -> None:
    emulator.set_fault("slow", delay=0.5, count=1)
    with pytest.raises(httpx.ReadTimeout):
        client.post(emulator.url, json=VENDOR_EXAMPLE, timeout=0.1)


@pytest.mark.parametrize("accept", [False, True])
def test_fault_reset(emulator: ControllerEmulator, client: httpx.Client, accept: bool) -> None:
    emulator.set_fault("reset", accept=accept, count=1)
    with pytest.raises(httpx.TransportError):
        push(client, emulator, VENDOR_EXAMPLE)

    assert len(emulator.accepted) == (1 if accept else 0)
    retry = push(client, emulator, VENDOR_EXAMPLE)
    if accept:
        assert retry.json()["ErrorCode"] == 9022  # the outcome was stored after all
    else:
        assert retry.json()["status"] == "success"
    assert len(emulator.accepted) == 1


def test_fault_auth(emulator: ControllerEmulator, client: httpx.Client) -> None:
    emulator.set_fault("auth")
    default = push(client, emulator, VENDOR_EXAMPLE)
    emulator.set_fault("auth", status=403, error_code=9002)
    forbidden = push(client, emulator, VENDOR_EXAMPLE)

    assert default.status_code == 401
    assert default.json()["ErrorCode"] == 9001
    assert forbidden.status_code == 403
    assert forbidden.json()["ErrorCode"] == 9002
    assert emulator.accepted == []


def test_fault_error200(emulator: ControllerEmulator, client: httpx.Client) -> None:
    emulator.set_fault("error200", error_code=9033)
    response = push(client, emulator, VENDOR_EXAMPLE)

    assert response.status_code == 200
    assert response.json()["ErrorCode"] == 9033
    assert response.json()["ErrorMessage"]
    assert emulator.accepted == []


def test_fault_count_clears_itself(emulator: ControllerEmulator, client: httpx.Client) -> None:
    emulator.set_fault("error", count=2)
    statuses = [push(client, emulator, VENDOR_EXAMPLE).status_code for _ in range(3)]

    assert statuses == [503, 503, 200]
    assert emulator.state()["fault"] is None


def test_clear_fault(emulator: ControllerEmulator, client: httpx.Client) -> None:
    emulator.set_fault("error")
    assert push(client, emulator, VENDOR_EXAMPLE).status_code == 503
    emulator.clear_fault()
    assert push(client, emulator, VENDOR_EXAMPLE).status_code == 200


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("flood", {}),
        ("error", {"count": 0}),
        ("error", {"status": 42}),
        ("slow", {"delay": -1.0}),
    ],
)
def test_bad_fault_is_refused(emulator: ControllerEmulator, kind: str, options: Any) -> None:
    with pytest.raises(ValueError):
        emulator.set_fault(kind, **options)


def test_capacity_in_flight_answers_503_with_retry_after_beyond_the_limit(
    emulator: ControllerEmulator,
) -> None:
    emulator.set_capacity(2, retry_after="3", service_time=0.3)
    barrier = threading.Barrier(5)

    def send(n: int) -> httpx.Response:
        with new_client() as http:
            barrier.wait()
            return push(http, emulator, payload(permitNo=f"C-{n}"))

    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(send, range(5)))

    refused = [a for a in answers if a.status_code == 503]
    assert sorted(a.status_code for a in answers) == [200, 200, 503, 503, 503]
    assert all(a.headers["retry-after"] == "3" for a in refused)
    assert emulator.peak_in_flight == 2
    assert emulator.counts()["overloaded"] == 3 and len(emulator.accepted) == 2
    emulator.set_capacity()  # no limit again
    with new_client() as http:
        assert push(http, emulator, payload(permitNo="C-9")).status_code == 200


def test_capacity_queues_so_many_in_order_before_it_refuses(
    emulator: ControllerEmulator,
) -> None:
    """As IIS's application pool or a gunicorn backlog: two handled, two waiting their turn
    (answered later, not refused), the fifth refused at once."""
    emulator.set_capacity(2, queue=2, service_time=0.3)
    barrier = threading.Barrier(5)

    def send(n: int) -> tuple[int, float]:
        with new_client() as http:
            barrier.wait()
            started = time.monotonic()
            answer = push(http, emulator, payload(permitNo=f"Q-{n}"))
            return answer.status_code, time.monotonic() - started

    with ThreadPoolExecutor(5) as pool:
        answers = sorted(pool.map(send, range(5)), key=lambda a: a[1])

    assert [code for code, _ in answers] == [503, 200, 200, 200, 200]
    assert answers[0][1] < 0.3, "the one beyond the queue waited"
    assert answers[-1][1] >= 0.6 - 0.05, "the queued ones did not wait their turn"
    capacity = emulator.state()["capacity"]
    assert capacity["peak_in_flight"] == 2 and capacity["peak_waiting"] == 2
    assert capacity["waiting"] == 0 and len(emulator.accepted) == 4


def test_capacity_per_second(emulator: ControllerEmulator, client: httpx.Client) -> None:
    emulator.set_capacity(per_second=3)
    codes = [push(client, emulator, payload(permitNo=f"R-{n}")).status_code for n in range(5)]
    assert codes == [200, 200, 200, 503, 503]
    assert emulator.state()["capacity"]["refused"] == 2


@pytest.mark.parametrize(
    "options",
    [
        {"max_in_flight": 0},
        {"per_second": 0},
        {"service_time": -1},
        {"max_in_flight": True},
        {"queue": -1},
    ],
)
def test_bad_capacity_is_refused(emulator: ControllerEmulator, options: Any) -> None:
    with pytest.raises(ValueError, match="capacity"):
        emulator.set_capacity(**options)


# --------------------------------------------------------------------------- down and up


def test_go_down_refuses_and_come_up_restores_on_the_same_port(
    emulator: ControllerEmulator, client: httpx.Client
) -> None:
    assert push(client, emulator, VENDOR_EXAMPLE).status_code == 200
    port, url = emulator.port, emulator.url

    emulator.go_down()
    with new_client() as fresh, pytest.raises(httpx.ConnectError):
        push(fresh, emulator, VENDOR_EXAMPLE)
    with pytest.raises(httpx.TransportError):  # the pooled keep-alive connection is gone too
        push(client, emulator, payload(permitNo="2"))

    emulator.come_up()
    assert (emulator.port, emulator.url) == (port, url)
    assert push(client, emulator, payload(permitNo="3")).json()["status"] == "success"
    assert [r.payload["permitNo"] for r in emulator.accepted] == ["L4-1138", "3"]
    emulator.go_down()
    emulator.go_down()  # idempotent
    emulator.stop()
    emulator.stop()


def test_wait_for(emulator: ControllerEmulator) -> None:
    def send() -> None:
        with new_client() as http:
            push(http, emulator, VENDOR_EXAMPLE)

    sender = threading.Thread(target=send)
    sender.start()
    assert emulator.wait_for(1, timeout=5.0)
    sender.join()
    assert not emulator.wait_for(2, timeout=0.05)


# --------------------------------------------------------------------------- control API


def test_control_api(emulator: ControllerEmulator, client: httpx.Client) -> None:
    base = emulator.url.removesuffix(PUSH_PATH)
    ref = push(client, emulator, VENDOR_EXAMPLE).json()["reference_id"]

    fault = client.post(base + "/_emulator/fault", json={"kind": "error", "count": 1})
    assert fault.status_code == 200
    assert fault.json()["fault"]["kind"] == "error"
    state = client.get(base + "/_emulator/state").json()  # faults skip the control API
    assert state["fault"]["remaining"] == 1
    assert state["counts"]["accepted"] == 1
    assert state["accepted"][0]["reference_id"] == ref
    assert state["accepted"][0]["payload"]["LicencePlate"] == "PL8RDR"
    assert "apiToken" not in state["accepted"][0]["payload"]
    assert TOKEN not in json.dumps(state)

    assert client.delete(base + "/_emulator/fault").status_code == 200
    assert client.get(base + "/_emulator/state").json()["fault"] is None
    assert client.post(base + "/_emulator/fault", json={"kind": "nope"}).status_code == 400
    assert client.post(base + "/_emulator/fault", json={"kind": "error", "x": 1}).status_code == (
        400
    )
    assert client.get(base + "/_emulator/nothing").status_code == 404
    assert push(client, emulator, payload(permitNo="after")).status_code == 200


def test_control_api_counts_permits_and_capacity(
    emulator: ControllerEmulator, client: httpx.Client
) -> None:
    base = emulator.url.removesuffix(PUSH_PATH)
    ref = push(client, emulator, VENDOR_EXAMPLE).json()["reference_id"]

    counts = client.get(base + "/_emulator/counts").json()
    assert counts["counts"]["accepted"] == 1 and "accepted" not in counts
    [found] = client.get(base + "/_emulator/permits/L4-1138").json()
    assert found["reference_id"] == ref and "apiToken" not in found["payload"]
    assert client.get(base + "/_emulator/permits/L4-9999").status_code == 404

    limits = {"max_in_flight": 3, "retry_after": None, "service_time": 0.01}
    capacity = client.post(base + "/_emulator/capacity", json=limits)
    assert capacity.status_code == 200 and capacity.json()["max_in_flight"] == 3
    assert client.get(base + "/_emulator/capacity").json()["retry_after"] is None
    bad = client.post(base + "/_emulator/capacity", json={"max_in_flight": 0})
    assert bad.status_code == 400 and "max_in_flight" in bad.json()["Message"]
    assert client.post(base + "/_emulator/capacity", json={"nope": 1}).status_code == 400
    assert client.post(base + "/_emulator/capacity", json=[1]).status_code == 400


# --------------------------------------------------------------------------- foreground


def test_serve_runs_until_sigterm() -> None:
    code = (
        "import sys; from agent.emulator import serve; "
        "sys.exit(serve('127.0.0.1', 0, 'T-1', ['Lot 4'], None, False))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.endswith(PUSH_PATH)
        with new_client() as http:
            response = http.post(url, json=payload(apiToken="T-1"))
        assert response.json()["status"] == "success"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
