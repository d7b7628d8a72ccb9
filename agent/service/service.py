"""The service: drivers → intake → journal → forwarder, wired from one Config.

:meth:`Service.start` opens the journal (migrating it), takes the run lock (one service per
journal), re-maps held records with the current zone map, starts the forwarder and then
the drivers. :meth:`Service.serve` waits for a stop, runs the periodic chores (retention,
the watchdog, the systemd status line) and applies reloads. :meth:`Service.stop` stops the
drivers first (nothing new is acknowledged), then the forwarder, then closes the journal.

A stop takes at most ``STOP_BUDGET_S`` (the contract says 5 s), in every state: a journal
locked by another process makes every journal call give up within ``STOP_WAIT_S`` once
stopping (:meth:`Journal.stop_waiting`, set from the signal handler), and a request
waiting for a slow controller gets ``FORWARDER_STOP_S`` to finish before its connection is
closed (its outcome is then unknown: the record is sent again at the next start).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__
from agent.config import Config, Secret, load_config, resolve_proxy_auth, resolve_token
from agent.errors import AgentError, JournalError
from agent.forwarder import Forwarder, HttpSender, RetryPolicy, Sender, proxy_secrets
from agent.intake import Intake
from agent.journal import State, open_journal
from agent.mapping import MappingRules
from agent.service.logs import add_secret
from agent.service.notify import Notifier
from agent.service.reload import RESTART_COMMAND, ReloadPlan, plan_reload
from agent.service.runlock import RunLock
from agent.service.status_line import brief
from agent.signals import Flag
from drivers import create_driver
from drivers.base import Driver, DriverContext

if TYPE_CHECKING:
    from agent.service.metrics import AgentMetrics

log = logging.getLogger("agent.service")
PRUNE_EVERY_S = 3600.0
DISK_RESERVE_BYTES = 2 * 2**20  # given back when the disk is full, so deliveries are recorded
STATUS_EVERY_S = 10.0
HEALTH_EVERY_S = 2.0
FIRST_OPEN_WAIT_S = 3.0  # READY waits at most this long for every port's first open
METRICS_EVERY_S = 15.0
STOP_BUDGET_S = 5.0
FORWARDER_STOP_S = 1.0  # for a request in flight to finish; as long again after closing


class Service:
    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] = os.environ,
        sender: Sender | None = None,
        notifier: Notifier | None = None,
        stopping: Flag | None = None,
    ) -> None:
        """Opens the journal, which may wait for a lock another process holds or finish a
        salvage: ``stopping`` (set by a SIGTERM meanwhile) ends that with :class:`Stopped`."""
        self.config = config
        self.environ = environ
        self.notifier = notifier or Notifier()
        # set from signal handlers (commands.run): Flags, never threading.Events (agent.signals)
        self.stopping = stopping or Flag()
        self._reload = Flag()
        self._held_to_release = False  # a reload could not release held records yet
        self._wake = Flag()
        self._published_drivers = ""
        self._token: Secret = resolve_token(config.controller, environ)
        add_secret(self._token.reveal())
        proxy_auth = resolve_proxy_auth(config.controller, environ)
        self._secrets = proxy_secrets(environ)  # a password in an HTTPS_PROXY URL
        if proxy_auth is not None:
            self._secrets.append(proxy_auth.password.reveal())
        for secret in self._secrets:
            add_secret(secret)
        self._lock = RunLock.take(config.agent.journal)  # before anything may touch the journal
        max_mb = config.agent.journal_max_mb
        try:
            self.journal = open_journal(
                config.agent.journal,
                max_mb * 2**20 if max_mb else None,
                DISK_RESERVE_BYTES,
                stopping=self.stopping,
            )
        except BaseException:
            self._lock.release()
            raise
        self.intake = Intake(
            self.journal, config.agent.station_id, MappingRules.from_config(config)
        )
        self.sender = sender or HttpSender(
            config.controller.url,
            lambda: self._token,
            timeout_s=config.controller.timeout_s,
            max_connections=config.controller.concurrency,
            proxy=config.controller.proxy,
            proxy_auth=proxy_auth,
            ca_file=config.controller.ca_file,
            environ=environ,
        )
        if isinstance(self.sender, HttpSender):
            log.info("controller %s, %s", config.controller.url, self.sender.route)
        self.forwarder = Forwarder(
            self.journal,
            self.sender,
            concurrency=config.controller.concurrency,
            adaptive=config.controller.adaptive_concurrency,
            policy=RetryPolicy(
                max_s=config.controller.backoff_max_s,
                pause_initial_s=config.controller.auth_retry_s,
                pause_max_s=max(config.controller.auth_retry_s, 600.0),
            ),
            secret_text=lambda: [self._token.reveal(), *self._secrets],
            observe=self._observe_request,
            # a healthy request ends within about two timeouts (see HttpSender)
            stall_after_s=3 * config.controller.timeout_s + 30.0,
        )
        context = DriverContext(config.agent.station_id, config.agent.timezone)
        self.drivers: list[Driver] = [
            create_driver(d.kind, d.name, d.options, self.intake, context) for d in config.drivers
        ]
        # metrics only when [metrics] asks for them (changing that needs a restart)
        self.metrics: AgentMetrics | None = None
        if config.metrics.listen is not None or config.metrics.textfile is not None:
            from agent.service.metrics import AgentMetrics

            self.metrics = AgentMetrics(
                self.journal,
                self.drivers,
                lambda: self.forwarder.health.state,
                lambda: dict(self.intake.clock_skew),
                station_open=self._station_open,
                send_window=lambda: self.forwarder.window.limit,
            )

    def _station_open(self) -> bool:
        agent = self.config.agent  # the running config: a reload applies new hours at once
        return agent.opening_hours.is_open(datetime.now(agent.timezone).time())

    def _observe_request(self, outcome: str, seconds: float, cause: str = "") -> None:
        if self.metrics is not None:
            self.metrics.observe_request(outcome, seconds, cause)

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
        if listen is not None and self.metrics is not None:
            try:
                self.metrics.serve(*listen)
            except OSError as exc:
                log.error("metrics: cannot listen on %s:%d: %s", *listen, exc)
        try:  # for status: which version runs (an upgrade not restarted yet shows)
            self.journal.set_meta({"service_version": __version__})
        except JournalError as exc:
            log.error("cannot publish the version: %s", exc)
        log.info(
            "paystation-agent %s: station %s running: %d driver(s), controller %s",
            __version__,
            self.config.agent.station_id,
            len(self.drivers),
            self.config.controller.url,
        )

    def request_reload(self) -> None:
        """Safe from a signal handler: serve() does the reload on its own thread."""
        self._reload.set()
        self._wake.set()

    def request_stop(self) -> None:
        """Safe from a signal handler: only Flags are set."""
        self.stopping.set()
        self.journal.stop_waiting()
        self._wake.set()

    def serve(self) -> None:
        """Run until :attr:`stopping` is set: chores, reloads, watchdog."""
        self._await_first_open()
        self._publish_drivers()
        self.notifier.ready(self._brief())
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
            elif self._held_to_release:
                self._release_held()
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
                self.notifier.status(self._brief())

    def _brief(self) -> str:
        try:
            return brief(self.journal)
        except (JournalError, sqlite3.Error) as exc:
            return f"cannot read the journal: {exc}"

    def _write_metrics(self, path: Path) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.write_textfile(path)
        except (OSError, JournalError) as exc:
            log.error("metrics: cannot write %s: %s", path, exc)

    def _await_first_open(self) -> None:
        """Before READY, each driver's first try at its port (open, or why not), for at
        most :data:`FIRST_OPEN_WAIT_S`: ``systemctl start`` returns at READY, and the
        ``status`` a technician runs next must show the ports as they are, not as not
        tried yet (on a loaded PC that read "port meter-1 is disconnected", exit 6)."""
        deadline = time.monotonic() + FIRST_OPEN_WAIT_S
        while not all(_tried(d) for d in self.drivers):
            left = deadline - time.monotonic()
            if left <= 0 or self.stopping.wait(min(0.01, left)):
                return

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
        """SIGHUP: re-read the config file and apply what can be applied while running (see
        agent.service.reload): zone map, token, mapping rules, drivers; release held records that
        now map; end every pause and backoff, so the forwarder tries at once. Every changed key
        that only a restart applies is logged by name."""
        source = self.config.source
        if source is None:
            return
        try:
            config = load_config(source, self.environ)
            token = resolve_token(config.controller, self.environ)
        except AgentError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        plan = plan_reload(self.config, config)
        for key in plan.needs_restart:
            log.warning("%s changed; restart the service to apply it (%s)", key, RESTART_COMMAND)
        self.config = plan.config
        self.intake.rules = MappingRules.from_config(plan.config)
        if token != self._token:
            add_secret(token.reveal())
            self._token = token
            log.info("API token changed")
        # a reload is a technician's "try now": a pause for a refused token (the token may
        # have been fixed at OPSCOM's end) and every backoff end at once
        self.forwarder.retry_now()
        self._apply_drivers(plan)
        counts = self._release_held()
        self.forwarder.wake()  # records requeued by the CLI in another process
        log.info(
            "reloaded %s: %d zone mapping(s); %s; %d driver(s) running%s",
            source,
            len(config.zones.map),
            "held records wait for the journal"
            if counts is None
            else f"{counts.get(State.PENDING, 0)} held record(s) released, "
            f"{counts.get(State.HELD, 0)} still held",
            len(self.drivers),
            f"; {len(plan.needs_restart)} change(s) wait for a restart"
            if plan.needs_restart
            else "",
        )

    def _release_held(self) -> dict[State, int] | None:
        """Map held records again with the running rules; None when the journal cannot be
        written now (another process holds its lock past the busy timeout, say): then
        :meth:`serve` tries again at each health tick, and a reload never stops the
        service."""
        try:
            counts = self.intake.remap((State.HELD,))
        except JournalError as exc:
            if not self._held_to_release:
                log.warning(
                    "cannot release held records now: %s; the held record(s) are released "
                    "once it is free",
                    exc,
                )
            self._held_to_release = True
            return None
        if self._held_to_release and counts.get(State.PENDING):
            log.info(
                "%d held record(s) released: their zones are mapped now", counts[State.PENDING]
            )
        self._held_to_release = False
        return counts

    def _apply_drivers(self, plan: ReloadPlan) -> None:
        """Stop removed and changed drivers, start added and changed ones. A driver that
        does not stop in time keeps its place and its old settings (two readers must never
        share a port) until a restart. The list is changed in place: the metrics hold it."""
        context = DriverContext(plan.config.agent.station_id, plan.config.agent.timezone)
        replaced = {d.name for d in plan.start}
        for driver in [d for d in self.drivers if d.name in plan.stop]:
            driver.stop()
            if not driver.finished:
                log.error(
                    "driver %s did not stop; restart the service to apply its change (%s)",
                    driver.name,
                    RESTART_COMMAND,
                )
                continue
            self.drivers.remove(driver)
            if driver.name not in replaced:
                log.info("driver %s stopped: its [[drivers]] table was removed", driver.name)
        running = {d.name for d in self.drivers}
        for settings in plan.start:
            if settings.name in running:
                continue  # the old one did not stop
            driver = create_driver(
                settings.kind, settings.name, settings.options, self.intake, context
            )
            self.drivers.append(driver)
            driver.start()
            restarted = settings.name in plan.stop
            log.info("driver %s %s", settings.name, "restarted" if restarted else "started")

    def stop(self) -> None:
        self.notifier.stopping()
        self.stopping.set()
        self.journal.stop_waiting()
        self._wake.set()
        for driver in self.drivers:
            driver.stop()
        self.forwarder.stop(timeout=FORWARDER_STOP_S)
        if self.metrics is not None:
            self.metrics.close()
        self.journal.close()
        self._lock.release()
        for flag in (self.stopping, self._reload, self._wake):
            flag.close()
        log.info("stopped")

    def _prune(self) -> None:
        """Retention: delivered records sent, and rejected ones received, more than
        ``retention_days`` ago."""
        days = self.config.agent.retention_days
        cutoff = time.time() - days * 86400
        try:
            pruned = self.journal.prune_sent(cutoff)
            rejected = self.journal.prune_rejected(cutoff)
        except JournalError as exc:
            log.error("retention pruning failed: %s", exc)
            return
        if pruned:
            log.info("pruned %d sent record(s) older than %d days", pruned, days)
        if rejected:
            log.info("pruned %d rejected record(s) received more than %d days ago", rejected, days)


def _tried(driver: Driver) -> bool:
    """Whether the driver has tried its port once: open, a reason it is not, or ended."""
    return driver.health.connected or bool(driver.health.detail) or driver.finished
