"""``pixport gateway``: the hospital's institution key, patient links, publishing, serving."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from pixport.cli.common import settings_from
from pixport.errors import ConfigurationError
from pixport.trust.keys import SigningKey
from pixport.trust.national_key import InvalidRRN, ResidentRegistrationNumber
from pixport.wiring import build_archive

gateway_app = typer.Typer(
    help="The gateway: institution key, patient links, publishing to the hub.", no_args_is_help=True
)
keys_app = typer.Typer(help="The institution's signing key.", no_args_is_help=True)
patients_app = typer.Typer(help="Link hospital patient IDs to national keys.", no_args_is_help=True)
gateway_app.add_typer(keys_app, name="keys")
gateway_app.add_typer(patients_app, name="patients")


@keys_app.command("generate")
def generate_key(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option("--out", help="PEM file (default: gateway.signing_key).")] = None,
    algorithm: Annotated[str, typer.Option(help="EdDSA (Ed25519) or ES256 (P-256).")] = "EdDSA",
) -> None:
    """Make the institution's key pair; the private key stays here, the .jwk goes to the operator."""
    path = out or settings_from(ctx).gateway.signing_key
    if path is None:
        raise ConfigurationError("give --out or set gateway.signing_key")
    if path.exists():
        raise ConfigurationError(f"{path} exists: a key is never overwritten (rotate with a new file)")
    if algorithm not in {"EdDSA", "ES256"}:
        raise ConfigurationError("the algorithm is EdDSA or ES256")
    key = SigningKey.generate("ES256" if algorithm == "ES256" else "EdDSA")
    key.save(path)
    public = path.with_suffix(".jwk")
    public.write_text(json.dumps(key.public_jwk(), indent=2) + "\n")
    typer.echo(f"Key {key.kid}\nPrivate key: {path} (keep it here)\nPublic key for the operator: {public}")


@patients_app.command("link")
def link_patient(
    ctx: typer.Context,
    patient_id: Annotated[str, typer.Argument(help="The hospital's Patient ID.")],
    issuer: Annotated[
        str | None, typer.Option(help="Issuer of the Patient ID (default: the institution code).")
    ] = None,
) -> None:
    """Link a patient ID to the national key of the RRN read from standard input (never an argument)."""
    from pixport.gateway.node import Gateway  # noqa: PLC0415

    if sys.stdin.isatty():
        import getpass  # noqa: PLC0415

        text = getpass.getpass("Resident registration number: ")
    else:
        text = sys.stdin.readline()
    try:
        rrn = ResidentRegistrationNumber.parse(text)
    except InvalidRRN as exc:
        typer.echo(f"pixport: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = settings_from(ctx)
    archive = build_archive(settings)
    gateway = Gateway(settings, archive)
    try:
        key = gateway.link_patient(patient_id, issuer or gateway.code, rrn)
    finally:
        gateway.close()
        archive.close()
    typer.echo(f"Linked to national key {key}")


@gateway_app.command("publish")
def publish(
    ctx: typer.Context,
    study_instance_uids: Annotated[list[str], typer.Argument(help="Studies to publish (or re-publish, superseding).")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,  # noqa: FBT002
) -> None:
    """Sign each study's manifest with the institution's key and register it at the hub."""
    from pixport.gateway.node import Gateway  # noqa: PLC0415

    settings = settings_from(ctx)
    archive = build_archive(settings)
    gateway = Gateway(settings, archive)
    try:
        results = [gateway.publish_study(uid) for uid in study_instance_uids]
    finally:
        gateway.close()
        archive.close()
    if as_json:
        typer.echo(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
        return
    for registered in results:
        supersedes = f", superseding {registered['supersedes']}" if registered.get("supersedes") else ""
        typer.echo(
            f"Published {registered['study_instance_uid']}: manifest {registered['manifest_id']}, "
            f"{registered['number_of_instances']} instances{supersedes}"
        )


@gateway_app.command("withdraw")
def withdraw(
    ctx: typer.Context,
    study_instance_uid: Annotated[str, typer.Argument(help="The published study to withdraw.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why, for the hub's audit log (never the patient's name or ID).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,  # noqa: FBT002
) -> None:
    """Withdraw a study's manifest at the hub: it is no longer listed or retrievable there."""
    from pixport.gateway.node import Gateway  # noqa: PLC0415

    if not reason.strip():
        raise typer.BadParameter("the reason is empty", param_hint="--reason")
    settings = settings_from(ctx)
    archive = build_archive(settings)
    gateway = Gateway(settings, archive)
    try:
        withdrawn = gateway.withdraw_study(study_instance_uid, reason.strip())
    finally:
        gateway.close()
        archive.close()
    if as_json:
        typer.echo(orjson.dumps(withdrawn, option=orjson.OPT_INDENT_2).decode())
        return
    typer.echo(f"Withdrew {study_instance_uid}: manifest {withdrawn['manifest_id']} is {withdrawn['status']}")


@gateway_app.command("publications")
def list_publications(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,  # noqa: FBT002
) -> None:
    """List the studies this gateway published, with their manifest and status."""
    from pixport.gateway.node import Gateway  # noqa: PLC0415

    settings = settings_from(ctx)
    archive = build_archive(settings)
    gateway = Gateway(settings, archive)
    try:
        found = gateway.list_publications()
    finally:
        gateway.close()
        archive.close()
    if as_json:
        typer.echo(orjson.dumps([p.as_json() for p in found], option=orjson.OPT_INDENT_2).decode())
        return
    for p in found:
        instances = "?" if p.number_of_instances is None else str(p.number_of_instances)
        typer.echo(
            f"{p.study_instance_uid}  {p.status:<9}  {p.manifest_id}  {instances:>5} instances  {p.published_at}"
        )


@gateway_app.command("directory")
def fetch_directory(
    ctx: typer.Context, out: Annotated[Path, typer.Argument(help="File to write the signed directory to.")]
) -> None:
    """Download the hub's signed directory of institutions and keys, for offline verification."""
    from pixport.gateway.node import Gateway  # noqa: PLC0415

    settings = settings_from(ctx)
    archive = build_archive(settings)
    gateway = Gateway(settings, archive)
    try:
        out.write_text(gateway.fetch_directory() + "\n")
    finally:
        gateway.close()
        archive.close()
    typer.echo(f"Signed directory written to {out}")


@gateway_app.command("serve")
def serve(ctx: typer.Context) -> None:
    """Serve the archive's DICOMweb, the hub-facing routes and the publishing API.

    With ``gateway.auto_publish_after`` set, studies are also published automatically once
    they have received nothing for that many seconds (``pixport.gateway.auto_publish``).
    """
    from pixport.dicomweb.server import run  # noqa: PLC0415

    settings = settings_from(ctx)
    if settings.gateway.institution_code is None:
        raise ConfigurationError("gateway.institution_code is not set: this node is not a gateway")
    run(settings)
