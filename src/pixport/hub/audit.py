"""The hub's audit log: append-only, hash-chained events saying who did what, when, from where, to whom, and why.

Every access, share, import and verification the hub performs is recorded here as one row of
``audit_events`` (``hub.schema``): an :class:`AuditEvent` (the action, the actor, the outcome,
the patient's national key, the object, the purpose, the actor's address and a few ids in
``detail``), stamped by :meth:`AuditLog.record` with its place and time.  Patients see their
own events through :meth:`AuditLog.list_events`.

No patient data
---------------
The patient is named by national key only (``trust.national_key``, a keyed MAC made at the
gateway): never by name, birth date or resident registration number (RRN).  ``detail`` holds
ids, codes and counts only, so its values must be ``str``, ``int``, ``bool`` or ``None``
(anything else, and any value shaped like an RRN, ``YYMMDD-NNNNNNN``, is refused with
``ValueError``).  Callers must not put names in any field: the log is kept for years and is
shown to patients, auditors and the other party of a share.

The chain
---------
Events are numbered 1, 2, 3, ... without gaps (``seq``, the primary key).  Each event stores
``prev_hash``, the ``hash`` of the event before it (64 zeros for event 1), and its own
``hash``::

    hash = hex(SHA-256(RFC 8785 canonical JSON of {seq, at, action, actor, actor_address,
                       outcome, national_key, object, purpose, detail, prev_hash}))

so an event's hash covers its content, its number and, through ``prev_hash``, every event
before it.  Appends are serialised: on PostgreSQL by a transaction-scoped advisory lock, on
SQLite by ``BEGIN IMMEDIATE`` (when the transaction has not yet written), and everywhere by
``seq`` being the primary key, so that two writers that read the same head cannot both write
the next event (the loser gets an ``IntegrityError``; :meth:`AuditLog.record` retries it when
it owns the transaction).  An event can be recorded in the caller's transaction, so that an
act and its audit event commit, or roll back, together.

What :meth:`AuditLog.verify` detects
------------------------------------
It reads the table in ``seq`` order, a page at a time, and names the event in each problem:

- an edited field: ``event 5 was altered: its content does not match its hash``;
- an edited hash (the content still matches the hash the next event, or the checkpoint,
  names): ``event 5's hash was altered: it does not match the event's content, whose hash
  event 6 names``;
- a removed event: ``event 7 is missing (seq jumps from 6 to 8)``, ``events 7 to 9 are
  missing (seq jumps from 6 to 10)``, or for the first ones ``event 1 is missing (the log
  starts at event 2)``;
- moved events (rows' ``seq`` exchanged or renumbered): ``event 9 does not follow event 8:
  its prev_hash is the hash of event 10`` (or ``... is not the hash of any event in the
  log``), and for a row whose hash was made under another number, ``event 9 was renumbered:
  it was recorded as event 10``;
- against a checkpoint ``(seq, hash)`` taken earlier with :meth:`AuditLog.head`: ``the log
  ends at event 7 but a checkpoint names event 10`` (the last events were removed), and
  ``event 10 does not match the checkpoint: ...`` (the log was cut and grown again, or
  rewritten from there on).

What it cannot detect
---------------------
The chain is not keyed: anyone who can write the database can recompute it.  So, on its own,
verification cannot see the last events deleted (the shorter chain is still a valid chain),
nor the whole chain rewritten from some event on.  Both are caught only against a checkpoint
published or signed elsewhere (the hub signs and publishes :meth:`AuditLog.head` regularly),
and only up to that checkpoint.  Nor can it see an event that was never recorded, or a wrong
clock (``at`` is what the hub's clock said).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

from sqlalchemy import Connection, Engine, RowMapping, select, text
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from pixport.errors import StorageUnavailable
from pixport.hub.schema import audit_events, metadata
from pixport.trust import jws

GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` of event 1, and the head hash of an empty log."""

OUTCOMES: Final = frozenset({"success", "refused", "error"})
"""What an event's ``outcome`` may be."""

DetailValue: TypeAlias = str | int | bool | None
"""A value of ``AuditEvent.detail``: an id, a code, a count or a flag, never patient data."""

MAX_LIST: Final = 10_000
"""The most events :meth:`AuditLog.list_events` returns at once."""

_MAX_SAFE_INTEGER: Final = 2**53 - 1  # RFC 8785 numbers are IEEE doubles
_RRN: Final = re.compile(r"(?<!\d)\d{6}-\d{7}(?!\d)")  # resident registration number, YYMMDD-NNNNNNN
_ADVISORY_LOCK_KEY: Final = 0x7078_6175_6469_7400  # b"pxaudit\0": one lock for all appenders
_ATTEMPTS: Final = 20
_RENUMBER_WINDOW: Final = 64  # how far from its seq a moved event's original seq is looked for
_EVENT_FIELDS: Final = ("action", "actor", "outcome", "national_key", "object", "purpose", "actor_address")
_SHORT_FIELDS: Final = {"action": 64, "national_key": 64, "outcome": 32}  # String(n) columns


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


@dataclass
class AuditVerification:
    """The result of :meth:`AuditLog.verify`: ``ok`` when ``problems`` is empty.

    ``head_seq`` and ``head_hash`` are the last event's (0 and :data:`GENESIS_HASH` for an
    empty log); each problem names the event it is about.
    """

    ok: bool
    events_checked: int
    head_seq: int
    head_hash: str
    problems: list[str] = field(default_factory=list)


def create_tables(engine: Engine) -> None:
    """Create every hub table (``hub.schema.metadata``) that does not exist yet."""
    metadata.create_all(engine)


def event_hash(content: Mapping[str, Any]) -> str:
    """The hex SHA-256 of ``content``'s RFC 8785 canonical JSON: an event's ``hash``."""
    return hashlib.sha256(jws.canonical_json(dict(content))).hexdigest()


def check_event(event: AuditEvent) -> None:
    """Refuse (``ValueError``) an event that cannot be recorded: bad outcome, empty actor, patient data in detail."""
    for name in _EVENT_FIELDS:
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


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _content(seq: int, at: str, event: AuditEvent, prev_hash: str) -> dict[str, Any]:
    content: dict[str, Any] = {name: getattr(event, name) for name in _EVENT_FIELDS}
    content.update(seq=seq, at=at, detail=dict(event.detail), prev_hash=prev_hash)
    return content


def _row_content(row: RowMapping) -> dict[str, Any] | None:
    """The hashed content of a stored row, or None if its detail is not a JSON object."""
    try:
        detail = json.loads(row["detail"])
    except (TypeError, ValueError):
        return None
    if not isinstance(detail, dict):
        return None
    content: dict[str, Any] = {name: row[name] for name in _EVENT_FIELDS}
    content.update(seq=row["seq"], at=row["at"], detail=detail, prev_hash=row["prev_hash"])
    return content


def _content_hash(content: Mapping[str, Any] | None) -> str | None:
    if content is None:
        return None
    try:
        return event_hash(content)
    except (TypeError, ValueError):  # a value RFC 8785 cannot write: a number out of range, NaN
        return None


def _row_event(row: RowMapping) -> RecordedEvent:
    """Tolerant reading: the row as stored, whatever it holds (verify() says whether to trust it)."""
    try:
        detail = json.loads(row["detail"])
    except (TypeError, ValueError):
        detail = None
    event = AuditEvent(
        action=row["action"],
        actor=row["actor"],
        outcome=row["outcome"],
        national_key=row["national_key"],
        object=row["object"],
        purpose=row["purpose"],
        actor_address=row["actor_address"],
        detail=detail if isinstance(detail, dict) else {},
    )
    return RecordedEvent(seq=row["seq"], at=row["at"], event=event, prev_hash=row["prev_hash"], hash=row["hash"])


class AuditLog:
    """The hub's append-only, hash-chained audit log, in ``audit_events`` on any SQLAlchemy engine.

    Safe to share between threads and processes: appends are serialised by the database.
    The tables must exist (:func:`create_tables`).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record(self, event: AuditEvent, *, connection: Connection | None = None) -> RecordedEvent:
        """Append ``event`` as the next event of the chain, and return it as stored.

        With ``connection`` (open, in a transaction) the event is written in that transaction
        and commits or rolls back with it; a clash with a concurrent writer then raises
        ``StorageUnavailable`` and the caller's transaction must be retried.  Without it, the
        event is written in its own transaction, and clashes are retried a bounded number of
        times.  Raises ``ValueError`` for an event that may not be recorded (:func:`check_event`)
        and ``StorageUnavailable`` when the database fails.
        """
        check_event(event)
        if connection is not None:
            try:
                return self._append(connection, event)
            except SQLAlchemyError as exc:
                raise StorageUnavailable(f"audit log: could not record a {event.action} event") from exc
        failure: SQLAlchemyError | None = None
        for attempt in range(_ATTEMPTS):
            try:
                with self._engine.begin() as own:
                    return self._append(own, event)
            except (IntegrityError, OperationalError) as exc:  # a seq clash, a busy or locked database
                failure = exc
                time.sleep(min(0.05, 0.001 * 2**attempt) * random.random())  # noqa: S311  jitter, not a secret
            except SQLAlchemyError as exc:
                raise StorageUnavailable(f"audit log: could not record a {event.action} event") from exc
        raise StorageUnavailable(
            f"audit log: could not record a {event.action} event in {_ATTEMPTS} attempts"
        ) from failure

    def _append(self, connection: Connection, event: AuditEvent) -> RecordedEvent:
        _lock_for_append(connection)
        head = connection.execute(
            select(audit_events.c.seq, audit_events.c.hash).order_by(audit_events.c.seq.desc()).limit(1)
        ).first()
        seq, prev_hash = (int(head.seq) + 1, str(head.hash)) if head is not None else (1, GENESIS_HASH)
        at = _now()
        digest = event_hash(_content(seq, at, event, prev_hash))
        row = {name: getattr(event, name) for name in _EVENT_FIELDS}
        connection.execute(
            audit_events.insert().values(
                **row,
                seq=seq,
                at=at,
                detail=jws.canonical_json(event.detail).decode(),
                prev_hash=prev_hash,
                hash=digest,
            )
        )
        return RecordedEvent(seq=seq, at=at, event=event, prev_hash=prev_hash, hash=digest)

    def head(self) -> tuple[int, str]:
        """The last event's ``(seq, hash)``, ``(0, GENESIS_HASH)`` if none: a checkpoint to sign and publish."""
        try:
            with self._engine.connect() as connection:
                row = connection.execute(
                    select(audit_events.c.seq, audit_events.c.hash).order_by(audit_events.c.seq.desc()).limit(1)
                ).first()
        except SQLAlchemyError as exc:
            raise StorageUnavailable("audit log: could not read the head") from exc
        return (int(row.seq), str(row.hash)) if row is not None else (0, GENESIS_HASH)

    def list_events(
        self,
        *,
        national_key: str | None = None,
        action: str | None = None,
        after_seq: int = 0,
        limit: int = 1000,
    ) -> list[RecordedEvent]:
        """Events after ``after_seq`` in ``seq`` order, at most ``limit``, of one patient and/or one action.

        Page through with ``after_seq`` set to the last ``seq`` returned.  Events are
        returned as stored: :meth:`verify` says whether the log can be trusted.
        """
        if not 1 <= limit <= MAX_LIST:
            raise ValueError(f"limit must be between 1 and {MAX_LIST}")
        query = select(audit_events).where(audit_events.c.seq > after_seq)
        if national_key is not None:
            query = query.where(audit_events.c.national_key == national_key)
        if action is not None:
            query = query.where(audit_events.c.action == action)
        query = query.order_by(audit_events.c.seq).limit(limit)
        try:
            with self._engine.connect() as connection:
                rows = connection.execute(query).mappings().all()
        except SQLAlchemyError as exc:
            raise StorageUnavailable("audit log: could not list events") from exc
        return [_row_event(row) for row in rows]

    def verify(
        self,
        expected_head: tuple[int, str] | None = None,
        *,
        page_size: int = 1000,
        max_problems: int = 100,
    ) -> AuditVerification:
        """Check the whole chain, reading it ``page_size`` events at a time; see the module docstring.

        ``expected_head`` is a checkpoint taken earlier with :meth:`head`: the log must still
        reach it and hold the same event there.  At most ``max_problems`` problems are listed
        (a last line counts the rest).
        """
        if page_size < 1 or max_problems < 1:
            raise ValueError("page_size and max_problems must be positive")
        try:
            with self._engine.connect() as connection:
                verifier = _Verifier(connection, expected_head, max_problems)
                after: int | None = None
                while True:
                    query = select(audit_events).order_by(audit_events.c.seq).limit(page_size)
                    if after is not None:
                        query = query.where(audit_events.c.seq > after)
                    rows = connection.execute(query).mappings().all()
                    for row in rows:
                        verifier.feed(row)
                    if len(rows) < page_size:
                        break
                    after = int(rows[-1]["seq"])
                return verifier.finish()
        except SQLAlchemyError as exc:
            raise StorageUnavailable("audit log: could not read the events to verify") from exc


def _lock_for_append(connection: Connection) -> None:
    """Make this transaction the only appender until it ends, where the database allows."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
    elif dialect == "sqlite":
        driver = connection.connection.driver_connection
        # pysqlite opens its transaction lazily, at the first write: take the write lock now, so the
        # head read below cannot go stale.  A transaction that has written holds the lock already.
        if driver is not None and getattr(driver, "in_transaction", True) is False:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


@dataclass
class _Checked:
    """What verify keeps of the previous event: enough to judge the next one against it."""

    seq: int
    stored_hash: str
    prev_hash: str
    content: dict[str, Any] | None
    computed_hash: str | None

    @property
    def intact(self) -> bool:
        return self.computed_hash == self.stored_hash


class _Verifier:
    """Walks the events in seq order, holding only the previous one."""

    def __init__(self, connection: Connection, expected_head: tuple[int, str] | None, max_problems: int) -> None:
        self._connection = connection
        self._expected_head = expected_head
        self._max_problems = max_problems
        self._problems: list[str] = []
        self._unlisted = 0
        self._count = 0
        self._last: _Checked | None = None
        self._checkpoint_seen = False

    def _note(self, problem: str) -> None:
        if len(self._problems) < self._max_problems:
            self._problems.append(problem)
        else:
            self._unlisted += 1

    @property
    def _listing(self) -> bool:
        return len(self._problems) < self._max_problems

    def feed(self, row: RowMapping) -> None:
        """Check one event, and settle the previous one now that its successor is known."""
        self._count += 1
        content = _row_content(row)
        current = _Checked(
            seq=int(row["seq"]),
            stored_hash=row["hash"],
            prev_hash=row["prev_hash"],
            content=content,
            computed_hash=_content_hash(content),
        )
        if self._last is not None:
            self._settle(self._last, current)
        self._check_place(self._last, current)
        self._check_checkpoint(current)
        self._last = current

    def finish(self) -> AuditVerification:
        """The verdict, once every event has been fed."""
        last = self._last
        if last is not None:
            self._settle(last, None)
        if self._expected_head is not None and not self._checkpoint_seen:
            expected_seq = self._expected_head[0]
            head_seq = last.seq if last is not None else 0
            if expected_seq > head_seq:
                self._note(f"the log ends at event {head_seq} but a checkpoint names event {expected_seq}")
        if self._unlisted:
            self._problems.append(f"... and {self._unlisted} more problems")
        return AuditVerification(
            ok=not self._problems,
            events_checked=self._count,
            head_seq=last.seq if last is not None else 0,
            head_hash=last.stored_hash if last is not None else GENESIS_HASH,
            problems=self._problems,
        )

    def _settle(self, event: _Checked, successor: _Checked | None) -> None:
        """Report an event whose content does not match its hash, saying how, as far as can be told."""
        if event.intact:
            return
        if not self._listing:
            self._unlisted += 1
            return
        if event.computed_hash is None or event.content is None:
            self._note(f"event {event.seq} was altered: its content does not match its hash (its detail is unreadable)")
            return
        witness = self._hash_witness(event, successor)
        if witness is not None:
            self._note(
                f"event {event.seq}'s hash was altered: it does not match the event's content, "
                f"whose hash {witness} names"
            )
            return
        original = self._original_seq(event.content, event.seq, event.stored_hash)
        if original is not None:
            self._note(f"event {event.seq} was renumbered: it was recorded as event {original}")
            return
        self._note(f"event {event.seq} was altered: its content does not match its hash")

    def _hash_witness(self, event: _Checked, successor: _Checked | None) -> str | None:
        """Who still names the hash of this event's content: the next event or a checkpoint."""
        if successor is not None and successor.seq == event.seq + 1 and successor.prev_hash == event.computed_hash:
            return f"event {successor.seq}"
        if self._expected_head == (event.seq, event.computed_hash):
            return "the checkpoint"
        return None

    @staticmethod
    def _original_seq(content: dict[str, Any], seq: int, stored_hash: str) -> int | None:
        """The seq an event's hash was made under, if it was moved not far from there."""
        for distance in range(1, _RENUMBER_WINDOW + 1):
            for candidate in (seq + distance, seq - distance):
                if candidate >= 1 and _content_hash({**content, "seq": candidate}) == stored_hash:
                    return candidate
        return None

    def _check_place(self, previous: _Checked | None, current: _Checked) -> None:
        """Check that ``current`` comes right after ``previous`` (or starts the log), by seq and by prev_hash."""
        expected_seq = previous.seq + 1 if previous is not None else 1
        if current.seq < expected_seq:  # only a first event numbered below 1: seq is the primary key
            self._note(f"event {current.seq} has an impossible seq: the log starts at event 1")
            return
        if current.seq > expected_seq:
            if current.seq == expected_seq + 1:
                missing = f"event {expected_seq} is missing"
            else:
                missing = f"events {expected_seq} to {current.seq - 1} are missing"
            if previous is not None:
                self._note(f"{missing} (seq jumps from {previous.seq} to {current.seq})")
            else:
                self._note(f"{missing} (the log starts at event {current.seq})")
            return  # the link across a gap cannot be checked
        expected_prev = previous.stored_hash if previous is not None else GENESIS_HASH
        if current.prev_hash == expected_prev:
            return
        if previous is not None and not previous.intact and current.prev_hash == previous.computed_hash:
            return  # the previous event's hash was altered, and _settle said so
        if not self._listing:
            self._unlisted += 1
            return
        named = self._name_hash(current.prev_hash)
        if previous is None:
            self._note(f"event {current.seq} does not start the log: its prev_hash is {named}, not 64 zeros")
        else:
            self._note(f"event {current.seq} does not follow event {previous.seq}: its prev_hash is {named}")

    def _name_hash(self, value: str) -> str:
        if value == GENESIS_HASH:
            return "64 zeros, as if it started the log"
        seq = self._connection.execute(
            select(audit_events.c.seq).where(audit_events.c.hash == value).order_by(audit_events.c.seq).limit(1)
        ).scalar()
        if seq is None:
            return "not the hash of any event in the log (an event was rewritten, or events were removed)"
        return f"the hash of event {seq}"

    def _check_checkpoint(self, current: _Checked) -> None:
        if self._expected_head is None or current.seq != self._expected_head[0]:
            return
        self._checkpoint_seen = True
        expected_hash = self._expected_head[1]
        if expected_hash in {current.stored_hash, current.computed_hash}:
            return  # the same event (if only its hash was altered, _settle says so)
        self._note(
            f"event {current.seq} does not match the checkpoint: its hash is {current.stored_hash}, "
            f"the checkpoint names {expected_hash} (the log was cut and grown again, or rewritten)"
        )
