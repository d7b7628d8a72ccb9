"""What every command needs: the config that ``--config`` names, the journal it names,
a word to a running service, and progress on a terminal.

Only ``run`` and ``check-config`` talk to the controller, so only they read the API token
(:func:`load_for_sending`); every other command loads the config without it
(:func:`load`) and works as any user who can read the config and the journal (the
service's own user, say), with or without a ``[controller]`` table. A journal the service
has not created yet (a fresh install) reads as an empty one (:func:`read_journal`): nothing
to show is not an error.

Technicians work on site, often over SSH with little time: each command says what it did
in one or two lines, refuses mistakes before writing anything, and tells a running service
to reload so that a fix applies at once. Long operations show progress on a terminal and
stay quiet in pipes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.config import Config, default_config_path, load_config
from agent.errors import JournalError
from agent.journal import Journal
from agent.service import signal_reload

MAX_PENDING_AGE_S = 900.0  # status --max-pending-age: an older backlog is a problem


def config_path(args: argparse.Namespace) -> Path:
    """The ``--config`` given, else the default (``$PAYSTATION_AGENT_CONFIG``, …)."""
    path: Path = getattr(args, "config", None) or default_config_path()
    return path


def load(args: argparse.Namespace) -> Config:
    """The config for a command that does not talk to the controller: no token read."""
    return load_config(config_path(args), sending=False)


def load_for_sending(args: argparse.Namespace) -> Config:
    """The config for ``run`` and ``check-config``: ``[controller]`` and the token too."""
    return load_config(config_path(args))


@contextmanager
def read_journal(config: Config) -> Iterator[Journal]:
    """The journal the config names; while the service has never run, an empty journal in
    a temporary directory, so that nothing is created where the service will make its own
    (with its owner and mode)."""
    path = config.agent.journal
    if path.exists():
        try:
            opened = Journal(path)
        except JournalError as exc:
            if os.access(path, os.R_OK | os.W_OK) and os.access(path.parent, os.W_OK):
                raise
            raise JournalError(
                f"{exc}; run it as root or as the service's user (paystation-agent), "
                "who may read and write the journal"
            ) from None
        with opened as journal:
            yield journal
        return
    with (
        tempfile.TemporaryDirectory(prefix="paystation-agent-") as tmp,
        Journal(Path(tmp) / path.name) as journal,
    ):
        yield journal


def tell_service(config: Config) -> None:
    if signal_reload(config.agent.journal):
        print("the running service was told to reload (SIGHUP)")
    else:
        print("the service is not running; the change applies when it starts")


def show_progress(verb: str) -> Callable[[int], None] | None:
    if not sys.stderr.isatty():
        return None
    return lambda n: print(f"\r{verb} {n}…", end="", file=sys.stderr, flush=True)


def end_progress() -> None:
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr, flush=True)
