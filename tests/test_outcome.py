"""Reading the controller's answer (agent/forwarder/outcome.py): every answer gets a verdict,
whatever its status, headers and body (push-api.md, "Decisions")."""

from __future__ import annotations

import email.utils
import json

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.forwarder.outcome import Outcome, Verdict, classify, parse_retry_after

NO_HEADERS = httpx.Headers()


def test_a_deeply_nested_json_body_gets_a_verdict() -> None:
    for body in (b"[" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        verdict = classify(200, NO_HEADERS, body)
        assert verdict.outcome is Outcome.TRANSIENT


def test_non_ascii_digits_are_not_numbers() -> None:
    assert parse_retry_after("²") is None
    assert parse_retry_after("١٢") is None  # Arabic-Indic digits
    assert parse_retry_after("12") == 12.0
    verdict = classify(200, NO_HEADERS, json.dumps({"ErrorCode": "³"}).encode())
    assert verdict.outcome is Outcome.REJECTED and "ErrorCode ³" in verdict.reason
    wire = httpx.Headers([(b"Retry-After", "²".encode())])  # the bytes as they arrive
    verdict = classify(503, wire, b"")
    assert verdict.outcome is Outcome.TRANSIENT and verdict.retry_after_s is None


def test_an_error_code_too_long_to_be_a_number_is_an_unknown_code() -> None:
    verdict = classify(200, NO_HEADERS, json.dumps({"ErrorCode": "9" * 10_000}).encode())
    assert verdict.outcome is Outcome.REJECTED
    assert len(verdict.reason) < 300  # a reason for a person, not the body again


def test_retry_after_as_an_http_date_far_away_is_read_but_capped() -> None:
    now = 1_800_000_000.0
    when = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(when, now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=now) == 3600.0
    assert parse_retry_after("Mon, 99 Foo 0000 99:99:99 GMT", now=now) is None


def test_9022_is_ours_only_when_an_earlier_attempt_may_have_arrived() -> None:
    body = json.dumps({"ErrorCode": 9022, "ErrorMessage": "A record already exists"}).encode()
    after_unknown = classify(200, NO_HEADERS, body, may_have_arrived=True)
    assert after_unknown.outcome is Outcome.ALREADY_DELIVERED and after_unknown.delivered
    first = classify(200, NO_HEADERS, body, may_have_arrived=False)
    assert first.outcome is Outcome.CONFLICT and not first.delivered
    assert first.reason.startswith("permit number conflict: ErrorCode 9022")


@given(
    status=st.integers(min_value=0, max_value=1200),
    headers=st.dictionaries(
        st.sampled_from(["Retry-After", "Location", "Content-Type", "X-Other"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=40),
    ),
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["status", "ErrorCode", "ErrorMessage", "reference_id", "x"]),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ).map(lambda doc: json.dumps(doc).encode()),
    ),
    may_have_arrived=st.booleans(),
)
@settings(max_examples=400, deadline=None)
def test_classification_is_total(
    status: int, headers: dict[str, str], body: bytes, may_have_arrived: bool
) -> None:
    raw = httpx.Headers([(k.encode(), v.encode("latin-1")) for k, v in headers.items()])
    verdict = classify(status, raw, body, may_have_arrived=may_have_arrived)
    assert isinstance(verdict, Verdict)
    if verdict.outcome is Outcome.DELIVERED:
        assert 200 <= status < 300
    if not 200 <= status < 300 and status not in (400, 401, 403, 404, 409, 413, 422):
        # outside the statuses the decisions name, only an ErrorCode can refuse a record
        assert verdict.outcome is not Outcome.REJECTED or "ErrorCode" in verdict.reason
