"""The DICOMweb server killed (SIGKILL) in the middle of STOW-RS: no acknowledged instance is lost,
nothing half-stored is visible, and a restarted server answers for exactly what it acknowledged."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from test_dicomweb import multipart_body, split_multipart

from pixport.samples import PATIENTS, ct_series

PIXPORT = Path(sys.executable).with_name("pixport")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(data: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXPORT_")}
    env |= {
        "PIXPORT_STORAGE__DATA_DIR": str(data),
        "PIXPORT_HTTP__PORT": str(port),
        "PIXPORT_HTTP__WORKERS": "1",
        "PIXPORT_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen([str(PIXPORT), "archive", "serve"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    msg = "server did not start"
    raise RuntimeError(msg)


def _requests() -> list[tuple[list[bytes], list[str]]]:
    requests = []
    files: list[bytes] = []
    uids: list[str] = []
    for dataset in ct_series(PATIENTS[2], "killed", slices=240, size=256):
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
        uids.append(str(dataset.SOPInstanceUID))
        if len(files) == 10:
            requests.append((files, uids))
            files, uids = [], []
    return requests


def test_kill_during_stow_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = _free_port()
    server = _start(data, port)
    acknowledged: list[tuple[str, bytes]] = []
    requests = _requests()
    url = f"http://127.0.0.1:{port}/dicomweb/studies"

    def client() -> None:
        with httpx.Client(timeout=30) as session:
            for files, uids in requests:
                body, content_type = multipart_body(files)
                try:
                    response = session.post(url, content=body, headers={"Content-Type": content_type})
                except httpx.TransportError:
                    return
                assert response.status_code == 200
                acknowledged.extend(zip(uids, files, strict=True))

    sender = threading.Thread(target=client)
    sender.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 50 and time.monotonic() < deadline:
        time.sleep(0.005)
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=30)
    sender.join(timeout=60)
    assert 50 <= len(acknowledged) < 240, "the kill must land in the middle of the upload"

    check = subprocess.run(
        [str(PIXPORT), "archive", "check", "--json", "--grace", "0"],
        env={**os.environ, "PIXPORT_STORAGE__DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(check.stdout)
    assert check.returncode == 0, report
    assert report["problems"] == []
    assert report["instances_checked"] >= len(acknowledged)

    server = _start(data, port)
    try:
        study = httpx.get(f"{url}", params={"PatientID": PATIENTS[2].patient_id}).json()
        study_uid = study[0]["0020000D"]["Value"][0]
        for uid, original in acknowledged:
            found = httpx.get(f"{url}/{study_uid}/instances", params={"SOPInstanceUID": uid}).json()
            series_uid = found[0]["0020000E"]["Value"][0]
            retrieved = httpx.get(f"{url}/{study_uid}/series/{series_uid}/instances/{uid}")
            assert split_multipart(retrieved)[0][1] == original
        # Uploading everything again completes: duplicates for what was kept, the rest stored.
        for files, _ in requests:
            body, content_type = multipart_body(files)
            assert httpx.post(url, content=body, headers={"Content-Type": content_type}, timeout=30).status_code == 200
        count = httpx.get(f"{url}/{study_uid}/instances", params={"limit": "1000"}).json()
        assert len(count) == 240
    finally:
        server.terminate()
        server.wait(timeout=30)
