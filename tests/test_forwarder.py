"""The forwarder against a real emulator on loopback and a real journal file: every class of
controller answer ends in the right journal state (push-api.md, "Decisions")."""

from __future__ import annotations

import dataclasses
import http.server
import logging
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest

from agent.config import Secret
from agent.emulator import ControllerEmulator
from agent.errors import SendError
from agent.forwarder import Forwarder, HttpSender, Outcome, RetryPolicy, classify_failure
from agent.intake import Intake
from agent.journal import Journal, State
from agent.mapping import MappingRules
from drivers.base import HardwareRecord, Receipt
from drivers.records import format_kv
from tests.conftest import TOKEN, eventually

TZ = ZoneInfo("America/Toronto")
FAST = RetryPolicy(initial_s=0.01, max_s=0.05, jitter_s=0.01, pause_initial_s=0.1, pause_max_s=0.2)


class Pipeline:
    def __init__(
        self,
        journal: Journal,
        emulator: ControllerEmulator,
        *,
        concurrency: int = 2,
        timeout_s: float = 5.0,
        policy: RetryPolicy = FAST,
    ) -> None:
        self.journal = journal
        self.emulator = emulator
        self.token = Secret(TOKEN)
        self.intake = Intake(journal, "PS-TEST", MappingRules(TZ, "CAD", {"4": "Lot 4"}))
        self.sender = HttpSender(emulator.url, lambda: self.token, timeout_s=timeout_s)
        self.forwarder = Forwarder(
            journal,
            self.sender,
            concurrency=concurrency,
            policy=policy,
            secret_text=lambda: self.token.reveal(),
        )
        self.seq = 0

    def sale(self, *, minutes_ago: int = 0, length: int = 60, **extra: str) -> int:
        self.seq += 1
        start = datetime.now(TZ).replace(tzinfo=None, microsecond=0) - timedelta(
            minutes=minutes_ago
        )
        fields = {
            "TXN": f"T{self.seq:05d}",
            "PLATE": f"ABC{self.seq:04d}",
            "ZONE": "4",
            "AMT": "3.50",
            "START": start.isoformat(),
            "END": (start + timedelta(minutes=length)).isoformat(),
            **extra,
        }
        assert (
            self.intake.submit(HardwareRecord(format_kv(fields), fields, "test")) is Receipt.STORED
        )
        return self.seq

    def state_of(self, record_id: int) -> State:
        record = self.journal.get(record_id)
        assert record is not None
        return record.state


@pytest.fixture
def pipe(journal: Journal, emulator: ControllerEmulator) -> Iterator[Pipeline]:
    p = Pipeline(journal, emulator)
    yield p
    p.forwarder.stop()


def test_success_keeps_the_controllers_reference_id(pipe: Pipeline) -> None:
    pipe.forwarder.start()
    rid = pipe.sale()
    eventually(lambda: pipe.state_of(rid) is State.SENT, what="sent")
    record = pipe.journal.get(rid)
    assert record is not None and record.attempts == 1
    [accepted] = pipe.emulator.accepted
    assert record.reference_id == accepted.reference_id
    assert accepted.payload["permitNo"] == "T00001"
    assert accepted.payload["zone"] == "Lot 4"


def test_new_records_are_sent_without_polling(pipe: Pipeline) -> None:
    pipe.forwarder.start()
    for _ in range(20):
        pipe.sale()
    assert pipe.emulator.wait_for(20, timeout=10)
    assert [a.payload["permitNo"] for a in pipe.emulator.accepted] == sorted(
        a.payload["permitNo"] for a in pipe.emulator.accepted
    ) or pipe.forwarder.concurrency > 1


def test_9022_after_a_lost_answer_counts_as_delivered(pipe: Pipeline) -> None:
    # The first answer is lost after the controller stored the record (reset, accept=True):
    # the retry is told 9022, which means our earlier attempt got through.
    pipe.emulator.set_fault("reset", count=1, accept=True)
    pipe.forwarder.start()
    rid = pipe.sale()
    eventually(lambda: pipe.state_of(rid) is State.SENT, what="sent")
    record = pipe.journal.get(rid)
    assert record is not None
    assert record.already_existed and record.unknown_outcomes == 1
    assert len(pipe.emulator.accepted) == 1
    assert pipe.emulator.counts()["duplicate"] == 1


def test_reset_before_storing_is_retried_and_delivered_once(pipe: Pipeline) -> None:
    pipe.emulator.set_fault("reset", count=1, accept=False)
    pipe.forwarder.start()
    rid = pipe.sale()
    eventually(lambda: pipe.state_of(rid) is State.SENT, what="sent")
    record = pipe.journal.get(rid)
    assert record is not None and record.unknown_outcomes == 1 and not record.already_existed
    assert len(pipe.emulator.accepted) == 1


def test_timeout_is_an_unknown_outcome_then_delivered(
    journal: Journal, emulator: ControllerEmulator
) -> None:
    p = Pipeline(journal, emulator, timeout_s=0.5)
    emulator.set_fault("slow", count=1, delay=1.5)
    p.forwarder.start()
    try:
        rid = p.sale()
        eventually(lambda: p.state_of(rid) is State.SENT, what="sent")
        record = journal.get(rid)
        assert record is not None and record.unknown_outcomes >= 1
        # the slow request was stored in the end: the controller holds the permit once
        assert {a.payload["permitNo"] for a in emulator.accepted} == {"T00001"}
        assert len(emulator.accepted) == 1
    finally:
        p.forwarder.stop()


def test_5xx_is_retried_until_delivered(pipe: Pipeline) -> None:
    pipe.emulator.set_fault("error", count=3, status=503)
    pipe.forwarder.start()
    rid = pipe.sale()
    eventually(lambda: pipe.state_of(rid) is State.SENT, what="sent")
    record = pipe.journal.get(rid)
    assert record is not None and record.attempts == 4
    assert pipe.emulator.counts()["fault"] == 3


def test_429_honours_retry_after(journal: Journal, emulator: ControllerEmulator) -> None:
    # Retry-After is honoured up to backoff_max_s (here 5 s; tests/test_forwarder_answers.py
    # has the cap itself)
    p = Pipeline(journal, emulator, policy=dataclasses.replace(FAST, max_s=5.0))
    emulator.set_fault("throttle", count=1, retry_after="1")
    p.forwarder.start()
    try:
        started = time.monotonic()
        rid = p.sale()
        eventually(lambda: p.state_of(rid) is State.SENT, what="sent")
        # Without Retry-After the fast policy would retry within 50 ms.
        assert time.monotonic() - started >= 0.9
        assert emulator.counts()["total"] == 2
    finally:
        p.forwarder.stop()


def test_connection_refused_is_retried_and_drains_when_back(pipe: Pipeline) -> None:
    pipe.emulator.go_down()
    pipe.forwarder.start()
    ids = [pipe.sale() for _ in range(5)]
    time.sleep(0.3)
    assert all(pipe.state_of(i) is State.PENDING for i in ids)
    pipe.emulator.come_up()
    eventually(lambda: all(pipe.state_of(i) is State.SENT for i in ids), what="drained")
    assert pipe.journal.meta().get("controller_state") == "ok"


def test_an_outage_is_logged_once_saying_what_cannot_be_reached(
    pipe: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    pipe.emulator.go_down()
    pipe.forwarder.start()
    with caplog.at_level(logging.WARNING, logger="agent.forwarder"):
        pipe.sale()
        eventually(
            lambda: pipe.journal.meta().get("controller_state") == "unreachable", what="unreachable"
        )
    [line] = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    port = urlsplit(pipe.emulator.url).port
    assert line == (
        f"ConnectError: controller unreachable: connection refused by 127.0.0.1:{port}; "
        "records are kept and retried"
    )


def test_rejected_record_goes_dead_and_does_not_block_the_queue(
    journal: Journal, emulator: ControllerEmulator
) -> None:
    p = Pipeline(journal, emulator, concurrency=1)
    emulator.set_fault("error200", count=1, error_code=9030)
    p.forwarder.start()
    try:
        first, second = p.sale(), p.sale()
        eventually(lambda: p.state_of(second) is State.SENT, what="second sent")
        dead = journal.get(first)
        assert dead is not None and dead.state is State.DEAD
        assert dead.last_status == 200 and "9030" in (dead.last_error or "")
        assert "9030" in (dead.last_body or "")
    finally:
        p.forwarder.stop()


def test_http_400_from_controller_validation_is_dead(pipe: Pipeline) -> None:
    # A payload the controller refuses (a 26-character plate) slipped into the journal.
    appended = pipe.journal.append(
        station="PS-TEST",
        txn="BAD",
        source="test",
        raw=b"",
        fields={},
        payload={
            "LicencePlate": "X" * 26,
            "permitNo": "BAD",
            "startTime": "2026-01-01T10:00:00",
            "endTime": "2026-01-01T11:00:00",
        },
        state=State.PENDING,
        ends_at=0.0,
    )
    pipe.forwarder.start()
    eventually(lambda: pipe.state_of(appended.id) is State.DEAD, what="dead")
    record = pipe.journal.get(appended.id)
    assert record is not None and record.last_status == 400 and "9021" in (record.last_error or "")


def test_auth_failure_pauses_everything_and_dead_letters_nothing(pipe: Pipeline) -> None:
    pipe.emulator.set_fault("auth", status=401, error_code=9002)
    pipe.forwarder.start()
    ids = [pipe.sale() for _ in range(3)]
    eventually(lambda: pipe.journal.meta().get("paused"), what="paused")
    time.sleep(0.3)
    assert all(pipe.state_of(i) is State.PENDING for i in ids)
    assert "9002" in pipe.journal.meta()["paused"]
    # While paused, the forwarder does not hammer the controller with every record.
    assert pipe.emulator.counts()["auth"] <= 2 * pipe.forwarder.concurrency + 2
    pipe.emulator.clear_fault()
    pipe.forwarder.retry_now()  # what a token change (SIGHUP) does
    eventually(lambda: all(pipe.state_of(i) is State.SENT for i in ids), what="resumed")
    assert "paused" not in pipe.journal.meta()
    assert pipe.journal.counts()[State.DEAD] == 0


def test_auth_pause_resumes_by_itself_after_backoff(pipe: Pipeline) -> None:
    pipe.emulator.set_fault("auth", count=1)
    pipe.forwarder.start()
    rid = pipe.sale()
    eventually(lambda: pipe.state_of(rid) is State.SENT, what="sent after pause")


def test_after_an_outage_running_sessions_go_first(
    journal: Journal, emulator: ControllerEmulator
) -> None:
    p = Pipeline(journal, emulator, concurrency=1)
    emulator.go_down()
    finished = [p.sale(minutes_ago=180, length=60) for _ in range(3)]
    running = [p.sale(minutes_ago=10, length=60) for _ in range(3)]
    emulator.come_up()
    p.forwarder.start()
    try:
        assert emulator.wait_for(6)
        order = [a.payload["permitNo"] for a in emulator.accepted]
        assert order == [f"T{i:05d}" for i in running + finished]
    finally:
        p.forwarder.stop()


def test_stop_is_prompt_during_an_outage_and_keeps_the_record(pipe: Pipeline) -> None:
    pipe.emulator.go_down()
    pipe.forwarder.start()
    rid = pipe.sale()
    time.sleep(0.2)
    started = time.monotonic()
    pipe.forwarder.stop()
    assert time.monotonic() - started < 3.5
    record = pipe.journal.get(rid)
    assert record is not None and record.state is State.PENDING


def test_token_is_sent_but_never_stored(pipe: Pipeline, tmp_path: Path) -> None:
    pipe.forwarder.start()
    rid = pipe.sale()
    eventually(lambda: pipe.state_of(rid) is State.SENT, what="sent")
    # the controller got a token (it only accepts TOKEN), the journal never had it
    assert pipe.emulator.counts()["accepted"] == 1
    for path in tmp_path.glob("journal.sqlite3*"):
        assert TOKEN.encode() not in path.read_bytes()


def test_rotated_token_applies_to_the_backlog(journal: Journal, tmp_path: Path) -> None:
    with ControllerEmulator(token="NEW-TOKEN-2") as emulator:
        p = Pipeline(journal, emulator)
        p.forwarder.start()
        try:
            rid = p.sale()
            eventually(lambda: journal.meta().get("paused"), what="paused on the old token")
            p.token = Secret("NEW-TOKEN-2")
            p.forwarder.retry_now()
            eventually(lambda: p.state_of(rid) is State.SENT, what="sent with the new token")
        finally:
            p.forwarder.stop()


def test_keep_alive_reuses_connections(pipe: Pipeline) -> None:
    pipe.forwarder.start()
    for _ in range(30):
        pipe.sale()
    assert pipe.emulator.wait_for(30)
    assert pipe.emulator.connections <= pipe.forwarder.concurrency


def test_emulator_is_real_http(emulator: ControllerEmulator) -> None:
    response = httpx.get(emulator.url.replace("/api/OC-TOMA/v1/permits/push", "/_emulator/state"))
    assert response.status_code == 200


def test_a_controller_whose_certificate_is_not_trusted_is_never_sent_a_sale(
    tmp_path: Path,
) -> None:
    """TLS is verified: an HTTPS server with a self-signed certificate that would answer
    success gets no request at all (the token never leaves), and the failure is transient:
    the record stays pending until a trusted controller answers."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    requests: list[str] = []

    class Success(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            requests.append(self.path)
            body = b'{"status": "success", "reference_id": "R-1"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Success)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sender = HttpSender(f"https://127.0.0.1:{server.server_address[1]}/push", lambda: Secret(TOKEN))
    try:
        with pytest.raises(SendError, match="CERTIFICATE_VERIFY_FAILED") as caught:
            sender.post({"permitNo": "T1"})
    finally:
        sender.close()
        server.shutdown()
        server.server_close()
    assert requests == []
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert classify_failure(caught.value).outcome is Outcome.TRANSIENT


def test_waits_after_hours_of_journal_failures_stay_capped(pipe: Pipeline) -> None:
    """A journal failing for hours (about 1 000 tries in a row at the 30 s cap): the next
    wait is still the cap, not an overflow taken for a bug of the agent's own."""
    pipe.forwarder._carried.journal_errors = 1_100
    pipe.forwarder._stop.set()  # the wait itself returns at once
    pipe.forwarder._journal_pause()
    assert pipe.forwarder._carried.journal_errors == 1_101
