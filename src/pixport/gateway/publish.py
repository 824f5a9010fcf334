"""Build a study's manifest from the archive: attributes from the index, digests from the blobs.

Each instance's blob is read once, in chunks, for its three digests (``dicom.digests``); a
study of any size is never held in memory.  Pixel data that cannot be decoded here (a codec
pydicom lacks) gets no pixel digest: such an instance then verifies by its bytes only.
"""

from __future__ import annotations

import json
from typing import Any

from pixport.archive.node import Archive
from pixport.dicom.digests import instance_digests
from pixport.errors import NotFound
from pixport.trust.manifest import (
    Manifest,
    ManifestInstance,
    PatientIdentity,
    StudyAttributes,
    build_manifest,
)


def _value(document: dict[str, Any], tag: str) -> str:
    values = document.get(tag, {}).get("Value") or [""]
    first = values[0]
    if isinstance(first, dict):  # Person Name: the component groups, as DICOM writes them
        groups = [first.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
        return "=".join(groups).rstrip("=")
    return str(first)


def study_identity(archive: Archive, study_instance_uid: str) -> tuple[str, str, dict[str, Any]]:
    """(PatientID, IssuerOfPatientID, first instance's DICOM JSON) of a stored study."""
    documents = archive.index.list_metadata(study_instance_uid, limit=1)
    if not documents:
        raise NotFound(f"no study {study_instance_uid}")
    first: dict[str, Any] = json.loads(documents[0])
    return _value(first, "00100020"), _value(first, "00100021"), first


def build_study_manifest(
    archive: Archive,
    study_instance_uid: str,
    *,
    issuer: str,
    national_key: str,
    supersedes: str | None = None,
) -> Manifest:
    """The manifest of a stored study, issued by ``issuer`` for the patient ``national_key``."""
    patient_id, issuer_of_id, first = study_identity(archive, study_instance_uid)
    stored = archive.index.list_instances(study_instance_uid)
    modalities: set[str] = set()
    for document in archive.index.list_metadata(study_instance_uid):
        modality = _value(json.loads(document), "00080060")
        if modality:
            modalities.add(modality)
    instances = []
    for instance in stored:
        with archive.blobs.open(instance.digest) as fp:
            digests = instance_digests(fp)
        instances.append(
            ManifestInstance(
                series_instance_uid=instance.series_instance_uid,
                sop_class_uid=instance.sop_class_uid,
                sop_instance_uid=instance.sop_instance_uid,
                transfer_syntax_uid=instance.transfer_syntax_uid,
                size=digests.size,
                sha256=digests.sha256,
                dataset_sha256=digests.dataset_sha256,
                pixel_sha256=digests.pixel_sha256,
            )
        )
    return build_manifest(
        issuer=issuer,
        patient=PatientIdentity(
            national_key=national_key,
            patient_id=patient_id,
            issuer_of_patient_id=issuer_of_id,
            name=_value(first, "00100010"),
            birth_date=_value(first, "00100030"),
            sex=_value(first, "00100040"),
        ),
        study=StudyAttributes(
            study_instance_uid=study_instance_uid,
            study_date=_value(first, "00080020"),
            study_time=_value(first, "00080030"),
            accession_number=_value(first, "00080050"),
            study_description=_value(first, "00081030"),
            modalities=tuple(sorted(modalities)),
        ),
        instances=instances,
        supersedes=supersedes,
    )
