"""The two storage seams, as Protocols, and the plain records that cross them.

``IndexStore`` holds patient/study/series/instance rows and each instance's DICOM JSON;
``BlobStore`` holds the exact bytes of each instance under its SHA-256.  Write the blob first,
then the index row: an orphan blob is garbage to sweep up, a row without its blob is a bug.
This module imports nothing from the rest of the application.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import IO, Any, Literal, Protocol, runtime_checkable

Level = Literal["study", "series", "instance"]


class Outcome(Enum):
    """What the index did with one offered instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: nothing to do
    CONFLICT = "conflict"  # same SOP Instance UID, different bytes: refused and recorded


@dataclass(slots=True)
class NewInstance:
    """One parsed, durably stored instance, ready for its index row."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    digest: str
    size: int
    attributes: dict[str, Any]
    metadata_json: bytes
    study_json: bytes
    series_json: bytes
    instance_json: bytes
    source: str = ""


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """Where an indexed instance's bytes are, and what a retriever needs to know of it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    digest: str
    size: int
    number_of_frames: int | None


@dataclass(frozen=True, slots=True)
class Conflict:
    """A refused instance whose SOP Instance UID was stored already with other bytes."""

    sop_instance_uid: str
    stored_digest: str
    offered_digest: str
    source: str
    received_at: str


@dataclass(frozen=True, slots=True)
class StudyActivity:
    """When a study last received an instance, and how many instances it holds."""

    study_instance_uid: str
    number_of_instances: int
    last_received_at: datetime
    """Reception time (UTC) of the study's newest instance: when its index row was written."""


@dataclass(frozen=True, slots=True)
class Match:
    """One matching condition of a query, on a logical attribute (an index column name).

    ``kind``: ``single`` (exact, case-sensitive), ``uids`` (any of a list), ``wildcard``
    (``*`` and ``?``), ``range`` (``value`` is ``(low, high)``, either may be empty),
    ``name`` (Person Name, any component group, case-insensitive, wildcards allowed),
    ``fuzzy`` (Person Name, any component starting with the value).
    """

    attribute: str
    kind: Literal["single", "uids", "wildcard", "range", "name", "fuzzy"]
    value: Any


@dataclass(slots=True)
class Query:
    """A search at one level, scoped by the UIDs in the request path."""

    level: Level
    matches: list[Match] = field(default_factory=list)
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    limit: int = 1000
    offset: int = 0


@dataclass(slots=True)
class QueryRow:
    """One result: the level's DICOM JSON pieces (study, series, instance) and its counts."""

    study_instance_uid: str
    series_instance_uid: str | None
    sop_instance_uid: str | None
    documents: list[bytes]
    modalities_in_study: list[str] = field(default_factory=list)
    number_of_series: int | None = None
    number_of_instances: int | None = None


@runtime_checkable
class IndexStore(Protocol):
    """Patient / study / series / instance index."""

    def store_instances(
        self, batch: Sequence[NewInstance], before_commit: Callable[[], None] | None = None
    ) -> list[Outcome]:
        """Insert a batch in one transaction; one outcome per instance, in order.

        ``before_commit`` is called after the statements, just before COMMIT; if it raises,
        the transaction is rolled back and the exception propagates (ingest waits there for
        the blobs to be durable, so the two overlap without an index row ever preceding its
        blob on disk).
        """
        ...

    def search(self, query: Query) -> list[QueryRow]:
        """Rows matching ``query``, ordered stably, limited and offset."""
        ...

    def list_instances(
        self, study_instance_uid: str, series_instance_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[StoredInstance]:
        """Instances of a study (series, instance), in series then instance number order."""
        ...

    def list_metadata(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        limit: int | None = None,
    ) -> list[bytes]:
        """Stored DICOM JSON of each instance in scope (at most ``limit``), ordered as ``list_instances``."""
        ...

    def list_conflicts(self) -> list[Conflict]:
        """Every recorded conflict, oldest first."""
        ...

    def list_study_activity(
        self,
        *,
        received_after: datetime | None = None,
        received_until: datetime | None = None,
        study_instance_uids: Sequence[str] | None = None,
    ) -> list[StudyActivity]:
        """Studies whose newest instance was received in (``received_after``, ``received_until``].

        Either bound may be None (unbounded); ``study_instance_uids`` restricts the answer to
        those studies.  Ordered by the newest reception, oldest first.  Instances are only
        ever added (a changed object under a stored SOP Instance UID is a refused conflict),
        so a study that changed has a later ``last_received_at`` and a larger count.
        """
        ...

    def iter_digests(self) -> Iterator[tuple[str, str]]:
        """(SOP Instance UID, digest) of every indexed instance."""
        ...

    def count_instances(self) -> int:
        """Number of indexed instances."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class BlobStore(Protocol):
    """Content-addressed store of exact instance bytes, keyed by lowercase hex SHA-256."""

    @property
    def staging_dir(self) -> Path:
        """Where ingest writes temporary files (same filesystem as the blobs, if local)."""
        ...

    def sync_staged(self, temp: Path) -> None:
        """Make a complete temporary file's bytes durable where they are (may run on any thread).

        A head start for ``put_files(..., data_synced=True)``: the C-STORE handler runs it
        while it parses the object.  A no-op where ``put_files`` does not need it.
        """
        ...

    def put_files(self, files: Sequence[tuple[Path, str]], *, data_synced: bool = False) -> None:
        """Make each (temporary file, digest) durable under its digest, consuming the file.

        Returns only once every blob is durable.  A digest stored already is left as it is.
        ``data_synced``: ``sync_staged`` has completed for every file.
        """
        ...

    def open(self, digest: str) -> IO[bytes]:
        """A seekable binary file of the blob; raises ``NotFound``."""
        ...

    def exists(self, digest: str) -> bool:
        """Whether a blob is stored under ``digest``."""
        ...

    def iter_blobs(self) -> Iterator[tuple[str, float]]:
        """(digest, modification time as a UNIX timestamp) of every stored blob."""
        ...

    def delete(self, digest: str) -> None:
        """Remove a blob (used only to sweep orphans)."""
        ...
