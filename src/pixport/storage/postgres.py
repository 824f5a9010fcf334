"""The scale index: PostgreSQL through psycopg 3, on the shared SQLAlchemy Core schema (``sql.py``)."""

from __future__ import annotations

from sqlalchemy import create_engine, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from pixport.errors import ConfigurationError
from pixport.storage.schema import metadata
from pixport.storage.sql import SqlIndexStore

POOL_SIZE = 10
MAX_OVERFLOW = 10
POOL_TIMEOUT_SECONDS = 30
POOL_RECYCLE_SECONDS = 1800
CONNECT_TIMEOUT_SECONDS = 10
SCHEMA_LOCK_KEY = 0x50495850  # "PIXP": serializes schema creation among nodes starting together


def psycopg_url(database_url: str) -> str:
    """``database_url`` with the psycopg (v3) driver named, whatever driver it named before.

    ``postgresql://`` and ``postgres://`` would otherwise pick psycopg2, which is not a
    dependency.
    """
    try:
        url = make_url(database_url.replace("postgres://", "postgresql://", 1))
    except ArgumentError as exc:
        msg = "storage.database_url is not a database URL"
        raise ConfigurationError(msg) from exc
    if url.get_backend_name() != "postgresql":
        msg = "storage.database_url must be a postgresql:// URL for the scale backend"
        raise ConfigurationError(msg)
    return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


class PostgresIndexStore(SqlIndexStore):
    """Index in a PostgreSQL database; several nodes and worker processes may share it.

    Every transaction runs at READ COMMITTED; concurrent writers of the same study or series
    are reconciled by ``INSERT … ON CONFLICT DO NOTHING`` in ``SqlIndexStore``.
    """

    def __init__(self, database_url: str) -> None:
        engine = create_engine(
            psycopg_url(database_url),
            pool_size=POOL_SIZE,
            max_overflow=MAX_OVERFLOW,
            pool_timeout=POOL_TIMEOUT_SECONDS,
            pool_recycle=POOL_RECYCLE_SECONDS,
            pool_pre_ping=True,  # a restarted server costs one failed ping, not one failed request
            connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS, "application_name": "pixport"},
        )
        super().__init__(engine, insert)
        try:
            self.create_schema()
        except BaseException:
            engine.dispose()
            raise

    def create_schema(self) -> None:
        """Create missing tables and indexes, one node at a time (CREATE TABLE races otherwise)."""
        with self._errors(), self.write_engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            metadata.create_all(conn)
