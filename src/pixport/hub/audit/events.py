"""Audit events: what happened, as past-tense dataclasses, and the check every event passes before it is recorded.

No patient data
---------------
The patient is named by national key only (``trust.national_key``, a keyed MAC made at the
gateway): never by name, birth date or resident registration number (RRN).  ``detail`` holds
ids, codes and counts only, so its values must be ``str``, ``int``, ``bool`` or ``None``
(anything else, and any value shaped like an RRN, ``YYMMDD-NNNNNNN``, is refused with
``ValueError``).  Callers must not put names in any field: the log is kept for years and is
shown to patients, auditors and the other party of a share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, TypeAlias, TypedDict

OUTCOMES: Final = frozenset({"success", "refused", "error"})
"""What an event's ``outcome`` may be."""

DetailValue: TypeAlias = str | int | bool | None
"""A value of ``AuditEvent.detail``: an id, a code, a count or a flag, never patient data."""

EVENT_FIELDS: Final = ("action", "actor", "outcome", "national_key", "object", "purpose", "actor_address")
"""The text fields of an event, each a column of ``audit_events`` and a key of the hashed content."""

_MAX_SAFE_INTEGER: Final = 2**53 - 1  # RFC 8785 numbers are IEEE doubles
_RRN: Final = re.compile(r"(?<!\d)\d{6}-\d{7}(?!\d)")  # resident registration number, YYMMDD-NNNNNNN
_SHORT_FIELDS: Final = {"action": 64, "national_key": 64, "outcome": 32}  # String(n) columns


class ActorFields(TypedDict):
    """Who did it, as an event's fields: ``AuditEvent(..., **actor.as_audit_fields())``."""

    actor: str
    actor_address: str


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """What happened: who (``actor``) did what (``action`` on ``object``), for which patient, why, from where.

    ``action`` is a dotted past-tense verb (``"manifest.registered"``, ``"study.read"``,
    ``"access.denied"``); ``actor`` a typed principal (``"institution:HANBIT"``,
    ``"operator:cli:root"``, ``"hub"``); ``outcome`` one of :data:`OUTCOMES`;
    ``national_key`` the patient's pseudonymous key, or None when no patient is concerned;
    ``object`` the manifest id, study UID or key id acted on; ``purpose`` why (a share's
    purpose, ``"treatment"``); ``actor_address`` the IP address the request came from;
    ``detail`` further ids and counts (no patient data: see the module docstring).
    The fields are checked when the event is recorded.
    """

    action: str
    actor: str
    outcome: str = "success"
    national_key: str | None = None
    object: str = ""
    purpose: str = ""
    actor_address: str = ""
    detail: dict[str, DetailValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", dict(self.detail))  # a copy the caller cannot change later


@dataclass(frozen=True, kw_only=True)
class ManifestRegistered(AuditEvent):
    """A gateway's signed manifest was accepted into the registry (``object``: the manifest id)."""

    action: str = field(default="manifest.registered", init=False)


@dataclass(frozen=True, kw_only=True)
class StudyRead(AuditEvent):
    """A study's images or metadata were read (``object``: the Study Instance UID)."""

    action: str = field(default="study.read", init=False)


@dataclass(frozen=True, kw_only=True)
class InstitutionAdmitted(AuditEvent):
    """An institution joined the exchange (``object``: its code)."""

    action: str = field(default="institution.admitted", init=False)


@dataclass(frozen=True, kw_only=True)
class KeyRevoked(AuditEvent):
    """An institution's signing key was revoked (``object``: the key id, ``kid``)."""

    action: str = field(default="key.revoked", init=False)


@dataclass(frozen=True, kw_only=True)
class VerificationPerformed(AuditEvent):
    """A manifest or package was verified (``object``: the manifest id; ``outcome`` says how it went)."""

    action: str = field(default="verification.performed", init=False)


@dataclass(frozen=True, kw_only=True)
class RelayIntegrityFailed(AuditEvent):
    """A gateway relayed a study whose bytes its signed manifest does not describe (``object``: the manifest id).

    Found by the hub's relay cache, which then kept nothing; ``detail`` holds counts only.
    """

    action: str = field(default="relay.integrity_failed", init=False)
    outcome: str = field(default="error", init=False)


@dataclass(frozen=True, kw_only=True)
class AccessDenied(AuditEvent):
    """A request was refused (``object``: what was asked for; ``detail``: the reason code)."""

    action: str = field(default="access.denied", init=False)
    outcome: str = field(default="refused", init=False)


@dataclass(frozen=True)
class RecordedEvent:
    """An event as the log holds it: its number, its time (UTC, microseconds) and its place in the chain."""

    seq: int
    at: str
    event: AuditEvent
    prev_hash: str
    hash: str


def check_event(event: AuditEvent) -> None:
    """Refuse (``ValueError``) an event that cannot be recorded: bad outcome, empty actor, patient data in detail."""
    for name in EVENT_FIELDS:
        value = getattr(event, name)
        if value is None and name == "national_key":
            continue
        if not isinstance(value, str):
            raise ValueError(f"audit event field {name} must be a string")  # noqa: TRY004  one error for any unrecordable event
        if len(value) > _SHORT_FIELDS.get(name, 4096):
            raise ValueError(f"audit event field {name} is too long")
        if _RRN.search(value):
            raise ValueError(f"audit event field {name} looks like a resident registration number")
    if not event.action or not event.actor:
        raise ValueError("an audit event needs an action and an actor")
    if event.national_key == "":
        raise ValueError("an audit event's national_key is None or a key, not empty")
    if event.outcome not in OUTCOMES:
        raise ValueError(f"audit event outcome must be one of {sorted(OUTCOMES)}")
    if not isinstance(event.detail, dict):
        raise ValueError("audit event detail must be a dict")  # noqa: TRY004  as above
    for key, value in event.detail.items():
        _check_detail(key, value)


def _check_detail(key: object, value: object) -> None:
    if not isinstance(key, str):
        raise ValueError("audit event detail keys must be strings")  # noqa: TRY004  as above
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INTEGER:
            raise ValueError(f"audit event detail {key!r} is an integer beyond 2**53 - 1")
        return
    if not isinstance(value, str):
        raise ValueError(f"audit event detail {key!r} must be a str, int, bool or None (ids only)")  # noqa: TRY004
    if _RRN.search(value):
        raise ValueError(f"audit event detail {key!r} looks like a resident registration number")
