"""The supervisor's start-up: it listens once every first worker is ready, or gone, never later.

Real child processes stand in for workers (a line of Python each): one that reports ready,
one that dies first, one that never reports within the wait.  A wait that did not end would
end the test by pytest's timeout.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from pixport.dimse import listener

REPORTS_READY = "import os, sys; os.write(int(sys.argv[1]), b'.')"
DIES = "raise SystemExit(3)"
HANGS = "import time; time.sleep(30)"


def starter(scripts: list[str]) -> tuple[list[int], Callable[[int], subprocess.Popen[bytes]]]:
    """A ``start`` that runs the next script with the ready pipe's descriptor as its argument."""
    given: list[int] = []

    def start(ready: int) -> subprocess.Popen[bytes]:
        given.append(ready)
        script = scripts[len(given) - 1]
        return subprocess.Popen([sys.executable, "-c", script, str(ready)], pass_fds=(ready,))

    return given, start


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def test_the_wait_ends_once_every_worker_is_ready_or_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener, "READY_TIMEOUT", 3600.0)
    _, start = starter([REPORTS_READY, DIES])
    processes: list[subprocess.Popen[bytes]] = []
    try:
        listener.start_first_workers(start, 2, processes, lambda: False)
        assert len(processes) == 2
        assert processes[1].wait(10) == 3
    finally:
        stop_all(processes)


def test_a_worker_that_never_reports_holds_the_wait_only_until_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener, "READY_TIMEOUT", 0.5)
    _, start = starter([REPORTS_READY, HANGS])
    processes: list[subprocess.Popen[bytes]] = []
    try:
        listener.start_first_workers(start, 2, processes, lambda: False)
        assert processes[0].wait(10) == 0
        assert processes[1].poll() is None  # still starting (30 s): not waited for
    finally:
        stop_all(processes)


def test_a_stop_request_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener, "READY_TIMEOUT", 3600.0)
    _, start = starter([HANGS])
    processes: list[subprocess.Popen[bytes]] = []
    try:
        listener.start_first_workers(start, 1, processes, lambda: True)
        assert processes[0].poll() is None  # not waited for
    finally:
        stop_all(processes)
