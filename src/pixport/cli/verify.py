"""``pixport verify MANIFEST IMAGES... --directory FILE --hub-key FILE``: check a study offline.

The manifest (a compact JWS) is checked against the key directory (a JWS the hub signed), which
is checked against the hub's public key (a JWK file, pinned out of band); then the images, from
folders, files, ZIP files, DICOMDIR media or a DICOMweb study URL, against the manifest.  No
network is used except to fetch a DICOMweb study.

Exit codes: 0 verified; 1 not verified (the report says why: a verification failure is a
result); 2 unusable inputs (a missing or unreadable file, a hub key that is not a JWK, a
DICOMweb study that cannot be fetched).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import structlog
import typer

from pixport.cli.common import progress_bar, settings_from
from pixport.errors import ConfigurationError, KeyNotTrusted, PeerUnavailable, TrustError
from pixport.trust.directory import format_time
from pixport.trust.keys import jwk_thumbprint, public_key_from_jwk

if TYPE_CHECKING:
    from pixport.config import Settings
    from pixport.trust.verify import VerificationReport

EXIT_NOT_VERIFIED = 1
EXIT_UNUSABLE = 2
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024
"""Largest manifest, directory or key file read (a manifest of 100,000 instances is ~60 MB)."""
MAX_IGNORED_SHOWN = 20


class UnusableInputError(Exception):
    """An input that cannot be used at all (exit code 2); the message is safe to show."""


def verify(
    ctx: typer.Context,
    manifest: Annotated[
        Path,
        typer.Argument(help="The signed study manifest (a compact JWS).", exists=True, dir_okay=False),
    ],
    images: Annotated[
        list[str],
        typer.Argument(help="Folders, files, ZIP files, DICOMDIR media, or a DICOMweb study URL (WADO-RS)."),
    ],
    *,
    directory: Annotated[
        Path,
        typer.Option(
            "--directory", help="The key directory, as the hub signed it (a JWS).", exists=True, dir_okay=False
        ),
    ],
    hub_key: Annotated[
        Path,
        typer.Option(
            "--hub-key", help="The hub's public key (a JWK, JSON), pinned out of band.", exists=True, dir_okay=False
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    show_patient_data: Annotated[
        bool,
        typer.Option("--show-patient-data", help="With --json: include differing patient values (patient data)."),
    ] = False,
    report_to_hub: Annotated[
        bool,
        typer.Option(
            "--report",
            help="Record the outcome in the hub's audit log, as this gateway (gateway.* settings): counts only.",
        ),
    ] = False,
) -> None:
    """Verify a signed study manifest against images: signer, completeness, integrity, patient identity."""
    settings = settings_from(ctx) if report_to_hub else None
    if not structlog.is_configured():
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        manifest_token = _read_document(manifest, "manifest")
        directory_token = _read_document(directory, "key directory")
        hub_jwk = _read_hub_key(hub_key)
        _check_images_exist(images)
        report = _run(manifest_token, images, directory_token, hub_jwk)
    except UnusableInputError as exc:
        typer.echo(f"pixport verify: {exc}", err=True)
        raise typer.Exit(EXIT_UNUSABLE) from None
    if as_json:
        typer.echo(
            orjson.dumps(report.as_dict(include_patient_data=show_patient_data), option=orjson.OPT_INDENT_2).decode()
        )
    else:
        for line in report_lines(report):
            typer.echo(line)
    if settings is not None:
        _report(settings, report)
    if not report.ok:
        raise typer.Exit(EXIT_NOT_VERIFIED)


def _run(manifest_token: str, images: list[str], directory_token: str, hub_jwk: dict[str, Any]) -> VerificationReport:
    # Loaded here, not at import: the command group is registered for every command.
    from pixport.trust.image_sources import iter_images  # noqa: PLC0415
    from pixport.trust.verify import verify_study_offline  # noqa: PLC0415

    try:
        with progress_bar() as progress:
            task = progress.add_task("Verifying", total=None)
            return verify_study_offline(
                manifest_token,
                iter_images(images),
                directory_token=directory_token,
                hub_jwk=hub_jwk,
                progress=lambda done: progress.update(task, completed=done),
            )
    except PeerUnavailable as exc:
        raise UnusableInputError(str(exc)) from exc


def _report(settings: Settings, report: VerificationReport) -> None:
    """Tell the hub how the verification went; a report that cannot be made is exit code 2."""
    if report.manifest is None:
        typer.echo("pixport verify: not reported to the hub: the manifest could not be read", err=True)
        raise typer.Exit(EXIT_UNUSABLE)
    from pixport.gateway.hub_client import HubClient  # noqa: PLC0415

    body = {"verified": report.ok, "signer_valid": report.signer.ok, "counts": _reported_counts(report)}
    try:
        recorded = HubClient.from_settings(settings).post_json(
            f"/hub/manifests/{report.manifest.manifest_id}/verifications", body
        )
    except (ConfigurationError, PeerUnavailable, TrustError) as exc:
        typer.echo(f"pixport verify: not reported to the hub: {exc}", err=True)
        raise typer.Exit(EXIT_UNUSABLE) from None
    typer.echo(f"Reported to the hub (audit event {recorded.get('recorded')}).", err=True)


def _reported_counts(report: VerificationReport) -> dict[str, int]:
    return {**report.counts(), "listed": report.listed, "verified": report.verified}


def _read_document(path: Path, what: str) -> str:
    try:
        if path.stat().st_size > MAX_DOCUMENT_BYTES:
            raise UnusableInputError(f"the {what} file is larger than {MAX_DOCUMENT_BYTES} bytes")
        # A JWS is ASCII; anything else becomes a token that does not verify, and is reported.
        return path.read_bytes().decode("ascii", "replace").strip()
    except OSError as exc:
        raise UnusableInputError(f"cannot read the {what} file: {exc.strerror}") from exc


def _read_hub_key(path: Path) -> dict[str, Any]:
    text = _read_document(path, "hub key")
    try:
        jwk = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnusableInputError("the hub key file is not JSON (a JWK is expected)") from exc
    if not isinstance(jwk, dict):
        raise UnusableInputError("the hub key file is not a JWK (a JSON object)")
    try:
        public_key_from_jwk(jwk)
        jwk_thumbprint(jwk)
    except KeyNotTrusted as exc:
        raise UnusableInputError(f"the hub key is not a usable public key: {exc.reason}") from exc
    return jwk


def _check_images_exist(images: list[str]) -> None:
    from pixport.trust.image_sources import is_dicomweb_url  # noqa: PLC0415

    for location in images:
        if not is_dicomweb_url(location) and not Path(location).exists():
            raise UnusableInputError(f"no such file or folder: {_shown(location)}")


def _shown(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def report_lines(report: VerificationReport) -> list[str]:
    """The report for a person: the summary first, then the details (no patient data)."""
    lines = [report.summary(), ""]
    manifest = report.manifest
    if manifest is not None:
        lines.append(f"Manifest   {manifest.manifest_id}, issued {_iso(manifest.issued_at)} by {manifest.issuer}")
        if manifest.supersedes:
            lines.append(f"           supersedes {manifest.supersedes}")
        lines.append(
            f"Study      {manifest.study.study_instance_uid}: "
            f"{len(manifest.instances)} instances in {manifest.number_of_series} series"
        )
    elif report.manifest_problem:
        lines.append(f"Manifest   cannot be read: {report.manifest_problem}")
    if report.directory.ok:
        lines.append(
            f"Directory  signed by the pinned hub key {report.directory.hub_kid}, "
            f"issued {_iso(report.directory.issued_at)}"
        )
    else:
        lines.append(f"Directory  NOT TRUSTED: {report.directory.reason}")
    lines.extend(_signer_lines(report))
    lines.extend(_instance_lines(report))
    if manifest is not None:
        if report.identity:
            lines.append(f"Identity   differs from the manifest's patient in {len(report.identity)} attribute(s):")
            lines.extend(f"  {difference.description}" for difference in report.identity)
        else:
            lines.append("Identity   every image is the manifest's patient")
    if report.warnings:
        lines.append("Warnings")
        lines.extend(f"  {warning}" for warning in report.warnings)
    return [_shown(line) for line in lines]


def _signer_lines(report: VerificationReport) -> list[str]:
    signer = report.signer
    names = " / ".join(n for n in (signer.name_ko, signer.name_en) if n)
    who = f"{names} ({signer.institution_code})" if signer.institution_code else "unknown institution"
    key = f"key {signer.kid}" if signer.kid else "no key"
    if signer.ok:
        validity = f"valid {_iso(signer.key_not_before)} to {_iso(signer.key_not_after)}"
        return [f"Signer     {who}, {key} ({validity}): trusted"]
    return [f"Signer     NOT TRUSTED: {signer.reason}", f"           {who}, {key}"]


def _instance_lines(report: VerificationReport) -> list[str]:
    if report.manifest is None:
        return []
    counts = report.counts()
    statuses = ", ".join(
        f"{counts[status]} {status}" for status in ("intact", "re-encoded", "altered", "missing", "extra")
    )
    lines = [
        f"Instances  {statuses}; {counts['unreadable']} unreadable, {counts['ignored']} ignored (not DICOM images)"
    ]
    for check in report.instances:
        if check.status == "intact" and check.ok and not check.duplicate:
            continue
        where = f" ({check.source})" if check.source else ""
        text = f"  {check.status:<10} {check.sop_instance_uid}{where}: {check.detail}"
        if check.problems:
            text += "; " + "; ".join(check.problems)
        lines.append(text)
    lines.extend(f"  unreadable {item.name}: {item.reason}" for item in report.unreadable)
    lines.extend(f"  ignored    {item.name}: {item.reason}" for item in report.ignored[:MAX_IGNORED_SHOWN])
    if len(report.ignored) > MAX_IGNORED_SHOWN:
        lines.append(f"  ... and {len(report.ignored) - MAX_IGNORED_SHOWN} more ignored files")
    return lines


def _iso(moment: datetime | None) -> str:
    return format_time(moment) if moment is not None else "?"
