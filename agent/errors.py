"""Every error the agent raises on purpose, in one hierarchy.

    AgentError
    ├── ConfigError        a config key is missing, mistyped or out of range (exit 78);
    │                      carries the TOML key path, e.g. ``drivers[0].baudrate``
    ├── MappingError       a hardware record cannot become a Push API payload;
    │                      carries the record field (``PLATE``, ``START``, ...)
    └── JournalError       the SQLite journal cannot do what was asked
        ├── JournalCorruptError  the file is damaged: moved aside, rows salvaged, a new one
        └── JournalFullError (also an OSError)  the disk or the journal's size limit is full:
                           drivers NAK new frames, forwarding goes on

Messages never contain the API token: it is not passed to any code that raises these.
"""

from __future__ import annotations

EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd's RestartPreventExitStatus uses it


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """A configuration problem, naming the key path and what was expected."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


class ConfigErrors(AgentError):
    """Several configuration problems found in one pass, reported together."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class MappingError(AgentError):
    """A hardware record field that cannot become a valid Push API payload field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class JournalError(AgentError):
    """The journal cannot do what was asked."""


class JournalCorruptError(JournalError):
    """The journal file is damaged or not SQLite at all (moved aside and rebuilt at start)."""


class JournalFullError(JournalError, OSError):
    """No room left for new records; the hardware keeps them and resends later."""
