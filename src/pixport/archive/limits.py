"""Defaults shared by the archive and the commands, importable without loading pydicom."""

from __future__ import annotations

DEFAULT_BATCH_SIZE = 50
"""Objects per ingest batch (one index transaction each) in media import."""

DEFAULT_GRACE_SECONDS = 3600.0
"""Orphan blobs and staging files younger than this are left alone: an ingest may own them."""
