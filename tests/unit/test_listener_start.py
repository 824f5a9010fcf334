"""The supervisor's start-up: it listens once every first worker is ready, or gone, never later.

Real child processes stand in for workers (a line of Python each): one that reports ready,
one that dies first, one that never reports within the wait.  A wait that did not end would
end the test by pytest's timeout.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pixport.dimse import listener

REPORTS_READY = "import os, sys; os.write(int(sys.argv[1]), b'.')"
DIES = "raise SystemExit(3)"
HANGS = "import time; time.sleep(30)"


@contextlib.contextmanager
def first_workers(scripts: list[str], *, stopping: bool = False) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``start_first_workers`` with one script per worker (given its ready pipe's descriptor);
    the processes it started, killed afterwards."""
    remaining = iter(scripts)

    def start(ready: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", next(remaining), str(ready)], pass_fds=(ready,))

    processes: list[subprocess.Popen[bytes]] = []
    try:
        listener.start_first_workers(start, len(scripts), processes, lambda: stopping)
        yield processes
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_the_wait_ends_once_every_worker_is_ready_or_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener, "READY_TIMEOUT", 3600.0)
    with first_workers([REPORTS_READY, DIES]) as processes:
        assert len(processes) == 2
        assert processes[1].wait(10) == 3


def test_a_worker_that_never_reports_holds_the_wait_only_until_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener, "READY_TIMEOUT", 0.5)
    with first_workers([REPORTS_READY, HANGS]) as processes:
        assert processes[0].wait(10) == 0
        assert processes[1].poll() is None  # still starting (30 s): not waited for


def test_a_stop_request_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener, "READY_TIMEOUT", 3600.0)
    with first_workers([HANGS], stopping=True) as processes:
        assert processes[0].poll() is None  # not waited for
