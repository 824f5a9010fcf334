"""`check_archive`: index rows against blobs, orphan blobs and stale staging files."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from pixport.archive.check import check_archive
from pixport.archive.node import Archive
from pixport.storage.filesystem import FilesystemBlobStore

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
TINY_SERIES = CORPUS / "media" / "tiny-alpha" / "PT000000" / "ST000000" / "SE000000"
HOUR = 3600.0


@pytest.fixture
def archive(empty_archive: Archive) -> Archive:
    """Five instances of one series, stored."""
    results = empty_archive.ingest.ingest_paths(sorted(TINY_SERIES.iterdir())[:5])
    assert [r.status for r in results] == ["stored"] * 5
    return empty_archive


def fs_blobs(archive: Archive) -> FilesystemBlobStore:
    assert isinstance(archive.blobs, FilesystemBlobStore)
    return archive.blobs


def indexed(archive: Archive) -> list[tuple[str, str]]:
    return list(archive.index.iter_digests())


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def add_orphan(archive: Archive, content: bytes, age_seconds: float) -> str:
    digest = hashlib.sha256(content).hexdigest()
    temp = archive.blobs.staging_dir / f"orphan-{digest[:8]}"
    temp.write_bytes(content)
    archive.blobs.put_files([(temp, digest)])
    age(fs_blobs(archive).path_of(digest), age_seconds)
    return digest


def test_intact_archive_has_no_problems(archive: Archive) -> None:
    report = check_archive(archive, repair=False, grace_seconds=HOUR)
    assert report.ok
    assert report.instances_checked == 5
    assert report.problems == []
    assert report.orphan_blobs == []
    assert report.stale_staging_files == 0


def test_flipped_byte_is_reported_by_uid_and_digest(archive: Archive) -> None:
    sop_uid, digest = indexed(archive)[2]
    path = fs_blobs(archive).path_of(digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    report = check_archive(archive, repair=True, grace_seconds=0)
    assert not report.ok
    assert len(report.problems) == 1
    problem = report.problems[0]
    assert (problem.kind, problem.sop_instance_uid, problem.digest) == ("corrupt", sop_uid, digest)
    assert problem.actual_digest == hashlib.sha256(bytes(data)).hexdigest()
    assert path.exists()  # repair never deletes an indexed blob, even an altered one
    assert report.as_dict()["problems"] == [
        {"kind": "corrupt", "sop_instance_uid": sop_uid, "digest": digest, "actual_digest": problem.actual_digest}
    ]


def test_missing_blob_is_reported(archive: Archive) -> None:
    sop_uid, digest = indexed(archive)[0]
    fs_blobs(archive).path_of(digest).unlink()
    report = check_archive(archive, repair=False, grace_seconds=HOUR)
    assert [(p.kind, p.sop_instance_uid, p.digest) for p in report.problems] == [("missing", sop_uid, digest)]
    assert report.instances_checked == 5


def test_orphan_blob_is_reported_then_swept_only_with_repair(archive: Archive) -> None:
    old = add_orphan(archive, b"left behind by a crash", age_seconds=2 * HOUR)
    recent = add_orphan(archive, b"an ingest in flight", age_seconds=0)

    report = check_archive(archive, repair=False, grace_seconds=HOUR)
    assert report.ok  # garbage is not a problem
    assert report.orphan_blobs == [old]
    assert report.recent_orphan_blobs == 1
    assert report.swept_blobs == 0
    assert archive.blobs.exists(old)

    report = check_archive(archive, repair=True, grace_seconds=HOUR)
    assert report.swept_blobs == 1
    assert not archive.blobs.exists(old)
    assert archive.blobs.exists(recent)
    assert all(archive.blobs.exists(digest) for _, digest in indexed(archive))

    report = check_archive(archive, repair=True, grace_seconds=0)
    assert report.swept_blobs == 1
    assert not archive.blobs.exists(recent)
    assert all(archive.blobs.exists(digest) for _, digest in indexed(archive))
    assert check_archive(archive, repair=False, grace_seconds=0).instances_checked == 5


def test_repair_never_deletes_indexed_blobs_even_when_old(archive: Archive) -> None:
    for _, digest in indexed(archive):
        age(fs_blobs(archive).path_of(digest), 30 * 24 * HOUR)
    report = check_archive(archive, repair=True, grace_seconds=0)
    assert report.ok
    assert report.swept_blobs == 0
    assert all(archive.blobs.exists(digest) for _, digest in indexed(archive))


def test_stale_staging_files_are_swept_and_fresh_ones_kept(archive: Archive) -> None:
    staging = archive.blobs.staging_dir
    stale = staging / "in-0123456789abcdef.part"
    stale.write_bytes(b"half an upload")
    age(stale, 2 * HOUR)
    fresh = staging / "in-fedcba9876543210.part"
    fresh.write_bytes(b"an upload in progress")

    report = check_archive(archive, repair=False, grace_seconds=HOUR)
    assert report.stale_staging_files == 1
    assert stale.exists()

    report = check_archive(archive, repair=True, grace_seconds=HOUR)
    assert report.swept_staging_files == 1
    assert not stale.exists()
    assert fresh.exists()


def test_conflicting_bytes_are_kept_for_review(archive: Archive, tmp_path: Path) -> None:
    original = min(TINY_SERIES.iterdir())
    altered = tmp_path / "altered"
    altered.write_bytes(original.read_bytes() + b"\x00\x00")  # same SOP Instance UID, other bytes
    (result,) = archive.ingest.ingest_paths([altered])
    assert result.status == "conflict"
    offered = hashlib.sha256(altered.read_bytes()).hexdigest()
    age(fs_blobs(archive).path_of(offered), 2 * HOUR)

    report = check_archive(archive, repair=True, grace_seconds=0)
    assert report.conflict_blobs == 1
    assert report.orphan_blobs == []
    assert archive.blobs.exists(offered)


def test_negative_grace_is_refused(archive: Archive) -> None:
    with pytest.raises(ValueError, match="grace"):
        check_archive(archive, repair=False, grace_seconds=-1)
