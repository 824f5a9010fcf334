"""``pixport demo``: a whole network on this machine: the hub and three hospital gateways.

Everything lives under one folder (``--data-dir``, default ``pixport-demo``) and is made on the
first run, then reused:

1. the network key (``network-key``), the hub (``hub/``: database and signing key) and an
   operator key (``operator-key.pem``/``.jwk``) the hub accepts;
2. three hospitals with Korean names (``samples.HOSPITALS``), each with its own institution
   key pair, admitted to the hub's directory with its gateway's URL;
3. synthetic studies (CT, MR, CR, multi-frame US; Korean names in ISO_IR 192 and ISO 2022
   IR 149) ingested into each gateway's archive; each patient linked to a national key made
   from a synthetic resident registration number, which is then forgotten;
4. the hub and the gateways started as separate processes; every study published (manifest
   signed by its hospital, registered at the hub); a signed directory and one study's images
   and manifest exported under ``exports/`` to try ``pixport verify`` on.

Ctrl-C (or SIGTERM) stops every process and exits 0.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import httpx
import typer

from pixport.cli.common import settings_from
from pixport.config import Settings, load_settings
from pixport.errors import PeerUnavailable
from pixport.wiring import build_archive

STARTUP_SECONDS = 60


@dataclass
class Node:
    """One process of the demo network."""

    name: str
    url: str
    process: subprocess.Popen[bytes]


def _environment(settings: Settings) -> dict[str, str]:
    from pixport.dicomweb.server import settings_environment  # noqa: PLC0415

    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PIXPORT_")}
    return {**inherited, **settings_environment(settings)}


def _start(name: str, url: str, command: list[str], settings: Settings, log_dir: Path) -> Node:
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(  # noqa: S603  our own interpreter and module
            [sys.executable, "-c", "from pixport.cli.main import main; main()", *command],
            env=_environment(settings),
            stdout=log,
            stderr=log,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops the nodes in order
        )
    return Node(name, url, process)


def _wait_until_up(node: Node, path: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise PeerUnavailable(f"{node.name} exited at start (exit code {node.process.returncode}); see its log")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(node.url + path, timeout=2)
            return
        time.sleep(0.2)
    raise PeerUnavailable(f"{node.name} did not start within {STARTUP_SECONDS} s")


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


def demo(  # noqa: C901, PLR0912, PLR0915  the demo's steps, in the order a reader follows them
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Folder of the whole demo network.")] = Path(
        "pixport-demo"
    ),
    hub_port: Annotated[int, typer.Option(help="The hub's HTTP port.")] = 8040,
    gateway_port: Annotated[int, typer.Option(help="First gateway's HTTP port; the others follow.")] = 8041,
    setup_only: Annotated[bool, typer.Option("--setup-only", help="Make the network's data, then exit.")] = False,  # noqa: FBT002
) -> None:
    """Run a whole network here: a hub and three hospital gateways with sample studies, published."""
    from pixport.gateway.node import Gateway  # noqa: PLC0415
    from pixport.hub.institutions import Actor  # noqa: PLC0415
    from pixport.hub.node import Hub  # noqa: PLC0415
    from pixport.samples import HOSPITALS, PATIENTS, SAMPLE_RRNS, hospital_studies  # noqa: PLC0415
    from pixport.trust.keys import SigningKey  # noqa: PLC0415
    from pixport.trust.national_key import ResidentRegistrationNumber, generate_network_key  # noqa: PLC0415

    base = settings_from(ctx)
    root = data_dir.absolute()
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
            port = gateway_port + number
            if hub.institutions.find_institution(hospital.code) is None:
                hub.institutions.admit_institution(
                    hospital.code,
                    name_ko=hospital.name_ko,
                    name_en=hospital.name_en,
                    endpoint=f"http://127.0.0.1:{port}",
                    contact="pacs@example.invalid",
                    actor=actor,
                )
            if all(k.kid != key.kid for k in hub.institutions.get_institution(hospital.code).keys):
                hub.institutions.add_key(hospital.code, key.public_jwk(), actor=actor)
            gateway_settings.append(
                load_settings(
                    log_level=base.log_level,
                    storage={"data_dir": folder / "archive"},
                    http={"host": "127.0.0.1", "port": port, "workers": 1},
                    gateway={
                        "institution_code": hospital.code,
                        "signing_key": key_file,
                        "network_key": network_key,
                        "hub_url": f"http://127.0.0.1:{hub_port}",
                        "hub_key": hub_key_file,
                    },
                )
            )
    finally:
        hub.close()

    loaded: dict[str, list[str]] = {}
    for hospital, settings in zip(HOSPITALS, gateway_settings, strict=True):
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
            loaded[hospital.code] = studies
        finally:
            gateway.close()
            archive.close()
    typer.echo(
        f"Network data in {root}: hub, {len(HOSPITALS)} gateways, "
        f"{sum(len(s) for s in loaded.values())} studies of {len(PATIENTS)} synthetic patients."
    )
    if setup_only:
        return

    nodes: list[Node] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        hub_node = _start("hub", f"http://127.0.0.1:{hub_port}", ["hub", "serve"], hub_settings, root / "logs")
        nodes.append(hub_node)
        for hospital, settings in zip(HOSPITALS, gateway_settings, strict=True):
            url = f"http://127.0.0.1:{settings.http.port}"
            nodes.append(_start(hospital.code, url, ["gateway", "serve"], settings, root / "logs"))
        _wait_until_up(hub_node, "/hub/directory")
        for node in nodes[1:]:
            _wait_until_up(node, "/healthz")
        exports = root / "exports"
        exports.mkdir(exist_ok=True)
        published = 0
        for hospital, settings in zip(HOSPITALS, gateway_settings, strict=True):
            archive = build_archive(settings)
            gateway = Gateway(settings, archive)
            try:
                for study in loaded[hospital.code]:
                    if gateway.find_publication(study) is None:
                        gateway.publish_study(study)
                        published += 1
                if hospital is HOSPITALS[0]:
                    (exports / "directory.jws").write_text(gateway.fetch_directory() + "\n")
                    _export_study(archive, gateway, loaded[hospital.code][0], exports)
            finally:
                gateway.close()
                archive.close()
        _print_where_to_look(root, hub_port, HOSPITALS, gateway_settings, published)
        while not stopping:
            if any(node.process.poll() is not None for node in nodes):
                typer.echo("pixport: a node stopped unexpectedly; see the logs", err=True)
                break
            time.sleep(0.2)
    finally:
        _stop(list(reversed(nodes)))
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    typer.echo("Demo network stopped.")


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


def _print_where_to_look(root: Path, hub_port: int, hospitals: Any, settings: list[Settings], published: int) -> None:
    lines = [
        f"Hub:            http://127.0.0.1:{hub_port}  (every route needs a signed node assertion)",
    ]
    lines.extend(
        f"Gateway {h.code:<7} http://127.0.0.1:{s.http.port}/dicomweb/studies  {h.name_ko} ({h.name_en})"
        for h, s in zip(hospitals, settings, strict=True)
    )
    lines += [
        f"Published now:  {published} studies (manifests signed by each hospital, registered at the hub)",
        (
            f"Try:            pixport verify {root}/exports/study.manifest.jws {root}/exports/study-images "
            f"--directory {root}/exports/directory.jws --hub-key {root}/hub/hub-key.jwk"
        ),
        f"                pixport hub audit verify   (with PIXPORT_HUB__DATA_DIR={root}/hub)",
        f"Logs:           {root}/logs",
        "Stop with Ctrl-C.",
    ]
    typer.echo("\n".join(lines))
