"""The OPSCOM controller emulator: a local "Push API: Permit Create" endpoint, faults on demand.

It is an independent check of the agent's payloads, so it imports nothing of the agent
(nor of ``drivers``): only the standard library, and its own modules (an import contract
in pyproject.toml keeps it so). It lives under ``agent`` only so that the installed
``paystation-agent emulator`` command and the tests reach it as ``agent.emulator``.

- ``rules``: the record and token rules, written from push-api.md; ``validate``.
- ``faults``: what a fault is and what it answers.
- ``capacity``: the load the server takes before it answers 503 (``set_capacity``).
- ``replies``: the answer to one request, as a value.
- ``http_server``: the socket plumbing (bodies, keep-alive, RST, an immediate stop).
- ``controller``: ``ControllerEmulator``, its state, routing and control API (the contract).
- ``foreground``: ``serve``, the CLI's ``emulator`` command.
"""

from agent.emulator.controller import (
    CAPACITY_PATH,
    COUNTS_PATH,
    FAULT_PATH,
    OUTCOMES,
    PERMITS_PREFIX,
    PUSH_PATH,
    STATE_PATH,
    Accepted,
    ControllerEmulator,
)
from agent.emulator.faults import FAULT_KINDS
from agent.emulator.foreground import serve
from agent.emulator.rules import DEDUPE_MODES, Problem, check_token, validate

__all__ = [
    "CAPACITY_PATH",
    "COUNTS_PATH",
    "DEDUPE_MODES",
    "FAULT_KINDS",
    "FAULT_PATH",
    "OUTCOMES",
    "PERMITS_PREFIX",
    "PUSH_PATH",
    "STATE_PATH",
    "Accepted",
    "ControllerEmulator",
    "Problem",
    "check_token",
    "serve",
    "validate",
]
