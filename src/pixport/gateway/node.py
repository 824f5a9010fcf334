"""The gateway: the hospital's archive, its institution key, its patients' national keys, publishing.

The gateway keeps, beside the archive, a small database (``gateway.db`` in the archive's data
folder) of:

- patient links: the hospital's (PatientID, issuer) -> national key.  The resident
  registration number is read once (``link_patient``), turned into the national key with the
  network key, and forgotten: no RRN is ever stored, logged, or sent;
- publications: which manifest was registered at the hub for which study;
- used assertions: the ids of the hub's calls, so none can be replayed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import Column, Engine, MetaData, String, Table, Text, create_engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from pixport.archive.node import Archive
from pixport.config import Settings
from pixport.errors import ConfigurationError, KeyNotTrusted, NotFound, PeerUnavailable, TrustError
from pixport.gateway.publish import build_study_manifest, study_identity
from pixport.trust.assertions import Caller, authorization_header, verify_assertion
from pixport.trust.directory import format_time
from pixport.trust.keys import PublicKey, SigningKey, jwk_thumbprint, public_key_from_jwk
from pixport.trust.manifest import sign_manifest
from pixport.trust.national_key import ResidentRegistrationNumber, load_network_key, national_key

metadata = MetaData()
patient_links = Table(
    "patient_links",
    metadata,
    Column("patient_id", String(64), primary_key=True),
    Column("issuer", String(64), primary_key=True),
    Column("national_key", String(64), nullable=False),
    Column("linked_at", String(32), nullable=False),
)
publications = Table(
    "publications",
    metadata,
    Column("study_instance_uid", String(64), primary_key=True),
    Column("manifest_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("published_at", String(32), nullable=False),
    Column("token", Text, nullable=False),
)
gateway_assertions = Table(
    "gateway_used_assertions",
    metadata,
    Column("jti", String(128), primary_key=True),
    Column("expires_at", String(32), nullable=False),
)


@dataclass(frozen=True, slots=True)
class Publication:
    """A study this gateway has published: its current manifest at the hub."""

    study_instance_uid: str
    manifest_id: str
    status: str
    published_at: str


def _required(value: Any, name: str) -> Any:
    if value is None:
        raise ConfigurationError(f"gateway.{name} is not set")
    return value


class Gateway:
    """Publishing and the hub-facing side of one hospital's archive."""

    def __init__(self, settings: Settings, archive: Archive) -> None:
        gateway = settings.gateway
        self.settings = settings
        self.archive = archive
        self.code: str = _required(gateway.institution_code, "institution_code")
        self.key = SigningKey.load(_required(gateway.signing_key, "signing_key"))
        self._network_key_path = gateway.network_key
        hub_jwk = json.loads(_required(gateway.hub_key, "hub_key").read_text())
        self.hub_kid = jwk_thumbprint(hub_jwk)
        self.hub_public_key: PublicKey = public_key_from_jwk(hub_jwk)
        self.hub_url: str = _required(gateway.hub_url, "hub_url").rstrip("/")
        settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
        path = (settings.storage.data_dir / "gateway.db").absolute()
        self.engine: Engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 60})
        metadata.create_all(self.engine)

    def close(self) -> None:
        """Release the gateway's database."""
        self.engine.dispose()

    # Patients

    def link_patient(self, patient_id: str, issuer: str, rrn: ResidentRegistrationNumber) -> str:
        """Link a hospital patient ID to the national key of ``rrn``; returns the national key."""
        network_key = load_network_key(_required(self._network_key_path, "network_key"))
        key = national_key(rrn, network_key)
        now = format_time(datetime.now(UTC))
        with self.engine.begin() as connection:
            found = connection.execute(
                select(patient_links.c.national_key).where(
                    patient_links.c.patient_id == patient_id, patient_links.c.issuer == issuer
                )
            ).first()
            if found is None:
                connection.execute(
                    insert(patient_links).values(patient_id=patient_id, issuer=issuer, national_key=key, linked_at=now)
                )
            elif found.national_key != key:
                raise TrustError("this patient ID is linked to another person already: unlink it first")
        return key

    def find_national_key(self, patient_id: str, issuer: str) -> str | None:
        """The national key linked to a hospital patient ID, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(patient_links.c.national_key).where(
                    patient_links.c.patient_id == patient_id, patient_links.c.issuer == issuer
                )
            ).first()
        return None if row is None else str(row.national_key)

    # Publishing

    def publish_study(self, study_instance_uid: str) -> dict[str, Any]:
        """Build, sign and register the study's manifest at the hub; a republished study supersedes."""
        patient_id, issuer, _ = study_identity(self.archive, study_instance_uid)
        key = self.find_national_key(patient_id, issuer or self.code)
        if key is None:
            raise NotFound(f"the patient of study {study_instance_uid} is not linked to a national key")
        previous = self.find_publication(study_instance_uid)
        manifest = build_study_manifest(
            self.archive,
            study_instance_uid,
            issuer=self.code,
            national_key=key,
            supersedes=previous.manifest_id if previous and previous.status == "current" else None,
        )
        token = sign_manifest(manifest, self.key)
        registered = self.register_at_hub(token)
        now = format_time(datetime.now(UTC))
        with self.engine.begin() as connection:
            values = {"manifest_id": manifest.manifest_id, "status": "current", "published_at": now, "token": token}
            if previous is None:
                connection.execute(insert(publications).values(study_instance_uid=study_instance_uid, **values))
            else:
                connection.execute(
                    update(publications).where(publications.c.study_instance_uid == study_instance_uid).values(**values)
                )
        return registered

    def register_at_hub(self, token: str) -> dict[str, Any]:
        """POST a signed manifest to the hub; TrustError with the hub's reason if refused."""
        response = self._hub_request("POST", "/hub/manifests", content=token.encode("ascii"))
        body: dict[str, Any] = response.json()
        return body

    def find_publication(self, study_instance_uid: str) -> Publication | None:
        """The publication of a study by this gateway, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(publications).where(publications.c.study_instance_uid == study_instance_uid)
            ).first()
        if row is None:
            return None
        return Publication(row.study_instance_uid, row.manifest_id, row.status, row.published_at)

    def manifest_token(self, study_instance_uid: str) -> str:
        """The signed manifest (JWS) this gateway registered for a study; NotFound if none."""
        with self.engine.connect() as connection:
            token = connection.execute(
                select(publications.c.token).where(publications.c.study_instance_uid == study_instance_uid)
            ).scalar_one_or_none()
        if token is None:
            raise NotFound(f"study {study_instance_uid} is not published")
        return str(token)

    def list_publications(self) -> list[Publication]:
        """Every study this gateway has published."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(publications).order_by(publications.c.published_at)).all()
        return [Publication(r.study_instance_uid, r.manifest_id, r.status, r.published_at) for r in rows]

    def fetch_directory(self) -> str:
        """The hub's signed directory (JWS), for offline verification."""
        return self._hub_request("GET", "/hub/directory").text

    def _hub_request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = authorization_header(self.key, self.code, self.settings.gateway.hub_audience, method, path)
        try:
            response = httpx.request(method, self.hub_url + path, headers=headers, timeout=120, **kwargs)
        except httpx.HTTPError as exc:
            raise PeerUnavailable(f"the hub is unreachable: {type(exc).__name__}") from None
        if response.status_code >= 400:  # noqa: PLR2004
            try:
                detail = str(response.json().get("detail", ""))
            except ValueError:
                detail = response.text[:200]
            raise TrustError(f"the hub refused ({response.status_code}): {detail}")
        return response

    # The hub's calls

    def authenticate_hub(self, authorization: str | None, method: str, path: str) -> Caller:
        """The hub, proven by an assertion signed with its pinned key; NotAuthenticated otherwise."""
        return verify_assertion(
            authorization,
            audience=self.code,
            method=method,
            path=path,
            lookup=self._hub_key,
            first_use=self._first_use,
        )

    def _hub_key(self, subject: str, kid: str) -> PublicKey:
        if subject != "hub" or kid != self.hub_kid:
            raise KeyNotTrusted("only the hub, with its pinned key, may call this gateway")
        return self.hub_public_key

    def _first_use(self, jti: str, expires_at: int) -> bool:
        now = format_time(datetime.fromtimestamp(int(time.time()), UTC))
        with self.engine.begin() as connection:
            connection.execute(delete(gateway_assertions).where(gateway_assertions.c.expires_at < now))
            try:
                connection.execute(
                    insert(gateway_assertions).values(
                        jti=jti, expires_at=format_time(datetime.fromtimestamp(expires_at, UTC))
                    )
                )
            except IntegrityError:
                return False
        return True
