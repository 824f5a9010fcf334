"""Verify the archive: every index row against its blob, and sweep what a crash left behind.

Ingest writes the blob first and the index row second, so a crash can leave an *orphan blob*
(no index row references it) or a *stale staging file* (a temporary file that was never
renamed into the blob store).  Both are garbage.  A row whose blob is missing or whose bytes no
longer hash to the row's digest is a real problem: it is reported, never "repaired" away.

Only garbage older than ``grace_seconds`` is swept, so that an ingest in flight (its blob
renamed into place, its index transaction not yet committed) is not harmed.  Blobs that a
recorded conflict refers to (the refused bytes) are kept for review.  Reports name instances by
SOP Instance UID and digest only, never by patient data.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pixport.archive.limits import DEFAULT_GRACE_SECONDS
from pixport.archive.node import Archive
from pixport.errors import NotFound

HASH_CHUNK = 1024 * 1024
DIGEST_LENGTH = 64
HEX = frozenset("0123456789abcdef")

ProblemKind = Literal["missing", "corrupt", "unreadable"]


@dataclass(frozen=True, slots=True)
class BlobProblem:
    """An index row whose blob is missing, altered or unreadable."""

    kind: ProblemKind
    sop_instance_uid: str
    digest: str
    actual_digest: str | None = None


@dataclass(slots=True)
class CheckReport:
    """What ``check_archive`` found and, with ``repair``, swept."""

    repair: bool
    grace_seconds: float
    instances_checked: int = 0
    problems: list[BlobProblem] = field(default_factory=list)
    orphan_blobs: list[str] = field(default_factory=list)
    """Digests of unreferenced blobs older than the grace period."""
    recent_orphan_blobs: int = 0
    """Unreferenced blobs younger than the grace period (maybe an ingest in flight): left alone."""
    conflict_blobs: int = 0
    """Unreferenced blobs that hold the refused bytes of a recorded conflict: kept."""
    foreign_files: int = 0
    """Files in the blob store whose name is not a digest: never touched."""
    stale_staging_files: int = 0
    swept_blobs: int = 0
    swept_staging_files: int = 0

    @property
    def ok(self) -> bool:
        """Every index row has its intact blob (garbage does not count)."""
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form."""
        return {
            "ok": self.ok,
            "repair": self.repair,
            "grace_seconds": self.grace_seconds,
            "instances_checked": self.instances_checked,
            "problems": [
                {
                    "kind": p.kind,
                    "sop_instance_uid": p.sop_instance_uid,
                    "digest": p.digest,
                    "actual_digest": p.actual_digest,
                }
                for p in self.problems
            ],
            "orphan_blobs": list(self.orphan_blobs),
            "recent_orphan_blobs": self.recent_orphan_blobs,
            "conflict_blobs": self.conflict_blobs,
            "foreign_files": self.foreign_files,
            "stale_staging_files": self.stale_staging_files,
            "swept_blobs": self.swept_blobs,
            "swept_staging_files": self.swept_staging_files,
        }


def is_digest(name: str) -> bool:
    """Whether ``name`` is a lowercase hex SHA-256."""
    return len(name) == DIGEST_LENGTH and HEX.issuperset(name)


def check_archive(archive: Archive, *, repair: bool, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> CheckReport:
    """Verify every index row against its blob; report (and with ``repair``, sweep) old garbage."""
    if grace_seconds < 0:
        raise ValueError("grace_seconds must not be negative")
    report = CheckReport(repair=repair, grace_seconds=grace_seconds)
    cutoff = time.time() - grace_seconds
    rows = list(archive.index.iter_digests())
    referenced = {digest for _, digest in rows}
    for sop_instance_uid, digest in rows:
        problem = verify_blob(archive, sop_instance_uid, digest)
        report.instances_checked += 1
        if problem is not None:
            report.problems.append(problem)
    held = {conflict.offered_digest for conflict in archive.index.list_conflicts()}
    for digest, mtime in archive.blobs.iter_blobs():
        if not is_digest(digest):
            report.foreign_files += 1
        elif digest in referenced:
            continue
        elif digest in held:
            report.conflict_blobs += 1
        elif mtime > cutoff:
            report.recent_orphan_blobs += 1
        else:
            report.orphan_blobs.append(digest)
    stale = list_stale_staging(archive.blobs.staging_dir, cutoff)
    report.stale_staging_files = len(stale)
    if repair:
        _sweep(archive, report, stale)
    return report


def verify_blob(archive: Archive, sop_instance_uid: str, digest: str) -> BlobProblem | None:
    """Hash the blob of one index row; None if it is there and intact."""
    sha = hashlib.sha256()
    try:
        with archive.blobs.open(digest) as blob:
            while chunk := blob.read(HASH_CHUNK):
                sha.update(chunk)
    except NotFound:
        return BlobProblem("missing", sop_instance_uid, digest)
    except OSError:
        return BlobProblem("unreadable", sop_instance_uid, digest)
    actual = sha.hexdigest()
    if actual != digest:
        return BlobProblem("corrupt", sop_instance_uid, digest, actual)
    return None


def list_stale_staging(staging_dir: Path, cutoff: float) -> list[Path]:
    """Regular files in the staging area last written before ``cutoff``."""
    stale: list[Path] = []
    try:
        entries = sorted(staging_dir.iterdir())
    except FileNotFoundError:
        return stale
    for entry in entries:
        try:
            info = entry.lstat()
        except FileNotFoundError:  # finished or discarded meanwhile
            continue
        if entry.is_file() and not entry.is_symlink() and info.st_mtime <= cutoff:
            stale.append(entry)
    return stale


def _sweep(archive: Archive, report: CheckReport, stale: list[Path]) -> None:
    # Read the index again just before deleting: an ingest that committed since the first
    # read may now reference a blob that was an orphan then.
    still_referenced = {digest for _, digest in archive.index.iter_digests()}
    still_referenced |= {conflict.offered_digest for conflict in archive.index.list_conflicts()}
    for digest in report.orphan_blobs:
        if digest in still_referenced:
            continue
        archive.blobs.delete(digest)
        report.swept_blobs += 1
    for path in stale:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        report.swept_staging_files += 1
