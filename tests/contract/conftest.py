"""Fixtures of the backend contract suite.

Every contract test runs once per backend: ``embedded`` (SQLite and the filesystem, in
``tmp_path``) and ``scale`` (PostgreSQL and S3, marked ``scale``).  The scale services are
real: a database created for this test session on the local PostgreSQL server (dropped at the
end), and moto's S3 server started as a subprocess on a free loopback port.  Each archive a
test builds gets its own PostgreSQL schema and its own bucket, so every archive starts empty.
Archives are always built by ``pixport.wiring.build_archive`` so that the wiring is tested too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from contract_support import (
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    InstanceSpec,
    PostgresDatabase,
    close_archive,
    free_port,
    scale_storage,
    write_instance,
)

from pixport.archive.node import Archive
from pixport.config import load_settings
from pixport.wiring import build_archive

POSTGRES_DSN_VARIABLE = "CONTRACT_POSTGRES_DSN"  # admin conninfo, if not the local trust defaults
POSTGRES_CANDIDATES = (
    "host=127.0.0.1 port=5432 dbname=postgres user=postgres",
    "host=127.0.0.1 port=5432 dbname=postgres user=root",
)
STARTUP_SECONDS = 30.0


# -- the scale services -----------------------------------------------------------------


def _admin_connection() -> psycopg.Connection[Any]:
    candidates = [os.environ[POSTGRES_DSN_VARIABLE]] if os.environ.get(POSTGRES_DSN_VARIABLE) else POSTGRES_CANDIDATES
    errors: list[str] = []
    for dsn in candidates:
        try:
            return psycopg.connect(dsn, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            errors.append(f"{dsn}: {exc}")
    pytest.fail("no PostgreSQL server for the scale contract tests:\n" + "\n".join(errors))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[PostgresDatabase]:
    admin = _admin_connection()
    info = admin.info
    database = PostgresDatabase(
        host=info.host, port=info.port, user=info.user, name=f"pixport_contract_{uuid.uuid4().hex[:12]}"
    )
    admin.execute(f'CREATE DATABASE "{database.name}"')
    try:
        yield database
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')
        admin.close()


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).parent / "moto_server"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return [*base, "-H", "127.0.0.1", "-p", str(port)]


def _wait_until_answering(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"moto server exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:  # noqa: S310  our own loopback URL
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    pytest.fail(f"moto server did not answer on {url} within {STARTUP_SECONDS} s")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    with log.open("wb") as output:
        process = subprocess.Popen(_moto_command(port), stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_until_answering(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# -- archives per backend ----------------------------------------------------------------


@pytest.fixture(params=["embedded", pytest.param("scale", marks=pytest.mark.scale)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_archive(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[], Archive]]:
    """Build as many fresh, empty archives on ``backend`` as a test needs."""
    archives: list[Archive] = []

    def make() -> Archive:
        data_dir = tmp_path / f"archive-{len(archives)}"
        if backend == "embedded":
            storage: dict[str, Any] = {"backend": "embedded", "data_dir": data_dir}
        else:
            storage = scale_storage(request, data_dir)
        archive = build_archive(load_settings(storage=storage))
        archives.append(archive)
        return archive

    yield make
    for archive in archives:
        close_archive(archive)


@pytest.fixture
def archive(make_archive: Callable[[], Archive]) -> Archive:
    return make_archive()


@pytest.fixture
def instance_writer(tmp_path: Path) -> Callable[[InstanceSpec], Path]:
    """Write specs into files under ``tmp_path / "input"``."""
    counter = iter(range(1_000_000))

    def write(spec: InstanceSpec) -> Path:
        return write_instance(spec, tmp_path / "input" / f"{next(counter):04d}.dcm")

    return write
