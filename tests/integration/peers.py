"""Real DICOM peers for integration tests: DCMTK storescp and dcmqrscp, and Orthanc.

Shared helper module: written for tests/integration/test_dimse_scu.py, usable by the SCP tests
(test_dimse_scp.py) and anyone else.  Each peer runs in its own temporary folder on free
loopback ports and is stopped (by its own process id) when its context manager exits; it is
SIGKILLed with the test process if that dies first (PR_SET_PDEATHSIG).

    with storescp(tmp_path, "STORESCP") as node:      # node.ae_title, node.port, node.folder
        ...
    with dcmqrscp(tmp_path, "QRSCP", known={"STORESCP": port}) as node:
        load_with_storescu(node, files)
    with orthanc(tmp_path, modalities={"PIXPORT": port}) as node:
        ...
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ORTHANC_BIN = "/usr/sbin/Orthanc"
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the test process dies (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Peer:
    """A running peer: where to reach it and where its files are."""

    ae_title: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]
    log: Path
    http_port: int | None = None

    @property
    def address(self) -> str:
        """``AET@127.0.0.1:port``, as ``pixport dimse`` takes it."""
        return f"{self.ae_title}@{LOOPBACK}:{self.port}"

    def log_text(self) -> str:
        """What the peer wrote to its log so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def tool(name: str) -> str:
    """DCMTK's program: pynetdicom installs apps of the same names (storescu, storescp, …) in the venv."""
    return shutil.which(name, path="/usr/bin:/usr/local/bin") or name


def _spawn(command: Sequence[str], folder: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            list(command),
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509  only sets the death signal
        )


def wait_for_port(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 30.0) -> None:
    """Return once ``port`` accepts connections; fail if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"peer exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}"
            raise RuntimeError(msg)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    msg = f"peer did not listen on port {port} within {timeout} s"
    raise RuntimeError(msg)


def wait_for_dicom(
    process: subprocess.Popen[bytes], ae_title: str, port: int, log: Path, timeout: float = 30.0
) -> None:
    """Return once the peer answers a C-ECHO (DCMTK echoscu); fail if the process exits first.

    A bare TCP probe is not enough: dcmqrscp crashes later after a connection that closed
    before sending an A-ASSOCIATE-RQ.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"peer exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}"
            raise RuntimeError(msg)
        echo = [tool("echoscu"), "-to", "2", "-aet", "PROBE", "-aec", ae_title, LOOPBACK, str(port)]
        if subprocess.run(echo, capture_output=True, timeout=20, check=False).returncode == 0:
            return
        time.sleep(0.1)
    msg = f"peer did not answer C-ECHO on port {port} within {timeout} s"
    raise RuntimeError(msg)


@contextlib.contextmanager
def _running(peer: Peer) -> Iterator[Peer]:
    try:
        yield peer
    finally:
        if peer.process.poll() is None:
            peer.process.terminate()
            try:
                peer.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                peer.process.kill()
                peer.process.wait(timeout=10)


@contextlib.contextmanager
def storescp(tmp: Path, ae_title: str = "STORESCP", *, accept_all: bool = True) -> Iterator[Peer]:
    """DCMTK storescp writing each received data set exactly as it arrived (bit-preserving).

    ``accept_all`` accepts every transfer syntax DCMTK knows; without it, only uncompressed ones.
    Received files land in ``peer.folder / "received"``.
    """
    folder = tmp / f"storescp-{ae_title}"
    received = folder / "received"
    received.mkdir(parents=True)
    port = free_port()
    log = folder / "storescp.log"
    command = [tool("storescp"), "--bit-preserving", "-aet", ae_title, "-od", str(received), "--unique-filenames"]
    if accept_all:
        command.append("--accept-all")
    process = _spawn([*command, str(port)], folder, log)
    wait_for_dicom(process, ae_title, port, log)
    with _running(Peer(ae_title, port, received, process, log)) as peer:
        yield peer


@contextlib.contextmanager
def dcmqrscp(tmp: Path, ae_title: str = "QRSCP", *, known: Mapping[str, int] | None = None) -> Iterator[Peer]:
    """DCMTK dcmqrscp (C-FIND, C-GET, C-MOVE, C-STORE) with its database in a temp folder.

    ``known`` maps AE titles to loopback ports: the C-MOVE destinations it may send to.
    Load it with ``load_with_storescu``.
    """
    folder = tmp / f"dcmqrscp-{ae_title}"
    database = folder / "db"
    database.mkdir(parents=True)
    port = free_port()
    hosts = "\n".join(f"node{n} = ({aet}, {LOOPBACK}, {p})" for n, (aet, p) in enumerate((known or {}).items()))
    config = folder / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 65536\nMaxAssociations = 16\n\n"
        f"HostTable BEGIN\n{hosts}\nHostTable END\n\n"
        "VendorTable BEGIN\nVendorTable END\n\n"
        f"AETable BEGIN\n{ae_title} {database} RW (200, 1024mb) ANY\nAETable END\n"
    )
    log = folder / "dcmqrscp.log"
    # Not --single-process: Debian's build segfaults there once the first association ends.
    process = _spawn([tool("dcmqrscp"), "-c", str(config)], folder, log)
    wait_for_dicom(process, ae_title, port, log)
    with _running(Peer(ae_title, port, database, process, log)) as peer:
        yield peer


def load_with_storescu(peer: Peer, files: Sequence[Path]) -> None:
    """Store files into a peer with DCMTK storescu (uncompressed transfer syntaxes)."""
    subprocess.run(
        [tool("storescu"), "-aet", "LOADER", "-aec", peer.ae_title, LOOPBACK, str(peer.port), *map(str, files)],
        check=True,
        capture_output=True,
        timeout=120,
    )


@contextlib.contextmanager
def orthanc(tmp: Path, ae_title: str = "ORTHANC", *, modalities: Mapping[str, int] | None = None) -> Iterator[Peer]:
    """Debian's Orthanc with its DICOM server on, every permission for the known ``modalities``.

    ``modalities`` maps AE titles to loopback ports.  Names are stored and answered in UTF-8.
    Its REST API listens on ``peer.http_port`` (loopback only).
    """
    folder = tmp / f"orthanc-{ae_title}"
    folder.mkdir(parents=True)
    port, http_port = free_port(), free_port()
    permissions = {f"Allow{op}": True for op in ("Echo", "Find", "Get", "Move", "Store", "NAction", "NEventReport")}
    config = {
        "Name": "PixPortTests",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ae_title,
        "DicomPort": port,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": {
            aet.lower(): {"AET": aet, "Host": LOOPBACK, "Port": p, **permissions}
            for aet, p in (modalities or {}).items()
        },
        "DefaultEncoding": "Utf8",
        "OverwriteInstances": False,
        "StorageCompression": False,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "SaveJobs": False,
        "MetricsEnabled": False,
        "Plugins": [],
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    process = _spawn([ORTHANC_BIN, str(config_path)], folder, log)
    wait_for_port(process, http_port, log)
    wait_for_dicom(process, ae_title, port, log)
    with _running(Peer(ae_title, port, folder, process, log, http_port)) as peer:
        yield peer


def orthanc_get(peer: Peer, path: str) -> object:
    """GET a path of Orthanc's REST API as JSON."""
    url = f"http://{LOOPBACK}:{peer.http_port}{path}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def orthanc_post(peer: Peer, path: str, body: object, *, timeout: float = 120) -> object:
    """POST to a path of Orthanc's REST API: ``bytes`` as they are (e.g. a DICOM file), else as JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = f"http://{LOOPBACK}:{peer.http_port}{path}"
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/dicom" if isinstance(body, bytes) else "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read())


def orthanc_bytes(peer: Peer, path: str) -> bytes:
    """GET a path of Orthanc's REST API as raw bytes (e.g. ``/instances/{id}/file``)."""
    url = f"http://{LOOPBACK}:{peer.http_port}{path}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


def orthanc_delete(peer: Peer, path: str) -> None:
    """DELETE a resource through Orthanc's REST API (e.g. ``/instances/{id}``)."""
    url = f"http://{LOOPBACK}:{peer.http_port}{path}"
    request = urllib.request.Request(url, method="DELETE")
    with urllib.request.urlopen(request, timeout=30):  # noqa: S310  http on loopback, built above
        pass
