"""Every error the agent raises on purpose, in one hierarchy.

    AgentError
    ├── ConfigError        a config key is missing, mistyped or out of range (exit 78);
    │   │                  carries the TOML key path, e.g. ``drivers[0].baudrate``
    │   └── ConfigErrors   several of them found in one pass, reported together; a
    │                      ConfigError itself, so one ``except ConfigError`` takes both,
    │                      and ``.errors`` lists the single problems either way
    ├── MappingError       a hardware record cannot become a Push API payload;
    │                      carries the record field (``PLATE``, ``START``, ...)
    ├── RecordFormatError (also a ValueError)  bytes well framed but not a record of the
    │                      driver's format: the driver NAKs and counts the frame
    ├── JournalError       the SQLite journal cannot do what was asked
    │   ├── JournalCorruptError  the file is damaged (SQLITE_CORRUPT, SQLITE_NOTADB, a failed
    │   │                  quick_check): moved aside, rows salvaged into a new one
    │   ├── JournalBusyError  another process holds the journal's write lock (a technician's
    │   │                  sqlite3 shell): waited for, never taken for corruption
    │   └── JournalFullError (also an OSError)  the disk or the journal's size limit is full:
    │                      drivers NAK new frames, forwarding goes on
    ├── SendError          no answer was read from the controller (refused connection,
    │                      timeout, reset, an answer too large or too slow); ``unknown``
    │                      says whether the request may have reached it: retried either way
    ├── AlreadyRunning     another ``run`` holds the journal's lock
    ├── ZoneEditError      a ``zones`` edit refused before anything was written
    ├── MeterError         ``simulate`` cannot run: a bad option, a port that cannot open
    └── Stopped            a stop (SIGTERM) came while the service was still starting: not
                           a failure (exit 0); what was interrupted resumes at the next start

Messages never contain the API token: it is not passed to any code that raises these.
This module imports nothing of the agent, so drivers may import it too.
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

    @property
    def errors(self) -> list[ConfigError]:
        """The single problems this error reports: itself."""
        return [self]


class ConfigErrors(ConfigError):
    """Several configuration problems found in one pass, reported together; its message
    is theirs, one a line, and it names no key of its own (``key`` is empty)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self._errors = errors
        super().__init__("", "\n".join(str(e) for e in errors))

    @property
    def errors(self) -> list[ConfigError]:
        """The single problems, in the order they were found."""
        return self._errors


class MappingError(AgentError):
    """A hardware record field that cannot become a valid Push API payload field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class RecordFormatError(AgentError, ValueError):
    """Bytes that are well framed but are not a record; says where it went wrong."""


class JournalError(AgentError):
    """The journal cannot do what was asked."""


class JournalCorruptError(JournalError):
    """The journal file is damaged or not SQLite at all (moved aside and rebuilt at start)."""


class JournalBusyError(JournalError):
    """Another process holds the journal's write lock; the file is fine and left alone."""


class Stopped(AgentError):
    """A stop was asked for while the service was starting (waiting for a locked journal,
    salvaging a damaged one)."""


class JournalFullError(JournalError, OSError):
    """No room left for new records; the hardware keeps them and resends later."""


class SendError(AgentError):
    """No answer was read from the controller for one request.

    ``reason`` says what happened, as the journal and the log show it (``ConnectError:
    controller unreachable``); ``unknown`` is True when the request may have reached the
    controller (a timeout or a reset after sending, an answer cut short), False when it
    certainly did not (no connection was made). ``cause`` is a short word for metrics
    labels (``dns``, ``refused``, ``tls``, ``timeout``, ``proxy``, ...; the transport's
    table). The message adds the transport's own words, which never contain the token
    (it travels only in the request body) nor a proxy password (it travels only in the
    CONNECT request's header).
    """

    def __init__(
        self, reason: str, *, unknown: bool, detail: str = "", cause: str = "other"
    ) -> None:
        self.reason = reason
        self.unknown = unknown
        self.cause = cause
        super().__init__(f"{reason} ({detail})" if detail else reason)


class AlreadyRunning(AgentError):
    """Another ``run`` holds this journal's lock; nothing was opened or changed."""


class ZoneEditError(AgentError):
    """A zone edit refused before anything was written."""


class MeterError(AgentError):
    """The meter cannot run: a bad option or a port that cannot be opened."""
