"""How the filesystem blob store makes a batch durable: fsync per path, or one syncfs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from pixport.storage import filesystem
from pixport.storage.filesystem import PER_PATH_SYNC_LIMIT, FilesystemBlobStore


def staged_files(store: FilesystemBlobStore, count: int) -> list[tuple[Path, str]]:
    files = []
    for number in range(count):
        content = f"object {number}".encode()
        temp = store.staging_dir / f"incoming-{number}"
        temp.write_bytes(content)
        files.append((temp, hashlib.sha256(content).hexdigest()))
    return files


@pytest.mark.parametrize(("count", "syncfs_calls"), [(1, 0), (PER_PATH_SYNC_LIMIT + 1, 2)])
def test_small_batches_fsync_their_own_paths_large_ones_use_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, syncfs_calls: int
) -> None:
    if filesystem._SYNCFS is None:
        pytest.fail("syncfs(2) is expected on Linux")
    syncfs: list[int] = []
    fsynced: list[Path] = []
    real_fsync_path = filesystem.fsync_path

    def recording_syncfs(fd: int) -> int:
        syncfs.append(fd)
        return 0

    def recording_fsync_path(path: Path, *, directory: bool = False) -> None:
        fsynced.append(path)
        real_fsync_path(path, directory=directory)

    monkeypatch.setattr(filesystem, "_SYNCFS", recording_syncfs)
    monkeypatch.setattr(filesystem, "fsync_path", recording_fsync_path)
    store = FilesystemBlobStore(tmp_path)
    files = staged_files(store, count)
    store.put_files(files)
    assert len(syncfs) == syncfs_calls
    for temp, digest in files:
        final = store.path_of(digest)
        assert final.read_bytes() == f"object {files.index((temp, digest))}".encode()
        if syncfs_calls == 0:
            # The data before its rename, then the directories that received new entries.
            assert temp in fsynced
            assert final.parent in fsynced
            assert fsynced.index(temp) < fsynced.index(final.parent)
    if syncfs_calls == 0:
        assert store.blobs in fsynced  # when the 256 first-level directories were made
        assert fsynced.count(store.blobs) == 1  # not again: a blob's directory exists already


def test_a_blob_is_one_level_down_and_costs_one_directory_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemBlobStore(tmp_path)
    fsynced: list[Path] = []
    monkeypatch.setattr(filesystem, "fsync_path", lambda path, **_: fsynced.append(path))
    ((temp, digest),) = staged_files(store, 1)
    store.put_files([(temp, digest)])
    assert store.path_of(digest) == store.blobs / digest[:2] / digest
    assert store.path_of(digest).read_bytes() == b"object 0"
    assert fsynced == [temp, store.blobs / digest[:2]]  # the data, then the one directory that changed


def test_a_removed_first_level_directory_is_made_again_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FilesystemBlobStore(tmp_path)
    ((temp, digest),) = staged_files(store, 1)
    (store.blobs / digest[:2]).rmdir()
    fsynced: list[Path] = []
    monkeypatch.setattr(filesystem, "fsync_path", lambda path, **_: fsynced.append(path))
    store.put_files([(temp, digest)])
    assert store.path_of(digest).read_bytes() == b"object 0"
    assert fsynced == [temp, store.blobs, store.blobs / digest[:2]]


def legacy_blob(store: FilesystemBlobStore, content: bytes) -> tuple[str, Path]:
    """A blob where an archive written before the flat layout kept it: ``blobs/ab/cd/<digest>``."""
    digest = hashlib.sha256(content).hexdigest()
    path = store.blobs / digest[:2] / digest[2:4] / digest
    path.parent.mkdir()
    path.write_bytes(content)
    return digest, path


def test_blobs_of_the_older_two_level_layout_are_still_served(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    digest, path = legacy_blob(store, b"object 0")
    ((_, new_digest),) = staged_files(store, 2)[1:]
    store.put_files(staged_files(store, 2)[1:])
    assert store.exists(digest)
    assert store.stored_file(digest) == str(path)
    with store.open(digest) as blob:
        assert blob.read() == b"object 0"
    assert sorted(name for name, _ in store.iter_blobs()) == sorted([digest, new_digest])
    again = staged_files(store, 1)  # the same content as the old blob: a duplicate, not a second copy
    store.put_files(again)
    assert not again[0][0].exists()
    assert not store.path_of(digest).exists()
    store.delete(digest)
    assert not path.exists()
    assert not store.exists(digest)


def test_first_level_directories_exist_from_the_start(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    assert sorted(p.name for p in store.blobs.iterdir()) == [f"{n:02x}" for n in range(256)]
    assert list(store.iter_blobs()) == []


def test_data_synced_ahead_is_not_synced_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FilesystemBlobStore(tmp_path)
    ((temp, digest),) = staged_files(store, 1)
    fsynced: list[Path] = []
    real_fsync_path = filesystem.fsync_path

    def recording_fsync_path(path: Path, *, directory: bool = False) -> None:
        fsynced.append(path)
        real_fsync_path(path, directory=directory)

    monkeypatch.setattr(filesystem, "fsync_path", recording_fsync_path)
    store.sync_staged(temp)
    assert fsynced == [temp]
    store.put_files([(temp, digest)], data_synced=True)
    assert fsynced.count(temp) == 1
    assert store.path_of(digest).parent in fsynced
    assert store.path_of(digest).read_bytes() == b"object 0"


def test_an_existing_blob_is_not_written_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FilesystemBlobStore(tmp_path)
    store.put_files(staged_files(store, 1))
    calls: list[Any] = []
    monkeypatch.setattr(filesystem, "fsync_path", lambda *args, **_: calls.append(args))
    again = staged_files(store, 1)
    store.put_files(again)
    assert calls == []
    assert not again[0][0].exists()
