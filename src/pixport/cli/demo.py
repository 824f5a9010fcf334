"""``pixport demo``: a whole network on this machine: the hub and three hospital gateways.

Everything lives under one folder (``--data-dir``, default ``pixport-demo``) and is made on the
first run, then reused:

1. the network key (``network-key``), the hub (``hub/``: database and signing key) and an
   operator key (``operator-key.pem``/``.jwk``) the hub accepts;
2. three hospitals with Korean names (``samples.HOSPITALS``), each with its own institution
   key pair, admitted to the hub's directory with its gateway's URL (the gateways keep the
   ports of the first run: the directory names them);
3. synthetic studies (CT, MR, CR, multi-frame US; Korean names in ISO_IR 192 and ISO 2022
   IR 149) ingested into each gateway's archive; each patient linked to a national key made
   from a synthetic resident registration number, which is then forgotten;
4. the hub and the gateways started as separate processes (logs under ``logs/``); every study
   not yet published is published (manifest signed by its hospital, registered at the hub); a
   signed directory and one study's images and manifest exported under ``exports/`` to try
   ``pixport verify`` on.

Ctrl-C (SIGINT) or SIGTERM, at any step, stops every process and exits 0.  A port already in
use ends the command with exit code 2 before anything starts; a node that fails to start or
stops on its own ends it with exit code 1, after the others are stopped.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import httpx
import typer

from pixport.cli.common import settings_from
from pixport.config import Settings, load_settings
from pixport.errors import ConfigurationError, PeerUnavailable
from pixport.wiring import build_archive

if TYPE_CHECKING:
    from pixport.hub.node import Hub
    from pixport.samples import SampleHospital

STARTUP_SECONDS = 60
DEFAULT_GATEWAY_PORT = 8041
HOST = "127.0.0.1"


@dataclass
class Node:
    """One process of the demo network."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class DemoNetwork:
    """The network's data, made or found under ``root``: settings of each node, studies of each hospital."""

    root: Path
    hub_settings: Settings
    gateway_settings: list[Settings]
    studies: dict[str, list[str]]


class StopRequest:
    """The SIGINT/SIGTERM handler: it only sets a flag, which every step checks between units of work.

    (It takes no lock, as ``threading.Event.set`` would: it runs in the main thread between two
    bytecodes, possibly while that thread holds the very lock.)
    """

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame
        self.requested = True


def _environment(settings: Settings) -> dict[str, str]:
    from pixport.dicomweb.server import settings_environment  # noqa: PLC0415

    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PIXPORT_")}
    return {**inherited, **settings_environment(settings)}


def _start(name: str, url: str, command: list[str], settings: Settings, log_dir: Path) -> Node:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603  our own interpreter and module
            [sys.executable, "-c", "from pixport.cli.main import main; main()", *command],
            env=_environment(settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops the nodes in order
        )
    return Node(name, url, process, log_path)


def _wait_until_up(node: Node, path: str, stop: StopRequest) -> None:
    """Return once the node answers HTTP on ``path`` (any status), or a stop is requested."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while not stop.requested:
        if node.process.poll() is not None:
            raise PeerUnavailable(f"{node.name} exited at start (exit code {node.process.returncode}); see {node.log}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(node.url + path, timeout=2)
            return
        if time.monotonic() > deadline:
            raise PeerUnavailable(f"{node.name} did not start within {STARTUP_SECONDS} s; see {node.log}")
        time.sleep(0.2)


def _stop(nodes: list[Node]) -> None:
    for node in nodes:
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
    for node in nodes:
        try:
            node.process.wait(15)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()


def _check_ports_free(ports: dict[str, int]) -> None:
    """ConfigurationError naming every port (and its node) that something already listens on."""
    busy = []
    for name, port in ports.items():
        with socket.socket() as probe:
            # As uvicorn binds: a port left in TIME_WAIT by the previous run is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((HOST, port))
            except OSError:
                busy.append(f"{port} ({name})")
    if busy:
        raise ConfigurationError(
            f"in use on {HOST}: port {', '.join(busy)}; stop what listens there, "
            "or choose other ports with --hub-port (and --gateway-port with a new --data-dir)"
        )


def demo(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Folder of the whole demo network.")] = Path(
        "pixport-demo"
    ),
    hub_port: Annotated[int, typer.Option(help="The hub's HTTP port.")] = 8040,
    gateway_port: Annotated[
        int | None,
        typer.Option(
            help=f"First gateway's HTTP port; the others follow (default {DEFAULT_GATEWAY_PORT}, "
            "or the ports the data dir was set up with)."
        ),
    ] = None,
    setup_only: Annotated[bool, typer.Option("--setup-only", help="Make the network's data, then exit.")] = False,  # noqa: FBT002
) -> None:
    """Run a whole network here: a hub and three hospital gateways with sample studies, published."""
    from pixport.samples import HOSPITALS, PATIENTS  # noqa: PLC0415

    stop = StopRequest()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        network = _prepare(settings_from(ctx), data_dir.absolute(), hub_port, gateway_port, stop)
        typer.echo(
            f"Network data in {network.root}: hub, {len(HOSPITALS)} gateways, "
            f"{sum(len(s) for s in network.studies.values())} studies of {len(PATIENTS)} synthetic patients."
        )
        if setup_only and not stop.requested:
            return
        if not stop.requested:  # else Ctrl-C came during the set-up: nothing is running yet
            _run(network, stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    typer.echo("Demo network stopped.")


def _prepare(base: Settings, root: Path, hub_port: int, gateway_port: int | None, stop: StopRequest) -> DemoNetwork:
    """Make (or find) the network's keys, directory, studies and patient links under ``root``."""
    from pixport.hub.institutions import Actor  # noqa: PLC0415
    from pixport.hub.node import Hub  # noqa: PLC0415
    from pixport.samples import HOSPITALS  # noqa: PLC0415
    from pixport.trust.keys import SigningKey  # noqa: PLC0415
    from pixport.trust.national_key import generate_network_key  # noqa: PLC0415

    root.mkdir(parents=True, exist_ok=True)
    network_key = root / "network-key"
    if not network_key.exists():
        generate_network_key(network_key)
    operator_pem = root / "operator-key.pem"
    if not operator_pem.exists():
        operator = SigningKey.generate()
        operator.save(operator_pem)
        operator_pem.with_suffix(".jwk").write_text(json.dumps(operator.public_jwk()))
    hub_settings = load_settings(
        log_level=base.log_level,
        hub={
            "data_dir": root / "hub",
            "port": hub_port,
            "operator_keys": [operator_pem.with_suffix(".jwk")],
        },
    )
    hub = Hub.open(hub_settings.hub)
    hub_key_file = root / "hub" / "hub-key.jwk"
    actor = Actor("operator:demo", "local")
    gateway_settings: list[Settings] = []
    try:
        for number, hospital in enumerate(HOSPITALS):
            folder = root / hospital.code.lower()
            key_file = folder / "institution-key.pem"
            if not key_file.exists():
                key = SigningKey.generate()
                key.save(key_file)
                key_file.with_suffix(".jwk").write_text(json.dumps(key.public_jwk()))
            key = SigningKey.load(key_file)
            port = _gateway_port(hub, hospital.code, number, gateway_port)
            if hub.institutions.find_institution(hospital.code) is None:
                hub.institutions.admit_institution(
                    hospital.code,
                    name_ko=hospital.name_ko,
                    name_en=hospital.name_en,
                    endpoint=f"http://{HOST}:{port}",
                    contact="pacs@example.invalid",
                    actor=actor,
                )
            if all(k.kid != key.kid for k in hub.institutions.get_institution(hospital.code).keys):
                hub.institutions.add_key(hospital.code, key.public_jwk(), actor=actor)
            gateway_settings.append(
                load_settings(
                    log_level=base.log_level,
                    storage={"data_dir": folder / "archive"},
                    http={"host": HOST, "port": port, "workers": 1},
                    gateway={
                        "institution_code": hospital.code,
                        "signing_key": key_file,
                        "network_key": network_key,
                        "hub_url": f"http://{HOST}:{hub_port}",
                        "hub_key": hub_key_file,
                    },
                )
            )
    finally:
        hub.close()
    studies: dict[str, list[str]] = {}
    for hospital, settings in zip(HOSPITALS, gateway_settings, strict=True):
        if stop.requested:
            break
        studies[hospital.code] = _load_studies(hospital, settings)
    return DemoNetwork(root, hub_settings, gateway_settings, studies)


def _gateway_port(hub: Hub, code: str, number: int, requested: int | None) -> int:
    """The port of a hospital's gateway: the one in the hub's directory, once admitted."""
    admitted = hub.institutions.find_institution(code)
    if admitted is None:
        return (requested or DEFAULT_GATEWAY_PORT) + number
    port = urlsplit(admitted.endpoint).port
    if port is None:
        raise ConfigurationError(f"the directory names no port for gateway {code}: use another --data-dir")
    if requested is not None and requested + number != port:
        raise ConfigurationError(
            f"this data dir's gateway {code} is on port {port}, as the hub's directory says: leave out "
            f"--gateway-port (or give {port - number}), or use another --data-dir"
        )
    return port


def _load_studies(hospital: SampleHospital, settings: Settings) -> list[str]:
    """Ingest the hospital's sample studies (duplicates are no-ops) and link its patients; their UIDs."""
    from pixport.gateway.node import Gateway  # noqa: PLC0415
    from pixport.samples import SAMPLE_RRNS, hospital_studies  # noqa: PLC0415
    from pixport.trust.national_key import ResidentRegistrationNumber  # noqa: PLC0415

    archive = build_archive(settings)
    gateway = Gateway(settings, archive)
    try:
        studies: list[str] = []
        for dataset in hospital_studies(hospital):
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            buffer.seek(0)
            archive.ingest.ingest_staged([archive.ingest.stage_stream(buffer)], source="demo")
            if dataset.StudyInstanceUID not in studies:
                studies.append(str(dataset.StudyInstanceUID))
        for patient_index, _ in hospital.studies:
            patient_id = f"{hospital.id_prefix}-{patient_index + 1:05d}"
            gateway.link_patient(
                patient_id, hospital.code, ResidentRegistrationNumber.parse(SAMPLE_RRNS[patient_index])
            )
    finally:
        gateway.close()
        archive.close()
    return studies


def _run(network: DemoNetwork, stop: StopRequest) -> None:
    """Start the nodes, publish, print where to look, then wait for a stop; the nodes are stopped at the end."""
    from pixport.gateway.node import Gateway  # noqa: PLC0415
    from pixport.samples import HOSPITALS  # noqa: PLC0415

    root, hub_port = network.root, network.hub_settings.hub.port
    _check_ports_free(
        {"hub": hub_port} | {h.code: s.http.port for h, s in zip(HOSPITALS, network.gateway_settings, strict=True)}
    )
    nodes: list[Node] = []
    try:
        hub_node = _start("hub", f"http://{HOST}:{hub_port}", ["hub", "serve"], network.hub_settings, root / "logs")
        nodes.append(hub_node)
        for hospital, settings in zip(HOSPITALS, network.gateway_settings, strict=True):
            url = f"http://{HOST}:{settings.http.port}"
            nodes.append(_start(hospital.code, url, ["gateway", "serve"], settings, root / "logs"))
        _wait_until_up(hub_node, "/hub/directory", stop)
        for node in nodes[1:]:
            _wait_until_up(node, "/healthz", stop)
        exports = root / "exports"
        exports.mkdir(exist_ok=True)
        published = 0
        for hospital, settings in zip(HOSPITALS, network.gateway_settings, strict=True):
            archive = build_archive(settings)
            gateway = Gateway(settings, archive)
            try:
                for study in network.studies[hospital.code]:
                    if stop.requested:
                        return
                    if gateway.find_publication(study) is None:
                        gateway.publish_study(study)
                        published += 1
                if hospital is HOSPITALS[0]:
                    (exports / "directory.jws").write_text(gateway.fetch_directory() + "\n")
                    _export_study(archive, gateway, network.studies[hospital.code][0], exports)
            finally:
                gateway.close()
                archive.close()
        if stop.requested:
            return
        _print_where_to_look(network, published)
        while not stop.requested:
            for node in nodes:
                if node.process.poll() is not None:
                    raise PeerUnavailable(
                        f"{node.name} stopped unexpectedly (exit code {node.process.returncode}); see {node.log}"
                    )
            time.sleep(0.2)
    finally:
        _stop(list(reversed(nodes)))


def _export_study(archive: Any, gateway: Any, study: str, exports: Path) -> None:
    """One study's files (named by position, never by DICOM attributes) and its manifest."""
    folder = exports / "study-images"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for number, instance in enumerate(archive.index.list_instances(study), start=1):
        with archive.blobs.open(instance.digest) as source, (folder / f"IMG{number:05d}.dcm").open("wb") as out:
            shutil.copyfileobj(source, out)
    token = gateway.manifest_token(study)
    (exports / "study.manifest.jws").write_text(token + "\n")


def _program() -> str:
    """How a shell here runs pixport: ``pixport`` if that is this one on PATH, else this environment's script."""
    script = Path(sys.executable).parent / "pixport"
    on_path = shutil.which("pixport")
    if on_path is not None and script.exists() and Path(on_path).resolve() == script.resolve():
        return "pixport"
    return str(script) if script.exists() else "pixport"


def _print_where_to_look(network: DemoNetwork, published: int) -> None:
    from pixport.samples import HOSPITALS  # noqa: PLC0415

    root, program = network.root, _program()
    total = sum(len(s) for s in network.studies.values())
    exports = root / "exports"
    verify = [
        program,
        "verify",
        str(exports / "study.manifest.jws"),
        str(exports / "study-images"),
        "--directory",
        str(exports / "directory.jws"),
        "--hub-key",
        str(root / "hub" / "hub-key.jwk"),
    ]
    audit = f"PIXPORT_HUB__DATA_DIR={shlex.quote(str(root / 'hub'))} {shlex.join([program, 'hub', 'audit', 'verify'])}"
    lines = [
        f"Hub:            http://{HOST}:{network.hub_settings.hub.port}  (every route needs a signed node assertion)",
    ]
    lines.extend(
        f"Gateway {h.code:<7} http://{HOST}:{s.http.port}/dicomweb/studies  {h.name_ko} ({h.name_en})"
        for h, s in zip(HOSPITALS, network.gateway_settings, strict=True)
    )
    lines += [
        f"Published:      {total} studies, {published} of them now (signed by each hospital, registered at the hub)",
        f"Try:            {shlex.join(verify)}",
        f"                {audit}",
        f"Logs:           {root / 'logs'}",
        "Stop with Ctrl-C.",
    ]
    typer.echo("\n".join(lines))
