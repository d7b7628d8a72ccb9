"""Scenario-suite settings: `make test` runs short, seeded versions; `make soak` sets
PAYSTATION_SOAK=1 for long ones. Every figure a scenario measures is printed and, when
PAYSTATION_SOAK_REPORT names a file, appended to it as one JSON line."""

from __future__ import annotations

import json
import os
from typing import Any

SOAK = os.environ.get("PAYSTATION_SOAK") == "1"
SEED = int(os.environ.get("PAYSTATION_SOAK_SEED", "20261128"))


def report(name: str, **figures: Any) -> None:
    line = json.dumps({"scenario": name, "seed": SEED, "soak": SOAK, **figures})
    print(line)
    path = os.environ.get("PAYSTATION_SOAK_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
