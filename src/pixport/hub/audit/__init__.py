"""The hub's audit log: append-only, hash-chained events saying who did what, when, from where, to whom, and why.

Every access, share, import and verification the hub performs is recorded here as one row of
``audit_events`` (``hub.schema``): an :class:`AuditEvent` (the action, the actor, the outcome,
the patient's national key, the object, the purpose, the actor's address and a few ids in
``detail``), stamped by :meth:`AuditLog.record` with its place and time.  Patients see their
own events through :meth:`AuditLog.list_events`.

Its parts:

- ``events.py``: the events (past-tense dataclasses) and the check that keeps patient data
  out of them;
- ``chain.py``: what an event's hash covers, and how it links to the event before it;
- ``log.py``: :class:`AuditLog`, appending (serialised), the head as a checkpoint, listing;
- ``verification.py``: walking the chain, what tampering it detects and what it cannot.
"""

from pixport.hub.audit.chain import GENESIS_HASH, event_hash
from pixport.hub.audit.events import (
    OUTCOMES,
    AccessDenied,
    ActorFields,
    AuditEvent,
    DetailValue,
    InstitutionAdmitted,
    KeyRevoked,
    ManifestRegistered,
    RecordedEvent,
    RelayIntegrityFailed,
    StudyRead,
    VerificationPerformed,
    check_event,
)
from pixport.hub.audit.log import MAX_LIST, AuditLog, create_tables
from pixport.hub.audit.verification import AuditVerification

__all__ = [
    "GENESIS_HASH",
    "MAX_LIST",
    "OUTCOMES",
    "AccessDenied",
    "ActorFields",
    "AuditEvent",
    "AuditLog",
    "AuditVerification",
    "DetailValue",
    "InstitutionAdmitted",
    "KeyRevoked",
    "ManifestRegistered",
    "RecordedEvent",
    "RelayIntegrityFailed",
    "StudyRead",
    "VerificationPerformed",
    "check_event",
    "create_tables",
    "event_hash",
]
