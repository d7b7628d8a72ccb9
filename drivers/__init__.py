"""Hardware drivers, by the config's ``kind``: each reads transactions from a source and
hands them to the agent's journal through :class:`drivers.base.RecordSink`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from drivers.base import Driver, DriverContext, RecordSink


def registry() -> dict[str, type[Driver]]:
    from drivers.serial_port import SerialDriver
    from drivers.simulated import SimulatedDriver

    kinds: list[type[Driver]] = [SerialDriver, SimulatedDriver]
    return {cls.kind: cls for cls in kinds}


def driver_option_parser(kind: str) -> Callable[[str, Mapping[str, Any]], Any] | None:
    cls = registry().get(kind)
    return cls.parse_options if cls else None


def create_driver(
    kind: str, name: str, options: Any, sink: RecordSink, context: DriverContext
) -> Driver:
    return registry()[kind](name, options, sink, context)
