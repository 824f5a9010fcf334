"""Temporary files that an incoming object is streamed into, hashed and size-limited."""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from pixport.errors import LimitExceeded, StorageUnavailable, storage_error


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A complete incoming object: its temporary file, SHA-256 and size."""

    path: Path
    digest: str
    size: int


def _storage_error(exc: OSError) -> StorageUnavailable:
    return storage_error(exc, full="no space left in the staging area", failed="staging area failed")


class StagingFile:
    """Write an object's bytes as they arrive; hash while writing; refuse past ``max_bytes``.

    The name is random: nothing the sender chose ever becomes part of a path.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.path = directory / f"in-{uuid.uuid4().hex}.part"
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise _storage_error(exc) from exc
        self._closed = False

    def write(self, chunk: bytes | memoryview) -> None:
        """Append ``chunk``; raise ``LimitExceeded`` past the size limit."""
        self.size += len(chunk)
        if self.size > self.max_bytes:
            msg = f"object is larger than {self.max_bytes} bytes"
            raise LimitExceeded(msg)
        self._hash.update(chunk)
        view = memoryview(chunk)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            raise _storage_error(exc) from exc

    def finish(self) -> StagedFile:
        """Close the file and return what was written."""
        self._close()
        return StagedFile(self.path, self._hash.hexdigest(), self.size)

    def abort(self) -> None:
        """Close and delete the file."""
        self._close()
        self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)
