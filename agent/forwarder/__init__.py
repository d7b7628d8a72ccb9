"""The forwarder: pending records out of the journal, to the controller, at least once.

Its rooms, from the decisions down to the wire:

* :mod:`~agent.forwarder.workers`: the :class:`Forwarder` and its worker threads;
* :mod:`~agent.forwarder.controller`: the controller's state as the workers see it, an
  enum with its transitions;
* :mod:`~agent.forwarder.agent_errors`: the agent's own errors around a send, counted;
* :mod:`~agent.forwarder.outcome`: what an answer means for one record (pure);
* :mod:`~agent.forwarder.retry`: the retry policy, as data turned into tenacity strategies;
* :mod:`~agent.forwarder.transport`: the seam to the network, the only module that imports
  httpx; above it every module speaks the agent's types (an import contract keeps it so).

It may import :mod:`agent.errors`, :mod:`agent.journal` and :mod:`agent.config` (the
token's :class:`~agent.config.Secret`), never the service, the commands or the drivers.
"""

from __future__ import annotations

from agent.forwarder.controller import ControllerState, Health
from agent.forwarder.outcome import CONFLICT_REASON, Outcome, Verdict, classify, classify_failure
from agent.forwarder.retry import RetryPolicy
from agent.forwarder.transport import HttpSender, Reply, Route, Sender, proxy_secrets
from agent.forwarder.workers import Forwarder

__all__ = [
    "CONFLICT_REASON",
    "ControllerState",
    "Forwarder",
    "Health",
    "HttpSender",
    "Outcome",
    "Reply",
    "RetryPolicy",
    "Route",
    "Sender",
    "Verdict",
    "classify",
    "classify_failure",
    "proxy_secrets",
]
