"""The one ingest pipeline behind STOW-RS, C-STORE and media import.

Per batch: parse each staged object's header (rejecting bad ones one by one), make the accepted
blobs durable (fsync, rename into the content-addressed store), write every index row in one
transaction, and only then report.  A crash before the index commit leaves orphan blobs, which
``archive check`` sweeps; it never leaves an index row without its blob.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import orjson
import structlog

from pixport.archive.staging import StagedFile, StagingFile
from pixport.config import LimitSettings
from pixport.dicom.levels import level_documents
from pixport.dicom.parse import ParsedInstance, ParseLimits, parse_instance, peek_uids
from pixport.errors import (
    InstanceRejected,
    LimitExceeded,
    MalformedInstance,
    MissingAttribute,
    StorageUnavailable,
    StudyMismatch,
)
from pixport.storage.base import BlobStore, IndexStore, NewInstance, Outcome

log = structlog.get_logger(__name__)

Status = Literal["stored", "duplicate", "conflict", "rejected"]

# DICOM status codes used as STOW-RS FailureReason and C-STORE status (docs/conformance.md).
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
DUPLICATE_CONFLICT = 0x0111  # "Duplicate SOP Instance": same UID, different bytes
# Stored as sent, with remarks (a non-conformant UID, File Meta disagreeing with the data set):
# the warning "Data Set does not match SOP Class" (PS3.4 B.2.3, PS3.18 STOW-RS WarningReason).
# Not B000, "Coercion of Data Elements": nothing is ever changed on receive.
WARNING_NOT_CONFORMANT = 0xB007
COPY_CHUNK = 1024 * 1024
SYNC_THREADS = 4  # fsyncs in flight for C-STOREs (one per association being served at once)


@dataclass(slots=True)
class InstanceResult:
    """What happened to one offered object."""

    status: Status
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    reason: str | None = None
    failure_code: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Stored now or before: the sender may forget it."""
        return self.status in {"stored", "duplicate"}


def failure_code(error: InstanceRejected) -> int:
    """The DICOM status for a rejection."""
    if isinstance(error, LimitExceeded):
        return OUT_OF_RESOURCES
    if isinstance(error, MissingAttribute | StudyMismatch):
        return DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    if isinstance(error, MalformedInstance):
        return CANNOT_UNDERSTAND
    return CANNOT_UNDERSTAND


@dataclass(slots=True)
class Examined:
    """A staged object after parsing: its result so far, and what ``commit`` needs."""

    result: InstanceResult
    staged: StagedFile
    parsed: ParsedInstance | None


class IngestPipeline:
    """Stage, parse, store and index objects."""

    def __init__(self, index: IndexStore, blobs: BlobStore, limits: LimitSettings) -> None:
        self.index = index
        self.blobs = blobs
        self.limits = limits
        self._sync_lock = threading.Lock()
        self._sync_pool: ThreadPoolExecutor | None = None
        self.parse_limits = ParseLimits(
            max_element_bytes=limits.max_element_bytes,
            max_sequence_depth=limits.max_sequence_depth,
            bulk_data_threshold=limits.bulk_data_threshold,
        )

    def new_staging_file(self) -> StagingFile:
        """A temporary file for one incoming object."""
        return StagingFile(self.blobs.staging_dir, self.limits.max_object_bytes)

    def stage_stream(self, stream: BinaryIO) -> StagedFile:
        """Copy a readable stream into the staging area."""
        staging = self.new_staging_file()
        try:
            while chunk := stream.read(COPY_CHUNK):
                staging.write(chunk)
        except BaseException:
            staging.abort()
            raise
        return staging.finish()

    def adopt_file(self, path: Path, hashed: tuple[str, int] | None = None) -> StagedFile:
        """Take a complete file that was written in the staging area as it is: hash it, no copy.

        The DICOM listener has pynetdicom write each incoming data set there; ``commit`` then
        renames it into the blob store, or ``discard`` deletes it.  ``hashed``: the (SHA-256,
        size) of what the writer wrote, when it hashed as it wrote; used if the file has exactly
        that size, else the file is hashed again.
        """
        size = path.stat().st_size
        if size > self.limits.max_object_bytes:
            msg = f"object is larger than {self.limits.max_object_bytes} bytes"
            raise LimitExceeded(msg)
        if hashed is not None and hashed[1] == size:
            return StagedFile(path, hashed[0], size)
        sha = hashlib.sha256()
        with path.open("rb") as stream:
            while chunk := stream.read(COPY_CHUNK):
                sha.update(chunk)
        return StagedFile(path, sha.hexdigest(), size)

    def ingest_paths(self, paths: Sequence[Path], source: str = "") -> list[InstanceResult]:
        """Ingest files already on disk (media import): each is copied, never moved."""
        staged: list[StagedFile | InstanceResult] = []
        try:
            for path in paths:
                try:
                    with path.open("rb") as stream:
                        staged.append(self.stage_stream(stream))
                except LimitExceeded as exc:
                    staged.append(InstanceResult("rejected", reason=exc.reason, failure_code=OUT_OF_RESOURCES))
                except OSError as exc:
                    staged.append(InstanceResult("rejected", reason=f"cannot read file: {exc.strerror}"))
        except BaseException:
            self.discard([s for s in staged if isinstance(s, StagedFile)])
            raise
        return self.ingest_staged(staged, source)

    def ingest_staged(
        self,
        staged: Sequence[StagedFile | InstanceResult],
        source: str = "",
        expected_study: str | None = None,
    ) -> list[InstanceResult]:
        """Parse, store and index staged objects; entries that are results already pass through.

        With ``expected_study`` (STOW-RS to /studies/{study}), objects of another study are
        refused.  Raises ``StorageUnavailable`` (``OutOfResources``) if the batch could not be
        made durable: then nothing of it was indexed, and its temporary files are gone.
        """
        examined: list[Examined | InstanceResult] = []
        try:
            for item in staged:
                examined.append(  # noqa: PERF401  a loop, to know what to clean up if it fails
                    item if isinstance(item, InstanceResult) else self.examine(item, expected_study)
                )
        except BaseException:
            self.discard([e.staged for e in examined if isinstance(e, Examined)])
            self.discard([item for item in staged[len(examined) :] if isinstance(item, StagedFile)])
            raise
        return self.commit(examined, source)

    def examine(self, item: StagedFile, expected_study: str | None = None) -> Examined:
        """Parse one staged object (the CPU-bound part; callers may run it as objects arrive).

        A refused object's temporary file is deleted here; an accepted one waits for ``commit``.
        """
        try:
            parsed = self._parse(item, expected_study)
        except Exception as exc:  # noqa: BLE001  one bad object must never fail the batch
            rejection = (
                exc
                if isinstance(exc, InstanceRejected)
                else MalformedInstance(f"object cannot be parsed: {type(exc).__name__}")
            )
            if rejection is not exc:
                # Type only: a library message or traceback may quote patient data.
                log.error("ingest.parser_failed", error=type(exc).__name__)  # noqa: TRY400
            sop_class, sop_instance = peek_uids(item.path)
            item.path.unlink(missing_ok=True)
            result = InstanceResult(
                "rejected",
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                reason=rejection.reason,
                failure_code=failure_code(rejection),
            )
            return Examined(result, item, None)
        result = InstanceResult(
            "stored",
            sop_class_uid=parsed.sop_class_uid,
            sop_instance_uid=parsed.sop_instance_uid,
            study_instance_uid=parsed.study_instance_uid,
            series_instance_uid=parsed.series_instance_uid,
            warnings=parsed.warnings,
        )
        return Examined(result, item, parsed)

    def sync_in_background(self, staged: StagedFile) -> Future[None]:
        """Start making a staged object's bytes durable, on another thread, while it is examined.

        The fsync of a small object's data took as long as parsing it; one C-STORE at a time
        can overlap the two.  Pass the future to ``commit``.  (A batch is better served by
        ``commit`` alone: it syncs many files at once.)
        """
        return self._pool().submit(self.blobs.sync_staged, staged.path)

    def _pool(self) -> ThreadPoolExecutor:
        with self._sync_lock:
            if self._sync_pool is None:
                self._sync_pool = ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="pixport-sync")
            return self._sync_pool

    def commit(
        self,
        examined: Sequence[Examined | InstanceResult],
        source: str = "",
        data_synced: Sequence[Future[None]] | None = None,
    ) -> list[InstanceResult]:
        """Make the accepted objects durable and index them in one transaction; report each.

        ``data_synced``: ``sync_in_background`` of every accepted object, awaited here.
        Raises ``StorageUnavailable`` (``OutOfResources``) if the blobs could not be made
        durable: then nothing was indexed, and the temporary files are gone.
        """
        results = [e.result if isinstance(e, Examined) else e for e in examined]
        accepted = [(i, e) for i, e in enumerate(examined) if isinstance(e, Examined) and e.parsed is not None]
        if not accepted:
            return results
        files = [(e.staged.path, e.staged.digest) for _, e in accepted]
        published: Future[None] | None = None
        try:
            if data_synced is None:
                self.blobs.put_files(files)
            else:
                # The data's fsyncs, then the renames and directory fsyncs, run while the index
                # statements do; the index commits only once they are done.  (The job that waits
                # for the data's fsyncs was submitted after them: they have a thread already.)
                published = self._pool().submit(self._publish_synced, files, data_synced)
            batch = [self._new_instance(e.staged, e.parsed, source) for _, e in accepted if e.parsed is not None]
            outcomes = self.index.store_instances(batch, published.result if published is not None else None)
        except BaseException:
            if published is not None:
                wait([published])  # its outcome does not matter now; its files must not move after this
            self.discard([e.staged for _, e in accepted])
            raise
        for (position, e), outcome in zip(accepted, outcomes, strict=True):
            result = results[position]
            if outcome is Outcome.DUPLICATE:
                result.status = "duplicate"
            elif outcome is Outcome.CONFLICT:
                result.status = "conflict"
                result.failure_code = DUPLICATE_CONFLICT
                result.reason = f"SOP Instance {result.sop_instance_uid} is stored already with different content"
                log.warning("ingest.conflict", sop_instance_uid=result.sop_instance_uid, digest=e.staged.digest)
        return results

    def _publish_synced(self, files: list[tuple[Path, str]], data_synced: Sequence[Future[None]]) -> None:
        """Once every file's data is durable, give the files their names (``put_files``)."""
        for future in data_synced:
            future.result()
        self.blobs.put_files(files, data_synced=True)

    def _parse(self, item: StagedFile, expected_study: str | None) -> ParsedInstance:
        parsed = parse_instance(item.path, self.parse_limits)
        if expected_study is not None and parsed.study_instance_uid != expected_study:
            msg = f"Study Instance UID {parsed.study_instance_uid} is not the study of the request"
            raise StudyMismatch(msg)
        return parsed

    @staticmethod
    def _new_instance(item: StagedFile, parsed: ParsedInstance, source: str) -> NewInstance:
        study_json, series_json, instance_json = level_documents(parsed.metadata)
        return NewInstance(
            sop_class_uid=parsed.sop_class_uid,
            sop_instance_uid=parsed.sop_instance_uid,
            series_instance_uid=parsed.series_instance_uid,
            study_instance_uid=parsed.study_instance_uid,
            digest=item.digest,
            size=item.size,
            attributes=parsed.attributes,
            metadata_json=orjson.dumps(parsed.metadata),
            study_json=study_json,
            series_json=series_json,
            instance_json=instance_json,
            source=source,
        )

    @staticmethod
    def discard(staged: Sequence[StagedFile]) -> None:
        """Delete temporary files that will not be stored."""
        for item in staged:
            item.path.unlink(missing_ok=True)


def copy_out(blobs: BlobStore, digest: str, destination: Path) -> None:
    """Write one stored blob to a file (export, tests)."""
    try:
        with blobs.open(digest) as source, destination.open("wb") as target:
            shutil.copyfileobj(source, target, COPY_CHUNK)
    except OSError as exc:
        msg = f"cannot copy blob: {exc.strerror}"
        raise StorageUnavailable(msg) from exc
