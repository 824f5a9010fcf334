"""What only the scale backends promise: wiring, object layout, integrity, shared use, failures."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import boto3
import pytest
import sqlalchemy
from botocore.exceptions import BotoCoreError
from contract_support import S3_ACCESS_KEY, S3_SECRET_KEY, PostgresDatabase, close_archive, free_port, scale_storage

from pixport.config import StorageSettings, load_settings
from pixport.errors import ConfigurationError, StorageUnavailable
from pixport.storage.postgres import PostgresIndexStore, psycopg_url
from pixport.storage.s3 import S3BlobStore
from pixport.wiring import build_archive, build_index

pytestmark = pytest.mark.scale


def _closed_port() -> int:
    return free_port()  # nothing listens on it once the probing socket is closed


def test_scale_needs_a_database_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        build_index(load_settings(storage={"backend": "scale", "data_dir": tmp_path}))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://pix@db.example:5432/pixport", "postgresql+psycopg://pix@db.example:5432/pixport"),
        ("postgres://pix:secret@db.example/pixport", "postgresql+psycopg://pix:secret@db.example/pixport"),
        ("postgresql+psycopg2://pix@db.example/pixport", "postgresql+psycopg://pix@db.example/pixport"),
        (
            "postgresql+psycopg://pix@h/p?options=-csearch_path%3Dx",
            "postgresql+psycopg://pix@h/p?options=-csearch_path%3Dx",
        ),
    ],
)
def test_psycopg_url(given: str, expected: str) -> None:
    assert psycopg_url(given) == expected


@pytest.mark.parametrize("given", ["sqlite:///index.sqlite3", "not a url"])
def test_psycopg_url_refuses_other_databases(given: str) -> None:
    with pytest.raises(ConfigurationError):
        psycopg_url(given)


def test_wiring_builds_the_scale_backends(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    archive = build_archive(load_settings(storage=scale_storage(request, tmp_path)))
    try:
        assert isinstance(archive.index, PostgresIndexStore)
        assert isinstance(archive.blobs, S3BlobStore)
        assert archive.blobs.staging_dir == tmp_path / "tmp"
        assert archive.blobs.staging_dir.is_dir()
    finally:
        close_archive(archive)


def _s3_client(endpoint: str):
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
    )


def _settings(endpoint: str, data_dir: Path, bucket: str) -> StorageSettings:
    return StorageSettings(
        backend="scale",
        data_dir=data_dir,
        s3_endpoint_url=endpoint,
        s3_bucket=bucket,
        s3_access_key_id=S3_ACCESS_KEY,
        s3_secret_access_key=S3_SECRET_KEY,
    )


def test_bucket_is_created_and_keys_are_content_addressed(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = f"pixport-{uuid.uuid4().hex[:20]}"
    client = _s3_client(s3_endpoint)
    try:
        assert bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}
        store = S3BlobStore(_settings(s3_endpoint, tmp_path / "a", bucket))
        data = b"content addressed"
        digest = hashlib.sha256(data).hexdigest()
        staged = store.staging_dir / "one.part"
        staged.write_bytes(data)
        store.put_files([(staged, digest)])
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
        assert keys == [f"blobs/{digest[:2]}/{digest[2:4]}/{digest}"]
        # A second node on the same bucket (which exists now) sees the same blobs.
        other = S3BlobStore(_settings(s3_endpoint, tmp_path / "b", bucket))
        assert other.exists(digest)
        with other.open(digest) as stream:
            assert stream.read() == data
        other.close()
        store.close()
    finally:
        client.close()


def test_put_refuses_bytes_that_do_not_match_the_digest(s3_endpoint: str, tmp_path: Path) -> None:
    store = S3BlobStore(_settings(s3_endpoint, tmp_path, f"pixport-{uuid.uuid4().hex[:20]}"))
    try:
        staged = store.staging_dir / "bad.part"
        staged.write_bytes(b"these bytes")
        claimed = hashlib.sha256(b"other bytes").hexdigest()
        with pytest.raises(StorageUnavailable):
            store.put_files([(staged, claimed)])
        assert not store.exists(claimed)
        assert list(store.iter_blobs()) == []
    finally:
        store.close()


def test_unreachable_object_store_is_storage_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable) as caught:
        S3BlobStore(_settings(f"http://127.0.0.1:{_closed_port()}", tmp_path, "pixport-unreachable"))
    assert isinstance(caught.value.__cause__, BotoCoreError | OSError)


def test_unreachable_database_is_storage_unavailable() -> None:
    with pytest.raises(StorageUnavailable) as caught:
        PostgresIndexStore(f"postgresql://postgres@127.0.0.1:{_closed_port()}/pixport")
    assert isinstance(caught.value.__cause__, sqlalchemy.exc.OperationalError)


def test_two_nodes_share_one_index(postgres_database: PostgresDatabase) -> None:
    url = postgres_database.new_schema_url()
    first = PostgresIndexStore(url)
    second = PostgresIndexStore(url)  # the schema exists: creating it again changes nothing
    try:
        tables = sqlalchemy.inspect(first.engine).get_table_names()
        assert {"studies", "series", "instances", "conflicts"} <= set(tables)
        assert first.count_instances() == second.count_instances() == 0
    finally:
        first.close()
        second.close()
