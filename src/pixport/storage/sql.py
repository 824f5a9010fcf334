"""The index on SQLAlchemy Core: one schema and one implementation for SQLite and PostgreSQL.

The backends differ only in how they are connected (``sqlite.py``, ``postgres.py``).
Counts and ModalitiesInStudy are computed for each result page, never stored, so they cannot
drift from the rows they count.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Select,
    String,
    Table,
    Text,
    and_,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from pixport.dicom.names import normalize, search_forms
from pixport.errors import BadQuery, OutOfResources, StorageUnavailable
from pixport.storage.base import (
    Conflict,
    Match,
    NewInstance,
    Outcome,
    Query,
    QueryRow,
    StoredInstance,
    StudyActivity,
)

metadata = MetaData()

studies = Table(
    "studies",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_instance_uid", String(64), nullable=False, unique=True),
    Column("patient_id", Text),
    Column("issuer_of_patient_id", Text),
    Column("patient_name_groups", Text),
    Column("patient_name_tokens", Text),
    Column("patient_birth_date", String(16)),
    Column("patient_sex", String(16)),
    Column("study_date", String(16)),
    Column("study_time", String(32)),
    Column("accession_number", Text),
    Column("study_id", Text),
    Column("study_description", Text),
    Column("referring_physician_name_groups", Text),
    Column("referring_physician_name_tokens", Text),
    Column("study_json", LargeBinary, nullable=False),
    Column("created_at", String(32), nullable=False),
)
Index("ix_studies_patient_id", studies.c.patient_id)
Index("ix_studies_study_date", studies.c.study_date)
Index("ix_studies_accession_number", studies.c.accession_number)

series = Table(
    "series",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("series_instance_uid", String(64), nullable=False, unique=True),
    Column("study_pk", Integer, ForeignKey("studies.pk"), nullable=False),
    Column("modality", String(16)),
    Column("series_number", Integer),
    Column("series_description", Text),
    Column("series_date", String(16)),
    Column("body_part_examined", Text),
    Column("performed_procedure_step_start_date", String(16)),
    Column("performed_procedure_step_start_time", String(32)),
    Column("series_json", LargeBinary, nullable=False),
)
Index("ix_series_study_pk", series.c.study_pk)
Index("ix_series_modality", series.c.modality)

instances = Table(
    "instances",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("series_pk", Integer, ForeignKey("series.pk"), nullable=False),
    Column("study_pk", Integer, ForeignKey("studies.pk"), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer),
    Column("number_of_frames", Integer),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("instance_json", LargeBinary, nullable=False),
    Column("metadata_json", LargeBinary, nullable=False),
    Column("source", Text, nullable=False),
    Column("received_at", String(32), nullable=False),
)
Index("ix_instances_series_pk", instances.c.series_pk, instances.c.instance_number)
Index("ix_instances_study_pk", instances.c.study_pk)
Index("ix_instances_digest", instances.c.digest)

conflicts = Table(
    "conflicts",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("stored_digest", String(64), nullable=False),
    Column("offered_digest", String(64), nullable=False),
    Column("source", Text, nullable=False),
    Column("received_at", String(32), nullable=False),
)

STUDY_COLUMNS: dict[str, ColumnElement[Any]] = {
    "study_instance_uid": studies.c.study_instance_uid,
    "patient_id": studies.c.patient_id,
    "issuer_of_patient_id": studies.c.issuer_of_patient_id,
    "patient_name": studies.c.patient_name_groups,
    "patient_birth_date": studies.c.patient_birth_date,
    "patient_sex": studies.c.patient_sex,
    "study_date": studies.c.study_date,
    "study_time": studies.c.study_time,
    "accession_number": studies.c.accession_number,
    "study_id": studies.c.study_id,
    "study_description": studies.c.study_description,
    "referring_physician_name": studies.c.referring_physician_name_groups,
}
SERIES_COLUMNS: dict[str, ColumnElement[Any]] = {
    "series_instance_uid": series.c.series_instance_uid,
    "modality": series.c.modality,
    "series_number": series.c.series_number,
    "series_description": series.c.series_description,
    "series_date": series.c.series_date,
    "body_part_examined": series.c.body_part_examined,
    "performed_procedure_step_start_date": series.c.performed_procedure_step_start_date,
    "performed_procedure_step_start_time": series.c.performed_procedure_step_start_time,
}
INSTANCE_COLUMNS: dict[str, ColumnElement[Any]] = {
    "sop_instance_uid": instances.c.sop_instance_uid,
    "sop_class_uid": instances.c.sop_class_uid,
    "instance_number": instances.c.instance_number,
    "number_of_frames": instances.c.number_of_frames,
}
TOKEN_COLUMNS: dict[str, ColumnElement[Any]] = {
    "patient_name": studies.c.patient_name_tokens,
    "referring_physician_name": studies.c.referring_physician_name_tokens,
}
INTEGER_ATTRIBUTES = frozenset({"series_number", "instance_number", "number_of_frames"})
TIME_ATTRIBUTES = frozenset({"study_time", "performed_procedure_step_start_time"})


class json_array(FunctionElement[Any]):  # noqa: N801  named as SQL functions are
    """Aggregate: the group's values (NULLs included) as the text of a JSON array, or NULL."""

    type = Text()
    name = "json_array"
    inherit_cache = True


@compiles(json_array, "sqlite")
def _json_array_sqlite(element: json_array, compiler: Any, **kw: Any) -> str:
    return f"json_group_array({compiler.process(element.clauses, **kw)})"


@compiles(json_array, "postgresql")
def _json_array_postgresql(element: json_array, compiler: Any, **kw: Any) -> str:
    return f"CAST(json_agg({compiler.process(element.clauses, **kw)}) AS TEXT)"


def _now() -> str:
    return _received_at(dt.datetime.now(dt.UTC))


def _received_at(moment: dt.datetime) -> str:
    """The stored form of a reception time: ISO 8601 in UTC to the microsecond, which sorts as text."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def like_pattern(value: str) -> str:
    """DICOM wildcards to a SQL LIKE pattern, backslash being the escape character."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


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
        # Committed: these rows exist for good (studies and series are never deleted).
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
            if query.level == "study":
                return self._search_studies(conn, query)
            if query.level == "series":
                return self._search_series(conn, query)
            return self._search_instances(conn, query)

    def _conditions(self, query: Query) -> list[ColumnElement[bool]]:
        columns: dict[str, ColumnElement[Any]] = dict(STUDY_COLUMNS)
        if query.level in {"series", "instance"}:
            columns.update(SERIES_COLUMNS)
        if query.level == "instance":
            columns.update(INSTANCE_COLUMNS)
        conditions: list[ColumnElement[bool]] = []
        if query.study_instance_uid is not None:
            conditions.append(studies.c.study_instance_uid == query.study_instance_uid)
        if query.series_instance_uid is not None:
            conditions.append(series.c.series_instance_uid == query.series_instance_uid)
        for match in query.matches:
            if match.attribute == "modalities_in_study":
                conditions.append(self._modalities_condition(match))
                continue
            column = columns.get(match.attribute)
            if column is None:
                msg = f"{match.attribute} cannot be matched at {query.level} level"
                raise BadQuery(msg)
            conditions.append(self._condition(match, column))
        return conditions

    @staticmethod
    def _condition(match: Match, column: ColumnElement[Any]) -> ColumnElement[bool]:
        value = match.value
        if match.attribute in INTEGER_ATTRIBUTES and match.kind in {"single", "uids"}:
            try:
                value = int(value) if match.kind == "single" else [int(v) for v in value]
            except ValueError as exc:
                msg = f"{match.attribute} must be a number"
                raise BadQuery(msg) from exc
        if match.kind == "single":
            equal: ColumnElement[bool] = column == value
            return equal
        if match.kind == "uids":
            return column.in_(list(value))
        if match.kind == "wildcard":
            return column.like(like_pattern(value), escape="\\")
        if match.kind == "range":
            low, high = value
            parts: list[ColumnElement[bool]] = []
            if low:
                parts.append(column >= low)
            if high:
                parts.append(column <= (high + "~" if match.attribute in TIME_ATTRIBUTES else high))
            return and_(*parts)
        if match.kind in {"name", "fuzzy"}:
            value = normalize(value)  # idempotent: callers need not have done it
        if match.kind == "name":
            groups = [g for g in value.split("=") if g]
            return or_(*(column.like("%=" + like_pattern(g) + "=%", escape="\\") for g in groups))
        if match.kind == "fuzzy":
            tokens_column = TOKEN_COLUMNS[match.attribute]
            words = [w for w in value.replace("^", " ").replace("=", " ").split() if w]
            return and_(*(tokens_column.like("% " + like_pattern(w) + "%", escape="\\") for w in words))
        msg = f"unknown match kind {match.kind}"
        raise BadQuery(msg)

    @staticmethod
    def _modalities_condition(match: Match) -> ColumnElement[bool]:
        values = list(match.value) if match.kind == "uids" else [match.value]
        if match.kind == "wildcard":
            cond = series.c.modality.like(like_pattern(match.value), escape="\\")
        else:
            cond = series.c.modality.in_(values)
        return exists(select(series.c.pk).where(series.c.study_pk == studies.c.pk, cond))

    def _page(self, stmt: Select[Any], query: Query) -> Select[Any]:
        return stmt.limit(query.limit).offset(query.offset)

    def _search_studies(self, conn: Connection, query: Query) -> list[QueryRow]:
        """One statement: the page of studies, then each one's series modalities and instance count.

        The correlated subqueries run for the page's rows only.
        """
        page = self._page(
            select(studies.c.pk, studies.c.study_instance_uid, studies.c.study_json)
            .where(*self._conditions(query))
            .order_by(studies.c.pk),
            query,
        ).subquery("page")
        series_modalities = select(json_array(series.c.modality)).where(series.c.study_pk == page.c.pk)
        instance_count = select(func.count()).select_from(instances).where(instances.c.study_pk == page.c.pk)
        stmt = select(
            page.c.study_instance_uid,
            page.c.study_json,
            series_modalities.scalar_subquery(),
            instance_count.scalar_subquery(),
        ).order_by(page.c.pk)
        results = []
        for study_instance_uid, study_json, series_modalities, number_of_instances in conn.execute(stmt):
            # One value per series, NULLs too ([] in SQLite, NULL in PostgreSQL when there is none).
            modalities: list[str | None] = orjson.loads(series_modalities) if series_modalities else []
            results.append(
                QueryRow(
                    study_instance_uid=study_instance_uid,
                    series_instance_uid=None,
                    sop_instance_uid=None,
                    documents=[study_json],
                    modalities_in_study=sorted({m for m in modalities if m}),
                    number_of_series=len(modalities),
                    number_of_instances=number_of_instances,
                )
            )
        return results

    def _search_series(self, conn: Connection, query: Query) -> list[QueryRow]:
        """One statement: the page of series, then per series its instance count."""
        page = self._page(
            select(
                series.c.pk,
                studies.c.study_instance_uid,
                series.c.series_instance_uid,
                studies.c.study_json,
                series.c.series_json,
            )
            .join(studies, series.c.study_pk == studies.c.pk)
            .where(*self._conditions(query))
            .order_by(series.c.pk),
            query,
        ).subquery("page")
        instance_count = select(func.count()).select_from(instances).where(instances.c.series_pk == page.c.pk)
        stmt = select(
            page.c.study_instance_uid,
            page.c.series_instance_uid,
            page.c.study_json,
            page.c.series_json,
            instance_count.scalar_subquery(),
        ).order_by(page.c.pk)
        return [
            QueryRow(
                study_instance_uid=study_instance_uid,
                series_instance_uid=series_instance_uid,
                sop_instance_uid=None,
                documents=[study_json, series_json],
                number_of_instances=number_of_instances,
            )
            for study_instance_uid, series_instance_uid, study_json, series_json, number_of_instances in conn.execute(
                stmt
            )
        ]

    def _search_instances(self, conn: Connection, query: Query) -> list[QueryRow]:
        stmt = (
            select(
                studies.c.study_instance_uid,
                series.c.series_instance_uid,
                instances.c.sop_instance_uid,
                studies.c.study_json,
                series.c.series_json,
                instances.c.instance_json,
            )
            .select_from(
                instances.join(series, instances.c.series_pk == series.c.pk).join(
                    studies, instances.c.study_pk == studies.c.pk
                )
            )
            .where(*self._conditions(query))
            .order_by(instances.c.series_pk, instances.c.instance_number, instances.c.pk)
        )
        return [
            QueryRow(
                study_instance_uid=r.study_instance_uid,
                series_instance_uid=r.series_instance_uid,
                sop_instance_uid=r.sop_instance_uid,
                documents=[r.study_json, r.series_json, r.instance_json],
            )
            for r in conn.execute(self._page(stmt, query))
        ]

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
