"""The journal: one SQLite file, the durable store-and-forward buffer between drivers and
the forwarder. A record is journaled (committed, ``synchronous=FULL``) before the driver
acknowledges it to the hardware, and leaves the journal only once delivered (or for good
refused) and past retention.

What lives here, from the bottom up (each module imports only modules listed before it):

- ``sqlite``: SQLite's result codes the journal tells apart; ending a transaction.
- ``records``: the values that go in and out (:class:`State`, :class:`NewRecord`,
  :class:`Claim`, :class:`Attempt`, :class:`Record`).
- ``schema``: the tables and indexes, as migrations step by step.
- ``reserve``: the disk reserve file that lets a full disk still record deliveries.
- ``store``: the connection, its PRAGMAs, busy waits, the write transaction.
- ``space``, ``reports``, ``outbox``, ``salvage``: the parts of :class:`Journal` (room
  and deletes; reads for people and metrics; the forwarder's queue; a salvage's writes,
  and the reading of a damaged file).
- ``journal``: :class:`Journal`, the parts put together.
- ``recovery``: :func:`open_journal`, the service's way in: an unfinished salvage finished,
  damage salvaged, another process's lock waited for.

It imports only ``agent.errors`` and ``agent.signals`` of the agent; the public names
are re-exported here, so callers write ``from agent.journal import Journal, State``.
"""

from agent.journal.journal import Journal
from agent.journal.records import (
    Appended,
    Attempt,
    AttemptRow,
    Claim,
    NewRecord,
    Record,
    Reread,
    State,
)
from agent.journal.recovery import (
    RECOVERED_META,
    acknowledge_recovery,
    open_journal,
    salvage_marker,
    unfinished_salvage,
)
from agent.journal.reports import Summary
from agent.journal.salvage import skipped_ids
from agent.journal.schema import SCHEMA_VERSION

__all__ = [
    "RECOVERED_META",
    "SCHEMA_VERSION",
    "Appended",
    "Attempt",
    "AttemptRow",
    "Claim",
    "Journal",
    "NewRecord",
    "Record",
    "Reread",
    "State",
    "Summary",
    "acknowledge_recovery",
    "open_journal",
    "salvage_marker",
    "skipped_ids",
    "unfinished_salvage",
]
