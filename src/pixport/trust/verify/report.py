"""The verification report: what each check found, its one-line summary and its JSON form.

Patient data stays out of the text: an identity difference names the attribute and the SOP
Instance UID, and its values reach ``as_dict`` only when asked for (``patient_data``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pixport.trust.directory import format_time
from pixport.trust.image_sources import NotAnImage, Unreadable
from pixport.trust.manifest import Manifest

Status = Literal["intact", "re-encoded", "altered", "missing", "extra"]
STATUSES: tuple[Status, ...] = ("intact", "re-encoded", "altered", "missing", "extra")
ACCEPTED: frozenset[str] = frozenset({"intact", "re-encoded"})


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
