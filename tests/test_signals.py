"""agent.signals.Flag: what signal handlers set, so a stop request can never deadlock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from agent.signals import Flag
from tests.conftest import ROOT

# The service's main loop in miniature: wait, clear, look at the flags; handlers set them.
MAIN_LOOP = textwrap.dedent(
    """
    import signal, sys
    from agent.signals import Flag

    wake, stop, rung = Flag(), Flag(), 0

    def on_hup(*_):
        global rung
        rung += 1
        wake.set()

    def on_term(*_):
        stop.set()
        wake.set()

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    while not stop.is_set():
        wake.wait(0.01)
        wake.clear()
    print(rung, flush=True)
    """
)


def test_a_storm_of_signals_never_keeps_the_main_loop_from_stopping() -> None:
    # With threading.Event in place of Flag, this hangs in most runs: a handler's set()
    # waits for the lock its own thread holds inside wait() or clear().
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", MAIN_LOOP], env=env, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(2000):
            proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert int(proc.stdout.read()) > 0  # the handlers did run


def test_wait_returns_at_once_when_set_and_false_after_its_timeout() -> None:
    flag = Flag()
    try:
        assert flag.wait(0.01) is False and not flag.is_set()
        flag.set()
        flag.set()  # twice is once
        assert flag.is_set() and flag.wait(60) is True
        flag.clear()
        assert not flag.is_set()
        started = time.monotonic()
        assert flag.wait(0.05) is False  # the earlier wake-ups were drained
        assert time.monotonic() - started >= 0.04
    finally:
        flag.close()


def test_a_set_after_close_only_sets_the_flag() -> None:
    flag = Flag()
    flag.close()
    flag.set()  # a late signal during shutdown: no write into a reused descriptor
    assert flag.is_set() and flag.wait(0) is True
    flag.clear()
    flag.close()  # twice is harmless
