"""Reading a TOML table of options, every problem named by its key path.

Each driver kind parses its own ``[[drivers]]`` keys with :func:`option_reader` (its
``parse_options``), so the drivers need nothing of the agent's config to be configured;
the config loader reads its own sections with the same :class:`TableReader`, so a problem
reads the same wherever it is: ``drivers[0].baudrate: expected an integer, got "fast"``.

Problems are collected, not raised one by one (:class:`Problems`): a technician fixes the
file once, not once per restart. Unknown keys are problems too, with a "did you mean" hint:
a typo must not be silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from agent.errors import ConfigError, ConfigErrors

DRIVER_KEYS = frozenset({"kind", "name", "permit_no"})  # every driver's, beside its kind's own

T = TypeVar("T")


class Problems:
    """Collects problems instead of stopping at the first one."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def error(self, key: str, problem: str) -> None:
        self.add(ConfigError(key, problem))

    def add(self, error: ConfigError) -> None:
        """Record a problem; a key already found wrong keeps its first (most specific)
        message, so a value of the wrong type is not also reported as out of range, or a
        token file of the wrong type also as "no token"."""
        if not any(e.key == error.key for e in self.errors):
            self.errors.append(error)

    def table(self, key: str, value: Any, *, required: bool) -> dict[str, Any]:
        """The table at ``key`` (empty when absent or not a table, with a problem said)."""
        if value is None:
            if required:
                self.error(key, f"missing table [{key}]")
            return {}
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {show(value)}")
            return {}
        return value

    def raise_any(self) -> None:
        """Raise :class:`ConfigErrors` listing every problem, if there is one."""
        if self.errors:
            raise ConfigErrors(self.errors)


class TableReader:
    """One table's keys, read under its key path ``prefix``. Keys not in ``known`` are
    problems at once (``known=None``: another reader checks them, as a driver's parser does
    its ``[[drivers]]`` table's). Problems go to ``problems`` (a fresh :class:`Problems`
    unless one is shared)."""

    def __init__(
        self,
        prefix: str,
        table: Mapping[str, Any],
        known: set[str] | frozenset[str] | None,
        problems: Problems | None = None,
    ) -> None:
        self.prefix = prefix
        self.table = table
        self.problems = Problems() if problems is None else problems
        if known is not None:
            self._check_keys(known)

    def _check_keys(self, known: set[str] | frozenset[str]) -> None:
        for key in self.table:
            if key not in known:
                hint = suggest(key, sorted(known))
                self.problems.error(
                    self.path(key), f"unknown key{hint}; known keys: {', '.join(sorted(known))}"
                )

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def __contains__(self, key: str) -> bool:
        return key in self.table

    def take(self, key: str, kind: type[T], default: T, *, required: bool = False) -> T:
        """The value of ``key`` if it is a ``kind``, else ``default`` (and a problem)."""
        if key not in self.table:
            if required:
                self.error(key, f"missing; expected {_kind_name(kind)}")
            return default
        value = self.table[key]
        # bool is an int in Python; a TOML true is not a baud rate
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.error(key, f"expected {_kind_name(kind)}, got {show(value)}")
            return default
        return value

    def take_number(self, key: str, default: float, *, low: float, high: float) -> float:
        """An integer or float from ``low`` to ``high``, as a float, else ``default``."""
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(key, f"expected a number, got {show(value)}")
            return default
        if not low <= value <= high:
            self.error(key, f"expected a number from {low:g} to {high:g}, got {value}")
            return default
        return float(value)

    def check(self, key: str, ok: bool, problem: str) -> None:
        if not ok:
            self.error(key, problem)

    def error(self, key: str, problem: str) -> None:
        self.problems.error(self.path(key), problem)

    def done(self, build: Callable[[], T]) -> T:
        """``build()`` if no problem was found, else raise :class:`ConfigErrors`."""
        self.problems.raise_any()
        return build()


def option_reader(prefix: str, options: Mapping[str, Any], known: set[str]) -> TableReader:
    """A reader of one driver's options (``known``: its kind's keys), for its own parser."""
    return TableReader(prefix, options, known | DRIVER_KEYS)


def show(value: Any) -> str:
    """A TOML value as a technician wrote it, for a message."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def suggest(name: str, candidates: tuple[str, ...] | list[str]) -> str:
    """A "did you mean" hint for a zone name or key, or an empty string."""
    folded = {c.casefold(): c for c in candidates}
    if name.casefold() in folded:
        return f" (did you mean {folded[name.casefold()]!r}? names are case-sensitive)"
    import difflib  # only for a mistake: a start without one skips its import

    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false", float: "a number"}.get(
        kind, kind.__name__
    )
