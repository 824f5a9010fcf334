"""Blobs as objects in an S3-compatible store under their SHA-256: ``blobs/ab/cd/abcd…``.

Ingest stages each object in a local folder (``storage.data_dir / "tmp"``).  ``put_files``
re-hashes the staged file, uploads it with its SHA-256 as the S3 checksum (so that the server
refuses bytes altered on the way), checks the size of what was stored, and only then deletes
the temporary file.  ``open`` hashes what it reads back.  No DICOM attribute is ever part of a
key.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pixport.config import StorageSettings
from pixport.errors import DISK_FULL, NotFound, OutOfResources, StorageUnavailable

PREFIX = "blobs/"
HEX = frozenset("0123456789abcdef")
DIGEST_LENGTH = 64
MAX_PUT_BYTES = 5 * 1024**3  # S3's limit for a single PUT
SPOOL_BYTES = 8 * 1024 * 1024  # blobs up to this size are served from memory
CHUNK_BYTES = 1024 * 1024
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})
BUCKET_EXISTS_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})


def _check_digest(digest: str) -> None:
    if len(digest) != DIGEST_LENGTH or not HEX.issuperset(digest):
        msg = "not a SHA-256 digest"
        raise ValueError(msg)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def checksum_sha256(digest: str) -> str:
    """The ``ChecksumSHA256`` header value (base64 of the raw hash) for a hex digest."""
    return base64.b64encode(bytes.fromhex(digest)).decode("ascii")


def _file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


@contextmanager
def _unavailable(action: str) -> Iterator[None]:
    """Wrap object store, network and local file errors in ``StorageUnavailable``."""
    try:
        yield
    except ClientError as exc:
        msg = f"object store refused to {action}: {_error_code(exc) or 'error'}"
        raise StorageUnavailable(msg) from exc
    except OSError as exc:  # sockets, and the local staging files
        if exc.errno in DISK_FULL:
            msg = f"no space left in the staging folder ({action})"
            raise OutOfResources(msg) from exc
        msg = f"object store unavailable ({action}): {type(exc).__name__}"
        raise StorageUnavailable(msg) from exc
    except BotoCoreError as exc:
        msg = f"object store unavailable ({action}): {type(exc).__name__}"
        raise StorageUnavailable(msg) from exc


class S3BlobStore:
    """The scale blob store: one object per distinct blob in one bucket (created if missing)."""

    def __init__(self, storage: StorageSettings) -> None:
        self.bucket = storage.s3_bucket
        self._staging = storage.data_dir / "tmp"
        with _unavailable("create the staging folder"):
            self._staging.mkdir(parents=True, exist_ok=True)
        config = Config(
            region_name=storage.s3_region,
            connect_timeout=10,
            read_timeout=60,
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=32,
            # Path-style keys work with every S3-compatible server (MinIO, Ceph, moto) on any host.
            s3={"addressing_style": "path"} if storage.s3_endpoint_url else {},
        )
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=storage.s3_endpoint_url,
            aws_access_key_id=storage.s3_access_key_id,
            aws_secret_access_key=storage.s3_secret_access_key,
            config=config,
        )
        self._region = storage.s3_region
        self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        with _unavailable("create the bucket"):
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _error_code(exc) not in NOT_FOUND_CODES:
                    raise
            else:
                return
            arguments: dict[str, Any] = {"Bucket": self.bucket}
            if self._region != "us-east-1":
                arguments["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
            try:
                self._client.create_bucket(**arguments)
            except ClientError as exc:  # another node created it first
                if _error_code(exc) not in BUCKET_EXISTS_CODES:
                    raise

    @property
    def staging_dir(self) -> Path:
        return self._staging

    @staticmethod
    def key_of(digest: str) -> str:
        """The object key for ``digest``."""
        _check_digest(digest)
        return f"{PREFIX}{digest[:2]}/{digest[2:4]}/{digest}"

    def close(self) -> None:
        """Release the client's connections."""
        self._client.close()

    def sync_staged(self, temp: Path) -> None:
        """Nothing to do: the upload reads the staged file, whether it is on disk yet or not."""

    def put_files(self, files: Sequence[tuple[Path, str]], *, data_synced: bool = False) -> None:  # noqa: ARG002
        for temp, digest in files:
            if self.exists(digest):
                temp.unlink(missing_ok=True)
                continue
            self._upload(temp, digest)
            temp.unlink(missing_ok=True)

    def _upload(self, temp: Path, digest: str) -> None:
        """Upload one staged file under its digest and check what the server stored."""
        key = self.key_of(digest)
        with _unavailable("store a blob"):
            size = temp.stat().st_size
            if size > MAX_PUT_BYTES:
                msg = f"blob of {size} bytes is over the object store's single upload limit"
                raise OutOfResources(msg)
            # The staged bytes must still be those that were hashed at ingest.
            if _file_digest(temp) != digest:
                msg = f"staged file for blob {digest} no longer has that digest"
                raise StorageUnavailable(msg)
            expected = checksum_sha256(digest)
            with temp.open("rb") as body:
                # S3 recomputes SHA-256 and refuses the PUT (BadDigest) if the bytes it got differ.
                reply = self._client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentLength=size,
                    ContentType="application/dicom",
                    ChecksumSHA256=expected,
                )
            stored = self._client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            returned = reply.get("ChecksumSHA256") or stored.get("ChecksumSHA256")
            if int(stored["ContentLength"]) != size or (returned is not None and returned != expected):
                self._client.delete_object(Bucket=self.bucket, Key=key)
                msg = f"blob {digest} was not stored intact"
                raise StorageUnavailable(msg)

    def open(self, digest: str) -> IO[bytes]:
        key = self.key_of(digest)
        # Returned to the caller, who closes it; large blobs roll over to the staging folder.
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, dir=str(self._staging))  # noqa: SIM115
        try:
            read_digest = self._download(key, digest, spool)
        except BaseException:
            spool.close()
            raise
        if read_digest != digest:
            spool.close()
            msg = f"blob {digest} read back with other content"
            raise StorageUnavailable(msg)
        spool.seek(0)
        return spool

    def _download(self, key: str, digest: str, target: IO[bytes]) -> str:
        """Stream an object into ``target``; return the SHA-256 of what was read."""
        hasher = hashlib.sha256()
        with _unavailable("read a blob"):
            try:
                reply = self._client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _error_code(exc) in NOT_FOUND_CODES:
                    msg = f"blob {digest} is missing"
                    raise NotFound(msg) from exc
                raise
            body = reply["Body"]
            try:
                for chunk in body.iter_chunks(CHUNK_BYTES):
                    hasher.update(chunk)
                    target.write(chunk)
            finally:
                body.close()
        return hasher.hexdigest()

    def exists(self, digest: str) -> bool:
        key = self.key_of(digest)
        with _unavailable("look up a blob"):
            try:
                self._client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _error_code(exc) in NOT_FOUND_CODES:
                    return False
                raise
        return True

    def iter_blobs(self) -> Iterator[tuple[str, float]]:
        paginator = self._client.get_paginator("list_objects_v2")
        with _unavailable("list blobs"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=PREFIX):
                for item in page.get("Contents", []):
                    name = str(item["Key"]).rsplit("/", 1)[-1]
                    if len(name) == DIGEST_LENGTH and HEX.issuperset(name):
                        yield name, item["LastModified"].timestamp()

    def delete(self, digest: str) -> None:
        key = self.key_of(digest)
        with _unavailable("delete a blob"):
            self._client.delete_object(Bucket=self.bucket, Key=key)
