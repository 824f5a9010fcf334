"""Offline verification of a signed study manifest against a set of images (``pixport verify``).

Four checks, all reported, and the study is verified only if every one holds:

1. **The key directory**: signed by the hub key the verifier pinned (``verify_directory``).
2. **The signer**: the manifest's key (its JWS ``kid``) is in the directory, the JWS verifies
   with it, the key belongs to the manifest's issuer and was valid, and not revoked, at the
   manifest's ``issued_at`` (``Directory.signer_key``).
3. **The instances**, matched by SOP Instance UID: ``intact`` (the file's bytes, or its data
   set after the File Meta, have the manifest's digest), ``re-encoded`` (other bytes, but the
   same decoded pixels: a lossless re-encoding, accepted and reported), ``altered`` (neither),
   ``missing`` (listed, not found), ``extra`` (found, not listed).  The SOP Class, Series and
   Study Instance UIDs must also be the manifest's.
4. **Patient identity**: every image's PatientID, IssuerOfPatientID, PatientName,
   PatientBirthDate and PatientSex must be the manifest's.  An image without an
   IssuerOfPatientID is accepted: the issuer is then the one the manifest names.

A re-encoded instance has its pixels and the attributes above checked, not the rest of its
header: nothing else of a re-encoded file's header is covered by a digest.

Images are read one at a time (``image_sources.iter_images``): the digests are computed file by
file, the decoded pixels only when the bytes do not match.  Files that are not DICOM (a
viewer's, a README, the DICOMDIR) are ignored; DICOM that cannot be read is reported.

Patient data (names, IDs, birth dates) never appears in log lines, exception messages or the
report's text: an identity difference names the attribute and the SOP Instance UID.  The values
are kept on ``IdentityDifference`` (out of its ``repr``) and are put in ``as_dict`` only when
asked for, under ``patient_data``.
"""

from __future__ import annotations

import hashlib
import unicodedata
import warnings
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Literal

import pydicom
import structlog
from pydicom.dataset import Dataset
from pydicom.uid import UID

from pixport.dicom.digests import data_set_offset, pixel_data_sha256
from pixport.dicom.pixel_header import HEADER_ERRORS
from pixport.errors import ManifestInvalid, NotFound, PixelDataError, SignatureInvalid, TrustError
from pixport.trust import jws
from pixport.trust.directory import Directory, InstitutionEntry, KeyEntry, format_time, verify_directory
from pixport.trust.image_sources import ImageFile, NotAnImage, SourceItem, Unreadable
from pixport.trust.manifest import MANIFEST_TYPE, Manifest, ManifestInstance, manifest_from_payload

log = structlog.get_logger(__name__)

Status = Literal["intact", "re-encoded", "altered", "missing", "extra"]
STATUSES: tuple[Status, ...] = ("intact", "re-encoded", "altered", "missing", "extra")
ACCEPTED: frozenset[str] = frozenset({"intact", "re-encoded"})
CHUNK = 1 << 20
CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future a manifest's issued_at may be before the report warns about it."""

IDENTITY_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("PatientID", "patient_id"),
    ("IssuerOfPatientID", "issuer_of_patient_id"),
    ("PatientName", "name"),
    ("PatientBirthDate", "birth_date"),
    ("PatientSex", "sex"),
)
"""(DICOM keyword, field of ``PatientIdentity``) of the attributes checked in every image."""
_READ_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    *(keyword for keyword, _ in IDENTITY_ATTRIBUTES),
]


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DirectoryCheck:
    """The key directory: signed by the pinned hub key, or why not."""

    ok: bool
    reason: str = ""
    issued_at: datetime | None = None
    hub_kid: str = ""


@dataclass(frozen=True, slots=True)
class SignerCheck:
    """Who signed the manifest, and whether that signature is trusted (else ``reason``)."""

    ok: bool
    reason: str = ""
    kid: str = ""
    institution_code: str = ""
    name_ko: str = ""
    name_en: str = ""
    key_not_before: datetime | None = None
    key_not_after: datetime | None = None


@dataclass(slots=True)
class InstanceCheck:
    """One instance: its status, where it was found, and anything else that does not match.

    ``problems`` are failures besides the status (a SOP Class UID that differs, a pixel data
    that cannot be decoded); ``detail`` explains the status for a person.
    """

    sop_instance_uid: str
    status: Status
    source: str = ""
    series_instance_uid: str = ""
    sop_class_uid: str = ""
    transfer_syntax_uid: str = ""
    listed_transfer_syntax_uid: str = ""
    pixels_differ: bool | None = None
    """For an altered instance: whether its decoded pixels differ (None: no pixels, or undecodable)."""
    duplicate: bool = False
    """Another file with this SOP Instance UID was found before this one."""
    detail: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Intact or losslessly re-encoded, and nothing else wrong."""
        return self.status in ACCEPTED and not self.problems

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "status": self.status,
            "ok": self.ok,
            "source": self.source or None,
            "series_instance_uid": self.series_instance_uid or None,
            "sop_class_uid": self.sop_class_uid or None,
            "transfer_syntax_uid": self.transfer_syntax_uid or None,
            "listed_transfer_syntax_uid": self.listed_transfer_syntax_uid or None,
            "pixels_differ": self.pixels_differ,
            "duplicate": self.duplicate,
            "detail": self.detail,
            "problems": list(self.problems),
        }


@dataclass(frozen=True, slots=True)
class IdentityDifference:
    """One image whose patient attribute is not the manifest's (the values stay out of ``repr``)."""

    sop_instance_uid: str
    attribute: str
    """The DICOM keyword: PatientID, IssuerOfPatientID, PatientName, PatientBirthDate, PatientSex."""
    source: str
    in_manifest: str = field(repr=False)
    in_image: str = field(repr=False)

    @property
    def description(self) -> str:
        """For a person, with no patient data: ``PatientName differs in 1.2.3 (file)``."""
        return f"{self.attribute} differs in {self.sop_instance_uid} ({self.source})"


@dataclass(slots=True)
class VerificationReport:
    """Everything ``verify_study`` found; ``ok`` only if every check holds."""

    directory: DirectoryCheck
    signer: SignerCheck
    manifest: Manifest | None
    manifest_problem: str = ""
    """Why the manifest could not be read at all (then no instance could be checked)."""
    instances: list[InstanceCheck] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    ignored: list[NotAnImage] = field(default_factory=list)
    identity: list[IdentityDifference] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The signer is trusted, every instance is there and intact (or re-encoded), nothing else."""
        return (
            self.directory.ok
            and self.signer.ok
            and self.manifest is not None
            and not self.manifest_problem
            and all(check.ok for check in self.instances)
            and not self.unreadable
            and not self.identity
        )

    def counts(self) -> dict[str, int]:
        """How many instance checks have each status, and how many files were unreadable or ignored."""
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for check in self.instances:
            counts[check.status] += 1
        counts["unreadable"] = len(self.unreadable)
        counts["ignored"] = len(self.ignored)
        return counts

    @property
    def listed(self) -> int:
        """How many instances the manifest lists."""
        return len(self.manifest.instances) if self.manifest else 0

    @property
    def verified(self) -> int:
        """How many listed instances were found, and every copy of each is intact or re-encoded."""
        if self.manifest is None:
            return 0
        listed = {i.sop_instance_uid for i in self.manifest.instances}
        found: dict[str, bool] = {}
        for check in self.instances:
            if check.sop_instance_uid in listed and check.status != "missing":
                found[check.sop_instance_uid] = found.get(check.sop_instance_uid, True) and check.ok
        return sum(found.values())

    @property
    def other_problems(self) -> int:
        """Instances intact or re-encoded but with another mismatch (a SOP Class or Series UID)."""
        return sum(1 for check in self.instances if check.status in ACCEPTED and check.problems)

    def signer_label(self) -> str:
        """``한빛대학교병원 (HANBIT)``: the signing institution, as the directory names it."""
        name = self.signer.name_ko or self.signer.name_en
        code = self.signer.institution_code
        return f"{name} ({code})" if name else code

    def summary(self) -> str:
        """The first line of the report: ``VERIFIED: ...`` or ``NOT VERIFIED: ...`` with the reasons."""
        counts = self.counts()
        if self.ok:
            if counts["re-encoded"]:
                what = (
                    f"{self.verified} of {self.listed} instances verified "
                    f"({counts['intact']} intact, {counts['re-encoded']} losslessly re-encoded)"
                )
            else:
                what = f"{self.verified} of {self.listed} instances intact"
            return f"VERIFIED: {what}, signed by {self.signer_label()}"
        reasons: list[str] = []
        if not self.directory.ok:
            reasons.append(f"key directory: {self.directory.reason}")
        elif not self.signer.ok:
            reasons.append(f"signer: {self.signer.reason}")
        if self.manifest_problem and self.manifest_problem not in self.signer.reason:
            reasons.append(f"manifest: {self.manifest_problem}")
        reasons.extend(f"{counts[status]} {status}" for status in STATUSES[2:] if counts[status])
        if counts["unreadable"]:
            reasons.append(f"{counts['unreadable']} unreadable")
        if self.other_problems:
            reasons.append(f"{self.other_problems} with mismatched UIDs")
        if self.identity:
            images = len({d.sop_instance_uid for d in self.identity})
            reasons.append(f"patient identity differs in {images} image{'s' if images != 1 else ''}")
        return "NOT VERIFIED: " + ", ".join(reasons)

    def as_dict(self, *, include_patient_data: bool = False) -> dict[str, Any]:
        """A JSON-ready form; identity values only with ``include_patient_data`` (under ``patient_data``)."""
        manifest = self.manifest
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "directory": {
                "ok": self.directory.ok,
                "reason": self.directory.reason or None,
                "issued_at": _time(self.directory.issued_at),
                "hub_kid": self.directory.hub_kid or None,
            },
            "signer": {
                "ok": self.signer.ok,
                "reason": self.signer.reason or None,
                "kid": self.signer.kid or None,
                "institution": (
                    {
                        "code": self.signer.institution_code,
                        "name_ko": self.signer.name_ko,
                        "name_en": self.signer.name_en,
                    }
                    if self.signer.institution_code
                    else None
                ),
                "key_not_before": _time(self.signer.key_not_before),
                "key_not_after": _time(self.signer.key_not_after),
            },
            "manifest": (
                {
                    "manifest_id": manifest.manifest_id,
                    "issuer": manifest.issuer,
                    "issued_at": _time(manifest.issued_at),
                    "supersedes": manifest.supersedes,
                    "study_instance_uid": manifest.study.study_instance_uid,
                    "number_of_series": manifest.number_of_series,
                    "number_of_instances": len(manifest.instances),
                }
                if manifest
                else None
            ),
            "manifest_problem": self.manifest_problem or None,
            "counts": {**self.counts(), "listed": self.listed, "verified": self.verified},
            "instances": [check.as_dict() for check in self.instances],
            "unreadable": [{"source": u.name, "reason": u.reason} for u in self.unreadable],
            "ignored": [{"source": i.name, "reason": i.reason} for i in self.ignored],
            "identity": {
                "ok": not self.identity,
                "differences": [_difference(d, include_patient_data=include_patient_data) for d in self.identity],
            },
            "warnings": list(self.warnings),
        }


def _difference(difference: IdentityDifference, *, include_patient_data: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sop_instance_uid": difference.sop_instance_uid,
        "attribute": difference.attribute,
        "source": difference.source,
    }
    if include_patient_data:
        out["patient_data"] = {"in_manifest": difference.in_manifest, "in_image": difference.in_image}
    return out


def _time(moment: datetime | None) -> str | None:
    return format_time(moment) if moment is not None else None


# -- verification ---------------------------------------------------------------------------------

Progress = Callable[[int], None]
"""Called with the number of files looked at so far, after each one."""


def verify_study_offline(
    manifest_token: str,
    images: Iterable[SourceItem],
    *,
    directory_token: str,
    hub_jwk: Mapping[str, Any],
    progress: Progress | None = None,
) -> VerificationReport:
    """Verify a manifest and images against a saved key directory signed by the pinned hub key.

    A directory that does not verify fails the report (nothing it says can be trusted); the
    images are still compared with what the manifest claims, for the person to see.
    """
    try:
        directory = verify_directory(directory_token, dict(hub_jwk))
    except TrustError as exc:
        return _verify(manifest_token, images, DirectoryCheck(ok=False, reason=exc.reason), None, progress)
    return verify_study(manifest_token, images, directory, progress=progress)


def verify_study(
    manifest_token: str,
    images: Iterable[SourceItem],
    directory: Directory,
    *,
    progress: Progress | None = None,
) -> VerificationReport:
    """Verify a manifest (a compact JWS) and images against a directory that is already trusted."""
    check = DirectoryCheck(ok=True, issued_at=directory.issued_at, hub_kid=directory.hub_kid)
    return _verify(manifest_token, images, check, directory, progress)


def _verify(
    manifest_token: str,
    images: Iterable[SourceItem],
    directory_check: DirectoryCheck,
    directory: Directory | None,
    progress: Progress | None,
) -> VerificationReport:
    token = manifest_token.strip()
    signer, manifest, problem = check_signer(token, directory)
    report = VerificationReport(directory_check, signer, manifest, manifest_problem=problem)
    if manifest is not None:
        _add_time_warnings(report, manifest, directory)
        check_images(report, manifest, images, progress)
        re_encoded = report.counts()["re-encoded"]
        if re_encoded:
            report.warnings.append(
                f"{re_encoded} re-encoded instance{'s' if re_encoded != 1 else ''}: the decoded pixels, the UIDs and "
                "the patient attributes are verified; no digest covers the rest of the header"
            )
    elif isinstance(images, Generator):
        images.close()  # nothing to compare with: release what the sources hold
    log.info(
        "manifest.verified" if report.ok else "manifest.not_verified",
        manifest_id=manifest.manifest_id if manifest else None,
        issuer=manifest.issuer if manifest else None,
        kid=signer.kid or None,
        signer_reason=signer.reason or directory_check.reason or None,
        **{status.replace("-", "_"): count for status, count in report.counts().items()},
        identity_differences=len(report.identity),
    )
    return report


def _add_time_warnings(report: VerificationReport, manifest: Manifest, directory: Directory | None) -> None:
    if directory is not None and directory.issued_at < manifest.issued_at:
        report.warnings.append(
            f"the key directory ({format_time(directory.issued_at)}) is older than the manifest "
            f"({format_time(manifest.issued_at)}): a revocation since then would not be known"
        )
    if manifest.issued_at > datetime.now(UTC) + CLOCK_SKEW:
        report.warnings.append(f"the manifest is dated in the future ({format_time(manifest.issued_at)})")


def check_signer(token: str, directory: Directory | None) -> tuple[SignerCheck, Manifest | None, str]:
    """(the signer check, the manifest if it can be read, why it cannot be read otherwise).

    The signature is checked with the key its ``kid`` names before the manifest is read, so
    that a changed payload is reported as what it is (a signature that does not verify).  A
    manifest whose signer is not trusted is still returned, to compare the images with what
    it claims; the report then fails.
    """
    try:
        kid = str(jws.read_header(token)["kid"])
    except SignatureInvalid as exc:
        return SignerCheck(ok=False, reason=f"not a signed manifest: {exc.reason}"), None, exc.reason
    claimed, problem = _claimed_manifest(token)
    if directory is None:
        return SignerCheck(ok=False, reason="no trusted key directory", kid=kid), claimed, problem
    found = directory.key_of(kid)
    if found is None:
        return SignerCheck(ok=False, reason=f"key {kid} is not in the directory", kid=kid), claimed, problem
    institution, key = found
    try:
        payload = jws.verify(token, key.public_key, MANIFEST_TYPE)
    except TrustError as exc:
        return _signer(institution, key, exc.reason), claimed, problem
    try:
        manifest = manifest_from_payload(payload)
    except ManifestInvalid as exc:
        return _signer(institution, key, f"the signed manifest is invalid: {exc.reason}"), None, exc.reason
    try:
        directory.signer_key(kid, manifest.issuer, manifest.issued_at)
    except TrustError as exc:
        return _signer(institution, key, exc.reason), manifest, ""
    return _signer(institution, key, ""), manifest, ""


def _claimed_manifest(token: str) -> tuple[Manifest | None, str]:
    """The manifest as the token claims it, unverified, or why it cannot be read."""
    try:
        return manifest_from_payload(jws.read_payload_unverified(token)), ""
    except TrustError as exc:
        return None, exc.reason


def _signer(institution: InstitutionEntry, key: KeyEntry, reason: str) -> SignerCheck:
    return SignerCheck(
        ok=not reason,
        reason=reason,
        kid=key.kid,
        institution_code=institution.code,
        name_ko=institution.name_ko,
        name_en=institution.name_en,
        key_not_before=key.not_before,
        key_not_after=key.not_after,
    )


# -- instances ---------------------------------------------------------------------------------


def check_images(
    report: VerificationReport, manifest: Manifest, images: Iterable[SourceItem], progress: Progress | None = None
) -> None:
    """Compare every image with ``manifest``, one file at a time; add the results to ``report``."""
    listed = {instance.sop_instance_uid: instance for instance in manifest.instances}
    seen: set[str] = set()
    for done, item in enumerate(images, start=1):
        if isinstance(item, NotAnImage):
            report.ignored.append(item)
        elif isinstance(item, Unreadable):
            report.unreadable.append(item)
        else:
            check = _check_image(report, manifest, listed, item)
            if check is not None:
                check.duplicate = check.sop_instance_uid in seen
                if check.duplicate:
                    check.detail = f"{check.detail}; another copy of this instance".lstrip("; ")
                seen.add(check.sop_instance_uid)
                report.instances.append(check)
        if progress is not None:
            progress(done)
    report.instances.extend(
        InstanceCheck(
            sop_instance_uid=instance.sop_instance_uid,
            status="missing",
            series_instance_uid=instance.series_instance_uid,
            sop_class_uid=instance.sop_class_uid,
            listed_transfer_syntax_uid=instance.transfer_syntax_uid,
            detail="listed in the manifest, not among the images",
        )
        for instance in manifest.instances
        if instance.sop_instance_uid not in seen
    )


def _check_image(
    report: VerificationReport, manifest: Manifest, listed: dict[str, ManifestInstance], item: ImageFile
) -> InstanceCheck | None:
    try:
        dataset = _read_header(item.stream)
    except HEADER_ERRORS as exc:
        report.unreadable.append(Unreadable(item.name, f"DICOM header cannot be read: {type(exc).__name__}"))
        return None
    sop_instance_uid = _text(dataset, "SOPInstanceUID")
    if not sop_instance_uid:
        report.unreadable.append(Unreadable(item.name, "DICOM object without a SOP Instance UID"))
        return None
    _check_identity(report, manifest, dataset, sop_instance_uid, item.name)
    found = InstanceCheck(
        sop_instance_uid=sop_instance_uid,
        status="extra",
        source=item.name,
        series_instance_uid=_text(dataset, "SeriesInstanceUID"),
        sop_class_uid=_text(dataset, "SOPClassUID"),
        transfer_syntax_uid=_transfer_syntax(dataset),
    )
    study_instance_uid = _text(dataset, "StudyInstanceUID")
    same_study = study_instance_uid == manifest.study.study_instance_uid
    instance = listed.get(sop_instance_uid)
    if instance is None:
        found.detail = "not in the manifest; " + (
            "of the same study" if same_study else f"of another study ({study_instance_uid or 'no Study Instance UID'})"
        )
        return found
    found.listed_transfer_syntax_uid = instance.transfer_syntax_uid
    if found.sop_class_uid != instance.sop_class_uid:
        found.problems.append(
            f"SOP Class UID {found.sop_class_uid or '(none)'}, the manifest lists {instance.sop_class_uid}"
        )
    if found.series_instance_uid != instance.series_instance_uid:
        found.problems.append(
            f"Series Instance UID {found.series_instance_uid or '(none)'}, "
            f"the manifest lists {instance.series_instance_uid}"
        )
    if not same_study:
        found.problems.append(
            f"Study Instance UID {study_instance_uid or '(none)'}, "
            f"the manifest lists {manifest.study.study_instance_uid}"
        )
    try:
        _compare_digests(found, instance, item.stream)
    except HEADER_ERRORS as exc:
        report.unreadable.append(Unreadable(item.name, f"DICOM file cannot be read: {type(exc).__name__}"))
        return None
    return found


def _compare_digests(found: InstanceCheck, instance: ManifestInstance, stream: IO[bytes]) -> None:
    """Set the status from the digests: the whole file or data set first, the pixels only if needed."""
    whole, data_set = _file_digests(stream)
    if instance.sha256 == whole:
        found.status, found.detail = "intact", "the file is byte for byte the one signed"
        return
    if instance.dataset_sha256 == data_set:
        found.status, found.detail = "intact", "the data set is byte for byte the one signed (File Meta rewritten)"
        return
    found.status = "altered"
    if instance.pixel_sha256 is None:
        found.detail = "the bytes differ (the instance has no pixel data to compare)"
        return
    try:
        pixels = pixel_data_sha256(stream)
    except (PixelDataError, NotFound) as exc:
        found.detail = "the bytes differ"
        found.problems.append(f"pixel data cannot be decoded: {exc}")
        return
    if pixels == instance.pixel_sha256:
        found.status = "re-encoded"
        if found.transfer_syntax_uid == instance.transfer_syntax_uid:
            found.detail = f"same decoded pixels; the header was rewritten ({_syntax_name(found.transfer_syntax_uid)})"
        else:
            found.detail = (
                f"same decoded pixels, stored as {_syntax_name(found.transfer_syntax_uid)}; "
                f"signed as {_syntax_name(instance.transfer_syntax_uid)}"
            )
        return
    found.pixels_differ = pixels is not None
    found.detail = "the bytes and the decoded pixel data differ" if pixels else "the bytes differ; no pixel data found"


def _file_digests(stream: IO[bytes]) -> tuple[str, str]:
    """SHA-256 of the whole file and of its data set after the File Meta (as ``dicom.digests``)."""
    start = data_set_offset(stream)
    whole, data_set = hashlib.sha256(), hashlib.sha256()
    stream.seek(0)
    position = 0
    while chunk := stream.read(CHUNK):
        whole.update(chunk)
        if position + len(chunk) > start:
            data_set.update(chunk[max(0, start - position) :])
        position += len(chunk)
    return whole.hexdigest(), data_set.hexdigest()


def _read_header(stream: IO[bytes]) -> Dataset:
    stream.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(stream, stop_before_pixels=True, force=True, specific_tags=_READ_TAGS)
        # Decode the text now, while warnings about odd character sets are silenced.
        for keyword, _ in IDENTITY_ATTRIBUTES:
            _text(dataset, keyword)
    return dataset


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value).strip()


def _transfer_syntax(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""


def _syntax_name(uid: str) -> str:
    return UID(uid).name if uid else "an unknown transfer syntax"


# -- patient identity ------------------------------------------------------------------------------


def _check_identity(
    report: VerificationReport, manifest: Manifest, dataset: Dataset, sop_instance_uid: str, source: str
) -> None:
    for keyword, name in IDENTITY_ATTRIBUTES:
        expected = str(getattr(manifest.patient, name))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            actual = _text(dataset, keyword)
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
