"""The service room: the running agent and its plumbing.

* :mod:`.service`: the composition root (one :class:`Service` wired from one Config) and
  its main loop: chores, reloads, the watchdog, the stop.
* :mod:`.runlock`: one ``run`` per journal; whether one is running, and its PID.
* :mod:`.status_line`: the one-line summary sent to systemd as ``STATUS=``.
* :mod:`.notify` (sd_notify), :mod:`.metrics` (Prometheus; imported only when ``[metrics]``
  asks for it, so a station without monitoring starts without prometheus_client),
  :mod:`.logs` (journald, secrets redacted), :mod:`.reload` (what SIGHUP applies, what
  needs a restart).

May import the product (config, journal, intake, mapping, forwarder, drivers), never the
commands: they import the service, not the other way round.
"""

from __future__ import annotations

from agent.service.notify import Notifier
from agent.service.reload import RESTART_COMMAND, ReloadPlan, plan_reload
from agent.service.runlock import RunLock, lock_path, service_pid, service_running, signal_reload
from agent.service.service import Service
from agent.service.status_line import brief

__all__ = [
    "RESTART_COMMAND",
    "Notifier",
    "ReloadPlan",
    "RunLock",
    "Service",
    "brief",
    "lock_path",
    "plan_reload",
    "service_pid",
    "service_running",
    "signal_reload",
]
