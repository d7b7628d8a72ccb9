"""The serial line's own ceiling: the agent's serial driver on a pty, answering ACK to every
frame without storing anything. ``python -m bench.floor PORT`` runs until stdin closes.
What a stop-and-wait meter can reach over this line whatever the journal does."""

from __future__ import annotations

import sys
from zoneinfo import ZoneInfo

from drivers.base import DriverContext, HardwareRecord, Receipt
from drivers.serial_port import SerialDriver


class NullSink:
    def submit(self, record: HardwareRecord) -> Receipt:
        return Receipt.STORED

    def submit_many(self, records: list[HardwareRecord]) -> list[Receipt]:
        return [Receipt.STORED] * len(records)


def main() -> None:
    options = SerialDriver.parse_options("floor", {"port": sys.argv[1]})
    context = DriverContext("PS-BENCH", ZoneInfo("America/Toronto"))
    driver = SerialDriver("floor", options, NullSink(), context)
    driver.start()
    print("ready", flush=True)
    sys.stdin.read()
    driver.stop()


if __name__ == "__main__":
    main()
