"""The :class:`Journal`: the one object the rest of the agent holds, made of the parts this
package keeps in modules of their own."""

from __future__ import annotations

from agent.journal.outbox import Outbox
from agent.journal.reports import Reports
from agent.journal.salvage import SalvageTarget
from agent.journal.space import Space


class Journal(Outbox, Space, SalvageTarget, Reports):
    """The SQLite journal. Thread-safe: one connection, one lock, short transactions.

    Its parts are mixins over one :class:`~agent.journal.store.Store`, not objects it
    delegates to, because they share more than an interface: the one connection and the
    one lock that make the journal thread-safe, and the transactions that span parts (a
    new record is refused by :class:`~agent.journal.space.Space` inside the
    :class:`~agent.journal.outbox.Outbox`'s insert, a full journal makes room while a
    delivery is recorded). Delegating would repeat each of some forty signatures and
    their docstrings here, to drift apart. Each part names the parts it uses as its base
    (``Outbox(Space)``, ``SalvageTarget(Reports)``), so mypy checks every call across
    them, and what one part may use of another is visible in its class line.

    * :class:`~agent.journal.store.Store`: opening, PRAGMAs, busy waits, the write
      transaction, ``meta``;
    * :class:`~agent.journal.outbox.Outbox`: append, claim, record a result, release,
      recover in-flight claims, remap;
    * :class:`~agent.journal.space.Space`: the disk reserve in use, the size limit,
      pruning and making room;
    * :class:`~agent.journal.reports.Reports`: counts, the summary, records for a person;
    * :class:`~agent.journal.salvage.SalvageTarget`: the writes of a salvage.
    """
