"""The driver kinds, by the config's ``kind``: a plain table ``kind -> (module, class)``.

Like python-can's ``BACKENDS`` (``can/interfaces/__init__.py``, resolved by
``can/interface.py``), the table is data: a driver's module is imported only when its kind
is asked for, and no driver imports back. The config loader asks :func:`parse_options` to
validate each ``[[drivers]]`` table; the service asks :func:`create_driver` for the driver.
A new kind is one line here and one module beside this one.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from drivers.base import Driver, DriverContext, RecordSink

BACKENDS: Mapping[str, tuple[str, str]] = {
    "serial": ("drivers.serial_port", "SerialDriver"),
    "simulated": ("drivers.simulated", "SimulatedDriver"),
}


def driver_class(kind: str) -> type[Driver]:
    """The driver class of ``kind``; KeyError for a kind not in :data:`BACKENDS`."""
    module_name, class_name = BACKENDS[kind]
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise TypeError(f"{module_name}.{class_name} is not a driver")
    return cls


def parse_options(kind: str, prefix: str, options: Mapping[str, Any]) -> Any:
    """``kind``'s options, validated by the driver itself; ConfigErrors naming ``prefix.key``."""
    return driver_class(kind).parse_options(prefix, options)


def create_driver(
    kind: str, name: str, options: Any, sink: RecordSink, context: DriverContext
) -> Driver:
    return driver_class(kind)(name, options, sink, context)
