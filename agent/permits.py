"""Permit numbers: the ``permitNo`` each sale is sent with, unique across the operator's fleet.

Meters and stations commonly number their receipts alike, from 000001. A controller that
keys permits by number takes the second "000001" for the first (ErrorCode 9022), and that
sale never reaches enforcement. So by default a permit number is the station id, the
meter (the driver's name) and the receipt number: ``{station}-{driver}-{txn}``, e.g.
``PS-0001-meter-1-000123``. The receipt number is the record's ``PERMIT`` when the device
sends one, else its ``TXN`` as journaled (a receipt number a device reused for another sale
is journaled as ``TXN~2``, and its permit number follows).

A driver may choose another form with ``permit_no``, a template of ``{station}``,
``{driver}`` and ``{txn}`` (required, once) with literal text between them: ``"{txn}"`` for
a site whose receipt numbers are already unique across the fleet, ``"N-{txn}"`` … Two
drivers of one station whose forms could give the same number are refused at config
time (:func:`conflict`), naming both keys. Forms of *different* stations stay apart as
long as they contain ``{station}`` and station ids are unique; ``"{txn}"`` hands that
promise to the hardware.

Length: ``permitNo`` is at most 50 characters. A form must leave at least
:data:`RECEIPT_ROOM` characters for the receipt number once station and driver are filled
in (checked at config time). A record whose number would still be longer is rejected with
that reason and kept with its raw bytes (``dead requeue`` maps it again once the form is
shortened); a number is never cut or hashed, because a shortened number can equal
another sale's.

A record without any receipt number gets a stable one made by the agent: the station id
and the record's journal id, ``{station}-J{id}``, the same at every re-send and re-map, so
OPSCOM staff can tell a re-sent session from a new one.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.errors import MappingError

DEFAULT_TEMPLATE = "{station}-{driver}-{txn}"
PLACEHOLDERS = ("station", "driver", "txn")
MAX_LENGTH = 50  # push-api.md: permitNo is at most 50 characters
RECEIPT_ROOM = 16  # characters a form must leave for the receipt number


@dataclass(frozen=True)
class PermitForm:
    """One driver's permit numbers: ``prefix + receipt number + suffix``, where prefix and
    suffix are the template's text with the station id and driver name filled in."""

    template: str
    prefix: str
    suffix: str

    @classmethod
    def parse(cls, template: str, station: str, driver: str) -> PermitForm:
        """Read a ``permit_no`` template; raise ValueError saying what is wrong with it."""
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ValueError(f"{exc} in {template!r}; write {{ and }} only around a name") from None
        values = {"station": station, "driver": driver}
        text = ["", ""]  # before and after {txn}
        seen_txn = 0
        for literal, name, spec, conversion in parts:
            text[min(seen_txn, 1)] += literal
            if name is None:
                continue
            if name not in PLACEHOLDERS or spec or conversion:
                raise ValueError(
                    f"unknown placeholder {{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}} in {template!r}; use {{station}}, "
                    "{driver} and {txn}"
                )
            if name == "txn":
                seen_txn += 1
            else:
                text[min(seen_txn, 1)] += values[name]
        if seen_txn != 1:
            raise ValueError(
                f"{template!r} must contain {{txn}} (the receipt number) exactly once, "
                f"found {seen_txn}"
            )
        if not template.isprintable():
            raise ValueError(f"{template!r} contains control characters")
        return cls(template, text[0], text[1])

    @property
    def room(self) -> int:
        """Characters left for the receipt number."""
        return MAX_LENGTH - len(self.prefix) - len(self.suffix)

    @property
    def shape(self) -> str:
        """The form with station and driver filled in, as shown in messages."""
        return f"{self.prefix}{{txn}}{self.suffix}"

    def render(self, receipt: str, field_name: str = "TXN") -> str:
        """The permit number of one receipt; MappingError when it would be over 50."""
        number = f"{self.prefix}{receipt}{self.suffix}"
        if len(number) > MAX_LENGTH:
            raise MappingError(
                field_name,
                f"the permit number {number!r} would be {len(number)} characters, over the "
                f"limit of {MAX_LENGTH} (form {self.shape!r}: shorten the driver's permit_no, "
                "name or the station id, then requeue)",
            )
        return number

    def could_equal(self, other: PermitForm) -> bool:
        """Whether some receipt number of each could give the same permit number.

        ``p1 + x + s1 == p2 + y + s2`` has a solution in non-empty x, y exactly when one
        prefix starts the other and one suffix ends the other (the longer one's extra
        text is then taken up by the other's receipt number). Receipt numbers are free
        text, so "meter" and "meter-2" could meet ("meter" + "-2-5" = "meter-2" + "-5").
        """
        prefixes = sorted((self.prefix, other.prefix), key=len)
        suffixes = sorted((self.suffix, other.suffix), key=len)
        return prefixes[1].startswith(prefixes[0]) and suffixes[1].endswith(suffixes[0])


@dataclass(frozen=True)
class PermitNumbering:
    """A station's permit numbers, by driver name.

    ``fallback`` numbers records of a driver not in ``forms`` (one since renamed or removed
    from the config). Rules built from a config (``from_config``) fall back to the fleet-
    unique default; the bare default (no station: rules built by hand in tests and tools)
    is the receipt number alone.
    """

    station: str = ""
    forms: Mapping[str, PermitForm] = field(default_factory=dict)
    fallback: str = "{txn}"

    def form(self, driver: str) -> PermitForm:
        found = self.forms.get(driver)
        return found if found is not None else PermitForm.parse(self.fallback, self.station, driver)

    def number(
        self, driver: str, receipt: str | None, record_id: int | None, field_name: str = "TXN"
    ) -> str | None:
        """The permit number of one record; None while it has no receipt number and no
        journal id yet (it is numbered in the journal's insert, once it has an id)."""
        if receipt:
            return self.form(driver).render(receipt, field_name)
        if record_id is None:
            return None
        return f"{self.station}-J{record_id}" if self.station else f"J{record_id}"


RECEIPT_ONLY = PermitNumbering()  # the bare default: the receipt number as the device sent it


def conflict(forms: Mapping[str, PermitForm]) -> tuple[str, str] | None:
    """The first two keys (in order) whose forms could give the same permit number."""
    keys = list(forms)
    for i, first in enumerate(keys):
        for second in keys[i + 1 :]:
            if forms[first].could_equal(forms[second]):
                return first, second
    return None
