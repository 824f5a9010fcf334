"""``pixport hub``: the operator's commands (run on the hub's machine) and the hub server.

Administrative commands act on the hub's database directly, as the operator logged in on the
hub's machine; each act is an audit event naming ``operator:cli:<login>``.
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import orjson
import typer

from pixport.cli.common import settings_from
from pixport.hub.institutions import DEFAULT_KEY_VALIDITY, Actor
from pixport.hub.node import Hub
from pixport.trust.national_key import generate_network_key

EXIT_NOT_VERIFIED = 1

hub_app = typer.Typer(help="The hub: institutions and keys, the registry, the audit log.", no_args_is_help=True)
institutions_app = typer.Typer(help="Admit institutions and list them.", no_args_is_help=True)
keys_app = typer.Typer(help="Institutions' public keys: add (rotate) and revoke.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log: verify its chain, list events.", no_args_is_help=True)
hub_app.add_typer(institutions_app, name="institutions")
hub_app.add_typer(keys_app, name="keys")
hub_app.add_typer(audit_app, name="audit")


def _operator() -> Actor:
    return Actor(f"operator:cli:{getpass.getuser()}", "local")


def _open(ctx: typer.Context) -> Hub:
    return Hub.open(settings_from(ctx).hub)


@hub_app.command("init")
def init(ctx: typer.Context) -> None:
    """Create the hub's data folder, database and signing key; print the public key to pin."""
    hub = _open(ctx)
    try:
        path = hub.settings.data_dir / "hub-key.jwk"
        typer.echo(f"Hub key {hub.key.kid}\nPublic key to pin at gateways and verifiers: {path.resolve()}")
    finally:
        hub.close()


@hub_app.command("network-key")
def network_key(out: Annotated[Path, typer.Argument(help="File to write (0600); never overwritten.")]) -> None:
    """Generate the network key that gateways use to make national keys (give it to gateways only)."""
    generate_network_key(out)
    typer.echo(f"Network key written to {out}")


@hub_app.command("serve")
def serve(ctx: typer.Context) -> None:
    """Serve the hub's API and DICOMweb on hub.host:hub.port."""
    import uvicorn  # noqa: PLC0415

    from pixport.hub.api import create_hub_app  # noqa: PLC0415
    from pixport.logs import configure_logging  # noqa: PLC0415

    settings = settings_from(ctx)
    configure_logging(settings.log_level)
    hub = Hub.open(settings.hub)
    try:
        uvicorn.run(
            create_hub_app(hub),
            host=settings.hub.host,
            port=settings.hub.port,
            access_log=False,
            log_level=settings.log_level,
            loop="uvloop",
            http="httptools",
        )
    finally:
        hub.close()


@institutions_app.command("add")
def add_institution(
    ctx: typer.Context,
    code: Annotated[str, typer.Argument(help="Institution code (e.g. the HIRA care institution number).")],
    name_ko: Annotated[str, typer.Option("--name-ko", help="Name in Korean.")],
    name_en: Annotated[str, typer.Option("--name-en", help="Name in English.")],
    endpoint: Annotated[str, typer.Option("--endpoint", help="Base URL of its gateway.")],
    contact: Annotated[str, typer.Option("--contact", help="Who to call about this node.")] = "",
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="Its public JWK (pixport gateway keys generate).", exists=True)
    ] = None,
) -> None:
    """Admit an institution, with its first public key if given."""
    hub = _open(ctx)
    try:
        hub.institutions.admit_institution(
            code, name_ko=name_ko, name_en=name_en, endpoint=endpoint, contact=contact, actor=_operator()
        )
        if public_key is not None:
            key = hub.institutions.add_key(code, json.loads(public_key.read_text()), actor=_operator())
            typer.echo(f"Admitted {code} with key {key.kid}")
        else:
            typer.echo(f"Admitted {code} (no key yet: pixport hub keys add)")
    finally:
        hub.close()


@institutions_app.command("list")
def list_institutions(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,  # noqa: FBT002
) -> None:
    """Every admitted institution and its keys."""
    hub = _open(ctx)
    try:
        directory = hub.institutions.directory(hub.key.kid)
    finally:
        hub.close()
    if as_json:
        from pixport.trust.directory import directory_payload  # noqa: PLC0415

        typer.echo(orjson.dumps(directory_payload(directory), option=orjson.OPT_INDENT_2).decode())
        return
    for institution in directory.institutions:
        state = "" if institution.active else " (suspended)"
        typer.echo(f"{institution.code}  {institution.name_ko} / {institution.name_en}  {institution.endpoint}{state}")
        for key in institution.keys:
            status = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else f"until {key.not_after:%Y-%m-%d}"
            typer.echo(f"    key {key.kid}  from {key.not_before:%Y-%m-%d}  {status}")


@keys_app.command("add")
def add_key(
    ctx: typer.Context,
    code: Annotated[str, typer.Argument(help="Institution code.")],
    public_key: Annotated[Path, typer.Argument(help="Public JWK file.", exists=True)],
    valid_days: Annotated[int, typer.Option(help="Validity from now, in days.")] = DEFAULT_KEY_VALIDITY.days,
) -> None:
    """Register another public key of an institution (rotation: the old one runs out or is revoked)."""
    hub = _open(ctx)
    try:
        now = datetime.now(UTC)
        key = hub.institutions.add_key(
            code,
            json.loads(public_key.read_text()),
            actor=_operator(),
            not_before=now,
            not_after=now + timedelta(days=valid_days),
        )
    finally:
        hub.close()
    typer.echo(f"Added key {key.kid} to {code}, valid until {key.not_after:%Y-%m-%d}")


# A key id is base64url: it may begin with "-", which must not be taken for an option.
@keys_app.command("revoke", context_settings={"ignore_unknown_options": True})
def revoke_key(
    ctx: typer.Context,
    code: Annotated[str, typer.Argument(help="Institution code.")],
    kid: Annotated[str, typer.Argument(help="Key id (its thumbprint).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")],
) -> None:
    """Revoke a key now: every signature by it is refused from then on."""
    hub = _open(ctx)
    try:
        hub.institutions.revoke_key(code, kid, reason=reason, actor=_operator())
    finally:
        hub.close()
    typer.echo(f"Revoked key {kid} of {code}")


@hub_app.command("directory")
def export_directory(
    ctx: typer.Context, out: Annotated[Path, typer.Argument(help="File to write the signed directory to.")]
) -> None:
    """Write the directory of institutions and keys, signed by the hub, for offline verification."""
    hub = _open(ctx)
    try:
        out.write_text(hub.institutions.signed_directory(hub.key) + "\n")
    finally:
        hub.close()
    typer.echo(f"Signed directory written to {out}")


@audit_app.command("verify")
def verify_audit(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,  # noqa: FBT002
) -> None:
    """Check the audit log's hash chain: any edited, removed or reordered event is reported."""
    hub = _open(ctx)
    try:
        result = hub.audit.verify()
    finally:
        hub.close()
    if as_json:
        typer.echo(
            orjson.dumps(
                {
                    "ok": result.ok,
                    "events_checked": result.events_checked,
                    "head_seq": result.head_seq,
                    "head_hash": result.head_hash,
                    "problems": result.problems,
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    elif result.ok:
        typer.echo(f"Audit log intact: {result.events_checked} events, head {result.head_seq} {result.head_hash}")
    else:
        typer.echo(f"AUDIT LOG TAMPERED: {len(result.problems)} problem(s) in {result.events_checked} events")
        for problem in result.problems:
            typer.echo(f"  - {problem}")
    if not result.ok:
        raise typer.Exit(EXIT_NOT_VERIFIED)


@audit_app.command("list")
def list_audit(
    ctx: typer.Context,
    national_key: Annotated[str | None, typer.Option("--national-key", help="Only this patient's events.")] = None,
    patient_id: Annotated[
        str | None,
        typer.Option("--patient-id", help="Only the events of the patient a hospital knows by this ID (--issuer too)."),
    ] = None,
    issuer: Annotated[
        str | None, typer.Option("--issuer", help="Who issued --patient-id (the institution code, or its issuer).")
    ] = None,
) -> None:
    """Audit events as JSON lines, oldest first: all, or one patient's (who read their images, when, why)."""
    if (patient_id is None) != (issuer is None):
        raise typer.BadParameter("--patient-id and --issuer go together")
    if patient_id is not None and national_key is not None:
        raise typer.BadParameter("give --national-key or --patient-id, not both")
    hub = _open(ctx)
    try:
        if patient_id is not None and issuer is not None:
            national_key = hub.registry.find_national_key(patient_id, issuer)
            if national_key is None:
                # Said without echoing the ID: it is patient data.
                typer.echo("No patient with that ID and issuer in the patient index.", err=True)
                raise typer.Exit(1)
        events = hub.audit.list_events(national_key=national_key)
    finally:
        hub.close()
    from dataclasses import asdict  # noqa: PLC0415

    for event in events:
        typer.echo(orjson.dumps(asdict(event)).decode())
