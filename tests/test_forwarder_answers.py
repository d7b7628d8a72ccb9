"""How the forwarder reads answers the emulator never gives (issue 11, hazards 1, 2, 7, 8, 9).

The odd answers come from a real HTTP server on 127.0.0.1, written at socket level so that
it can say anything (redirects, unknown statuses, a skewed ``Retry-After``, a body nested
too deep, an endless or trickling body); the journal is a real SQLite file and the sender
is the real one.
"""

from __future__ import annotations

import email.utils
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import agent.forwarder.workers
import agent.journal.store
from agent.commands import status
from agent.commands.dead import list_lines, undelivered
from agent.config import Secret
from agent.emulator import ControllerEmulator
from agent.forwarder import Forwarder, HttpSender, RetryPolicy
from agent.journal import Journal, State
from agent.service.metrics import AgentMetrics
from tests.conftest import TOKEN, eventually, start_agent, stop_agent, write_config

FAST = RetryPolicy(initial_s=0.01, max_s=0.05, jitter_s=0.01, pause_initial_s=0.1, pause_max_s=0.2)
SUCCESS = b'{"status": "success", "reference_id": "R-%d", "InternalReferenceID": "R-%d"}'

Answer = Callable[[int, dict[str, Any], socket.socket], None]


def reply(status: int, body: bytes = b"", **headers: str) -> bytes:
    """One whole HTTP/1.1 answer; the connection closes after it."""
    lines = [f"HTTP/1.1 {status} Odd", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def success(n: int) -> bytes:
    return reply(200, SUCCESS % (n, n), Content_Type="application/json")


class OddController:
    """A real HTTP/1.1 server on 127.0.0.1: ``answer(n, payload, connection)`` writes
    whatever it likes for the n-th POST (from 1); the connection is closed afterwards."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.payloads: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/push"

    def permits(self) -> list[str]:
        with self._lock:
            return [p["permitNo"] for p in self.payloads]

    def stop(self) -> None:
        self.stopped.set()
        self._sock.close()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                stream = conn.makefile("rb")
                path = stream.readline().split()[1].decode()
                length = 0
                while (line := stream.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                payload = json.loads(stream.read(length))
                with self._lock:
                    self.paths.append(path)
                    self.payloads.append(payload)
                    n = len(self.payloads)
                self.answer(n, payload, conn)
            except OSError:
                pass  # the agent hung up: what several tests want it to do


@pytest.fixture
def odd() -> Iterator[Callable[[Answer], OddController]]:
    servers: list[OddController] = []

    def start(answer: Answer) -> OddController:
        servers.append(OddController(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def forwarders() -> Iterator[Callable[..., Forwarder]]:
    made: list[Forwarder] = []

    def make(
        journal: Journal,
        url: str,
        *,
        concurrency: int = 1,
        policy: RetryPolicy = FAST,
        timeout_s: float = 5.0,
    ) -> Forwarder:
        sender = HttpSender(url, lambda: Secret(TOKEN), timeout_s=timeout_s)
        made.append(
            Forwarder(
                journal, sender, concurrency=concurrency, policy=policy, secret_text=lambda: TOKEN
            )
        )
        return made[-1]

    yield make
    for forwarder in made:
        forwarder.stop()


def add_sale(
    journal: Journal, permit: str, *, plate: str = "PL8RDR", source: str = "meter-1"
) -> int:
    return journal.append(
        station="PS-TEST",
        txn=permit,
        source=source,
        raw=permit.encode(),
        fields={"TXN": permit, "PLATE": plate},
        payload={
            "LicencePlate": plate,
            "permitNo": permit,
            "zone": "Lot 4",
            "startTime": "2026-01-01T10:00:00",
            "endTime": "2026-01-01T11:00:00",
        },
        state=State.PENDING,
        ends_at=0.0,
    ).id


def record_of(journal: Journal, record_id: int) -> Any:
    record = journal.get(record_id)
    assert record is not None
    return record


def one_sale_answered(
    journal: Journal, server: OddController, forwarders: Callable[..., Forwarder]
) -> tuple[OddController, Any]:
    """One sale sent to ``server`` until it is no longer pending; the server and the record."""
    rid = add_sale(journal, "000001")
    forwarders(journal, server.url).start()
    eventually(lambda: record_of(journal, rid).state is not State.PENDING, what="an answer read")
    return server, record_of(journal, rid)


def state_is(journal: Journal, record_id: int, state: State) -> Callable[[], bool]:
    return lambda: record_of(journal, record_id).state is state


# -- hazard 1: 9022 is ours only after an unknown outcome -----------------------------------


def test_9022_on_a_first_attempt_is_a_permit_number_conflict_not_a_delivery(
    journal: Journal, emulator: ControllerEmulator, forwarders: Callable[..., Forwarder]
) -> None:
    """Two meters numbering receipts alike: the second sale's first attempt is told 9022.
    It never reached enforcement, so it is dead for a person, loudly, never "sent"."""
    forwarder = forwarders(journal, emulator.url)
    first = add_sale(journal, "000001", source="meter-1")
    second = add_sale(journal, "000001", source="meter-2")
    forwarder.start()
    eventually(state_is(journal, second, State.DEAD), what="the conflict dead-lettered")
    assert record_of(journal, first).state is State.SENT
    dead = record_of(journal, second)
    assert dead.reference_id is None and not dead.already_existed
    assert dead.last_error.startswith(
        "permit number conflict: another record already holds permitNo 000001 (ErrorCode 9022"
    )
    assert "requeue" in dead.last_error
    assert len(emulator.accepted) == 1

    shown = status.collect(journal)
    assert shown["conflicts"] == 1 and shown["already_existed"] == 0
    assert "1 of them permit number conflicts" in status.render(shown)
    assert "permit number conflict" in (shown["last_error"] or "")
    [line] = [s for s in list_lines(undelivered(journal)) if s.lstrip().startswith(str(second))]
    assert "permit number conflict" in line
    metrics = AgentMetrics(journal, [], lambda: forwarder.health.state).text().decode()
    assert "paystation_permit_conflicts 1.0" in metrics


def test_9022_after_an_in_flight_claim_recovered_at_start_counts_as_delivered(
    journal: Journal, emulator: ControllerEmulator, forwarders: Callable[..., Forwarder]
) -> None:
    """The agent died while the request was in flight and the controller had stored it: the
    claim left on disk is an unknown outcome, so the 9022 at the next start is ours."""
    rid = add_sale(journal, "000007")
    record = record_of(journal, rid)
    sender = HttpSender(emulator.url, lambda: Secret(TOKEN))
    try:
        assert sender.post(record.payload).status == 200  # what reached the controller
    finally:
        sender.close()
    with Journal(journal.path) as crashed:  # the claim as a killed process leaves it on disk
        [claim] = crashed.claim(1)
        assert claim.id == rid
    forwarders(journal, emulator.url).start()
    eventually(state_is(journal, rid, State.SENT), what="sent")
    record = record_of(journal, rid)
    assert record.already_existed and record.unknown_outcomes == 1
    assert len(emulator.accepted) == 1 and emulator.counts()["duplicate"] == 1


# -- hazard 2: statuses outside the known lists ---------------------------------------------


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_is_never_followed_and_never_the_records_fault(
    code: int,
    journal: Journal,
    odd: Callable[[Answer], OddController],
    forwarders: Callable[..., Forwarder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    portal = "http://127.0.0.1:9/captive-portal?next=push"

    def answer(n: int, payload: dict[str, Any], conn: socket.socket) -> None:
        conn.sendall(reply(code, b"<html>log in</html>", Location=portal) if n <= 2 else success(n))

    server = odd(answer)
    rid = add_sale(journal, "000001")
    with caplog.at_level(logging.WARNING, logger="agent.forwarder"):
        forwarders(journal, server.url).start()
        eventually(state_is(journal, rid, State.SENT), what="sent once the redirect is gone")
    assert server.paths == ["/push"] * 3  # the token never went to the portal
    assert record_of(journal, rid).attempts == 3
    assert f"the controller URL redirects to {portal}" in caplog.text
    assert f"redirects to {portal}" in (journal.meta().get("last_error") or "")


@pytest.mark.parametrize("code", [201, 202])
def test_a_2xx_with_a_success_body_is_a_delivery(
    code: int,
    journal: Journal,
    odd: Callable[[Answer], OddController],
    forwarders: Callable[..., Forwarder],
) -> None:
    def answer(n: int, payload: dict[str, Any], conn: socket.socket) -> None:
        conn.sendall(reply(code, SUCCESS % (n, n)))

    server, record = one_sale_answered(journal, odd(answer), forwarders)
    assert record.state is State.SENT and record.reference_id == "R-1"
    assert server.permits() == ["000001"]


@pytest.mark.parametrize("code", [405, 410, 418, 451, 299, 599, 999])
def test_an_unknown_status_is_retried_never_dead_lettered(
    code: int,
    journal: Journal,
    odd: Callable[[Answer], OddController],
    forwarders: Callable[..., Forwarder],
) -> None:
    def answer(n: int, payload: dict[str, Any], conn: socket.socket) -> None:
        conn.sendall(reply(code, b"odd") if n == 1 else success(n))

    server, record = one_sale_answered(journal, odd(answer), forwarders)
    assert record.state is State.SENT
    assert server.permits() == ["000001", "000001"]
    assert journal.counts()[State.DEAD] == 0


class SlowMetaJournal(Journal):
    """A journal whose writes of service state alone take a while, as any write does
    on a busy flash card: what is committed apart from the record shows up late."""

    def set_meta(self, values: Any) -> None:
        time.sleep(0.5)
        super().set_meta(values)


def test_status_shows_the_last_error_of_a_dead_letter(
    tmp_path: Path, emulator: ControllerEmulator, forwarders: Callable[..., Forwarder]
) -> None:
    """The moment status counts a record dead, it shows why (one commit for both)."""
    emulator.set_fault("error200", count=1, error_code=9030)
    with SlowMetaJournal(tmp_path / "journal.sqlite3") as journal:
        rid = add_sale(journal, "000001")
        forwarder = forwarders(journal, emulator.url)
        forwarder.start()
        eventually(state_is(journal, rid, State.DEAD), what="dead", interval=0.005)
        last = status.collect(journal)["last_error"] or ""
        forwarder.stop()
        assert f"record {rid}" in last and "ErrorCode 9030" in last


# -- hazard 7: every wait is bounded ----------------------------------------------------------


@pytest.mark.parametrize("form", ["http-date", "seconds"])
def test_a_retry_after_an_hour_away_waits_no_longer_than_backoff_max(
    form: str,
    journal: Journal,
    odd: Callable[[Answer], OddController],
    forwarders: Callable[..., Forwarder],
) -> None:
    """A controller whose clock (or this PC's) is an hour off says "retry at <date>"; the
    agent waits at most ``backoff_max_s``, so new sales are not parked for an hour."""

    def answer(n: int, payload: dict[str, Any], conn: socket.socket) -> None:
        later = (
            email.utils.formatdate(time.time() + 3600, usegmt=True)
            if form == "http-date"
            else "3600"
        )
        conn.sendall(reply(503, b"busy", Retry_After=later) if n == 1 else success(n))

    server = odd(answer)
    rid = add_sale(journal, "000001")
    policy = RetryPolicy(initial_s=0.01, max_s=1.0, jitter_s=0.01)
    forwarders(journal, server.url, policy=policy).start()
    eventually(state_is(journal, rid, State.SENT), timeout=20, what="sent after backoff_max_s")
    assert server.permits() == ["000001", "000001"]


def test_a_success_on_one_worker_ends_another_workers_wait(
    journal: Journal, odd: Callable[[Answer], OddController], forwarders: Callable[..., Forwarder]
) -> None:
    def answer(n: int, payload: dict[str, Any], conn: socket.socket) -> None:
        busy = n == 1 and payload["permitNo"] == "000001"
        conn.sendall(reply(503, b"busy", Retry_After="300") if busy else success(n))

    server = odd(answer)
    policy = RetryPolicy(initial_s=0.01, max_s=600.0, jitter_s=0.01)
    forwarder = forwarders(journal, server.url, concurrency=2, policy=policy)
    waiting = add_sale(journal, "000001")
    forwarder.start()
    eventually(lambda: record_of(journal, waiting).last_status == 503, what="told to wait")
    fresh = add_sale(journal, "000002")
    eventually(state_is(journal, fresh, State.SENT), what="a new sale sent by the other worker")
    eventually(state_is(journal, waiting, State.SENT), what="the waiting sale sent at once")


# -- hazard 8: classification is total; the agent's own errors are unknown outcomes --------


def test_an_answer_nested_too_deep_to_parse_gets_a_verdict_recorded_in_the_journal(
    journal: Journal, odd: Callable[[Answer], OddController], forwarders: Callable[..., Forwarder]
) -> None:
    def answer(n: int, payload: dict[str, Any], conn: socket.socket) -> None:
        conn.sendall(reply(200, b"[" * 30_000 + b"]" * 30_000) if n == 1 else success(n))

    server = odd(answer)
    rid = add_sale(journal, "000001")
    forwarders(journal, server.url).start()
    eventually(state_is(journal, rid, State.SENT), what="sent")
    record = record_of(journal, rid)
    assert record.attempts == 2 and server.permits() == ["000001", "000001"]
    [failed] = journal.attempts(rid)
    assert failed.status == 200 and "without a success body" in (failed.error or "")


def test_non_ascii_digits_are_not_numbers(
    journal: Journal, odd: Callable[[Answer], OddController], forwarders: Callable[..., Forwarder]
) -> None:
    """``Retry-After: ²`` is no number of seconds (retried with the usual backoff) and
    ``"ErrorCode": "³"`` is no known code (the record is refused, as unknown codes are)."""

    def answer(n: int, payload: dict[str, Any], conn: socket.socket) -> None:
        if payload["permitNo"] == "000002":
            body = json.dumps({"ErrorCode": "³", "ErrorMessage": "odd"}).encode()
            conn.sendall(reply(200, body))
        else:
            retry = "²".encode().decode("latin-1")  # as the bytes arrive on the wire
            conn.sendall(reply(503, b"busy", Retry_After=retry) if n == 1 else success(n))

    server = odd(answer)
    first, second = add_sale(journal, "000001"), add_sale(journal, "000002")
    forwarders(journal, server.url).start()
    eventually(state_is(journal, first, State.SENT), what="sent after 503 + Retry-After: ²")
    eventually(state_is(journal, second, State.DEAD), what="an unknown ErrorCode dead")
    assert record_of(journal, first).attempts == 2
    assert "ErrorCode ³" in record_of(journal, second).last_error
    assert server.permits() == ["000001", "000001", "000002"]


def test_an_error_in_the_agents_own_code_is_an_unknown_outcome_counted_and_logged_once(
    journal: Journal,
    emulator: ControllerEmulator,
    forwarders: Callable[..., Forwarder],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug while reading an answer (here: classification raising for three answers) keeps
    the record, backs off as for a transient failure, counts each try as a possible
    duplicate (the controller did answer, so it may have stored the record) and logs the
    stack once; ``status`` shows it."""
    calls = {"n": 0}
    real = agent.forwarder.workers.classify

    def buggy(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise ZeroDivisionError("a bug in the agent")
        return real(*args, **kwargs)

    monkeypatch.setattr(agent.forwarder.workers, "classify", buggy)
    rid = add_sale(journal, "000001")
    with caplog.at_level(logging.DEBUG, logger="agent.forwarder"):
        forwarders(journal, emulator.url).start()
        eventually(state_is(journal, rid, State.SENT), what="sent once the bug stops")
    record = record_of(journal, rid)
    assert record.unknown_outcomes == 3 and record.already_existed  # 9022 after: ours
    assert len(emulator.accepted) == 1
    assert [a.outcome for a in journal.attempts(rid)] == ["transient"] * 3
    assert "ZeroDivisionError" in (journal.attempts(rid)[0].error or "")
    stacks = [r for r in caplog.records if r.exc_info and r.name == "agent.forwarder"]
    assert len(stacks) == 1
    shown = status.collect(journal)
    assert shown["agent_errors"] == 3 and shown["unknown_outcomes"] == 3
    assert "agent errors" in status.render(shown)


def test_an_error_after_the_answer_is_an_unknown_outcome_so_the_9022_after_it_is_ours(
    journal: Journal, emulator: ControllerEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug after the controller stored the record (here: the metrics hook raising for
    two answers) must not turn the next attempt's 9022 into a conflict, nor re-send every
    second unrecorded: each is an unknown outcome, with backoff, logged once."""
    calls = {"n": 0}

    def buggy_hook(outcome: str, seconds: float, cause: str) -> None:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise KeyError("a bug in the metrics hook")

    sender = HttpSender(emulator.url, lambda: Secret(TOKEN))
    forwarder = Forwarder(journal, sender, concurrency=1, policy=FAST, observe=buggy_hook)
    rid = add_sale(journal, "000001")
    try:
        with caplog.at_level(logging.DEBUG, logger="agent.forwarder"):
            forwarder.start()
            eventually(lambda: record_of(journal, rid).state is not State.PENDING, what="done")
    finally:
        forwarder.stop()
    record = record_of(journal, rid)
    assert record.state is State.SENT and record.already_existed
    assert record.unknown_outcomes == 2 and len(emulator.accepted) == 1
    assert len([r for r in caplog.records if r.exc_info]) == 1
    assert status.collect(journal)["agent_errors"] == 2


# -- hazard 9: bodies read up to a limit, within a deadline ---------------------------------


def test_an_endless_chunked_body_is_cut_at_a_small_limit_and_the_record_kept(
    journal: Journal, odd: Callable[[Answer], OddController], forwarders: Callable[..., Forwarder]
) -> None:
    written = {"bytes": 0}
    cap = 64 * 2**20  # the test's own bound: an agent that reads it all would hold 64 MB

    def answer(n: int, payload: dict[str, Any], conn: socket.socket) -> None:
        if n > 1:
            conn.sendall(success(n))
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        while written["bytes"] < cap:
            conn.sendall(chunk)
            written["bytes"] += 0x10000
        conn.sendall(b"0\r\n\r\n")

    server = odd(answer)
    rid = add_sale(journal, "000001")
    forwarders(journal, server.url).start()
    eventually(state_is(journal, rid, State.SENT), timeout=30, what="sent on the next try")
    assert written["bytes"] < 16 * 2**20  # the agent hung up soon after its limit
    record = record_of(journal, rid)
    assert record.unknown_outcomes == 1 and server.permits() == ["000001", "000001"]
    [cut] = journal.attempts(rid)
    assert "64 KiB" in (cut.error or "")


def test_a_trickling_body_does_not_wedge_the_worker(
    journal: Journal, odd: Callable[[Answer], OddController], forwarders: Callable[..., Forwarder]
) -> None:
    """One byte every 0.3 s never trips a 1 s read timeout; the deadline for the whole
    answer does, and the worker goes on with the next sale."""

    def answer(n: int, payload: dict[str, Any], conn: socket.socket) -> None:
        if n > 1:
            conn.sendall(success(n))
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(200):
            if server.stopped.wait(0.3):
                return
            conn.sendall(b" ")

    server = odd(answer)
    slow, fresh = add_sale(journal, "000001"), add_sale(journal, "000002")
    forwarders(journal, server.url, timeout_s=1.0).start()
    eventually(state_is(journal, fresh, State.SENT), timeout=20, what="the next sale sent")
    eventually(state_is(journal, slow, State.SENT), timeout=20, what="the slow one resent")
    record = record_of(journal, slow)
    assert record.unknown_outcomes == 1
    [cut] = journal.attempts(slow)
    assert "in time" in (cut.error or "")


def test_a_worker_stuck_in_one_request_stops_feeding_the_watchdog(
    journal: Journal, odd: Callable[[Answer], OddController], forwarders: Callable[..., Forwarder]
) -> None:
    """Header bytes trickling in never trip a read timeout, and no deadline can cut a
    blocked read: the worker is stuck, so the watchdog must starve (systemd restarts)."""

    def answer(n: int, payload: dict[str, Any], conn: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1000:
            if server.stopped.wait(0.1):
                return
            conn.sendall(bytes([byte]))

    server = odd(answer)
    forwarder = forwarders(journal, server.url, timeout_s=1.0)
    forwarder.stall_after_s = 2.0
    forwarder.start()
    assert forwarder.idle_or_progressing  # idle is healthy
    add_sale(journal, "000001")
    eventually(lambda: server.permits(), what="the request sent")
    eventually(lambda: not forwarder.idle_or_progressing, timeout=20, what="the watchdog starved")


# -- a known answer stays known: crashes in a backoff, journals that fail after a send ------


def test_a_kill_during_a_backoff_is_no_unknown_outcome_so_a_later_9022_is_a_conflict(
    tmp_path: Path, odd: Callable[[Answer], OddController]
) -> None:
    """The controller answered 503 (it stored nothing), the agent is SIGKILLed while it
    waits to retry, and another sale holds the permit number by the time it is back. The
    503 was a known outcome: the 9022 is a conflict for a person, never "already sent"."""
    stored = threading.Event()

    def answer(n: int, payload: dict[str, Any], conn: socket.socket) -> None:
        if not stored.is_set():
            conn.sendall(reply(503, b"busy", Retry_After="30"))
        else:
            body = b'{"ErrorCode": 9022, "ErrorMessage": "A record already exists"}'
            conn.sendall(reply(200, body, Content_Type="application/json"))

    controller = odd(answer)
    config = write_config(tmp_path, controller.url, controller_extra="concurrency = 1")
    path = tmp_path / "journal.sqlite3"
    with Journal(path) as journal:
        record_id = add_sale(journal, "PS-TEST-meter-1-000001")
    log = tmp_path / "agent.log"
    agent = start_agent(config, log)
    with Journal(path) as journal:
        eventually(lambda: record_of(journal, record_id).last_status == 503, what="the 503")
        agent.kill()  # SIGKILL while the record waits for its retry
        agent.wait()
        assert record_of(journal, record_id).unknown_outcomes == 0
        stored.set()
        agent = start_agent(config, log)
        try:
            eventually(lambda: record_of(journal, record_id).state is not State.PENDING)
        finally:
            stop_agent(agent)
        record = record_of(journal, record_id)
    assert record.state is State.DEAD and not record.already_existed, record.last_error
    assert record.last_error.startswith("permit number conflict")
    assert record.unknown_outcomes == 0


def test_an_answer_the_journal_cannot_take_at_once_is_recorded_when_it_can(
    journal: Journal,
    odd: Callable[[Answer], OddController],
    forwarders: Callable[..., Forwarder],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A technician's shell holds the journal's lock past its busy timeout while a
    delivery's answer comes in. The answer is kept until it can be written: the record is
    sent with its reference_id, once, never re-sent into a 9022 and dead-lettered."""
    monkeypatch.setattr(agent.journal.store, "BUSY_TIMEOUT_MS", 300)
    shell = sqlite3.connect(journal.path, isolation_level=None, check_same_thread=False)
    released = threading.Event()

    def answer(n: int, payload: dict[str, Any], conn: socket.socket) -> None:
        if n == 1:
            shell.execute("BEGIN IMMEDIATE")  # taken while the answer is on its way
            threading.Timer(1.5, lambda: (shell.execute("ROLLBACK"), released.set())).start()
            conn.sendall(success(n))
        else:
            body = b'{"ErrorCode": 9022, "ErrorMessage": "A record already exists"}'
            conn.sendall(reply(200, body, Content_Type="application/json"))

    controller = odd(answer)
    record_id = add_sale(journal, "PS-TEST-meter-1-000001")
    forwarders(journal, controller.url).start()
    assert released.wait(10)
    eventually(lambda: record_of(journal, record_id).state is not State.PENDING)
    shell.close()
    record = record_of(journal, record_id)
    assert (record.state, record.reference_id) == (State.SENT, "R-1"), record.last_error
    assert controller.permits() == ["PS-TEST-meter-1-000001"]  # sent once


def test_a_journal_that_fails_at_once_does_not_spin_the_worker(
    journal: Journal,
    odd: Callable[[Answer], OddController],
    forwarders: Callable[..., Forwarder],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a delivery the journal becomes unusable (here: locked elsewhere, with a short
    busy timeout standing in for a full disk or an I/O error, which fail at once). The
    worker backs off: a handful of tries and log lines, not one per busy timeout."""
    monkeypatch.setattr(agent.journal.store, "BUSY_TIMEOUT_MS", 20)
    controller = odd(lambda n, payload, conn: conn.sendall(success(n)))
    record_id = add_sale(journal, "PS-TEST-meter-1-000001")
    forwarder = forwarders(journal, controller.url)
    forwarder.start()
    eventually(state_is(journal, record_id, State.SENT), what="the first sale sent")
    shell = sqlite3.connect(journal.path, isolation_level=None)
    shell.execute("BEGIN IMMEDIATE")
    caplog.clear()
    forwarder.wake()  # as a new sale would: the worker looks into the journal
    time.sleep(3.0)
    shell.execute("ROLLBACK")
    shell.close()
    errors = [r for r in caplog.records if r.name == "agent.forwarder" and r.levelno >= 40]
    assert len(errors) <= 6, f"{len(errors)} journal errors logged in 3 s"
