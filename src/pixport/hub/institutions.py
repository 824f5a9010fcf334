"""The institution directory: admitted institutions, their keys, rotation and revocation.

The operator admits an institution with its names, code, gateway endpoint and contact, and
registers its public signing key(s): the private key is made at the institution
(``pixport gateway keys generate``) and never leaves it.  Keys have a validity period; a new
key with an overlapping period rotates, revocation is immediate and final.  Every act is an
audit event, in the same transaction.  The directory (``signed_directory``) is what verifiers
download, signed by the hub.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from pixport.errors import ConfigurationError, KeyNotTrusted, NotFound
from pixport.hub.audit import ActorFields, AuditEvent, AuditLog, InstitutionAdmitted, KeyRevoked
from pixport.hub.schema import institution_keys, institutions
from pixport.trust.directory import (
    Directory,
    InstitutionEntry,
    KeyEntry,
    format_time,
    parse_time,
    sign_directory,
)
from pixport.trust.keys import SigningKey, jwk_thumbprint, public_key_from_jwk

CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED_CODES = frozenset({"hub", "operator"})
DEFAULT_KEY_VALIDITY = timedelta(days=2 * 365)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performs an act, and from where (for the audit log)."""

    name: str
    address: str = ""

    def as_audit_fields(self) -> ActorFields:
        """The ``actor`` and ``actor_address`` of an audit event this actor performs."""
        return {"actor": self.name, "actor_address": self.address}


class InstitutionService:
    """Admission of institutions and the lifecycle of their keys."""

    def __init__(self, engine: Engine, audit: AuditLog) -> None:
        self._engine = engine
        self._audit = audit

    def admit_institution(
        self, code: str, *, name_ko: str, name_en: str, endpoint: str, contact: str, actor: Actor
    ) -> InstitutionEntry:
        """Add an institution to the directory (no keys yet: ``add_key``)."""
        if not CODE.fullmatch(code) or code.lower() in RESERVED_CODES:
            raise ConfigurationError("an institution code is 1-64 letters, digits, '.', '_' or '-'")
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigurationError("the gateway endpoint must be an http(s) URL")
        now = format_time(datetime.now(UTC))
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    insert(institutions).values(
                        code=code,
                        name_ko=name_ko,
                        name_en=name_en,
                        endpoint=endpoint.rstrip("/"),
                        contact=contact,
                        active=True,
                        admitted_at=now,
                    )
                )
                self._audit.record(
                    InstitutionAdmitted(
                        **actor.as_audit_fields(),
                        outcome="success",
                        object=code,
                    ),
                    connection=connection,
                )
        except IntegrityError:
            raise ConfigurationError(f"institution {code} is already admitted") from None
        return self.get_institution(code)

    def add_key(
        self,
        code: str,
        jwk: dict[str, Any],
        *,
        actor: Actor,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> KeyEntry:
        """Register a public key of ``code``, valid from ``not_before`` (now) to ``not_after`` (2 years)."""
        public_key_from_jwk(jwk)  # refuses anything but Ed25519 and P-256
        members = ("kty", "crv", "x", "y", "alg")
        clean = {name: str(jwk[name]) for name in members if name in jwk}
        kid = jwk_thumbprint(clean)
        start = (not_before or datetime.now(UTC)).replace(microsecond=0)
        end = (not_after or start + DEFAULT_KEY_VALIDITY).replace(microsecond=0)
        if end <= start:
            raise ConfigurationError("a key's validity must end after it starts")
        self.get_institution(code)
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    insert(institution_keys).values(
                        kid=kid,
                        institution_code=code,
                        jwk=json.dumps(clean, sort_keys=True),
                        not_before=format_time(start),
                        not_after=format_time(end),
                        revoked_at=None,
                        revocation_reason="",
                        added_at=format_time(datetime.now(UTC)),
                    )
                )
                self._audit.record(
                    AuditEvent(
                        action="key.added",
                        **actor.as_audit_fields(),
                        outcome="success",
                        object=kid,
                        detail={"institution": code, "not_before": format_time(start), "not_after": format_time(end)},
                    ),
                    connection=connection,
                )
        except IntegrityError:
            raise ConfigurationError(f"key {kid} is registered already") from None
        return KeyEntry(kid, clean, start, end)

    def revoke_key(self, code: str, kid: str, *, reason: str, actor: Actor) -> KeyEntry:
        """Revoke a key now; every signature by it is refused from then on, whatever its date."""
        with self._engine.begin() as connection:
            result = connection.execute(
                update(institution_keys)
                .where(
                    institution_keys.c.kid == kid,
                    institution_keys.c.institution_code == code,
                    institution_keys.c.revoked_at.is_(None),
                )
                .values(revoked_at=format_time(datetime.now(UTC)), revocation_reason=reason)
            )
            if result.rowcount != 1:
                raise NotFound(f"institution {code} has no unrevoked key {kid}")
            self._audit.record(
                KeyRevoked(
                    **actor.as_audit_fields(),
                    outcome="success",
                    object=kid,
                    purpose=reason,
                    detail={"institution": code},
                ),
                connection=connection,
            )
        return self._key(kid)

    def set_active(self, code: str, *, active: bool, actor: Actor) -> InstitutionEntry:
        """Suspend (or reinstate) an institution: a suspended one can neither call nor sign."""
        with self._engine.begin() as connection:
            result = connection.execute(update(institutions).where(institutions.c.code == code).values(active=active))
            if result.rowcount != 1:
                raise NotFound(f"no institution {code}")
            self._audit.record(
                AuditEvent(
                    action="institution.reinstated" if active else "institution.suspended",
                    **actor.as_audit_fields(),
                    outcome="success",
                    object=code,
                ),
                connection=connection,
            )
        return self.get_institution(code)

    def get_institution(self, code: str) -> InstitutionEntry:
        """The institution ``code`` with its keys; NotFound if it was never admitted."""
        found = self.find_institution(code)
        if found is None:
            raise NotFound(f"no institution {code}")
        return found

    def find_institution(self, code: str) -> InstitutionEntry | None:
        """The institution ``code`` with its keys, or None."""
        entries = self._entries(code)
        return entries[0] if entries else None

    def list_institutions(self) -> list[InstitutionEntry]:
        """Every institution, by code, with its keys."""
        return self._entries(None)

    def current_key(self, code: str, kid: str, moment: datetime | None = None) -> KeyEntry:
        """Key ``kid`` of an active institution ``code``, valid at ``moment`` (now); KeyNotTrusted otherwise."""
        with self._engine.connect() as connection:
            owner = connection.execute(
                select(institution_keys.c.institution_code).where(institution_keys.c.kid == kid)
            ).scalar_one_or_none()
        if owner is not None and owner != code:
            raise KeyNotTrusted(f"key {kid} belongs to institution {owner}, not to the issuer {code}")
        institution = self.find_institution(code)
        if institution is None:
            raise KeyNotTrusted(f"{code} is not an admitted institution")
        directory = Directory(datetime.now(UTC), "", (institution,))
        return directory.signer_key(kid, code, moment or datetime.now(UTC))[1]

    def directory(self, hub_kid: str) -> Directory:
        """The whole directory as of now."""
        return Directory(datetime.now(UTC).replace(microsecond=0), hub_kid, tuple(self.list_institutions()))

    def signed_directory(self, hub_key: SigningKey) -> str:
        """The directory as a JWS signed by the hub, for offline verification."""
        return sign_directory(self.directory(hub_key.kid), hub_key)

    def _key(self, kid: str) -> KeyEntry:
        with self._engine.connect() as connection:
            row = connection.execute(select(institution_keys).where(institution_keys.c.kid == kid)).one()
        return _key_entry(row._mapping)  # noqa: SLF001  SQLAlchemy's public row mapping

    def _entries(self, code: str | None) -> list[InstitutionEntry]:
        query = select(institutions).order_by(institutions.c.code)
        keys_query = select(institution_keys).order_by(institution_keys.c.not_before, institution_keys.c.kid)
        if code is not None:
            query = query.where(institutions.c.code == code)
            keys_query = keys_query.where(institution_keys.c.institution_code == code)
        with self._engine.connect() as connection:
            rows = connection.execute(query).all()
            keys: dict[str, list[KeyEntry]] = {}
            for key_row in connection.execute(keys_query):
                mapping = key_row._mapping  # noqa: SLF001
                keys.setdefault(mapping["institution_code"], []).append(_key_entry(mapping))
        return [
            InstitutionEntry(
                code=r.code,
                name_ko=r.name_ko,
                name_en=r.name_en,
                endpoint=r.endpoint,
                active=bool(r.active),
                keys=tuple(keys.get(r.code, [])),
            )
            for r in rows
        ]


def _key_entry(row: Any) -> KeyEntry:
    return KeyEntry(
        kid=row["kid"],
        jwk=json.loads(row["jwk"]),
        not_before=parse_time(row["not_before"]),
        not_after=parse_time(row["not_after"]),
        revoked_at=parse_time(row["revoked_at"]) if row["revoked_at"] else None,
        revocation_reason=row["revocation_reason"] or "",
    )
