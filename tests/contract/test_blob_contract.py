"""BlobStore contract: put, open, exists, iter_blobs, delete."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from pixport.archive.node import Archive
from pixport.errors import NotFound
from pixport.storage.base import BlobStore


def _stage(blobs: BlobStore, data: bytes) -> tuple[Path, str]:
    path = blobs.staging_dir / f"contract-{os.urandom(8).hex()}.part"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_blob_store_satisfies_the_protocol(archive: Archive) -> None:
    assert isinstance(archive.blobs, BlobStore)
    assert archive.blobs.staging_dir.is_dir()


def test_put_open_exists(archive: Archive) -> None:
    blobs = archive.blobs
    small = b"DICM" + bytes(range(256)) * 4
    large = os.urandom(9 * 1024 * 1024 + 3)  # over any in-memory spool
    staged = [_stage(blobs, small), _stage(blobs, large)]
    assert not blobs.exists(staged[0][1])

    blobs.put_files(staged)

    for (path, digest), data in zip(staged, (small, large), strict=True):
        assert not path.exists(), "put_files consumes the temporary file"
        assert blobs.exists(digest)
        with blobs.open(digest) as stream:
            assert stream.read() == data
            assert stream.seekable()
            stream.seek(len(data) - 3)
            assert stream.read() == data[-3:]
            stream.seek(0)
            assert stream.read(4) == data[:4]


def test_put_existing_digest_keeps_the_blob_and_consumes_the_file(archive: Archive) -> None:
    blobs = archive.blobs
    path, digest = _stage(blobs, b"same bytes twice")
    blobs.put_files([(path, digest)])
    again, same = _stage(blobs, b"same bytes twice")
    blobs.put_files([(again, same)])
    assert not again.exists()
    assert [d for d, _ in blobs.iter_blobs()] == [digest]
    with blobs.open(digest) as stream:
        assert stream.read() == b"same bytes twice"


def test_missing_blob(archive: Archive) -> None:
    digest = hashlib.sha256(b"never stored").hexdigest()
    assert not archive.blobs.exists(digest)
    with pytest.raises(NotFound):
        archive.blobs.open(digest)


def test_iter_blobs_lists_every_blob_with_its_time(archive: Archive) -> None:
    blobs = archive.blobs
    assert list(blobs.iter_blobs()) == []
    before = time.time()
    staged = [_stage(blobs, f"blob {n}".encode()) for n in range(5)]
    blobs.put_files(staged)
    listed = dict(blobs.iter_blobs())
    assert set(listed) == {digest for _, digest in staged}
    for modified in listed.values():
        # Object stores keep whole seconds; allow for that and a little clock skew.
        assert before - 5 <= modified <= time.time() + 5


def test_delete(archive: Archive) -> None:
    blobs = archive.blobs
    keep, gone = _stage(blobs, b"keep"), _stage(blobs, b"gone")
    blobs.put_files([keep, gone])
    blobs.delete(gone[1])
    assert not blobs.exists(gone[1])
    assert blobs.exists(keep[1])
    assert [d for d, _ in blobs.iter_blobs()] == [keep[1]]
    with pytest.raises(NotFound):
        blobs.open(gone[1])
    blobs.delete(gone[1])  # deleting what is gone already is not an error


def test_digest_must_be_a_sha256(archive: Archive) -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        archive.blobs.exists("../../etc/passwd")
    with pytest.raises(ValueError, match="SHA-256"):
        archive.blobs.open("ABCDEF" * 10 + "ABCD")
