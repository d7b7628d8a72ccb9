"""What a reload (SIGHUP) can apply to the running service, and what only a restart can.

A reload must never claim more than it did. :func:`plan_reload` compares the running
config with the file's new one and says, key by key:

* **applied at once**: zone mappings and policy, the token (re-read), the mapping rules'
  time zone, currency and plate rule, ``retention_days``, ``opening_hours``, and the
  drivers: a new ``[[drivers]]`` table starts its driver, a removed one stops it, a changed
  one is restarted; an unchanged driver runs on untouched (a restart would lose its line
  state).
* **needs a restart** (:data:`RESTART_ONLY`): the station id (the journal's dedupe key),
  the journal and its size limit, ``one_cpu`` (threads are placed at start), every
  ``[controller]`` key that shapes the running sender and forwarder (``url``,
  ``timeout_s``, ``concurrency``, the backoffs), and the metrics listener and textfile.
  Swapping the sender under requests in flight is not worth the risk of stranding a claim;
  a restart stops cleanly and re-sends what was in flight. Each such change is logged with
  the command that applies it, and the service goes on with the running value, which the
  returned config keeps, so the rest of the service never mixes old and new.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

from agent.config import Config, DriverSettings

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

RESTART_COMMAND = "systemctl restart paystation-agent"
RESTART_ONLY = {
    "agent": ("station_id", "journal", "journal_max_mb", "one_cpu"),
    "controller": (
        "url",
        "timeout_s",
        "concurrency",
        "adaptive_concurrency",
        "backoff_max_s",
        "auth_retry_s",
        "proxy",
        "proxy_auth_file",
        "ca_file",
    ),
    "metrics": ("listen", "textfile"),
}


@dataclass(frozen=True)
class ReloadPlan:
    config: Config  # what the service runs with from now on
    needs_restart: tuple[str, ...]  # changed keys that only a restart applies, e.g. controller.url
    stop: tuple[str, ...]  # drivers (by name) removed or changed: stopped
    start: tuple[DriverSettings, ...]  # drivers added or changed: started


def plan_reload(running: Config, new: Config) -> ReloadPlan:
    """Compare two configs; see the module docstring for what is applied and what is not."""
    needs_restart: list[str] = []
    effective = replace(
        new,
        agent=_keep_running(running.agent, new.agent, "agent", needs_restart),
        controller=_keep_running(running.controller, new.controller, "controller", needs_restart),
        metrics=_keep_running(running.metrics, new.metrics, "metrics", needs_restart),
    )

    old_drivers = {d.name: d for d in running.drivers}
    new_drivers = {d.name: d for d in new.drivers}
    timezone_changed = running.agent.timezone != new.agent.timezone  # drivers' local clocks
    stop = [
        name for name, d in old_drivers.items() if new_drivers.get(name) != d or timezone_changed
    ]
    start = [d for name, d in new_drivers.items() if name in stop or name not in old_drivers]
    return ReloadPlan(effective, tuple(needs_restart), tuple(stop), tuple(start))


def _keep_running(running: T, new: T, table: str, needs_restart: list[str]) -> T:
    """``new`` with its restart-only keys at their running values; the changed ones are
    added to ``needs_restart`` by key path."""
    changed = {
        key: getattr(running, key)
        for key in RESTART_ONLY[table]
        if getattr(running, key) != getattr(new, key)
    }
    needs_restart += [f"{table}.{key}" for key in changed]
    return replace(new, **changed)
