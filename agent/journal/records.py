"""The journal's records as the rest of the agent sees them: the states a record has, what
goes in (:class:`NewRecord`), what comes out (:class:`Claim`, :class:`Record`), and what a
send's result is (:class:`Attempt`). Plain values; imports nothing of the agent.

Every record has one state: ``pending`` (to send), ``held`` (zone not mapped yet),
``sent`` (the controller has it; its ``reference_id`` is kept), ``rejected`` (invalid at
the source: it never became a payload) or ``dead`` (the controller refused it for good).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

SENDING, WAITING = 1, 2  # ``in_flight`` of a claimed record: a request may be outstanding, or not


class State(StrEnum):
    PENDING = "pending"
    HELD = "held"
    SENT = "sent"
    REJECTED = "rejected"
    DEAD = "dead"


@dataclass(frozen=True)
class NewRecord:
    """One hardware record to journal, as the intake built it."""

    station: str
    txn: str | None  # the device's receipt number; None: never deduplicated
    source: str  # the driver's name
    raw: bytes
    fields: Mapping[str, str]
    payload: Mapping[str, str] | None  # None while held or when rejected
    state: State
    zone_code: str | None = None
    ends_at: float | None = None
    error: str | None = None
    # The permit number from the TXN as journaled and the record's id, both known only in
    # the insert: a reused TXN is stored as TXN~2, and a record without a TXN is numbered
    # from its id. Called then (may raise MappingError: the record is kept as rejected).
    permit_no: Callable[[str | None, int], str | None] | None = None


# A rejected record's raw bytes read again by its driver, for Journal.remap: (fields,
# None), or ({}, why they are not a record), or None when its driver has no reader now.
Reread = Callable[[bytes, str], tuple[dict[str, str], str | None] | None]


@dataclass(frozen=True)
class Appended:
    id: int
    duplicate: bool
    state: State


@dataclass(frozen=True)
class Claim:
    """One pending record handed to the forwarder; the payload has no token."""

    id: int
    payload: dict[str, str]
    attempts: int
    unknown_outcomes: int = 0  # earlier attempts that may have reached the controller


@dataclass(frozen=True)
class Attempt:
    """The result of one send, as the forwarder read it."""

    outcome: str  # delivered, already_delivered, rejected, paused, transient
    state: State | None  # SENT, DEAD, or None: still pending, to be retried
    status: int | None
    error: str | None
    body: str
    reference_id: str | None = None
    internal_reference_id: str | None = None
    already_existed: bool = False
    unknown: bool = False


@dataclass(frozen=True)
class AttemptRow:
    at: float
    outcome: str
    status: int | None
    error: str | None
    body: str


@dataclass(frozen=True)
class Record:
    """A journal row as the CLI shows it."""

    id: int
    station: str
    txn: str | None
    source: str
    state: State
    raw: bytes
    fields: dict[str, str]
    payload: dict[str, str] | None
    zone_code: str | None
    received_at: float
    attempts: int
    unknown_outcomes: int
    last_status: int | None
    last_error: str | None
    last_body: str | None
    reference_id: str | None
    sent_at: float | None
    already_existed: bool
