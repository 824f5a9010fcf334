"""The registry: study manifests, the patient index they feed, supersession and withdrawal.

A manifest is registered only if:

- the caller is the institution that issued it (a node can only act as itself);
- it is signed by a key of that institution that is valid at its ``issued_at`` and at
  registration time, and not revoked;
- it is new (a manifest id seen before is refused, unless the very same token is offered
  again while it is current: that is an idempotent retry);
- a study that already has a current manifest from this institution gets a new one only as
  a correction that ``supersedes`` it; a superseded or withdrawn manifest is never current
  again (a replay of an old manifest is refused with the id of the one that replaced it).

Registration updates the patient index (national key -> demographics, and the hospital's
(ID, issuer) pair) in the same transaction as the manifest row and its audit event.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from pixport.errors import KeyNotTrusted, ManifestInvalid, NotAuthorized, NotFound, StorageUnavailable
from pixport.hub.audit import AuditEvent, AuditLog, ManifestRegistered
from pixport.hub.institutions import Actor, InstitutionService
from pixport.hub.schema import manifests, patient_ids, patients
from pixport.trust import jws
from pixport.trust.directory import format_time
from pixport.trust.manifest import MANIFEST_TYPE, Manifest, manifest_from_payload

# A manifest dated in the future by more than this is refused (clocks drift, not by hours).
FUTURE_TOLERANCE = timedelta(minutes=5)
# Registrations that clash with concurrent ones are retried whole, this many times at most.
REGISTER_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class RegisteredManifest:
    """A manifest as the registry holds it."""

    manifest_id: str
    institution_code: str
    national_key: str
    study_instance_uid: str
    issued_at: str
    registered_at: str
    status: str
    supersedes: str | None
    superseded_by: str | None
    study_date: str
    modalities: list[str]
    number_of_instances: int
    token: str


class Registry:
    """Manifest registration, lookup, supersession and withdrawal."""

    def __init__(self, engine: Engine, institutions: InstitutionService, audit: AuditLog) -> None:
        self._engine = engine
        self._institutions = institutions
        self._audit = audit

    def register_manifest(self, token: str, *, caller: str, actor: Actor) -> RegisteredManifest:
        """Verify and register a signed manifest offered by institution ``caller``."""
        try:
            manifest = self._verified(token, caller)
        except (ManifestInvalid, KeyNotTrusted, NotAuthorized) as exc:
            self._refused(actor, caller, token, exc)
            raise
        for attempt in range(1, REGISTER_ATTEMPTS + 1):
            try:
                with self._engine.begin() as connection:
                    return self._insert(connection, manifest, token, actor)
            except ManifestInvalid as exc:
                self._refused(actor, caller, token, exc)
                raise
            except (IntegrityError, StorageUnavailable):
                # Another registration committed rows this one read as absent (the same new
                # patient from another hospital, the same manifest retried, the audit chain's
                # next number).  Its commit is visible now: the next attempt sees it and
                # decides again, from the start.
                if attempt == REGISTER_ATTEMPTS:
                    raise StorageUnavailable(f"manifest {manifest.manifest_id}: concurrent registrations") from None
                time.sleep(random.uniform(0.005, 0.05) * attempt)  # noqa: S311  jitter, not security
        raise AssertionError  # unreachable: the loop returns or raises

    def withdraw_manifest(self, manifest_id: str, *, caller: str, reason: str, actor: Actor) -> RegisteredManifest:
        """Withdraw a current manifest of the caller's; it is never current again."""
        with self._engine.begin() as connection:
            row = connection.execute(
                select(manifests).where(manifests.c.manifest_id == manifest_id).with_for_update()
            ).first()
            if row is None or row.institution_code != caller:
                raise NotFound(f"institution {caller} has no manifest {manifest_id}")
            if row.status != "current":
                raise ManifestInvalid(f"manifest {manifest_id} is {row.status} already")
            connection.execute(
                update(manifests)
                .where(manifests.c.manifest_id == manifest_id)
                .values(status="withdrawn", status_reason=reason)
            )
            self._audit.record(
                AuditEvent(
                    action="manifest.withdrawn",
                    **actor.as_audit_fields(),
                    outcome="success",
                    national_key=row.national_key,
                    object=manifest_id,
                    purpose=reason,
                    detail={"study_instance_uid": row.study_instance_uid},
                ),
                connection=connection,
            )
        return self.get_manifest(manifest_id)

    def get_manifest(self, manifest_id: str) -> RegisteredManifest:
        """One manifest, whatever its status; NotFound if unknown."""
        with self._engine.connect() as connection:
            row = connection.execute(select(manifests).where(manifests.c.manifest_id == manifest_id)).first()
        if row is None:
            raise NotFound(f"no manifest {manifest_id}")
        return _registered(row)

    def is_current(self, manifest_id: str) -> bool:
        """Whether ``manifest_id`` is registered and current (neither superseded nor withdrawn)."""
        with self._engine.connect() as connection:
            status = connection.execute(
                select(manifests.c.status).where(manifests.c.manifest_id == manifest_id)
            ).scalar_one_or_none()
        return status == "current"

    def find_national_key(self, patient_id: str, issuer: str) -> str | None:
        """The national key of the patient a hospital knows as (``patient_id``, ``issuer``), or None."""
        with self._engine.connect() as connection:
            key = connection.execute(
                select(patient_ids.c.national_key).where(
                    patient_ids.c.patient_id == patient_id, patient_ids.c.issuer == issuer
                )
            ).scalar_one_or_none()
        return None if key is None else str(key)

    def list_manifests(
        self,
        *,
        national_key: str | None = None,
        study_instance_uid: str | None = None,
        institution_code: str | None = None,
        current_only: bool = True,
    ) -> list[RegisteredManifest]:
        """Manifests matching every given condition, newest study first."""
        query = select(manifests).order_by(manifests.c.study_date.desc(), manifests.c.registered_at.desc())
        if national_key is not None:
            query = query.where(manifests.c.national_key == national_key)
        if study_instance_uid is not None:
            query = query.where(manifests.c.study_instance_uid == study_instance_uid)
        if institution_code is not None:
            query = query.where(manifests.c.institution_code == institution_code)
        if current_only:
            query = query.where(manifests.c.status == "current")
        with self._engine.connect() as connection:
            return [_registered(row) for row in connection.execute(query)]

    def _verified(self, token: str, caller: str) -> Manifest:
        header = jws.read_header(token)
        manifest = manifest_from_payload(jws.read_payload_unverified(token))
        if manifest.issuer != caller:
            raise NotAuthorized(f"institution {caller} cannot register a manifest issued by {manifest.issuer}")
        now = datetime.now(UTC)
        if manifest.issued_at > now + FUTURE_TOLERANCE:
            raise ManifestInvalid("the manifest is dated in the future")
        key = self._institutions.current_key(caller, header["kid"], manifest.issued_at)
        self._institutions.current_key(caller, header["kid"], now)  # and still valid now
        jws.verify(token, key.public_key, MANIFEST_TYPE)
        return manifest

    def _insert(self, connection: Connection, manifest: Manifest, token: str, actor: Actor) -> RegisteredManifest:
        known = connection.execute(select(manifests).where(manifests.c.manifest_id == manifest.manifest_id)).first()
        if known is not None:
            if known.status == "current" and known.token == token:
                return _registered(known)  # the same registration, retried
            if known.status == "superseded":
                raise ManifestInvalid(
                    f"manifest {manifest.manifest_id} was superseded by {known.superseded_by}: replay refused"
                )
            raise ManifestInvalid(f"manifest {manifest.manifest_id} is registered already ({known.status})")
        current = connection.execute(
            select(manifests)
            .where(
                manifests.c.study_instance_uid == manifest.study.study_instance_uid,
                manifests.c.institution_code == manifest.issuer,
                manifests.c.status == "current",
            )
            .with_for_update()
        ).first()
        if manifest.supersedes is None and current is not None:
            raise ManifestInvalid(
                f"study {manifest.study.study_instance_uid} has a current manifest {current.manifest_id}: "
                "a correction must supersede it"
            )
        if manifest.supersedes is not None:
            if current is None or current.manifest_id != manifest.supersedes:
                raise ManifestInvalid(
                    f"manifest {manifest.manifest_id} supersedes {manifest.supersedes}, "
                    "which is not this study's current manifest from this institution"
                )
            connection.execute(
                update(manifests)
                .where(manifests.c.manifest_id == manifest.supersedes)
                .values(status="superseded", superseded_by=manifest.manifest_id)
            )
        now = format_time(datetime.now(UTC))
        self._index_patient(connection, manifest, now)
        connection.execute(
            insert(manifests).values(
                manifest_id=manifest.manifest_id,
                institution_code=manifest.issuer,
                national_key=manifest.patient.national_key,
                study_instance_uid=manifest.study.study_instance_uid,
                issued_at=format_time(manifest.issued_at),
                registered_at=now,
                supersedes=manifest.supersedes,
                superseded_by=None,
                status="current",
                status_reason="",
                study_date=manifest.study.study_date,
                modalities="\\".join(manifest.study.modalities),
                number_of_instances=len(manifest.instances),
                token=token,
            )
        )
        self._audit.record(
            ManifestRegistered(
                **actor.as_audit_fields(),
                outcome="success",
                national_key=manifest.patient.national_key,
                object=manifest.manifest_id,
                detail={
                    "study_instance_uid": manifest.study.study_instance_uid,
                    "instances": len(manifest.instances),
                    "supersedes": manifest.supersedes,
                },
            ),
            connection=connection,
        )
        row = connection.execute(select(manifests).where(manifests.c.manifest_id == manifest.manifest_id)).one()
        return _registered(row)

    def _index_patient(self, connection: Connection, manifest: Manifest, now: str) -> None:
        patient = manifest.patient
        demographics = {"name": patient.name, "birth_date": patient.birth_date, "sex": patient.sex, "updated_at": now}
        exists = connection.execute(
            select(patients.c.national_key).where(patients.c.national_key == patient.national_key)
        ).first()
        if exists is None:
            connection.execute(insert(patients).values(national_key=patient.national_key, **demographics))
        else:
            connection.execute(
                update(patients).where(patients.c.national_key == patient.national_key).values(**demographics)
            )
        issuer = patient.issuer_of_patient_id or manifest.issuer
        pair = connection.execute(
            select(patient_ids).where(patient_ids.c.patient_id == patient.patient_id, patient_ids.c.issuer == issuer)
        ).first()
        if pair is None:
            connection.execute(
                insert(patient_ids).values(
                    patient_id=patient.patient_id,
                    issuer=issuer,
                    national_key=patient.national_key,
                    institution_code=manifest.issuer,
                )
            )
        elif pair.national_key != patient.national_key:
            # One hospital ID naming two people: refuse, a person must reconcile it.
            raise ManifestInvalid(f"patient ID issued by {issuer} is linked to another national key: identity conflict")

    def _refused(self, actor: Actor, caller: str, token: str, exc: Exception) -> None:
        manifest_id = ""
        try:
            manifest_id = str(jws.read_payload_unverified(token).get("manifest_id", ""))[:64]
        except Exception:  # noqa: BLE001  best effort: an unreadable token is recorded without its id
            manifest_id = ""
        self._audit.record(
            AuditEvent(
                action="manifest.refused",
                **actor.as_audit_fields(),
                outcome="refused",
                object=manifest_id,
                purpose=str(exc)[:300],
                detail={"caller": caller},
            )
        )


def _registered(row: object) -> RegisteredManifest:
    r = row._mapping  # type: ignore[attr-defined]  # noqa: SLF001  SQLAlchemy's public row mapping
    return RegisteredManifest(
        manifest_id=r["manifest_id"],
        institution_code=r["institution_code"],
        national_key=r["national_key"],
        study_instance_uid=r["study_instance_uid"],
        issued_at=r["issued_at"],
        registered_at=r["registered_at"],
        status=r["status"],
        supersedes=r["supersedes"],
        superseded_by=r["superseded_by"],
        study_date=r["study_date"],
        modalities=[m for m in r["modalities"].split("\\") if m],
        number_of_instances=r["number_of_instances"],
        token=r["token"],
    )
