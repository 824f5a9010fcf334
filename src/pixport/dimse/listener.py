"""Run the DICOM listener, in one process or in several sharing one listening socket.

pynetdicom in one process slows down as associations add threads (the GIL): ``dimse.workers``
processes accept associations from one listening socket, each taking new ones only when it is
no busier than its siblings (``scp.ListenerServer``).  ``run_listener(settings)`` is the entry
point (``pixport dimse serve`` calls it); ``python -m pixport.dimse.listener`` runs it with
settings from the environment and ``PIXPORT_CONFIG``.  With several workers this process
becomes a light supervisor: it creates the index schema once, binds the port, starts each
worker as a fresh ``python -m pixport.dimse.listener`` process that inherits the socket and
gets the settings in its environment, listens once every worker has said it is ready (so
that the first callers are spread over them too), restarts a worker that dies, and stops them
all on SIGTERM or SIGINT.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType

import structlog

from pixport.config import Settings, load_settings
from pixport.logs import configure_logging

WORKER_FLAG = "PIXPORT_DIMSE_WORKER"
LISTEN_FD = "PIXPORT_DIMSE_LISTEN_FD"  # the inherited listening socket's descriptor
SUPERVISOR_PID = "PIXPORT_DIMSE_SUPERVISOR_PID"
READY_FD = "PIXPORT_DIMSE_READY_FD"  # a pipe a first worker writes to once it is ready to accept
GO_FD = "PIXPORT_DIMSE_GO_FD"  # a pipe the supervisor closes once the shared socket listens
READY_TIMEOUT = 120.0  # the supervisor listens then even if a first worker is not ready
PR_SET_PDEATHSIG = 1  # prctl(2)
LISTEN_BACKLOG = 128
RESTART_DELAY = 1.0


def worker_count(settings: Settings) -> int:
    """``dimse.workers``, where 0 means one per CPU core."""
    return settings.dimse.workers or os.cpu_count() or 1


def settings_environment(settings: Settings) -> dict[str, str]:
    """Environment variables that rebuild exactly these settings in another process."""
    document = settings.model_dump(mode="json")
    return {
        f"PIXPORT_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
        for name, value in document.items()
    }


def run_listener(settings: Settings) -> None:
    """Serve DIMSE until interrupted: in this process, or in ``dimse.workers`` worker processes."""
    configure_logging(settings.log_level)
    workers = worker_count(settings)
    if workers == 1 or os.environ.get(WORKER_FLAG) == "1":
        serve(settings)
        return
    supervise(settings, workers)


def serve(settings: Settings) -> None:
    """One listener process: bind (sharing the port), serve until SIGTERM or SIGINT."""
    from pixport.dimse.received import receive_into  # noqa: PLC0415  the supervisor stays light
    from pixport.dimse.scp import make_server  # noqa: PLC0415
    from pixport.wiring import build_archive  # noqa: PLC0415

    archive = build_archive(settings)
    # pynetdicom writes each incoming data set to a temporary file: in the staging area, the
    # C-STORE handler hashes it there and the blob store renames it, instead of a copy.  This
    # process serves DICOM only, so the process-wide default is ours to set.
    receive_into(archive.blobs.staging_dir, archive.ingest.limits.max_object_bytes)
    inherited = os.environ.get(LISTEN_FD)
    shared = socket.socket(fileno=int(inherited)) if inherited else None
    server = make_server(archive, settings, listen_socket=shared)
    log = structlog.get_logger(__name__)

    def stop(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    if os.environ.get(WORKER_FLAG) == "1":
        if not stop_with_supervisor():
            server.server_close()
            archive.close()
            return
    else:
        # Python leaves SIGINT ignored when a non-interactive shell started it in the
        # background; a listener on its own still stops on Ctrl-C or ``kill -INT``.  A worker
        # leaves SIGINT to its supervisor, which stops every worker with SIGTERM.
        signal.signal(signal.SIGINT, stop)
    # Everything made so far (modules, the archive, the server) lives as long as the process:
    # out of the collector's sight, a full collection no longer walks ~85,000 objects.
    gc.collect()
    gc.freeze()
    server.acceptors.fill()  # after the freeze: its objects are freed when it has served
    try:
        if shared is not None:
            report_ready()
            if not wait_until_listening(shared):
                return  # the supervisor died before it listened
        # Said when this process is about to accept (a full collection and the first acceptor
        # take tens of milliseconds in a fresh process): a sibling process, or a test, counts on it.
        log.info(
            "dimse.listening",
            ae_title=settings.dimse.ae_title,
            host=settings.dimse.host,
            port=server.server_address[1],
            pid=os.getpid(),
        )
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        archive.close()
        log.info("dimse.stopped", pid=os.getpid())


def report_ready() -> None:
    """Tell the supervisor, if it waits for it, that this worker is ready to accept."""
    ready = os.environ.pop(READY_FD, None)
    if ready is None:
        return
    try:
        os.write(int(ready), b".")
    except OSError:
        pass  # the supervisor stopped waiting: it listens already, or it is gone
    finally:
        os.close(int(ready))


def wait_until_listening(shared: socket.socket) -> bool:
    """Wait until the supervisor has made the shared socket listen (it waits for every first worker).

    Serving a socket that does not listen yet would be a busy loop: every wait for a connection
    returns at once.  False if the socket does not listen when the wait ends (the supervisor
    died first).
    """
    go = os.environ.pop(GO_FD, None)
    if go is not None:
        try:
            os.read(int(go), 1)  # end of file once the supervisor has closed its end
        finally:
            os.close(int(go))
    return bool(shared.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def stop_with_supervisor() -> bool:
    """Have the kernel send this worker SIGTERM when its supervisor dies (Linux; elsewhere not).

    A supervisor killed outright (SIGKILL, the OOM killer) cannot stop its workers: they went on
    serving the port as orphans, and a new supervisor could not bind it.  False if the
    supervisor is gone already (it died before the request took effect).
    """
    libc_name = ctypes.util.find_library("c")
    prctl = getattr(ctypes.CDLL(libc_name, use_errno=True), "prctl", None) if libc_name else None
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    return os.getppid() == int(os.environ.get(SUPERVISOR_PID, os.getppid()))


def supervise(settings: Settings, workers: int) -> None:
    """Start ``workers`` listener processes; restart any that dies; stop them all on a signal."""
    from pixport.wiring import build_index  # noqa: PLC0415

    build_index(settings).close()  # the schema, once, before workers race to create it
    log = structlog.get_logger(__name__)
    listening = bound_socket(settings.dimse.host, settings.dimse.port)
    fd = listening.fileno()
    environment = {
        **os.environ,
        **settings_environment(settings),
        WORKER_FLAG: "1",
        LISTEN_FD: str(fd),
        SUPERVISOR_PID: str(os.getpid()),
    }
    environment.setdefault("MALLOC_ARENA_MAX", "2")
    command = [sys.executable, "-m", "pixport.dimse.listener"]

    go_read, go_write = os.pipe()

    def start(ready: int | None = None) -> subprocess.Popen[bytes]:
        if ready is None:  # a restarted worker: the socket listens already
            return subprocess.Popen(command, env=environment, pass_fds=(fd,))  # noqa: S603
        first = {**environment, READY_FD: str(ready), GO_FD: str(go_read)}
        return subprocess.Popen(command, env=first, pass_fds=(fd, ready, go_read))  # noqa: S603

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        try:
            start_first_workers(start, workers, processes, lambda: stopping)
        finally:
            os.close(go_read)
        # Listening only now that every worker can accept: the callers of the first moments
        # are spread over them.  (Listening from the start, a process up a few hundred
        # milliseconds before its siblings took every association of a burst: the benchmark's
        # four associations often ran on one process, at two thirds of the rate.)
        listening.listen(LISTEN_BACKLOG)
        os.close(go_write)  # the first workers start accepting
        go_write = -1
        port = listening.getsockname()[1]
        log.info("dimse.supervisor", workers=workers, host=settings.dimse.host, port=port, pid=os.getpid())
        while not stopping:
            time.sleep(0.2)
            for position, process in enumerate(processes):
                if process.poll() is not None and not stopping:
                    log.warning("dimse.worker_exited", pid=process.pid, returncode=process.returncode)
                    time.sleep(RESTART_DELAY)
                    processes[position] = start()
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        if go_write >= 0:
            os.close(go_write)
        listening.close()


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), not listening yet: ``socket.create_server`` minus listen."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def start_first_workers(
    start: Callable[[int], subprocess.Popen[bytes]],
    workers: int,
    processes: list[subprocess.Popen[bytes]],
    stopping: Callable[[], bool],
) -> None:
    """Start ``workers`` processes into ``processes``; wait until each is ready, has died, or ``READY_TIMEOUT``."""
    waiting: dict[int, subprocess.Popen[bytes]] = {}
    for _ in range(workers):
        read_end, write_end = os.pipe()
        try:
            processes.append(start(write_end))
        finally:
            os.close(write_end)  # the worker holds it now: end of file once it wrote or died
        waiting[read_end] = processes[-1]
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while waiting and not stopping() and time.monotonic() < deadline:
            readable, _, _ = select.select(list(waiting), [], [], 0.2)
            for read_end in readable:
                os.read(read_end, 1)  # a byte: ready; nothing: the worker died first (restarted later)
                os.close(read_end)
                del waiting[read_end]
    finally:
        for read_end in waiting:
            os.close(read_end)


if __name__ == "__main__":
    run_listener(load_settings())
