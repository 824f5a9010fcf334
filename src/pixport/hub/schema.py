"""The hub's tables (SQLAlchemy Core): any SQL database SQLAlchemy speaks (SQLite, PostgreSQL).

No table has a column for a resident registration number: patients are keyed by their
national key (``trust.national_key``), made at the gateway.  Times are UTC text
(``YYYY-MM-DDThh:mm:ssZ``, or with microseconds for audit events), which sorts as it reads.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

institutions = Table(
    "institutions",
    metadata,
    Column("code", String(64), primary_key=True),
    Column("name_ko", Text, nullable=False),
    Column("name_en", Text, nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("contact", Text, nullable=False, default=""),
    Column("active", Boolean, nullable=False, default=True),
    Column("admitted_at", String(32), nullable=False),
)

institution_keys = Table(
    "institution_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("institution_code", String(64), ForeignKey("institutions.code"), nullable=False, index=True),
    Column("jwk", Text, nullable=False),
    Column("not_before", String(32), nullable=False),
    Column("not_after", String(32), nullable=False),
    Column("revoked_at", String(32)),
    Column("revocation_reason", Text, nullable=False, default=""),
    Column("added_at", String(32), nullable=False),
)

patients = Table(
    "patients",
    metadata,
    Column("national_key", String(64), primary_key=True),
    # Demographics as the last publishing hospital gave them, for identity checks.
    Column("name", Text, nullable=False, default=""),
    Column("birth_date", String(8), nullable=False, default=""),
    Column("sex", String(16), nullable=False, default=""),
    Column("updated_at", String(32), nullable=False),
)

patient_ids = Table(
    "patient_ids",
    metadata,
    Column("patient_id", String(64), nullable=False),
    Column("issuer", String(64), nullable=False),
    Column("national_key", String(64), ForeignKey("patients.national_key"), nullable=False, index=True),
    Column("institution_code", String(64), ForeignKey("institutions.code"), nullable=False),
    UniqueConstraint("patient_id", "issuer", name="uq_patient_ids"),
)

manifests = Table(
    "manifests",
    metadata,
    Column("manifest_id", String(64), primary_key=True),
    Column("institution_code", String(64), ForeignKey("institutions.code"), nullable=False),
    Column("national_key", String(64), ForeignKey("patients.national_key"), nullable=False, index=True),
    Column("study_instance_uid", String(64), nullable=False),
    Column("issued_at", String(32), nullable=False),
    Column("registered_at", String(32), nullable=False),
    Column("supersedes", String(64)),
    Column("superseded_by", String(64)),
    Column("status", String(16), nullable=False),  # current | superseded | withdrawn
    Column("status_reason", Text, nullable=False, default=""),
    Column("study_date", String(8), nullable=False, default=""),
    Column("modalities", Text, nullable=False, default=""),
    Column("number_of_instances", Integer, nullable=False),
    Column("token", Text, nullable=False),
    Index("ix_manifests_study", "study_instance_uid", "institution_code"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", String(32), nullable=False),
    Column("actor", Text, nullable=False),
    Column("actor_address", Text, nullable=False, default=""),
    Column("action", String(64), nullable=False),
    Column("national_key", String(64), index=True),
    Column("object", Text, nullable=False, default=""),
    Column("purpose", Text, nullable=False, default=""),
    Column("outcome", String(32), nullable=False),
    Column("detail", Text, nullable=False, default="{}"),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

used_assertions = Table(
    "used_assertions",
    metadata,
    Column("jti", String(128), primary_key=True),
    Column("expires_at", String(32), nullable=False, index=True),
)
