"""The index on SQLAlchemy Core: one schema and one implementation for SQLite and PostgreSQL.

The backends differ only in how they are connected (``sqlite.py``, ``postgres.py``).  The
tables are in ``schema.py``, the search statements in ``search_sql.py``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Select,
    Table,
    func,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from pixport.dicom.names import search_forms
from pixport.errors import OutOfResources, StorageUnavailable
from pixport.storage import search_sql
from pixport.storage.base import (
    Conflict,
    NewInstance,
    Outcome,
    Query,
    QueryRow,
    StoredInstance,
    StudyActivity,
)
from pixport.storage.schema import conflicts, instances, metadata, series, studies


def _now() -> str:
    return _received_at(dt.datetime.now(dt.UTC))


def _received_at(moment: dt.datetime) -> str:
    """The stored form of a reception time: ISO 8601 in UTC to the microsecond, which sorts as text."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


InsertFactory = Callable[[Table], Any]


class SqlIndexStore:
    """Index on any SQLAlchemy engine whose dialect offers ``insert().on_conflict_do_nothing``."""

    def __init__(self, engine: Engine, insert: InsertFactory, write_engine: Engine | None = None) -> None:
        self.engine = engine
        self.write_engine = write_engine or engine
        self._insert = insert
        self._study_pks: dict[str, int] = {}
        self._series_pks: dict[str, int] = {}
        self._single_inserts: dict[tuple[str, tuple[str, ...], tuple[str, ...]], tuple[str, list[str] | None]] = {}

    def _writer_turn(
        self, before_commit: Callable[[], None] | None
    ) -> AbstractContextManager[Callable[[], None] | None]:
        """Held around every write transaction; yields the ``before_commit`` still to call in it.

        The SQLite store serializes writers here, and waits for ``before_commit`` before
        queueing when another writer holds the turn (see ``SqliteIndexStore``).
        """
        return nullcontext(before_commit)

    def _write_transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction, committed on leaving (called inside ``writing()``)."""
        return self.write_engine.begin()

    def _make_durable(self) -> None:
        """Called after each write transaction, outside the writer's turn; on return it is durable.

        A server database's COMMIT returns once durable: nothing to do.  SQLite flushes its
        log here (``SqliteIndexStore``).
        """

    def create_schema(self) -> None:
        """Create tables and indexes that do not exist yet."""
        with self._errors():
            metadata.create_all(self.write_engine)

    def close(self) -> None:
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()

    # -- writing --------------------------------------------------------------------------

    def store_instances(
        self, batch: Sequence[NewInstance], before_commit: Callable[[], None] | None = None
    ) -> list[Outcome]:
        """Set-based: a handful of statements per batch, whatever its size.

        Studies, series and instances are created with ``INSERT … ON CONFLICT DO NOTHING
        RETURNING``; the rows it did not insert are looked up, so concurrent writers (other
        server processes, PostgreSQL sessions) agree on one row.  Study and series keys are
        remembered per process once committed (their rows are never deleted), so an instance
        of a known series costs one INSERT.  Every offered instance's stored digest decides its
        outcome: ours (stored, or identical: duplicate) or another's (conflict, recorded).
        """
        if not batch:
            if before_commit is not None:
                before_commit()
            return []
        now = _now()
        with self._writer_turn(before_commit) as in_transaction, self._errors(), self._write_transaction() as conn:
            study_pks = self._ensure(
                conn,
                studies,
                studies.c.study_instance_uid,
                {item.study_instance_uid: item for item in batch},
                lambda item: self._study_row(item, now),
            )
            series_pks = self._ensure(
                conn,
                series,
                series.c.series_instance_uid,
                {item.series_instance_uid: item for item in batch},
                lambda item: self._series_row(item, study_pks[item.study_instance_uid]),
            )
            offered: dict[str, dict[str, Any]] = {}
            for item in batch:
                if item.sop_instance_uid not in offered:
                    offered[item.sop_instance_uid] = self._instance_row(
                        item, series_pks[item.series_instance_uid], study_pks[item.study_instance_uid], now
                    )
            returned = self._insert_returning(conn, instances, list(offered.values()), "sop_instance_uid")
            inserted = {uid for (uid,) in returned}
            existing = [uid for uid in offered if uid not in inserted]
            stored_before = self._digests(conn, existing) if existing else {}
            outcomes: list[Outcome] = []
            ours: dict[str, str] = {}  # inserted now: uid -> the digest of its first offer
            conflict_rows = []
            for item in batch:
                uid = item.sop_instance_uid
                if uid in inserted and uid not in ours:
                    ours[uid] = item.digest
                    outcomes.append(Outcome.STORED)
                    continue
                stored = ours.get(uid) or stored_before.get(uid)
                if stored == item.digest:
                    outcomes.append(Outcome.DUPLICATE)
                    continue
                outcomes.append(Outcome.CONFLICT)
                conflict_rows.append(
                    {
                        "sop_instance_uid": uid,
                        "stored_digest": stored or "",
                        "offered_digest": item.digest,
                        "source": item.source,
                        "received_at": now,
                    }
                )
            if conflict_rows:
                conn.execute(conflicts.insert(), conflict_rows)
            if in_transaction is not None:
                in_transaction()
        self._make_durable()
        # Committed and durable: these rows exist for good (studies and series are never deleted).
        self._study_pks.update(study_pks)
        self._series_pks.update(series_pks)
        return outcomes

    def _ensure(
        self,
        conn: Connection,
        table: Table,
        uid_column: Column[Any],
        wanted: dict[str, NewInstance],
        make_row: Callable[[NewInstance], dict[str, Any]],
    ) -> dict[str, int]:
        """UID -> pk for every wanted UID, inserting the missing rows."""
        known = self._study_pks if table is studies else self._series_pks
        found = {uid: known[uid] for uid in wanted if uid in known}
        missing = [make_row(item) for uid, item in wanted.items() if uid not in found]
        if not missing:
            return found
        found.update(dict(self._insert_returning(conn, table, missing, uid_column.name, "pk")))
        rest = [uid for uid in wanted if uid not in found]
        if rest:
            found.update(dict(conn.execute(select(uid_column, table.c.pk).where(uid_column.in_(rest))).all()))
        return found

    def _insert_returning(
        self, conn: Connection, table: Table, rows: list[dict[str, Any]], *returning: str
    ) -> list[tuple[Any, ...]]:
        """``INSERT … ON CONFLICT DO NOTHING RETURNING`` the named columns of the inserted rows.

        One row (a C-STORE commits one instance) runs as SQL compiled once per shape, on the
        driver's own cursor: SQLAlchemy's statement construction, compilation-cache lookup and
        result wrapping were most of the statement's time.  Driver errors are wrapped as
        SQLAlchemy wraps them, so ``_errors`` maps them the same way.  Several rows use
        SQLAlchemy's multi-row insert.
        """
        if len(rows) != 1:
            stmt = self._insert(table).on_conflict_do_nothing().returning(*(table.c[name] for name in returning))
            return [tuple(row) for row in conn.execute(stmt, rows)]
        (row,) = rows
        key = (table.name, tuple(row), returning)
        compiled = self._single_inserts.get(key)
        if compiled is None:
            stmt = self._insert(table).on_conflict_do_nothing().returning(*(table.c[name] for name in returning))
            statement = stmt.compile(dialect=conn.dialect, column_keys=list(row))
            compiled = (str(statement), statement.positiontup)
            self._single_inserts[key] = compiled
        sql, positions = compiled
        parameters = tuple(row[name] for name in positions) if positions is not None else row
        dbapi = conn.dialect.loaded_dbapi
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql, parameters)
            return [tuple(found) for found in cursor.fetchall()]
        except dbapi.Error as exc:
            raise DBAPIError.instance(sql, parameters, exc, dbapi.Error) from exc
        finally:
            cursor.close()

    @staticmethod
    def _digests(conn: Connection, uids: list[str]) -> dict[str, str]:
        rows = conn.execute(
            select(instances.c.sop_instance_uid, instances.c.digest).where(instances.c.sop_instance_uid.in_(uids))
        )
        return dict(rows.all())

    @staticmethod
    def _instance_row(item: NewInstance, series_pk: int, study_pk: int, now: str) -> dict[str, Any]:
        a = item.attributes
        return {
            "sop_instance_uid": item.sop_instance_uid,
            "series_pk": series_pk,
            "study_pk": study_pk,
            "sop_class_uid": item.sop_class_uid,
            "instance_number": a.get("instance_number"),
            "number_of_frames": a.get("number_of_frames"),
            "rows": a.get("rows"),
            "columns": a.get("columns"),
            "transfer_syntax_uid": a.get("transfer_syntax_uid") or "",
            "digest": item.digest,
            "size": item.size,
            "instance_json": item.instance_json,
            "metadata_json": item.metadata_json,
            "source": item.source,
            "received_at": now,
        }

    @staticmethod
    def _study_row(item: NewInstance, now: str) -> dict[str, Any]:
        a = item.attributes
        patient_groups, patient_tokens = search_forms(a.get("patient_name") or "")
        physician_groups, physician_tokens = search_forms(a.get("referring_physician_name") or "")
        return {
            "study_instance_uid": item.study_instance_uid,
            "patient_id": a.get("patient_id"),
            "issuer_of_patient_id": a.get("issuer_of_patient_id"),
            "patient_name_groups": patient_groups,
            "patient_name_tokens": patient_tokens,
            "patient_birth_date": a.get("patient_birth_date"),
            "patient_sex": a.get("patient_sex"),
            "study_date": a.get("study_date"),
            "study_time": (a.get("study_time") or "").replace(":", "") or None,
            "accession_number": a.get("accession_number"),
            "study_id": a.get("study_id"),
            "study_description": a.get("study_description"),
            "referring_physician_name_groups": physician_groups,
            "referring_physician_name_tokens": physician_tokens,
            "study_json": item.study_json,
            "created_at": now,
        }

    @staticmethod
    def _series_row(item: NewInstance, study_pk: int) -> dict[str, Any]:
        a = item.attributes
        return {
            "series_instance_uid": item.series_instance_uid,
            "study_pk": study_pk,
            "modality": a.get("modality"),
            "series_number": a.get("series_number"),
            "series_description": a.get("series_description"),
            "series_date": a.get("series_date"),
            "body_part_examined": a.get("body_part_examined"),
            "performed_procedure_step_start_date": a.get("performed_procedure_step_start_date"),
            "performed_procedure_step_start_time": (a.get("performed_procedure_step_start_time") or "").replace(":", "")
            or None,
            "series_json": item.series_json,
        }

    # -- reading --------------------------------------------------------------------------

    def search(self, query: Query) -> list[QueryRow]:
        with self._errors(), self.engine.connect() as conn:
            return search_sql.search(conn, query)

    def _scope(
        self, columns: Sequence[Any], study_uid: str, series_uid: str | None, sop_uid: str | None
    ) -> Select[Any]:
        stmt = (
            select(*columns)
            .select_from(
                instances.join(series, instances.c.series_pk == series.c.pk).join(
                    studies, instances.c.study_pk == studies.c.pk
                )
            )
            .where(studies.c.study_instance_uid == study_uid)
        )
        if series_uid is not None:
            stmt = stmt.where(series.c.series_instance_uid == series_uid)
        if sop_uid is not None:
            stmt = stmt.where(instances.c.sop_instance_uid == sop_uid)
        return stmt.order_by(series.c.series_number, series.c.pk, instances.c.instance_number, instances.c.pk)

    def list_instances(
        self, study_instance_uid: str, series_instance_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[StoredInstance]:
        columns = [
            studies.c.study_instance_uid,
            series.c.series_instance_uid,
            instances.c.sop_instance_uid,
            instances.c.sop_class_uid,
            instances.c.transfer_syntax_uid,
            instances.c.digest,
            instances.c.size,
            instances.c.number_of_frames,
        ]
        with self._errors(), self.engine.connect() as conn:
            return [
                StoredInstance(*row)
                for row in conn.execute(self._scope(columns, study_instance_uid, series_instance_uid, sop_instance_uid))
            ]

    def list_metadata(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        limit: int | None = None,
    ) -> list[bytes]:
        stmt = self._scope([instances.c.metadata_json], study_instance_uid, series_instance_uid, sop_instance_uid)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._errors(), self.engine.connect() as conn:
            return [bytes(row[0]) for row in conn.execute(stmt)]

    def list_conflicts(self) -> list[Conflict]:
        stmt = select(
            conflicts.c.sop_instance_uid,
            conflicts.c.stored_digest,
            conflicts.c.offered_digest,
            conflicts.c.source,
            conflicts.c.received_at,
        ).order_by(conflicts.c.pk)
        with self._errors(), self.engine.connect() as conn:
            return [Conflict(*row) for row in conn.execute(stmt)]

    def list_study_activity(
        self,
        *,
        received_after: dt.datetime | None = None,
        received_until: dt.datetime | None = None,
        study_instance_uids: Sequence[str] | None = None,
    ) -> list[StudyActivity]:
        """One grouped statement over the instances (received_at is compared as text)."""
        last = func.max(instances.c.received_at)
        stmt = (
            select(studies.c.study_instance_uid, func.count(instances.c.pk), last)
            .select_from(instances.join(studies, instances.c.study_pk == studies.c.pk))
            .group_by(studies.c.pk, studies.c.study_instance_uid)
            .order_by(last, studies.c.pk)
        )
        if study_instance_uids is not None:
            stmt = stmt.where(studies.c.study_instance_uid.in_(list(study_instance_uids)))
        if received_after is not None:
            stmt = stmt.having(last > _received_at(received_after))
        if received_until is not None:
            stmt = stmt.having(last <= _received_at(received_until))
        with self._errors(), self.engine.connect() as conn:
            return [
                StudyActivity(uid, int(count), dt.datetime.fromisoformat(received))
                for uid, count, received in conn.execute(stmt)
            ]

    def iter_digests(self) -> Iterator[tuple[str, str]]:
        with self._errors(), self.engine.connect() as conn:
            result = conn.execution_options(yield_per=1000).execute(
                select(instances.c.sop_instance_uid, instances.c.digest).order_by(instances.c.pk)
            )
            yield from ((sop_uid, digest) for sop_uid, digest in result)

    def count_instances(self) -> int:
        with self._errors(), self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(instances)).scalar_one())

    def _errors(self) -> _ErrorMapper:
        return _ErrorMapper()


class _ErrorMapper:
    """Wrap driver errors in PixPort's (disk full stays distinguishable)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or not isinstance(exc, DBAPIError) or isinstance(exc, IntegrityError):
            return
        text = str(exc.orig).lower()
        if "full" in text or "no space" in text:
            msg = "no space left for the index"
            raise OutOfResources(msg) from exc
        if isinstance(exc, OperationalError | DBAPIError):
            msg = f"index unavailable: {type(exc.orig).__name__}"
            raise StorageUnavailable(msg) from exc
