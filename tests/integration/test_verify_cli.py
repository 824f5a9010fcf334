"""`pixport verify` against a DICOMweb study served by a real archive node (uvicorn in a thread)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pydicom
import pytest
import structlog
import typer
import uvicorn
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from pixport import build_archive, load_settings
from pixport.cli.verify import verify as verify_command
from pixport.dicom.digests import instance_digests
from pixport.dicomweb.app import create_app
from pixport.errors import PeerUnavailable
from pixport.trust.directory import Directory, InstitutionEntry, KeyEntry, sign_directory
from pixport.trust.image_sources import ImageFile, iter_images
from pixport.trust.keys import SigningKey
from pixport.trust.manifest import ManifestInstance, PatientIdentity, StudyAttributes, build_manifest, sign_manifest
from pixport.trust.verify import verify_study

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
CT = CORPUS / "modality" / "ct" / "CT_small.dcm"
PATIENT = PatientIdentity(
    national_key="nk1." + "B" * 43, patient_id="H-0002", issuer_of_patient_id="HANBIT", name="Hong^Gildong"
)


class ThreadedServer(uvicorn.Server):
    """uvicorn in a background thread."""

    def install_signal_handlers(self) -> None:
        """Signals belong to pytest."""

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not self.started:
            if time.monotonic() > deadline:
                msg = "server did not start"
                raise RuntimeError(msg)
            time.sleep(0.01)
        return thread


@pytest.fixture
def dicomweb(tmp_path: Path) -> Iterator[str]:
    archive = build_archive(load_settings(storage={"data_dir": tmp_path / "node"}))
    server = ThreadedServer(uvicorn.Config(create_app(archive), host="127.0.0.1", port=0, log_level="warning"))
    thread = server.start_in_thread()
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/dicomweb"
    finally:
        server.should_exit = True
        thread.join(10)
        archive.close()


@pytest.fixture
def published(tmp_path: Path, dicomweb: str) -> dict[str, object]:
    """Three CT instances stored in the node, their signed manifest, and the signed directory."""
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for number in range(3):
        ds = pydicom.dcmread(CT)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = PATIENT.name, PATIENT.patient_id, "HANBIT"
        ds.PatientBirthDate = ds.PatientSex = ""
        path = tmp_path / f"ct{number}.dcm"
        ds.save_as(path)
        files.append(path)
    boundary = "verify-test-boundary"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
        for path in files
    )
    body += f"--{boundary}--\r\n".encode()
    stored = httpx.post(
        f"{dicomweb}/studies",
        content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=60,
    )
    assert stored.status_code == 200, stored.text
    instances = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        with path.open("rb") as fp:
            d = instance_digests(fp)
        instances.append(
            ManifestInstance(
                str(ds.SeriesInstanceUID),
                str(ds.SOPClassUID),
                str(ds.SOPInstanceUID),
                str(ds.file_meta.TransferSyntaxUID),
                d.size,
                d.sha256,
                d.dataset_sha256,
                d.pixel_sha256,
            )
        )
    issued = datetime(2025, 6, 1, tzinfo=UTC)
    manifest = build_manifest(
        issuer="HANBIT",
        patient=PATIENT,
        study=StudyAttributes(study_instance_uid=study_uid),
        instances=instances,
        issued_at=issued,
    )
    hanbit, hub = SigningKey.generate(), SigningKey.generate()
    key = KeyEntry(hanbit.kid, hanbit.public_jwk(), datetime(2024, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    directory = Directory(
        issued_at=datetime(2025, 7, 1, tzinfo=UTC),
        hub_kid=hub.kid,
        institutions=(InstitutionEntry("HANBIT", "한빛대학교병원", "Hanbit", "https://gw.example", keys=(key,)),),
    )
    cli = {
        "manifest": tmp_path / "manifest.jws",
        "directory": tmp_path / "directory.jws",
        "hub": tmp_path / "hub-key.jwk",
    }
    cli["manifest"].write_text(sign_manifest(manifest, hanbit))
    cli["directory"].write_text(sign_directory(directory, hub))
    cli["hub"].write_text(json.dumps(hub.public_jwk()))
    return {"url": f"{dicomweb}/studies/{study_uid}", "directory": directory, "cli": cli, "hanbit": hanbit}


def run_verify(cli: dict[str, Path], *images: str, extra: tuple[str, ...] = ()) -> tuple[int, str, str]:
    app = typer.Typer()
    app.command()(verify_command)
    args = [str(cli["manifest"]), *images, "--directory", str(cli["directory"]), "--hub-key", str(cli["hub"]), *extra]
    structlog.reset_defaults()
    result = CliRunner().invoke(app, args)
    structlog.reset_defaults()
    return result.exit_code, result.stdout, result.stderr


def test_a_dicomweb_study_is_streamed_part_by_part_and_verifies(published: dict[str, object]) -> None:
    url = str(published["url"])
    items = list(iter_images([url]))
    assert [item.name for item in items] == [f"{url} part {n}" for n in (1, 2, 3)]
    assert all(isinstance(item, ImageFile) and item.stream.closed for item in items)
    directory = published["directory"]
    assert isinstance(directory, Directory)
    token = Path(published["cli"]["manifest"]).read_text()  # type: ignore[index]
    report = verify_study(token, iter_images([url]), directory)
    assert report.ok, report.summary()
    assert report.summary() == "VERIFIED: 3 of 3 instances intact, signed by 한빛대학교병원 (HANBIT)"


def test_cli_verifies_a_dicomweb_study(published: dict[str, object]) -> None:
    code, out, err = run_verify(published["cli"], str(published["url"]), extra=("--json",))  # type: ignore[arg-type]
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] is True
    assert report["counts"]["intact"] == 3


def test_cli_a_study_the_server_does_not_have_is_unusable_input(published: dict[str, object], dicomweb: str) -> None:
    missing = f"{dicomweb}/studies/{generate_uid()}"
    code, out, err = run_verify(published["cli"], missing)  # type: ignore[arg-type]
    assert code == 2
    assert out == ""
    assert "HTTP status 404" in err


def test_an_unreachable_server_raises_peer_unavailable_without_showing_credentials() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PeerUnavailable, match="ConnectError") as caught:
        list(iter_images([f"http://user:secret@127.0.0.1:{port}/dicomweb/studies/1.2.3"]))
    assert "secret" not in str(caught.value)
    assert f"127.0.0.1:{port}/dicomweb/studies/1.2.3" in str(caught.value)
