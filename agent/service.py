"""The service: drivers → intake → journal → forwarder, wired from one Config.

:meth:`Service.start` opens the journal (migrating it), takes the run lock (one service per
journal), re-maps held records with the current zone map, starts the forwarder and then
the drivers. :meth:`Service.serve` waits for a stop, runs the periodic chores (retention,
the watchdog, the systemd status line) and applies reloads. :meth:`Service.stop` stops the
drivers first (nothing new is acknowledged), then the forwarder, then closes the journal.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from agent.config import Config, Secret, load_config, resolve_token
from agent.errors import AgentError, JournalError
from agent.forwarder import Forwarder
from agent.intake import Intake
from agent.journal import State
from agent.logs import add_secret
from agent.mapping import MappingRules
from agent.metrics import AgentMetrics
from agent.notify import Notifier
from agent.recovery import open_journal
from agent.retry import RetryPolicy
from agent.signals import Flag
from agent.transport import HttpSender, Sender
from drivers import create_driver
from drivers.base import Driver, DriverContext

log = logging.getLogger("agent.service")
PRUNE_EVERY_S = 3600.0
DISK_RESERVE_BYTES = 2 * 2**20  # given back when the disk is full, so deliveries are recorded
STATUS_EVERY_S = 10.0
HEALTH_EVERY_S = 2.0
METRICS_EVERY_S = 15.0


class AlreadyRunning(AgentError):
    pass


def lock_path(journal: Path) -> Path:
    return journal.with_name(journal.name + ".lock")


def service_running(journal: Path) -> bool:
    """True while a ``run`` holds this journal's lock (works from any process)."""
    try:
        with open(lock_path(journal), "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


def service_pid(journal: Path) -> int | None:
    """The PID of the ``run`` holding this journal, or None when none is running."""
    if not service_running(journal):
        return None
    try:
        return int(lock_path(journal).read_text().strip())
    except (OSError, ValueError):
        return None


def signal_reload(journal: Path) -> bool:
    """Ask a running service to reload (SIGHUP); False when no service is running."""
    pid = service_pid(journal)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    return True


class Service:
    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] = os.environ,
        sender: Sender | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.environ = environ
        self.notifier = notifier or Notifier()
        # set from signal handlers (cmd_run), so Flags, never threading.Events: see agent.signals
        self.stopping = Flag()
        self._reload = Flag()
        self._wake = Flag()
        self._published_drivers = ""
        self._token: Secret = resolve_token(config.controller, environ)
        add_secret(self._token.reveal())
        self._lock_handle: IO[bytes] | None = None
        self._take_lock(config.agent.journal)  # before anything may touch the journal
        max_mb = config.agent.journal_max_mb
        try:
            self.journal = open_journal(
                config.agent.journal, max_mb * 2**20 if max_mb else None, DISK_RESERVE_BYTES
            )
        except BaseException:
            self._release_lock()
            raise
        self.intake = Intake(
            self.journal, config.agent.station_id, MappingRules.from_config(config)
        )
        self.sender = sender or HttpSender(
            config.controller.url,
            lambda: self._token,
            timeout_s=config.controller.timeout_s,
            max_connections=config.controller.concurrency,
        )
        self.forwarder = Forwarder(
            self.journal,
            self.sender,
            concurrency=config.controller.concurrency,
            policy=RetryPolicy(
                max_s=config.controller.backoff_max_s,
                pause_initial_s=config.controller.auth_retry_s,
                pause_max_s=max(config.controller.auth_retry_s, 600.0),
            ),
            secret_text=lambda: self._token.reveal(),
            observe=self._observe_request,
        )
        context = DriverContext(config.agent.station_id, config.agent.timezone)
        self.drivers: list[Driver] = [
            create_driver(d.kind, d.name, d.options, self.intake, context) for d in config.drivers
        ]
        self.metrics = AgentMetrics(
            self.journal,
            self.drivers,
            lambda: self.forwarder.health.state,
            lambda: dict(self.intake.clock_skew),
        )

    def _observe_request(self, outcome: str, seconds: float) -> None:
        self.metrics.observe_request(outcome, seconds)

    def _take_lock(self, journal: Path) -> None:
        try:
            journal.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock_path(journal), "ab")  # noqa: SIM115 - held while running
        except OSError as exc:
            raise JournalError(
                f"cannot use the journal's directory {journal.parent}: {exc}"
            ) from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AlreadyRunning(
                f"another paystation-agent run is using the journal {journal}"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._lock_handle = handle

    def start(self) -> None:
        released = self.intake.remap((State.HELD,))
        if released.get(State.PENDING):
            log.info(
                "%d held record(s) released: their zones are mapped now", released[State.PENDING]
            )
        self.forwarder.start()
        for driver in self.drivers:
            driver.start()
        self._prune()
        listen = self.config.metrics.listen
        if listen is not None:
            try:
                self.metrics.serve(*listen)
            except OSError as exc:
                log.error("metrics: cannot listen on %s:%d: %s", *listen, exc)
        log.info(
            "station %s running: %d driver(s), controller %s",
            self.config.agent.station_id,
            len(self.drivers),
            self.config.controller.url,
        )

    def request_reload(self) -> None:
        """Safe from a signal handler: serve() does the reload on its own thread."""
        self._reload.set()
        self._wake.set()

    def request_stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def serve(self) -> None:
        """Run until :attr:`stopping` is set: chores, reloads, watchdog."""
        from agent.status import brief

        self._publish_drivers()
        self.notifier.ready(brief(self.journal))
        watchdog_every = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else None
        next_prune = time.monotonic() + PRUNE_EVERY_S
        next_status = time.monotonic()
        next_metrics = time.monotonic()
        while not self.stopping.is_set():
            self._wake.wait(min(HEALTH_EVERY_S, watchdog_every or HEALTH_EVERY_S))
            self._wake.clear()
            if self.stopping.is_set():
                break
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            now = time.monotonic()
            if now >= next_prune:
                next_prune = now + PRUNE_EVERY_S
                self._prune()
            self._publish_drivers()
            if self.config.metrics.textfile is not None and now >= next_metrics:
                next_metrics = now + METRICS_EVERY_S
                self._write_metrics(self.config.metrics.textfile)
            if watchdog_every and self.healthy():
                self.notifier.watchdog()
            if self.notifier.enabled and now >= next_status:
                next_status = now + STATUS_EVERY_S
                self.notifier.status(brief(self.journal))

    def _write_metrics(self, path: Path) -> None:
        try:
            self.metrics.write_textfile(path)
        except (OSError, JournalError) as exc:
            log.error("metrics: cannot write %s: %s", path, exc)

    def _publish_drivers(self) -> None:
        """Each port's health, for ``status`` in another process; written only on change."""
        health = {
            d.name: {
                "kind": d.kind,
                "connected": d.health.connected,
                "last_frame_at": d.health.last_frame_at,
                "frames": dict(d.health.frames),
                "detail": d.health.detail,
                "clock_skew_s": self.intake.clock_skew.get(d.name),
            }
            for d in self.drivers
        }
        text = json.dumps(health, sort_keys=True)
        if text != self._published_drivers:
            try:
                self.journal.set_meta({"drivers": text})
            except JournalError as exc:
                log.error("cannot publish port health: %s", exc)
                return
            self._published_drivers = text

    def healthy(self) -> bool:
        """Feed the watchdog only when the pipeline can make progress."""
        if not self.forwarder.idle_or_progressing:
            return False
        if any(d.failed for d in self.drivers):
            return False  # a driver's read loop died: a restart is the cure
        return self.journal.writable()

    def reload(self) -> None:
        """SIGHUP: re-read the zone map and the token; release held records that now map."""
        source = self.config.source
        if source is None:
            return
        try:
            config = load_config(source, self.environ)
            token = resolve_token(config.controller, self.environ)
        except AgentError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        self.intake.rules = MappingRules.from_config(config)
        if token != self._token:
            add_secret(token.reveal())
            self._token = token
            log.info("API token changed; retrying now")
            self.forwarder.retry_now()
        counts = self.intake.remap((State.HELD,))
        self.forwarder.wake()  # records requeued by the CLI in another process
        log.info(
            "reloaded %s: %d zone mapping(s); %d held record(s) released, %d still held",
            source,
            len(config.zones.map),
            counts.get(State.PENDING, 0),
            counts.get(State.HELD, 0),
        )

    def stop(self) -> None:
        self.notifier.stopping()
        self.stopping.set()
        self._wake.set()
        for driver in self.drivers:
            driver.stop()
        self.forwarder.stop()
        self.metrics.close()
        self.journal.close()
        self._release_lock()
        for flag in (self.stopping, self._reload, self._wake):
            flag.close()
        log.info("stopped")

    def _release_lock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def _prune(self) -> None:
        cutoff = time.time() - self.config.agent.retention_days * 86400
        try:
            pruned = self.journal.prune_sent(cutoff)
        except JournalError as exc:
            log.error("retention pruning failed: %s", exc)
            return
        if pruned:
            log.info(
                "pruned %d sent record(s) older than %d days",
                pruned,
                self.config.agent.retention_days,
            )
