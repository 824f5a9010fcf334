"""A hub and hospital gateways as separate processes on loopback, set up with the CLI as an operator would.

Functions a test module calls with its own hospitals and gateway settings (e.g.
``PIXPORT_GATEWAY__AUTO_PUBLISH_AFTER``); ``test_network.py`` also puts a recording proxy in
front of the hub (``Network.hub_url`` set before the gateways are added).  All data is
synthetic (``pixport.samples``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import httpx
import pytest
import uvicorn
from dimse_support import free_port
from pydicom.dataset import Dataset
from starlette.types import ASGIApp

from pixport.samples import SAMPLE_RRNS, SampleHospital, hospital_studies
from pixport.trust.assertions import authorization_header
from pixport.trust.keys import SigningKey

STARTUP_SECONDS = 60


def pixport(*args: str | Path, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``pixport`` command line in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-c", "from pixport.cli.main import main; main()", *map(str, args)],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def base_env() -> dict[str, str]:
    """This environment without any PIXPORT_* setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PIXPORT_")}


def wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    """Wait until ``url`` answers (any status); fail if the process exits first."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{url} exited"
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=2)
            return
        time.sleep(0.2)
    pytest.fail(f"{url} did not start")


def poll(what: str, check: object, *, timeout: float = 90, every: float = 0.2) -> object:
    """Call ``check`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(every)


@dataclass
class Gateway:
    """One hospital's gateway process."""

    hospital: SampleHospital
    env: dict[str, str]
    url: str
    folder: Path
    studies: list[str]
    process: subprocess.Popen[bytes]

    @property
    def code(self) -> str:
        return self.hospital.code

    def key(self) -> SigningKey:
        return SigningKey.load(self.folder / "key.pem")


@dataclass
class Network:
    """The hub, its operator key, and the gateways; every process logs to ``logs``."""

    root: Path
    hub_env: dict[str, str]
    hub_url: str
    operator: SigningKey
    logs: Path
    gateways: dict[str, Gateway] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def hub_get(self, key: SigningKey, subject: str, path: str) -> httpx.Response:
        headers = authorization_header(key, subject, "pixport-hub", "GET", path.split("?", maxsplit=1)[0])
        return httpx.get(self.hub_url + path, headers=headers, timeout=60)

    def hub_post(self, key: SigningKey, subject: str, path: str, content: bytes) -> httpx.Response:
        headers = authorization_header(key, subject, "pixport-hub", "POST", path)
        return httpx.post(self.hub_url + path, headers=headers, content=content, timeout=60)

    def as_gateway(self, code: str, path: str) -> httpx.Response:
        """GET on the hub as the institution ``code``, with its key."""
        return self.hub_get(self.gateways[code].key(), code, path)

    def start_process(self, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.logs.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", "from pixport.cli.main import main; main()", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def log_text(self) -> str:
        return self.logs.read_text(errors="replace")


def start_hub(root: Path, settings: dict[str, str] | None = None) -> Network:
    """``pixport hub init``, a network key, an operator key, and ``pixport hub serve``.

    ``settings``: more PIXPORT_* variables for the hub.
    """
    hub_port = free_port()
    operator = SigningKey.generate()
    operator.save(root / "operator.pem")
    (root / "operator.jwk").write_text(json.dumps(operator.public_jwk()))
    hub_env = {
        **base_env(),
        "PIXPORT_HUB__DATA_DIR": str(root / "hub"),
        "PIXPORT_HUB__PORT": str(hub_port),
        "PIXPORT_HUB__OPERATOR_KEYS": json.dumps([str(root / "operator.jwk")]),
        **(settings or {}),
    }
    assert pixport("hub", "init", env=hub_env).returncode == 0
    assert pixport("hub", "network-key", root / "network.key", env=hub_env).returncode == 0
    network = Network(root, hub_env, f"http://127.0.0.1:{hub_port}", operator, root / "logs")
    hub = network.start_process("hub", "serve", env=hub_env)
    wait_until_up(f"{network.hub_url}/hub/directory", hub)
    return network


def add_gateway(network: Network, hospital: SampleHospital, settings: dict[str, str] | None = None) -> Gateway:
    """Key, admission at the hub, the hospital's sample studies imported, patients linked, served.

    ``settings``: more PIXPORT_* variables for this gateway.  The hub is told to call the
    hub-access port when ``PIXPORT_GATEWAY__HUB_ACCESS_PORT`` is among them.
    """
    code, folder, port = hospital.code, network.root / hospital.code, free_port()
    folder.mkdir()
    env = {
        **base_env(),
        "PIXPORT_STORAGE__DATA_DIR": str(folder / "archive"),
        "PIXPORT_HTTP__PORT": str(port),
        "PIXPORT_HTTP__WORKERS": "1",
        "PIXPORT_GATEWAY__INSTITUTION_CODE": code,
        "PIXPORT_GATEWAY__SIGNING_KEY": str(folder / "key.pem"),
        "PIXPORT_GATEWAY__NETWORK_KEY": str(network.root / "network.key"),
        "PIXPORT_GATEWAY__HUB_URL": network.hub_url,
        "PIXPORT_GATEWAY__HUB_KEY": str(network.root / "hub" / "hub-key.jwk"),
        **(settings or {}),
    }
    generated = pixport("gateway", "keys", "generate", env=env)
    assert generated.returncode == 0, generated.stderr
    admitted = pixport(
        "hub", "institutions", "add", code, "--name-ko", hospital.name_ko, "--name-en", hospital.name_en,
        "--endpoint", f"http://127.0.0.1:{env.get('PIXPORT_GATEWAY__HUB_ACCESS_PORT', port)}",
        "--public-key", folder / "key.jwk", env=network.hub_env,
    )  # fmt: skip
    assert admitted.returncode == 0, admitted.stderr
    images = folder / "incoming"
    images.mkdir()
    studies: list[str] = []
    for number, dataset in enumerate(hospital_studies(hospital)):
        dataset.save_as(images / f"{number}.dcm", enforce_file_format=True)
        if str(dataset.StudyInstanceUID) not in studies:
            studies.append(str(dataset.StudyInstanceUID))
    imported = pixport("archive", "import", images, env=env)
    assert imported.returncode == 0, imported.stderr
    for patient_index in sorted({index for index, _ in hospital.studies}):
        linked = link_patient(env, f"{hospital.id_prefix}-{patient_index + 1:05d}", SAMPLE_RRNS[patient_index])
        assert linked.returncode == 0, linked.stderr
    process = network.start_process("gateway", "serve", env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/healthz", process)
    gateway = Gateway(hospital, env, url, folder, studies, process)
    network.gateways[code] = gateway
    return gateway


def link_patient(env: dict[str, str], patient_id: str, rrn: str) -> subprocess.CompletedProcess[str]:
    """``pixport gateway patients link``, the RRN on standard input."""
    return pixport("gateway", "patients", "link", patient_id, env=env, stdin=rrn + "\n")


def stop(network: Network) -> None:
    """Stop every process of the network."""
    for process in network.processes:
        process.terminate()
    for process in network.processes:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_network(root: Path, hospitals: Sequence[tuple[SampleHospital, dict[str, str]]]) -> Iterator[Network]:
    """A hub and one gateway per (hospital, extra settings), stopped on leaving."""
    network = start_hub(root)
    try:
        for hospital, settings in hospitals:
            add_gateway(network, hospital, settings)
        yield network
    finally:
        stop(network)


def new_instance(template: Dataset, *, study_instance_uid: str | None = None, patient_id: str | None = None) -> Dataset:
    """A copy of ``template`` as a new instance (new SOP and series UIDs), in another study or for another patient."""
    dataset = copy.deepcopy(template)
    sop_uid = f"2.25.{uuid.uuid4().int}"
    dataset.SOPInstanceUID = sop_uid
    dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
    dataset.SeriesInstanceUID = f"2.25.{uuid.uuid4().int}"
    if study_instance_uid is not None:
        dataset.StudyInstanceUID = study_instance_uid
    if patient_id is not None:
        dataset.PatientID = patient_id
    return dataset


def stow(base_url: str, datasets: Sequence[Dataset]) -> httpx.Response:
    """STOW-RS the data sets to a node's ``/dicomweb/studies`` (the hospital-internal DICOMweb)."""
    boundary = uuid.uuid4().hex
    body = bytearray()
    for dataset in datasets:
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += buffer.getvalue() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return httpx.post(
        f"{base_url}/dicomweb/studies", content=bytes(body), headers={"Content-Type": content_type}, timeout=60
    )


class _ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        """Signals belong to pytest."""


@contextlib.contextmanager
def served_in_thread(app: ASGIApp) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread (lifespan included); yields its URL."""
    server = _ThreadedServer(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
