"""Received C-STORE data sets, hashed as they arrive.

pynetdicom writes each incoming data set to a temporary file, fragment by fragment, from the
thread that reads the socket (``STORE_RECV_CHUNKED_DATASET``).  The blob store needs its
SHA-256; hashing each fragment as it is written overlaps with the peer sending the next one,
instead of reading the whole file again in the C-STORE handler (about 0.5 ms per 512 kB CT
slice).  ``install()`` makes pynetdicom's DIMSE message module create these files.
"""

from __future__ import annotations

import hashlib
import tempfile
from typing import Any

from pynetdicom import dimse_messages


class HashingTemporaryFile:
    """pynetdicom's NamedTemporaryFile for a data set, with a running SHA-256 and byte count."""

    def __init__(self, **options: Any) -> None:
        self._file = tempfile.NamedTemporaryFile(**options)  # noqa: SIM115  closed by pynetdicom
        self.name: str = self._file.name
        self.file = self._file.file
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self._sha.update(data)
        self.size += len(data)
        return self._file.write(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def close(self) -> None:
        self._file.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def received_digest(request: Any) -> tuple[str, int] | None:
    """(SHA-256, size) of a C-STORE request's data set as written, if it was hashed on arrival."""
    received = getattr(request, "_dataset_file", None)
    if isinstance(received, HashingTemporaryFile):
        received.file.flush()
        return received.hexdigest(), received.size
    return None


def install() -> None:
    """Hash every data set pynetdicom writes to a file as it arrives; idempotent."""
    vars(dimse_messages)["NamedTemporaryFile"] = HashingTemporaryFile
