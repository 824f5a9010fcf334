"""The one place that reads ``storage.backend`` and builds the matching backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pixport.config import Settings
from pixport.errors import ConfigurationError
from pixport.storage.base import BlobStore, IndexStore

if TYPE_CHECKING:
    from pixport.archive.node import Archive


def build_index(settings: Settings) -> IndexStore:
    """The index store the settings ask for."""
    storage = settings.storage
    if storage.backend == "embedded":
        from pixport.storage.sqlite import SqliteIndexStore  # noqa: PLC0415

        return SqliteIndexStore(storage.data_dir / "index.sqlite3")
    if not storage.database_url:
        msg = "storage.database_url is required when storage.backend is 'scale'"
        raise ConfigurationError(msg)
    try:
        from pixport.storage.postgres import PostgresIndexStore  # noqa: PLC0415
    except ImportError as exc:
        msg = "the scale backend needs the 'pixport[scale]' extra"
        raise ConfigurationError(msg) from exc
    return PostgresIndexStore(storage.database_url)


def build_blobs(settings: Settings) -> BlobStore:
    """The blob store the settings ask for."""
    storage = settings.storage
    if storage.backend == "embedded":
        from pixport.storage.filesystem import FilesystemBlobStore  # noqa: PLC0415

        return FilesystemBlobStore(storage.data_dir)
    try:
        from pixport.storage.s3 import S3BlobStore  # noqa: PLC0415
    except ImportError as exc:
        msg = "the scale backend needs the 'pixport[scale]' extra"
        raise ConfigurationError(msg) from exc
    return S3BlobStore(storage)


def build_archive(settings: Settings) -> Archive:
    """An archive on the configured backends."""
    from pixport.archive.node import Archive  # noqa: PLC0415  keeps light processes light

    return Archive.assemble(settings, build_index(settings), build_blobs(settings))
