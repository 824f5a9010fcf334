"""The patient identity check: each image's patient attributes against the manifest's.

A difference names the attribute and the SOP Instance UID; the values stay on
``IdentityDifference``, out of its ``repr``.
"""

from __future__ import annotations

import unicodedata
import warnings

from pydicom.dataset import Dataset

from pixport.trust.manifest import Manifest
from pixport.trust.verify.report import IdentityDifference, VerificationReport

IDENTITY_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("PatientID", "patient_id"),
    ("IssuerOfPatientID", "issuer_of_patient_id"),
    ("PatientName", "name"),
    ("PatientBirthDate", "birth_date"),
    ("PatientSex", "sex"),
)
"""(DICOM keyword, field of ``PatientIdentity``) of the attributes checked in every image."""


def element_text(dataset: Dataset, keyword: str) -> str:
    """The attribute's value as text, stripped; empty if it is absent."""
    value = dataset.get(keyword)
    return "" if value is None else str(value).strip()


def check_identity(
    report: VerificationReport, manifest: Manifest, dataset: Dataset, sop_instance_uid: str, source: str
) -> None:
    """Add to ``report`` every patient attribute of ``dataset`` that is not the manifest's."""
    for keyword, name in IDENTITY_ATTRIBUTES:
        expected = str(getattr(manifest.patient, name))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            actual = element_text(dataset, keyword)
        if keyword == "IssuerOfPatientID" and not actual:
            continue  # the issuer is then the one the manifest names
        if _comparable(keyword, expected) != _comparable(keyword, actual):
            report.identity.append(IdentityDifference(sop_instance_uid, keyword, source, expected, actual))


def _comparable(keyword: str, value: str) -> str:
    """NFC, trailing padding dropped; for a name, empty trailing components and groups too."""
    text = unicodedata.normalize("NFC", value).strip(" \x00")
    if keyword != "PatientName":
        return text
    groups = [group.strip().rstrip("^").strip() for group in text.split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)
