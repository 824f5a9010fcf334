"""Fixtures shared by the unit tests: an empty embedded archive, a fresh PostgreSQL database (hub scale tests)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import URL, Engine, create_engine
from sqlalchemy.engine import make_url

from pixport.archive.node import Archive
from pixport.config import Settings, StorageSettings
from pixport.hub.audit import create_tables
from pixport.wiring import build_archive

POSTGRES_CANDIDATES = (
    "host=127.0.0.1 port=5432 dbname=postgres user=postgres",
    "host=127.0.0.1 port=5432 dbname=postgres user=root",
)


@pytest.fixture
def postgres_url() -> Iterator[URL]:
    """An empty database of its own on the local PostgreSQL, dropped afterwards."""
    errors: list[str] = []
    for dsn in POSTGRES_CANDIDATES:
        try:
            admin = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
            break
        except psycopg.OperationalError as exc:
            errors.append(f"{dsn}: {exc}")
    else:
        pytest.fail("no PostgreSQL server for the scale tests:\n" + "\n".join(errors))
    name = f"pixport_hub_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url("postgresql+psycopg://").set(
            username=admin.info.user, host=admin.info.host, port=admin.info.port, database=name
        )
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def postgres_engine(postgres_url: URL) -> Iterator[Engine]:
    """An engine on that database, with the hub's tables."""
    engine = create_engine(postgres_url)
    try:
        create_tables(engine)
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def empty_archive(tmp_path: Path) -> Iterator[Archive]:
    """An embedded archive (filesystem blobs, SQLite index) in this test's folder, closed afterwards."""
    node = build_archive(Settings(storage=StorageSettings(data_dir=tmp_path / "data")))
    try:
        yield node
    finally:
        node.close()
