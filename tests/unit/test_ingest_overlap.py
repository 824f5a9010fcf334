"""A C-STORE's commit: the data's fsync overlaps the index statements, never the index commit."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from pixport.archive.node import Archive
from pixport.errors import StorageUnavailable

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
TINY_SERIES = CORPUS / "media" / "tiny-alpha" / "PT000000" / "ST000000" / "SE000000"
WAIT_S = 10.0


@pytest.fixture
def archive(empty_archive: Archive) -> Archive:
    return empty_archive


def store_one(archive: Archive) -> Any:
    """What the C-STORE handler does with one received file: sync, examine, commit."""
    ingest = archive.ingest
    temp = ingest.blobs.staging_dir / "incoming.dcm"
    shutil.copyfile(min(TINY_SERIES.iterdir()), temp)
    staged = ingest.adopt_file(temp)
    synced = ingest.sync_in_background(staged)
    examined = ingest.examine(staged)
    return ingest.commit([examined], "test", data_synced=[synced])


def test_index_statements_run_while_the_data_is_still_being_synced(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements_started = threading.Event()
    real_sync, real_store = archive.blobs.sync_staged, archive.index.store_instances
    synced_after_statements: list[bool] = []

    def slow_sync(temp: Path) -> None:
        synced_after_statements.append(statements_started.wait(WAIT_S))
        real_sync(temp)

    def store_instances(batch: Any, before_commit: Any = None) -> Any:
        statements_started.set()
        return real_store(batch, before_commit)

    monkeypatch.setattr(archive.blobs, "sync_staged", slow_sync)
    monkeypatch.setattr(archive.index, "store_instances", store_instances)
    (result,) = store_one(archive)
    assert result.status == "stored"
    assert synced_after_statements == [True]  # the sync waited for the statements, not the reverse
    assert len(list(archive.index.iter_digests())) == 1


def test_a_failed_data_sync_indexes_nothing_and_leaves_no_file(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_sync(temp: Path) -> None:
        msg = "blob store failed: Input/output error"
        raise StorageUnavailable(msg)

    monkeypatch.setattr(archive.blobs, "sync_staged", failing_sync)
    with pytest.raises(StorageUnavailable):
        store_one(archive)
    assert list(archive.index.iter_digests()) == []
    assert list(archive.blobs.iter_blobs()) == []
    assert list(archive.blobs.staging_dir.iterdir()) == []
