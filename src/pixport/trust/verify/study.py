"""Verifying a study: the key directory, the signer, the instances and the patient identity, in one report."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from pixport.errors import TrustError
from pixport.trust.directory import Directory, format_time, verify_directory
from pixport.trust.image_sources import SourceItem
from pixport.trust.manifest import Manifest
from pixport.trust.verify.instances import Progress, check_images
from pixport.trust.verify.report import DirectoryCheck, VerificationReport
from pixport.trust.verify.signer import check_signer

log = structlog.get_logger(__name__)

CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future a manifest's issued_at may be before the report warns about it."""


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
