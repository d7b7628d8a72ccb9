"""The ``paystation-agent`` commands: one module per command, and the parser.

* :mod:`.parser`: every command's arguments, and :func:`main` (errors → exit codes).
* :mod:`.common`: the config ``--config`` names, its journal, a word to the service.
* ``run``, ``status``, ``journal`` (acknowledge), ``check_config``, ``zones``, ``dead``,
  ``export``, ``simulate``, ``ports``, ``tap``, ``emulator``, ``demo``: each command's
  handler and its text.

The outermost room: may import everything of the agent and of drivers; nothing imports
it but ``agent.__main__`` and the console script (``agent.commands:main``).
"""

from __future__ import annotations

from agent.commands.parser import build_parser, main

__all__ = ["build_parser", "main"]
