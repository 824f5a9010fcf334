"""Offline verification of a signed manifest against images: every tamper case, every source, the CLI.

The study is built here, in tmp_path, from corpus files given new UIDs and a synthetic patient:
three CT instances (CT_small) and one MR (implicit VR MR_small), in two series.
"""

from __future__ import annotations

import base64
import json
import shutil
import zipfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
import structlog
import typer
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid
from structlog.testing import capture_logs
from typer.testing import CliRunner

from pixport.cli.verify import verify as verify_command
from pixport.dicom.digests import data_set_offset, instance_digests
from pixport.trust.directory import Directory, InstitutionEntry, KeyEntry, sign_directory
from pixport.trust.image_sources import ImageFile, NotAnImage, Unreadable, iter_images, unsafe_member_name
from pixport.trust.keys import SigningKey
from pixport.trust.manifest import (
    Manifest,
    ManifestInstance,
    PatientIdentity,
    StudyAttributes,
    build_manifest,
    sign_manifest,
)
from pixport.trust.verify import VerificationReport, verify_study, verify_study_offline

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
CT = CORPUS / "modality" / "ct" / "CT_small.dcm"
MR_IMPLICIT = CORPUS / "transfer-syntax" / "implicit_MR_small_implicit.dcm"
MR_RLE = CORPUS / "transfer-syntax" / "rle_MR_small_RLE.dcm"

NAME = "Hong^Gildong=洪^吉洞=홍^길동"
OTHER_NAME = "Kim^Heejung=金^熙中=김^희중"
PATIENT = PatientIdentity(
    national_key="nk1." + "A" * 43,
    patient_id="H-0001",
    issuer_of_patient_id="HANBIT",
    name=NAME,
    birth_date="19800101",
    sex="M",
)
ISSUED_AT = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
VALID_FROM = datetime(2024, 1, 1, tzinfo=UTC)
VALID_TO = datetime(2027, 1, 1, tzinfo=UTC)


@dataclass
class World:
    """A study on disk, its manifest, the keys and the hub's directory."""

    folder: Path
    study_uid: str
    files: dict[str, Path]  # SOP Instance UID -> file
    manifest: Manifest
    hanbit: SigningKey
    other: SigningKey
    hub: SigningKey
    directory: Directory

    @property
    def token(self) -> str:
        return sign_manifest(self.manifest, self.hanbit)

    @property
    def directory_token(self) -> str:
        return sign_directory(self.directory, self.hub)

    def verify(self, *locations: Path | str, token: str | None = None) -> VerificationReport:
        return verify_study(token or self.token, iter_images(list(locations or [self.folder])), self.directory)

    def uid_of(self, name: str) -> str:
        return next(uid for uid, path in self.files.items() if path.name == name)


def write_instance(source: Path, target: Path, study_uid: str, series_uid: str, *, name: str = NAME) -> str:
    ds = pydicom.dcmread(source)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = name
    ds.PatientID = PATIENT.patient_id
    ds.IssuerOfPatientID = PATIENT.issuer_of_patient_id
    ds.PatientBirthDate = PATIENT.birth_date
    ds.PatientSex = PATIENT.sex
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return str(ds.SOPInstanceUID)


def manifest_instance(path: Path) -> ManifestInstance:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    with path.open("rb") as fp:
        digests = instance_digests(fp)
    return ManifestInstance(
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        size=digests.size,
        sha256=digests.sha256,
        dataset_sha256=digests.dataset_sha256,
        pixel_sha256=digests.pixel_sha256,
    )


def make_manifest(study_uid: str, files: list[Path], issued_at: datetime = ISSUED_AT) -> Manifest:
    return build_manifest(
        issuer="HANBIT",
        patient=PATIENT,
        study=StudyAttributes(study_instance_uid=study_uid, modalities=("CT", "MR")),
        instances=[manifest_instance(path) for path in files],
        issued_at=issued_at,
    )


def key_entry(key: SigningKey, **changes: object) -> KeyEntry:
    entry = KeyEntry(key.kid, key.public_jwk(), VALID_FROM, VALID_TO)
    return replace(entry, **changes)  # type: ignore[arg-type]


def make_directory(hub: SigningKey, hanbit: KeyEntry, other: SigningKey) -> Directory:
    return Directory(
        issued_at=datetime(2025, 7, 1, tzinfo=UTC),
        hub_kid=hub.kid,
        institutions=(
            InstitutionEntry(
                "HANBIT", "한빛대학교병원", "Hanbit University Hospital", "https://gw.hanbit.example", keys=(hanbit,)
            ),
            InstitutionEntry(
                "OTHER", "다른병원", "Other Hospital", "https://gw.other.example", keys=(key_entry(other),)
            ),
        ),
    )


@pytest.fixture
def world(tmp_path: Path) -> World:
    folder = tmp_path / "study"
    study_uid, ct_series, mr_series = generate_uid(), generate_uid(), generate_uid()
    files = {}
    for number in range(3):
        path = folder / "CT" / f"ct{number}.dcm"
        files[write_instance(CT, path, study_uid, ct_series)] = path
    path = folder / "MR" / "mr.dcm"
    files[write_instance(MR_IMPLICIT, path, study_uid, mr_series)] = path
    hanbit, other, hub = SigningKey.generate(), SigningKey.generate(), SigningKey.generate("ES256")
    return World(
        folder=folder,
        study_uid=study_uid,
        files=files,
        manifest=make_manifest(study_uid, list(files.values())),
        hanbit=hanbit,
        other=other,
        hub=hub,
        directory=make_directory(hub, key_entry(hanbit), other),
    )


def statuses(report: VerificationReport) -> dict[str, str]:
    return {check.sop_instance_uid: check.status for check in report.instances}


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# -- the instances -------------------------------------------------------------------------------


def test_every_instance_intact_is_verified(world: World) -> None:
    (world.folder / "README.txt").write_text("Open the viewer to see the images.\n")
    report = world.verify()
    assert report.ok
    assert report.summary() == "VERIFIED: 4 of 4 instances intact, signed by 한빛대학교병원 (HANBIT)"
    assert set(statuses(report).values()) == {"intact"}
    assert [i.reason for i in report.ignored] == ["not a DICOM file"]
    assert report.signer.kid == world.hanbit.kid
    assert report.signer.name_en == "Hanbit University Hospital"
    assert not report.warnings


def test_a_byte_flipped_in_the_pixel_data_is_altered(world: World) -> None:
    target = world.files[world.uid_of("ct1.dcm")]
    flip(target, target.stat().st_size - 1000)  # inside the 32 KiB Pixel Data (a few elements follow it)
    report = world.verify()
    assert not report.ok
    check = next(c for c in report.instances if c.source.endswith("ct1.dcm"))
    assert (check.status, check.pixels_differ) == ("altered", True)
    assert check.detail == "the bytes and the decoded pixel data differ"
    assert report.summary() == "NOT VERIFIED: 1 altered"


def test_a_byte_flipped_in_the_file_meta_only_is_still_intact(world: World) -> None:
    target = world.files[world.uid_of("ct0.dcm")]
    with target.open("rb") as fp:
        start = data_set_offset(fp)
    before = target.read_bytes()
    flip(target, start - 2)  # the last value of the File Meta group
    assert target.read_bytes()[start:] == before[start:]
    report = world.verify()
    assert report.ok, report.summary()
    check = next(c for c in report.instances if c.source.endswith("ct0.dcm"))
    assert check.status == "intact"
    assert "File Meta rewritten" in check.detail


def test_a_removed_instance_is_missing(world: World) -> None:
    uid = world.uid_of("ct2.dcm")
    world.files[uid].unlink()
    report = world.verify()
    assert not report.ok
    assert statuses(report)[uid] == "missing"
    assert report.summary() == "NOT VERIFIED: 1 missing"
    assert report.verified == 3


def test_an_added_instance_of_the_same_study_is_extra(world: World) -> None:
    series = pydicom.dcmread(world.files[world.uid_of("ct0.dcm")]).SeriesInstanceUID
    uid = write_instance(CT, world.folder / "CT" / "ct9.dcm", world.study_uid, series)
    report = world.verify()
    assert not report.ok
    extra = next(c for c in report.instances if c.sop_instance_uid == uid)
    assert extra.status == "extra"
    assert extra.detail == "not in the manifest; of the same study"
    assert report.summary() == "NOT VERIFIED: 1 extra"


def test_a_lossless_re_encoding_verifies_and_is_reported(world: World) -> None:
    uid = world.uid_of("mr.dcm")
    target = world.files[uid]
    original = pydicom.dcmread(target)
    rle = pydicom.dcmread(MR_RLE)
    for keyword in ("SpecificCharacterSet", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientName"):
        setattr(rle, keyword, original.data_element(keyword).value)
    for keyword in ("PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex"):
        setattr(rle, keyword, getattr(original, keyword))
    rle.file_meta.MediaStorageSOPInstanceUID = uid
    rle.save_as(target)
    with target.open("rb") as fp:
        assert instance_digests(fp).pixel_sha256 == world.manifest.instance(uid).pixel_sha256  # type: ignore[union-attr]
    report = world.verify()
    assert report.ok, report.summary()
    check = next(c for c in report.instances if c.sop_instance_uid == uid)
    assert check.status == "re-encoded"
    assert check.detail == "same decoded pixels, stored as RLE Lossless; signed as Implicit VR Little Endian"
    assert report.summary() == (
        "VERIFIED: 4 of 4 instances verified (3 intact, 1 losslessly re-encoded), signed by 한빛대학교병원 (HANBIT)"
    )
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith("1 re-encoded instance: the decoded pixels, the UIDs and the patient")


def test_a_changed_series_uid_fails_even_with_the_same_pixels(world: World) -> None:
    uid = world.uid_of("ct0.dcm")
    ds = pydicom.dcmread(world.files[uid])
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(world.files[uid])
    report = world.verify()
    check = next(c for c in report.instances if c.sop_instance_uid == uid)
    assert check.status == "re-encoded"
    listed = world.manifest.instance(uid)
    assert listed is not None
    assert check.problems == [
        f"Series Instance UID {ds.SeriesInstanceUID}, the manifest lists {listed.series_instance_uid}"
    ]
    assert not report.ok
    assert report.summary() == "NOT VERIFIED: 1 with mismatched UIDs"


def test_non_dicom_files_are_ignored_and_broken_dicom_is_unreadable(world: World) -> None:
    (world.folder / "viewer").mkdir()
    (world.folder / "viewer" / "viewer.exe").write_bytes(b"MZ" + bytes(500))
    (world.folder / "broken.dcm").write_bytes(bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f" + bytes(20))
    report = world.verify()
    assert [i.name for i in report.ignored] == [str(world.folder / "viewer" / "viewer.exe")]
    assert [u.name for u in report.unreadable] == [str(world.folder / "broken.dcm")]
    assert report.summary() == "NOT VERIFIED: 1 unreadable"
    assert report.verified == 4


def test_a_second_identical_copy_is_reported_not_refused(world: World) -> None:
    uid = world.uid_of("ct0.dcm")
    copy = world.folder.parent / "copy.dcm"
    shutil.copy(world.files[uid], copy)
    report = world.verify(world.folder, copy)
    assert report.ok
    copies = [c for c in report.instances if c.sop_instance_uid == uid]
    assert [(c.status, c.duplicate) for c in copies] == [("intact", False), ("intact", True)]


# -- the signer and the directory -------------------------------------------------------------------


def test_signed_by_another_institutions_key_is_refused(world: World) -> None:
    report = world.verify(token=sign_manifest(world.manifest, world.other))
    assert not report.ok
    assert report.signer.reason == f"key {world.other.kid} belongs to institution OTHER, not to the issuer HANBIT"
    assert report.signer.institution_code == "OTHER"
    assert report.summary().startswith("NOT VERIFIED: signer: key ")
    assert set(statuses(report).values()) == {"intact"}  # the images are still compared


def test_a_revoked_key_is_refused(world: World) -> None:
    revoked = key_entry(world.hanbit, revoked_at=datetime(2025, 8, 1, tzinfo=UTC), revocation_reason="key compromise")
    directory = make_directory(world.hub, revoked, world.other)
    report = verify_study(world.token, iter_images([world.folder]), directory)
    assert not report.ok
    assert report.signer.reason == f"key {world.hanbit.kid} was revoked at 2025-08-01T00:00:00Z (key compromise)"


def test_a_key_expired_at_signing_time_is_refused(world: World) -> None:
    late = make_manifest(world.study_uid, list(world.files.values()), issued_at=datetime(2027, 3, 1, tzinfo=UTC))
    report = world.verify(token=sign_manifest(late, world.hanbit))
    assert not report.ok
    assert report.signer.reason == f"key {world.hanbit.kid} expired at 2027-01-01T00:00:00Z"


def test_a_key_not_in_the_directory_is_refused(world: World) -> None:
    stranger = SigningKey.generate()
    report = world.verify(token=sign_manifest(world.manifest, stranger))
    assert report.signer.reason == f"key {stranger.kid} is not in the directory"
    assert not report.ok


def test_a_changed_payload_byte_is_an_invalid_signature(world: World) -> None:
    header, payload, signature = world.token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    at = raw.index(b'"sha256":"') + len(b'"sha256":"')
    raw[at] = ord("0") if raw[at] != ord("0") else ord("1")
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    report = world.verify(token=f"{header}.{forged}.{signature}")
    assert not report.ok
    assert report.signer.reason == "the signature does not verify with the signer's key"
    assert report.signer.institution_code == "HANBIT"


def test_not_a_jws_is_not_verified(world: World) -> None:
    report = world.verify(token="this is not a manifest")  # noqa: S106  a token, not a password
    assert not report.ok
    assert report.manifest is None
    assert report.summary() == "NOT VERIFIED: signer: not a signed manifest: not a JWS compact serialization"


def test_a_directory_not_signed_by_the_pinned_hub_key_is_refused(world: World) -> None:
    impostor = SigningKey.generate("ES256")
    forged = sign_directory(replace(world.directory, hub_kid=impostor.kid), impostor)
    report = verify_study_offline(
        world.token, iter_images([world.folder]), directory_token=forged, hub_jwk=world.hub.public_jwk()
    )
    assert not report.ok
    assert report.directory.reason == "the directory is not signed by the pinned hub key"
    assert report.summary() == "NOT VERIFIED: key directory: the directory is not signed by the pinned hub key"


def test_the_pinned_hub_key_directory_verifies(world: World) -> None:
    report = verify_study_offline(
        world.token, iter_images([world.folder]), directory_token=world.directory_token, hub_jwk=world.hub.public_jwk()
    )
    assert report.ok
    assert report.directory.hub_kid == world.hub.kid


# -- patient identity ----------------------------------------------------------------------------------


def test_a_changed_patient_name_is_an_identity_difference_and_never_logged(world: World) -> None:
    uid = world.uid_of("ct1.dcm")
    ds = pydicom.dcmread(world.files[uid])
    ds.PatientName = OTHER_NAME
    ds.save_as(world.files[uid])
    with capture_logs() as logs:
        report = world.verify()
    assert not report.ok
    assert [(d.sop_instance_uid, d.attribute) for d in report.identity] == [(uid, "PatientName")]
    assert report.summary() == "NOT VERIFIED: patient identity differs in 1 image"
    assert statuses(report)[uid] == "re-encoded"  # same pixels: only the identity check catches it
    for secret in ("Kim", "김", "Hong", "홍"):
        assert secret not in str(logs)
        assert secret not in repr(report.identity)
        assert secret not in report.summary()
        assert secret not in json.dumps(report.as_dict(), ensure_ascii=False)
    values = report.as_dict(include_patient_data=True)["identity"]["differences"][0]["patient_data"]
    assert values == {"in_manifest": NAME, "in_image": OTHER_NAME}


def test_name_padding_and_a_missing_issuer_are_not_differences(world: World) -> None:
    uid = world.uid_of("ct2.dcm")
    ds = pydicom.dcmread(world.files[uid])
    ds.PatientName = "Hong^Gildong^^=洪^吉洞=홍^길동="
    del ds.IssuerOfPatientID
    ds.save_as(world.files[uid])
    report = world.verify()
    assert report.identity == []
    assert report.ok


# -- sources ------------------------------------------------------------------------------------------


def test_a_zip_file_is_read_member_by_member(world: World, tmp_path: Path) -> None:
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(world.folder.rglob("*.dcm")):
            out.write(path, str(path.relative_to(world.folder)))
        out.writestr("README.txt", "not an image")
    report = world.verify(archive)
    assert report.ok, report.summary()
    assert {c.source.split("!")[-1] for c in report.instances} == {
        "CT/ct0.dcm",
        "CT/ct1.dcm",
        "CT/ct2.dcm",
        "MR/mr.dcm",
    }
    assert [i.name for i in report.ignored] == [f"{archive}!README.txt"]


def test_a_zip_member_leaving_the_archive_is_refused_and_never_written(world: World, tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in world.files.values():
            out.write(path, path.name)
        out.writestr("../../escaped.dcm", world.files[world.uid_of("ct0.dcm")].read_bytes())
    report = world.verify(archive)
    assert not report.ok
    assert [u.reason for u in report.unreadable] == ["ZIP member name leaves the archive (path traversal): refused"]
    assert not list(tmp_path.parent.rglob("escaped.dcm"))


@pytest.mark.parametrize(
    ("name", "unsafe"),
    [("a/b.dcm", False), ("../x", True), ("a/../../x", True), ("/etc/x", True), ("C:x", True), ("a\\..\\x", True)],
)
def test_unsafe_member_names(name: str, unsafe: bool) -> None:  # noqa: FBT001
    assert unsafe_member_name(name) is unsafe


def test_dicomdir_media_give_the_files_they_reference(world: World, tmp_path: Path) -> None:
    media = FileSet()
    for path in world.files.values():
        media.add(pydicom.dcmread(path))
    cd = tmp_path / "cd"
    media.write(cd)
    media._stage["t"].cleanup()  # pydicom's staging folder, left to the garbage collector otherwise
    (cd / "README.TXT").write_text("viewer inside")
    written = sorted(p for p in cd.rglob("IM*") if p.is_file())
    assert len(written) == 4
    manifest = make_manifest(world.study_uid, written)
    token = sign_manifest(manifest, world.hanbit)
    report = verify_study(token, iter_images([cd / "DICOMDIR"]), world.directory)
    assert report.ok, report.summary()
    assert {Path(c.source) for c in report.instances} == set(written)
    # The whole CD: the DICOMDIR and the README are ignored, not errors.
    report = verify_study(token, iter_images([cd]), world.directory)
    assert report.ok, report.summary()
    assert len(report.ignored) == 2


def test_the_corpus_cd_media_set_verifies_through_its_dicomdir(world: World) -> None:
    root = CORPUS / "media" / "tiny-alpha"
    referenced = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != "DICOMDIR"]
    first = pydicom.dcmread(referenced[0], stop_before_pixels=True)
    patient = PatientIdentity(
        national_key=PATIENT.national_key,
        patient_id=str(first.PatientID),
        issuer_of_patient_id="",
        name=str(first.get("PatientName", "")),
        birth_date=str(first.get("PatientBirthDate", "")),
        sex=str(first.get("PatientSex", "")),
    )
    manifest = build_manifest(
        issuer="HANBIT",
        patient=patient,
        study=StudyAttributes(study_instance_uid=str(first.StudyInstanceUID)),
        instances=[manifest_instance(p) for p in referenced],
        issued_at=ISSUED_AT,
    )
    report = verify_study(sign_manifest(manifest, world.hanbit), iter_images([root / "DICOMDIR"]), world.directory)
    assert report.ok, report.summary()
    assert report.summary() == "VERIFIED: 50 of 50 instances intact, signed by 한빛대학교병원 (HANBIT)"


def test_items_are_streamed_one_at_a_time(world: World, tmp_path: Path) -> None:
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in world.files.values():
            out.write(path, path.name)
    items = iter_images([archive])
    first = next(items)
    assert isinstance(first, ImageFile)
    assert first.stream.read(132)[128:] == b"DICM"
    second = next(items)
    assert isinstance(second, ImageFile)
    assert first.stream.closed  # the previous temporary copy is gone before the next is read
    items.close()
    assert second.stream.closed
    assert all(not isinstance(i, (NotAnImage, Unreadable)) for i in iter_images([archive]))


# -- the command ----------------------------------------------------------------------------------------


@pytest.fixture
def cli_files(world: World, tmp_path: Path) -> dict[str, Path]:
    files = {"manifest": tmp_path / "study.manifest.jws", "directory": tmp_path / "directory.jws"}
    files["manifest"].write_text(world.token)
    files["directory"].write_text(world.directory_token)
    files["hub"] = tmp_path / "hub-key.jwk"
    files["hub"].write_text(json.dumps(world.hub.public_jwk()))
    return files


def run_verify(files: dict[str, Path], *images: Path | str, extra: tuple[str, ...] = ()) -> tuple[int, str, str]:
    app = typer.Typer()
    app.command()(verify_command)
    args = [str(files["manifest"]), *map(str, images), "--directory", str(files["directory"])]
    args += ["--hub-key", str(files["hub"]), *extra]
    structlog.reset_defaults()  # as cli/main.py leaves it: the command sends its log lines to stderr
    result = CliRunner().invoke(app, args)
    structlog.reset_defaults()
    return result.exit_code, result.stdout, result.stderr


def test_cli_verified_exits_0_with_the_summary_first(world: World, cli_files: dict[str, Path]) -> None:
    code, out, _ = run_verify(cli_files, world.folder)
    assert code == 0, out
    assert out.splitlines()[0] == "VERIFIED: 4 of 4 instances intact, signed by 한빛대학교병원 (HANBIT)"
    assert "Identity   every image is the manifest's patient" in out


def test_cli_not_verified_exits_1_and_json_reports_why(world: World, cli_files: dict[str, Path]) -> None:
    world.files[world.uid_of("ct2.dcm")].unlink()
    code, out, _ = run_verify(cli_files, world.folder, extra=("--json",))
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert report["summary"] == "NOT VERIFIED: 1 missing"
    assert report["counts"] == {
        "intact": 3,
        "re-encoded": 0,
        "altered": 0,
        "missing": 1,
        "extra": 0,
        "unreadable": 0,
        "ignored": 0,
        "listed": 4,
        "verified": 3,
    }
    assert report["signer"]["institution"] == {
        "code": "HANBIT",
        "name_ko": "한빛대학교병원",
        "name_en": "Hanbit University Hospital",
    }
    assert [i["status"] for i in report["instances"] if i["status"] == "missing"] == ["missing"]


def test_cli_text_report_names_the_identity_attribute_not_the_value(world: World, cli_files: dict[str, Path]) -> None:
    uid = world.uid_of("ct0.dcm")
    ds = pydicom.dcmread(world.files[uid])
    ds.PatientName = OTHER_NAME
    ds.save_as(world.files[uid])
    code, out, err = run_verify(cli_files, world.folder)
    assert code == 1
    assert f"PatientName differs in {uid}" in out
    assert "김" not in out + err
    assert "Kim" not in out + err
    code, out, _ = run_verify(cli_files, world.folder, extra=("--json", "--show-patient-data"))
    assert json.loads(out)["identity"]["differences"][0]["patient_data"]["in_image"] == OTHER_NAME


def test_cli_unusable_inputs_exit_2(world: World, cli_files: dict[str, Path], tmp_path: Path) -> None:
    code, _, err = run_verify(cli_files, tmp_path / "no-such-cd")
    assert code == 2
    assert "no such file or folder" in err
    cli_files["hub"].write_text("not json")
    code, _, err = run_verify(cli_files, world.folder)
    assert code == 2
    assert "the hub key file is not JSON" in err
    cli_files["manifest"].unlink()
    code, _, _ = run_verify(cli_files, world.folder)
    assert code == 2


def test_cli_a_forged_directory_is_a_result_not_an_input_error(world: World, cli_files: dict[str, Path]) -> None:
    impostor = SigningKey.generate()
    cli_files["directory"].write_text(sign_directory(replace(world.directory, hub_kid=impostor.kid), impostor))
    code, out, _ = run_verify(cli_files, world.folder)
    assert code == 1
    assert out.splitlines()[0] == "NOT VERIFIED: key directory: the directory is not signed by the pinned hub key"


def test_a_directory_older_than_the_manifest_is_a_warning(world: World) -> None:
    stale = replace(world.directory, issued_at=datetime(2025, 5, 1, tzinfo=UTC))
    report = verify_study(world.token, iter_images([world.folder]), stale)
    assert report.ok
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith("the key directory (2025-05-01T00:00:00Z) is older than the manifest")
