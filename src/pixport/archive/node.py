"""The archive as one object: its index, its blobs and its ingest pipeline."""

from __future__ import annotations

from dataclasses import dataclass

from pixport.archive.ingest import IngestPipeline
from pixport.config import Settings
from pixport.storage.base import BlobStore, IndexStore


@dataclass(slots=True)
class Archive:
    """What every front end (DICOMweb, DIMSE, CLI) talks to."""

    settings: Settings
    index: IndexStore
    blobs: BlobStore
    ingest: IngestPipeline

    @classmethod
    def assemble(cls, settings: Settings, index: IndexStore, blobs: BlobStore) -> Archive:
        """Put the parts together (``wiring.build_archive`` chooses them)."""
        return cls(settings, index, blobs, IngestPipeline(index, blobs, settings.limits))

    def close(self) -> None:
        """Release the backends."""
        self.index.close()
