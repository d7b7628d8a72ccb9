"""Hardware drivers, by the config's ``kind``: each reads transactions from a source and
hands them to the agent's journal through :class:`drivers.base.RecordSink`.

Here live the driver base (``base``), the table of kinds (``registry``), each kind's module
(``serial_port``, ``simulated``) with its own option parser (``options``), the pure parts
of the serial line (``framing``, ``records``, ``faults``), this PC's ports and who holds
them (``ports``) and the meter end that ``simulate`` runs (``meter``). Drivers import
nothing of the agent but ``agent.errors`` and ``agent.signals``; the agent imports them,
never the other way round.
"""

from __future__ import annotations

from drivers.registry import BACKENDS, create_driver, parse_options

__all__ = ["BACKENDS", "create_driver", "parse_options"]
