"""The listener as a deployment runs it: several processes sharing one listening socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dimse_support import AE_TITLE, CORPUS, dcmtk, free_port, tool
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pixport import build_archive, load_settings
from pixport.archive.check import check_archive


def start_supervisor(
    tmp_path: Path, port: int, workers: int, *, sigint_ignored: bool = False, wait: bool = True
) -> subprocess.Popen[str]:
    """The listener's supervisor, once every worker says it accepts (unless not ``wait``)."""
    environment = {
        **os.environ,
        "PIXPORT_STORAGE__DATA_DIR": str(tmp_path / "data"),
        "PIXPORT_DIMSE__PORT": str(port),
        "PIXPORT_DIMSE__WORKERS": str(workers),
        "PIXPORT_DIMSE__ALLOW_ANY_CALLER": "true",
    }
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "pixport.dimse.listener"],
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
        # As a non-interactive shell starts a background job: SIGINT ignored from the start.
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,  # noqa: PLW1509  no threads in this test process need it
    )
    assert supervisor.stderr is not None
    if not wait:
        threading.Thread(target=supervisor.stderr.read, daemon=True).start()  # keep the pipe drained
        return supervisor
    ready = 0
    for line in supervisor.stderr:  # every worker logs dimse.listening once it accepts
        ready += "dimse.listening" in line
        if ready == workers:
            break
    assert ready == workers, "listener did not start"
    threading.Thread(target=supervisor.stderr.read, daemon=True).start()  # keep the pipe drained
    assert dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", port).returncode == 0
    return supervisor


def stop(supervisor: subprocess.Popen[str]) -> None:
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(20) is not None
    if supervisor.stderr is not None:
        supervisor.stderr.close()


def serving_processes(port: int) -> list[int]:
    """The process id behind each established connection to ``port`` (from ``ss``)."""
    listing = subprocess.run(
        ["ss", "-Htnp", "state", "established", "(", "sport", "=", f":{port}", ")"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(int(part.split(",")[0]) for part in listing.split("pid=")[1:])


def test_listener_processes_share_the_port_and_stop_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    supervisor = start_supervisor(tmp_path, port, workers=2)
    try:
        files = sorted((CORPUS / "modality" / "ct").glob("*.dcm"))
        results = [
            subprocess.Popen([tool("dcmsend"), "-dn", "-aec", AE_TITLE, "127.0.0.1", str(port), str(f)]) for f in files
        ]
        assert [p.wait(60) for p in results] == [0] * len(files)
        children = subprocess.run(["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True, check=False)
        assert len(children.stdout.split()) == 2
        # The workers hash each data set as it arrives: every blob must re-hash to its digest.
        archive = build_archive(load_settings(storage={"data_dir": tmp_path / "data"}))
        try:
            report = check_archive(archive, repair=False)
            assert report.ok, report.as_dict()
            assert report.instances_checked == len(files)
        finally:
            archive.close()
    finally:
        stop(supervisor)


def test_a_single_listener_stops_on_sigint_even_when_started_with_it_ignored(tmp_path: Path) -> None:
    port = free_port()
    listener = start_supervisor(tmp_path, port, workers=1, sigint_ignored=True)
    listener.send_signal(signal.SIGINT)
    try:
        assert listener.wait(20) == 0
    finally:
        listener.kill()
        if listener.stderr is not None:
            listener.stderr.close()


def test_open_associations_are_spread_over_the_processes(tmp_path: Path) -> None:
    """Two associations open at once go to two processes, four to two each: none sits idle."""
    port = free_port()
    supervisor = start_supervisor(tmp_path, port, workers=2)
    ae = AE(ae_title="SPREAD")
    ae.add_requested_context(Verification)
    associations = []
    try:
        workers = set(
            map(
                int,
                subprocess.run(
                    ["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True, check=True
                ).stdout.split(),
            )
        )
        for expected in ([1, 1], [2, 2]):
            while len(associations) < sum(expected):
                assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
                assert assoc.is_established
                associations.append(assoc)
            pids = serving_processes(port)
            assert set(pids) == workers
            assert sorted(pids.count(pid) for pid in workers) == expected
    finally:
        for assoc in associations:
            assoc.release()
        stop(supervisor)


def test_the_first_associations_are_spread_over_the_processes(tmp_path: Path) -> None:
    """A burst the moment the port accepts goes to every worker, not to the first one up.

    The supervisor listens only once each worker is ready; a process up a few hundred
    milliseconds before its siblings took a whole burst before.
    """
    port = free_port()
    supervisor = start_supervisor(tmp_path, port, workers=2, wait=False)
    ae = AE(ae_title="BURST")
    ae.add_requested_context(Verification)
    associations = []
    try:
        deadline = time.monotonic() + 60
        while not listening(port) and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(4):  # the moment it listens
            assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
            assert assoc.is_established
            associations.append(assoc)
        pids = serving_processes(port)
        assert len(set(pids)) == 2
        assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2]
    finally:
        for assoc in associations:
            assoc.release()
        stop(supervisor)


def listening(port: int) -> bool:
    """Whether a socket listens on ``port`` (from ``ss``: no connection is made to find out)."""
    found = subprocess.run(
        ["ss", "-Hltn", "(", "sport", "=", f":{port}", ")"], capture_output=True, text=True, check=True
    ).stdout
    return bool(found.strip())


def workers_of(supervisor: subprocess.Popen[str]) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True, check=False)
    return sorted(map(int, found.stdout.split()))


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_worker_stopping_leaves_its_siblings_listening(tmp_path: Path) -> None:
    """One worker stopped alone (an operator's kill, say) must not stop the shared socket listening."""
    port = free_port()
    supervisor = start_supervisor(tmp_path, port, workers=2)
    try:
        first, _ = workers_of(supervisor)
        os.kill(first, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while running(first) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(first)
        for _ in range(4):  # served by the sibling (or the replacement), never refused
            assert dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", port).returncode == 0
    finally:
        stop(supervisor)


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """A supervisor killed outright (SIGKILL, the OOM killer) leaves no worker holding the port."""
    port = free_port()
    supervisor = start_supervisor(tmp_path, port, workers=2)
    workers = workers_of(supervisor)
    assert len(workers) == 2
    supervisor.kill()
    supervisor.wait(20)
    try:
        deadline = time.monotonic() + 20
        while any(running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(running(pid) for pid in workers)
    finally:
        for pid in filter(running, workers):  # orphans would hold the port and the stderr pipe
            os.kill(pid, signal.SIGKILL)
        if supervisor.stderr is not None:
            supervisor.stderr.close()  # its reader has seen the end: no worker holds the pipe
    stop(start_supervisor(tmp_path, port, workers=1))  # the port is free again
