"""Study manifests: what a hospital signs when it publishes a study (the "digital image registration").

A manifest names its issuer (the institution's code), the patient (national key, the
hospital's own ID and its issuer, and the demographics a receiver checks identity against),
the study's attributes, and every instance: SOP Class and Instance UIDs, series, transfer
syntax, size, the SHA-256 of the stored bytes (the whole Part 10 file), of the data set after
the File Meta (so a copy whose File Meta another tool rewrote still matches byte for byte),
and of the decoded pixel data (so a lossless re-encoding still verifies).

It is signed as a JWS (``jws.sign``, type ``MANIFEST_TYPE``) over its canonical JSON.  A
corrected study gets a new manifest naming the one it ``supersedes``.  ``build_manifest`` is
strict: it refuses to make a manifest that a verifier could not check.  Reading
(``manifest_from_payload``) refuses anything malformed with a precise reason.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pixport.errors import ManifestInvalid
from pixport.trust import jws
from pixport.trust.keys import SigningKey
from pixport.trust.national_key import is_national_key

MANIFEST_TYPE = "pixport-manifest+jws"
FORMAT_VERSION = 1
_UID_LENGTH = 64  # PS3.5: a UI value has at most 64 characters
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_INSTITUTION_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MANIFEST_ID = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class PatientIdentity:
    """Who the study belongs to, as the issuing hospital knows them."""

    national_key: str
    patient_id: str
    issuer_of_patient_id: str
    name: str = ""
    """DICOM Person Name, all component groups (``Hong^Gildong=洪^吉洞=홍^길동``)."""
    birth_date: str = ""
    sex: str = ""


@dataclass(frozen=True, slots=True)
class StudyAttributes:
    """The study, as the issuing hospital describes it."""

    study_instance_uid: str
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_description: str = ""
    modalities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ManifestInstance:
    """One instance of the study and its digests (``dicom.digests``)."""

    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int
    sha256: str
    dataset_sha256: str
    pixel_sha256: str | None
    """None for an instance without pixel data (a structured report, a presentation state)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A study manifest (see the module docstring)."""

    manifest_id: str
    issuer: str
    issued_at: datetime
    patient: PatientIdentity
    study: StudyAttributes
    instances: tuple[ManifestInstance, ...]
    supersedes: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def number_of_series(self) -> int:
        return len({i.series_instance_uid for i in self.instances})

    def instance(self, sop_instance_uid: str) -> ManifestInstance | None:
        return next((i for i in self.instances if i.sop_instance_uid == sop_instance_uid), None)


def new_manifest_id() -> str:
    """A fresh manifest id (urn:uuid, random)."""
    return f"urn:uuid:{uuid.uuid4()}"


def build_manifest(
    *,
    issuer: str,
    patient: PatientIdentity,
    study: StudyAttributes,
    instances: list[ManifestInstance],
    supersedes: str | None = None,
    issued_at: datetime | None = None,
    manifest_id: str | None = None,
) -> Manifest:
    """A new manifest; ManifestInvalid if any part could not be verified later."""
    manifest = Manifest(
        manifest_id=manifest_id or new_manifest_id(),
        issuer=issuer,
        issued_at=(issued_at or datetime.now(UTC)).replace(microsecond=0),
        patient=patient,
        study=study,
        instances=tuple(sorted(instances, key=lambda i: (i.series_instance_uid, i.sop_instance_uid))),
        supersedes=supersedes,
    )
    # The one validation path: what is built is exactly what a reader accepts.
    return manifest_from_payload(manifest_payload(manifest))


def manifest_payload(manifest: Manifest) -> dict[str, Any]:
    """The JSON object that is signed."""
    p = manifest.patient
    s = manifest.study
    return {
        "version": FORMAT_VERSION,
        "manifest_id": manifest.manifest_id,
        "issuer": manifest.issuer,
        "issued_at": manifest.issued_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "supersedes": manifest.supersedes,
        "patient": {
            "national_key": p.national_key,
            "patient_id": p.patient_id,
            "issuer_of_patient_id": p.issuer_of_patient_id,
            "name": p.name,
            "birth_date": p.birth_date,
            "sex": p.sex,
        },
        "study": {
            "study_instance_uid": s.study_instance_uid,
            "study_date": s.study_date,
            "study_time": s.study_time,
            "accession_number": s.accession_number,
            "study_description": s.study_description,
            "modalities": list(s.modalities),
            "number_of_series": manifest.number_of_series,
            "number_of_instances": len(manifest.instances),
        },
        "instances": [
            {
                "series_instance_uid": i.series_instance_uid,
                "sop_class_uid": i.sop_class_uid,
                "sop_instance_uid": i.sop_instance_uid,
                "transfer_syntax_uid": i.transfer_syntax_uid,
                "size": i.size,
                "sha256": i.sha256,
                "dataset_sha256": i.dataset_sha256,
                "pixel_sha256": i.pixel_sha256,
            }
            for i in manifest.instances
        ],
    }


def sign_manifest(manifest: Manifest, key: SigningKey) -> str:
    """The manifest as a JWS signed with the institution's key."""
    return jws.sign(manifest_payload(manifest), key, MANIFEST_TYPE)


def manifest_from_payload(payload: dict[str, Any]) -> Manifest:
    """The manifest a payload describes; ManifestInvalid naming the first thing wrong."""
    if payload.get("version") != FORMAT_VERSION:
        raise ManifestInvalid(f"unsupported manifest version {payload.get('version')!r}")
    manifest_id = _text(payload, "manifest_id")
    if not _MANIFEST_ID.fullmatch(manifest_id):
        raise ManifestInvalid("manifest_id is not a urn:uuid")
    issuer = _text(payload, "issuer")
    if not _INSTITUTION_CODE.fullmatch(issuer):
        raise ManifestInvalid("issuer is not an institution code")
    try:
        issued_at = datetime.strptime(_text(payload, "issued_at"), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise ManifestInvalid("issued_at is not a UTC time (YYYY-MM-DDThh:mm:ssZ)") from None
    supersedes = payload.get("supersedes")
    if supersedes is not None and not (isinstance(supersedes, str) and _MANIFEST_ID.fullmatch(supersedes)):
        raise ManifestInvalid("supersedes is neither null nor a manifest id")
    if supersedes == manifest_id:
        raise ManifestInvalid("a manifest cannot supersede itself")
    patient_part = _object(payload, "patient")
    patient = PatientIdentity(
        national_key=_text(patient_part, "national_key"),
        patient_id=_text(patient_part, "patient_id"),
        issuer_of_patient_id=_text(patient_part, "issuer_of_patient_id", allow_empty=True),
        name=_text(patient_part, "name", allow_empty=True),
        birth_date=_text(patient_part, "birth_date", allow_empty=True),
        sex=_text(patient_part, "sex", allow_empty=True),
    )
    if not is_national_key(patient.national_key):
        raise ManifestInvalid("patient.national_key is not a national key")
    study_part = _object(payload, "study")
    modalities = study_part.get("modalities")
    if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
        raise ManifestInvalid("study.modalities is not a list of strings")
    study = StudyAttributes(
        study_instance_uid=_uid(study_part, "study_instance_uid"),
        study_date=_text(study_part, "study_date", allow_empty=True),
        study_time=_text(study_part, "study_time", allow_empty=True),
        accession_number=_text(study_part, "accession_number", allow_empty=True),
        study_description=_text(study_part, "study_description", allow_empty=True),
        modalities=tuple(modalities),
    )
    raw_instances = payload.get("instances")
    if not isinstance(raw_instances, list) or not raw_instances:
        raise ManifestInvalid("a manifest lists at least one instance")
    instances = tuple(_instance(item, n) for n, item in enumerate(raw_instances))
    uids = [i.sop_instance_uid for i in instances]
    if len(set(uids)) != len(uids):
        raise ManifestInvalid("an instance is listed twice")
    if list(instances) != sorted(instances, key=lambda i: (i.series_instance_uid, i.sop_instance_uid)):
        raise ManifestInvalid("instances are not in (series, SOP Instance UID) order")
    if study_part.get("number_of_instances") != len(instances):
        raise ManifestInvalid("study.number_of_instances does not count the instances listed")
    if study_part.get("number_of_series") != len({i.series_instance_uid for i in instances}):
        raise ManifestInvalid("study.number_of_series does not count the series listed")
    return Manifest(manifest_id, issuer, issued_at, patient, study, instances, supersedes)


def _instance(item: Any, number: int) -> ManifestInstance:
    if not isinstance(item, dict):
        raise ManifestInvalid(f"instance {number} is not an object")
    size = item.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ManifestInvalid(f"instance {number}: size is not a positive integer")
    pixel = item.get("pixel_sha256")
    if pixel is not None and not (isinstance(pixel, str) and _HEX64.fullmatch(pixel)):
        raise ManifestInvalid(f"instance {number}: pixel_sha256 is neither null nor a SHA-256")
    return ManifestInstance(
        series_instance_uid=_uid(item, "series_instance_uid", number),
        sop_class_uid=_uid(item, "sop_class_uid", number),
        sop_instance_uid=_uid(item, "sop_instance_uid", number),
        transfer_syntax_uid=_uid(item, "transfer_syntax_uid", number),
        size=size,
        sha256=_digest(item, "sha256", number),
        dataset_sha256=_digest(item, "dataset_sha256", number),
        pixel_sha256=pixel,
    )


def _where(number: int | None) -> str:
    return "" if number is None else f"instance {number}: "


def _text(part: dict[str, Any], name: str, *, allow_empty: bool = False, number: int | None = None) -> str:
    value = part.get(name)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ManifestInvalid(f"{_where(number)}{name} is missing or not text")
    return value


def _object(part: dict[str, Any], name: str) -> dict[str, Any]:
    value = part.get(name)
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{name} is missing or not an object")
    return value


def _uid(part: dict[str, Any], name: str, number: int | None = None) -> str:
    value = _text(part, name, number=number)
    if len(value) > _UID_LENGTH or not _UID.fullmatch(value):
        raise ManifestInvalid(f"{_where(number)}{name} is not a DICOM UID")
    return value


def _digest(part: dict[str, Any], name: str, number: int) -> str:
    value = _text(part, name, number=number)
    if not _HEX64.fullmatch(value):
        raise ManifestInvalid(f"{_where(number)}{name} is not a SHA-256 (64 lowercase hex digits)")
    return value
