"""The gateway: the hospital's archive, its institution key, its patients' national keys, publishing.

The gateway keeps, beside the archive, a small database (``gateway.db`` in the archive's data
folder) of:

- patient links: the hospital's (PatientID, issuer) -> national key.  The resident
  registration number is read once (``link_patient``), turned into the national key with the
  network key, and forgotten: no RRN is ever stored, logged, or sent;
- publications: which manifest was registered at the hub for which study, its status
  (``current`` or ``withdrawn``), and how far the study's receptions it covers (for
  automatic publishing, ``gateway.auto_publish``);
- used assertions: the ids of the hub's calls, so none can be replayed.

Publishing and withdrawing are the same calls whatever asks for them: the command line
(``cli/gateway.py``), the hospital-internal API (``gateway.publishing_api``) and the automatic
publisher (``gateway.auto_publish``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from pixport.archive.node import Archive
from pixport.config import Settings
from pixport.errors import ConfigurationError, KeyNotTrusted, NotFound, PixportError, TrustError
from pixport.gateway.hub_client import HubClient
from pixport.gateway.publish import build_study_manifest, study_identity
from pixport.storage.base import StudyActivity
from pixport.trust.assertions import Caller, verify_assertion
from pixport.trust.directory import format_time, parse_time
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
    # Added after the first release; _add_missing_columns adds them to older databases.
    Column("supersedes", String(64)),
    Column("number_of_instances", Integer),
    Column("received_through", String(40)),  # the study's newest reception when its manifest was built
    Column("withdrawn_at", String(32)),
)
gateway_assertions = Table(
    "gateway_used_assertions",
    metadata,
    Column("jti", String(128), primary_key=True),
    Column("expires_at", String(32), nullable=False),
)


class PatientNotLinked(PixportError):
    """A study's patient has no national key here yet (``pixport gateway patients link``)."""


class NotPublished(NotFound):
    """The study was never published by this gateway."""


class PublicationWithdrawn(PixportError):
    """The study's publication is withdrawn already: there is nothing current to withdraw."""


@dataclass(frozen=True, slots=True)
class Publication:
    """A study this gateway has published: its latest manifest at the hub, and that one's status."""

    study_instance_uid: str
    manifest_id: str
    status: str
    """``current``, or ``withdrawn``."""
    published_at: str
    supersedes: str | None = None
    number_of_instances: int | None = None
    received_through: datetime | None = None
    """Reception time of the study's newest instance when the manifest was built (None if
    published before this was recorded)."""
    withdrawn_at: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The publication as the API and ``pixport gateway publications --json`` show it."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "manifest_id": self.manifest_id,
            "status": self.status,
            "published_at": self.published_at,
            "supersedes": self.supersedes,
            "number_of_instances": self.number_of_instances,
            "withdrawn_at": self.withdrawn_at,
        }

    def is_behind(self, activity: StudyActivity) -> bool:
        """Whether the study received instances that this publication does not cover."""
        if self.number_of_instances is not None and activity.number_of_instances != self.number_of_instances:
            return True
        if self.received_through is not None:
            return activity.last_received_at > self.received_through
        # Recorded before receptions were: the publication time, to the second, must do.
        return activity.last_received_at > parse_time(self.published_at)


def _publication(row: Any) -> Publication:
    return Publication(
        study_instance_uid=row.study_instance_uid,
        manifest_id=row.manifest_id,
        status=row.status,
        published_at=row.published_at,
        supersedes=row.supersedes,
        number_of_instances=row.number_of_instances,
        received_through=datetime.fromisoformat(row.received_through) if row.received_through else None,
        withdrawn_at=row.withdrawn_at,
    )


def _add_missing_columns(engine: Engine, table: Table) -> None:
    """Add the table's nullable columns that an older database lacks (SQLite ADD COLUMN)."""
    present = {column["name"] for column in inspect(engine).get_columns(table.name)}
    missing = [column for column in table.columns if column.name not in present]
    if not missing:
        return
    with engine.begin() as connection:
        for column in missing:
            kind = column.type.compile(dialect=engine.dialect)
            connection.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))


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
        self.hub = HubClient.from_settings(settings)  # code, key and hub URL, each required
        self.code: str = self.hub.institution_code
        self.key: SigningKey = self.hub.key
        self._network_key_path = gateway.network_key
        hub_jwk = json.loads(_required(gateway.hub_key, "hub_key").read_text())
        self.hub_kid = jwk_thumbprint(hub_jwk)
        self.hub_public_key: PublicKey = public_key_from_jwk(hub_jwk)
        settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
        path = (settings.storage.data_dir / "gateway.db").absolute()
        self.engine: Engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 60})
        metadata.create_all(self.engine)
        _add_missing_columns(self.engine, publications)
        self._study_locks: dict[str, threading.Lock] = {}
        self._study_locks_guard = threading.Lock()

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
        """Build, sign and register the study's manifest at the hub; a republished study supersedes.

        Returns the hub's registry entry.  Raises ``NotFound`` (no such study),
        ``PatientNotLinked``, ``HubRefused`` (with the hub's status and reason) or
        ``PeerUnavailable`` (the hub cannot be reached).
        """
        with self._study_lock(study_instance_uid):
            patient_id, issuer, _ = study_identity(self.archive, study_instance_uid)
            key = self.find_national_key(patient_id, issuer or self.code)
            if key is None:
                raise PatientNotLinked(
                    f"the patient of study {study_instance_uid} is not linked to a national key "
                    "(pixport gateway patients link)"
                )
            # Read before the manifest is built: an instance that arrives meanwhile makes the
            # study look changed (published again later), never unchanged.
            activity = self.archive.index.list_study_activity(study_instance_uids=[study_instance_uid])
            previous = self.find_publication(study_instance_uid)
            supersedes = previous.manifest_id if previous is not None and previous.status == "current" else None
            if supersedes is None:
                # A registration whose local record was lost (stopped between the two) is superseded.
                supersedes = self._current_manifest_at_hub(study_instance_uid)
            manifest = build_study_manifest(
                self.archive, study_instance_uid, issuer=self.code, national_key=key, supersedes=supersedes
            )
            token = sign_manifest(manifest, self.key)
            registered = self.register_at_hub(token)
            values = {
                "manifest_id": manifest.manifest_id,
                "status": "current",
                "published_at": format_time(datetime.now(UTC)),
                "token": token,
                "supersedes": supersedes,
                "number_of_instances": len(manifest.instances),
                "received_through": activity[0].last_received_at.isoformat(timespec="microseconds")
                if activity
                else None,
                "withdrawn_at": None,
            }
            with self.engine.begin() as connection:
                if previous is None:
                    connection.execute(insert(publications).values(study_instance_uid=study_instance_uid, **values))
                else:
                    connection.execute(
                        update(publications)
                        .where(publications.c.study_instance_uid == study_instance_uid)
                        .values(**values)
                    )
            return registered

    def withdraw_study(self, study_instance_uid: str, reason: str) -> dict[str, Any]:
        """Withdraw the study's current manifest at the hub, then mark it withdrawn here.

        The hub then neither lists the study nor relays its retrieval, and this gateway no
        longer serves it to the hub.  Returns the hub's registry entry.  ``reason`` goes to the
        hub's audit log: it must not name the patient.
        """
        with self._study_lock(study_instance_uid):
            publication = self.find_publication(study_instance_uid)
            if publication is None:
                raise NotPublished(f"study {study_instance_uid} is not published")
            if publication.status != "current":
                raise PublicationWithdrawn(
                    f"study {study_instance_uid} is {publication.status} already (manifest {publication.manifest_id})"
                )
            response = self.hub.request(
                "POST", f"/hub/manifests/{publication.manifest_id}/withdraw", json={"reason": reason}
            )
            withdrawn: dict[str, Any] = response.json()
            with self.engine.begin() as connection:
                connection.execute(
                    update(publications)
                    .where(
                        publications.c.study_instance_uid == study_instance_uid,
                        publications.c.manifest_id == publication.manifest_id,
                    )
                    .values(status="withdrawn", withdrawn_at=format_time(datetime.now(UTC)))
                )
            return withdrawn

    @contextmanager
    def _study_lock(self, study_instance_uid: str) -> Iterator[None]:
        """One publish or withdrawal of a study at a time in this process (API and automatic)."""
        with self._study_locks_guard:
            lock = self._study_locks.setdefault(study_instance_uid, threading.Lock())
        with lock:
            yield

    def _current_manifest_at_hub(self, study_instance_uid: str) -> str | None:
        """The id of this institution's current manifest of a study at the hub, if any."""
        found = self.hub.request("GET", "/hub/manifests", params={"study": study_instance_uid}).json()
        for entry in found:
            if entry.get("institution") == self.code and entry.get("status") == "current":
                return str(entry["manifest_id"])
        return None

    def register_at_hub(self, token: str) -> dict[str, Any]:
        """POST a signed manifest to the hub; ``HubRefused`` with the hub's reason if refused."""
        response = self.hub.request("POST", "/hub/manifests", content=token.encode("ascii"))
        body: dict[str, Any] = response.json()
        return body

    def find_publication(self, study_instance_uid: str) -> Publication | None:
        """The publication of a study by this gateway, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(publications).where(publications.c.study_instance_uid == study_instance_uid)
            ).first()
        return None if row is None else _publication(row)

    def get_publication(self, study_instance_uid: str) -> Publication:
        """The publication of a study by this gateway; ``NotPublished`` if there is none."""
        publication = self.find_publication(study_instance_uid)
        if publication is None:
            raise NotPublished(f"study {study_instance_uid} is not published")
        return publication

    def manifest_token(self, study_instance_uid: str) -> str:
        """The signed manifest (JWS) this gateway registered for a study; NotFound if none."""
        with self.engine.connect() as connection:
            token = connection.execute(
                select(publications.c.token).where(publications.c.study_instance_uid == study_instance_uid)
            ).scalar_one_or_none()
        if token is None:
            raise NotPublished(f"study {study_instance_uid} is not published")
        return str(token)

    def list_publications(self) -> list[Publication]:
        """Every study this gateway has published, in publication order."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(publications).order_by(publications.c.published_at)).all()
        return [_publication(r) for r in rows]

    def fetch_directory(self) -> str:
        """The hub's signed directory (JWS), for offline verification."""
        return self.hub.request("GET", "/hub/directory").text

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
