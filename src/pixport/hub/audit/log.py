"""The audit log itself: appending events to the chain, its head as a checkpoint, listing events.

Appends are serialised: on PostgreSQL by a transaction-scoped advisory lock, on SQLite by
``BEGIN IMMEDIATE`` (when the transaction has not yet written), and everywhere by ``seq``
being the primary key, so that two writers that read the same head cannot both write the
next event (the loser gets an ``IntegrityError``; :meth:`AuditLog.record` retries it when it
owns the transaction).  An event can be recorded in the caller's transaction, so that an act
and its audit event commit, or roll back, together.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Connection, Engine, RowMapping, select, text
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from pixport.errors import StorageUnavailable
from pixport.hub.audit.chain import GENESIS_HASH, event_content, event_hash
from pixport.hub.audit.events import EVENT_FIELDS, AuditEvent, RecordedEvent, check_event
from pixport.hub.audit.verification import AuditVerification, verify_chain
from pixport.hub.schema import audit_events, metadata
from pixport.trust import jws

MAX_LIST: Final = 10_000
"""The most events :meth:`AuditLog.list_events` returns at once."""

_ADVISORY_LOCK_KEY: Final = 0x7078_6175_6469_7400  # b"pxaudit\0": one lock for all appenders
_ATTEMPTS: Final = 20


def create_tables(engine: Engine) -> None:
    """Create every hub table (``hub.schema.metadata``) that does not exist yet."""
    metadata.create_all(engine)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
        digest = event_hash(event_content(seq, at, event, prev_hash))
        row = {name: getattr(event, name) for name in EVENT_FIELDS}
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
        """Check the whole chain, reading it ``page_size`` events at a time; see ``audit.verification``.

        ``expected_head`` is a checkpoint taken earlier with :meth:`head`: the log must still
        reach it and hold the same event there.  At most ``max_problems`` problems are listed
        (a last line counts the rest).
        """
        if page_size < 1 or max_problems < 1:
            raise ValueError("page_size and max_problems must be positive")
        try:
            with self._engine.connect() as connection:
                return verify_chain(connection, expected_head, page_size=page_size, max_problems=max_problems)
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
