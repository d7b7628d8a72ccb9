"""``journal acknowledge``: a person has looked into a journal recovery.

A recovered journal (moved aside as damaged, its rows salvaged) is shown first in
``status`` until it is acknowledged here; the acknowledgement is kept in the journal's
``meta``. A salvage that is not finished yet cannot be acknowledged: the next start of the
service finishes it first.
"""

from __future__ import annotations

import argparse
import sys

from agent.commands.common import load, read_journal
from agent.journal import acknowledge_recovery, unfinished_salvage


def cmd_acknowledge(args: argparse.Namespace) -> int:
    config = load(args)
    path = config.agent.journal
    if not path.exists():
        print(f"nothing to acknowledge: the service has never run (no journal yet at {path})")
        return 0
    marker = unfinished_salvage(path)
    if marker is not None:
        print(
            f"paystation-agent: the salvage of {marker['aside']} is not finished: start the "
            "service, which "
            "finishes it first, then acknowledge",
            file=sys.stderr,
        )
        return 1
    with read_journal(config) as journal:
        recovered = acknowledge_recovery(journal)
    if recovered is None:
        print("nothing to acknowledge: the journal has not been recovered since")
        return 0
    print(f"acknowledged: {recovered}")
    print("the damaged file is kept beside the journal; delete it once it is no longer needed")
    return 0
