"""Blobs as files under their SHA-256: ``blobs/ab/abcd…``.  No DICOM attribute is ever a path.

Until 2026-11 blobs went one level deeper, ``blobs/ab/cd/abcd…``: in an archive of fewer than a
few hundred thousand objects most new blobs needed a new ``cd`` directory, a ``mkdir`` and a
second directory fsync on the C-STORE acknowledgement path (0.33 ms of 0.56 on this machine's
disk).  The 256 first-level directories are made when the store opens, so a new blob costs one
directory fsync, whatever the archive's age.  Blobs an older archive holds at the deeper path
are still found, listed, recognised as duplicates and deleted there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pixport.errors import NotFound, storage_error

HEX = frozenset("0123456789abcdef")
DIGEST_LENGTH = 64


def _check_digest(digest: str) -> None:
    if len(digest) != DIGEST_LENGTH or not HEX.issuperset(digest):
        msg = "not a SHA-256 digest"
        raise ValueError(msg)


def fsync_path(path: Path, *, directory: bool = False) -> None:
    """Fsync a file or directory by path."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    return getattr(libc, "syncfs", None)


_SYNCFS = _load_syncfs()


# Up to this many paths, each is fsynced; beyond, one syncfs(2) for the whole filesystem.
PER_PATH_SYNC_LIMIT = 8


def sync_paths(directory: Path, paths: Sequence[Path], *, directories: bool) -> None:
    """Make ``paths`` (all files, or all ``directories``, on ``directory``'s filesystem) durable.

    A few paths (a C-STORE commits one object) are fsynced one by one: that waits for our own
    data only.  syncfs(2) flushes every dirty page of the filesystem, other processes' too, and
    under a concurrent import or another server's writes it took several milliseconds instead
    of a fraction of one; for a large batch (STOW-RS, media import), though, one call replaces
    a file fsync and a directory fsync per object, about 2 ms each on this class of disk.
    Without syncfs (not Linux), every path is fsynced.
    """
    if _SYNCFS is None or len(paths) <= PER_PATH_SYNC_LIMIT:
        for path in paths:
            fsync_path(path, directory=directories)
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)


@contextmanager
def _blob_store_errors() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise storage_error(exc, full="no space left on the blob store", failed="blob store failed") from exc


class FilesystemBlobStore:
    """The embedded blob store: one file per distinct object, written by fsync and rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self._blobs_name = os.fspath(self.blobs)
        self._first_levels = {f"{value:02x}": self.blobs / f"{value:02x}" for value in range(256)}
        self._staging = root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._staging.mkdir(parents=True, exist_ok=True)
        self._make_first_level()

    def _make_first_level(self) -> None:
        """Create the 256 ``blobs/ab`` directories up front, durably.

        Otherwise the first blob under each would also have to fsync ``blobs/`` itself: one
        directory fsync more on the C-STORE acknowledgement path, for most of a new archive's
        first thousand objects.
        """
        created = False
        for first_level in self._first_levels.values():
            try:
                first_level.mkdir()
            except FileExistsError:
                continue
            created = True
        if created:
            fsync_path(self.blobs, directory=True)

    @property
    def staging_dir(self) -> Path:
        return self._staging

    def path_of(self, digest: str) -> Path:
        """Where a new blob for ``digest`` goes (``stored_file``: where one is)."""
        _check_digest(digest)
        return self.blobs / digest[:2] / digest

    def _legacy_path(self, digest: str) -> Path:
        """Where an archive written before the flat layout holds it (module doc)."""
        return self.blobs / digest[:2] / digest[2:4] / digest

    def sync_staged(self, temp: Path) -> None:
        """Fsync a staged file's data (its name is published later, by ``put_files``)."""
        with _blob_store_errors():
            fsync_path(temp)

    def put_files(self, files: Sequence[tuple[Path, str]], *, data_synced: bool = False) -> None:
        """Make the batch durable: data first, then the renames that publish it.

        The data must be on disk before a blob gets its final name: a blob under its digest is
        trusted as it is when the same content arrives again.  ``data_synced``: the caller
        has run ``sync_staged`` on every file already.
        """
        moves: list[tuple[Path, str, str]] = []  # (staged file, final name, first-level prefix)
        with _blob_store_errors():
            for temp, digest in files:
                # String paths and no stat more than needed: pathlib's joins and checks were a
                # tenth of a C-STORE's Python time here.
                stored = self.stored_file(digest)
                if stored is not None:
                    # Same content again: refresh its age so that a sweep of old orphans does
                    # not take it between now and the index commit that will reference it.
                    os.utime(stored)
                    temp.unlink(missing_ok=True)
                else:
                    moves.append((temp, os.path.join(self._blobs_name, digest[:2], digest), digest[:2]))  # noqa: PTH118
            if not moves:
                return
            if not data_synced:
                sync_paths(self.root, [temp for temp, _, _ in moves], directories=False)
            dirty_dirs: set[Path] = set()
            for temp, final, prefix in moves:
                first_level = self._first_levels[prefix]
                try:
                    os.replace(temp, final)  # noqa: PTH105
                except FileNotFoundError:
                    if first_level.exists() or not temp.exists():
                        raise
                    first_level.mkdir(parents=True, exist_ok=True)  # removed since start-up
                    dirty_dirs.add(self.blobs)
                    os.replace(temp, final)  # noqa: PTH105
                dirty_dirs.add(first_level)
            sync_paths(self.root, sorted(dirty_dirs), directories=True)

    def stored_file(self, digest: str) -> str | None:
        """The name of the file holding the blob for ``digest`` (either layout), or None."""
        _check_digest(digest)
        name = os.path.join(self._blobs_name, digest[:2], digest)  # noqa: PTH118
        if os.path.exists(name):  # noqa: PTH110
            return name
        legacy = os.path.join(self._blobs_name, digest[:2], digest[2:4], digest)  # noqa: PTH118
        return legacy if os.path.exists(legacy) else None  # noqa: PTH110

    def open(self, digest: str) -> IO[bytes]:
        _check_digest(digest)
        # A string path, not ``path_of``: pathlib's joins took a third of opening a blob for a
        # C-MOVE sub-operation.
        name = os.path.join(self._blobs_name, digest[:2], digest)  # noqa: PTH118
        try:
            return open(name, "rb")  # noqa: PTH123  the caller closes it
        except FileNotFoundError:
            pass
        try:
            return self._legacy_path(digest).open("rb")
        except FileNotFoundError as exc:
            msg = f"blob {digest} is missing"
            raise NotFound(msg) from exc

    def exists(self, digest: str) -> bool:
        return self.stored_file(digest) is not None

    def iter_blobs(self) -> Iterator[tuple[str, float]]:
        # scandir: an entry's type comes with it, so only each blob's time costs a stat.
        for first in sorted(os.scandir(self.blobs), key=lambda entry: entry.name):
            for entry in sorted(os.scandir(first.path), key=lambda entry: entry.name):
                if entry.is_dir():  # a second level, written before the flat layout
                    for blob in sorted(os.scandir(entry.path), key=lambda entry: entry.name):
                        yield blob.name, blob.stat().st_mtime
                else:
                    yield entry.name, entry.stat().st_mtime

    def delete(self, digest: str) -> None:
        self.path_of(digest).unlink(missing_ok=True)
        self._legacy_path(digest).unlink(missing_ok=True)
