"""``run`` keeps the agent's threads on one CPU (``agent.one_cpu``, agent/service/cpu.py):
every thread of the running process, read from /proc as ``taskset -p`` would show it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.emulator import ControllerEmulator
from agent.service import cpu
from tests.conftest import eventually, simulated_driver, start_agent, stop_agent, write_config

CPUS = sorted(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(
    len(CPUS) < 2,
    reason=f"this test process may use {len(CPUS)} CPU; keeping threads on one of several needs 2",
)


def allowed_cpus(pid: int) -> dict[int, str]:
    """Each thread of ``pid`` and the CPUs it may run on (the kernel's list, as ``0-1``)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found[int(task.name)] = line.split(":", 1)[1].strip()
    return found


def own_list() -> str:
    return allowed_cpus(os.getpid())[os.getpid()]  # the main thread's: the tests run there


@contextmanager
def running_agent(
    tmp_path: Path,
    emulator: ControllerEmulator,
    agent_keys: str = "",
    started_on: set[int] | None = None,
) -> Iterator[int]:
    """An agent selling through a simulated meter, delivering to the emulator (so a
    driver's thread and the forwarder's workers are all there), started on the CPUs
    ``started_on`` (default: this process's); its pid."""
    config = write_config(tmp_path, emulator.url, drivers=simulated_driver(count=40, rate=50))
    config.write_text(config.read_text().replace("[controller]", f"{agent_keys}\n[controller]"))
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, started_on or before)  # the agent inherits this thread's at fork
    try:
        agent = start_agent(config, tmp_path / "agent.log")
    finally:
        os.sched_setaffinity(0, before)
    try:
        eventually(lambda: len(emulator.accepted) >= 5, what="sales delivered")
        yield agent.pid
    finally:
        assert stop_agent(agent) == 0


@needs_two_cpus
def test_every_thread_runs_on_the_last_cpu_and_sales_still_flow(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    with running_agent(tmp_path, emulator) as pid:
        threads = allowed_cpus(pid)
        assert len(threads) >= 6, threads  # main, driver, 4 workers (and the emulator's none)
        assert set(threads.values()) == {str(CPUS[-1])}, threads
        eventually(lambda: len(emulator.accepted) == 40, what="every sale delivered")
    log = (tmp_path / "agent.log").read_text()
    assert f"threads kept on CPU {CPUS[-1]} (of {own_list()}): agent.one_cpu" in log


@needs_two_cpus
def test_one_cpu_false_leaves_the_threads_where_the_kernel_puts_them(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    with running_agent(tmp_path, emulator, "one_cpu = false") as pid:
        assert set(allowed_cpus(pid).values()) == {own_list()}
    assert "threads kept on CPU" not in (tmp_path / "agent.log").read_text()


@needs_two_cpus
def test_an_agent_started_on_one_cpu_stays_on_that_one(
    tmp_path: Path, emulator: ControllerEmulator
) -> None:
    """``taskset -c 0 paystation-agent run``, or the unit's ``CPUAffinity=0``: the choice
    someone made wins over the agent's."""
    with running_agent(tmp_path, emulator, started_on={CPUS[0]}) as pid:
        assert set(allowed_cpus(pid).values()) == {str(CPUS[0])}
    assert "threads kept on CPU" not in (tmp_path / "agent.log").read_text()


@needs_two_cpus
def test_a_refusal_is_logged_and_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A sandbox that answers ``sched_setaffinity`` with EPERM (a seccomp filter with an
    errno; the project's unit allows the call): the agent says so and runs as before.
    Stood in for in-process: no such sandbox can be set up by a test here."""

    def refuse(pid: int, cpus: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(cpu.os, "sched_setaffinity", refuse)
    with caplog.at_level(logging.INFO, logger="agent.service"):
        cpu.keep_on_one_cpu()
    assert os.sched_getaffinity(0) == set(CPUS)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "cannot keep the agent's threads on one CPU ([Errno 1] Operation not permitted)" in (
        record.getMessage()
    )
    assert "agent.one_cpu = false" in record.getMessage()


def test_cpu_lists_read_as_the_kernel_writes_them() -> None:
    assert cpu._ranges([0, 1, 2, 3, 6]) == "0-3,6"
    assert cpu._ranges([1]) == "1"
    assert cpu._ranges([0, 2, 3]) == "0,2-3"
