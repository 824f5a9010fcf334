"""Received C-STORE data sets, hashed as they arrive.

pynetdicom writes each incoming data set to a temporary file, fragment by fragment, from the
thread that reads the socket (``STORE_RECV_CHUNKED_DATASET``).  The blob store needs its
SHA-256; hashing each fragment as it is written overlaps with the peer sending the next one,
instead of reading the whole file again in the C-STORE handler (about 0.5 ms per 512 kB CT
slice).  ``install()`` makes pynetdicom's DIMSE message module create these files.

A write that fails (the disk full, an I/O error) or that would take the file past the object
size limit (``receive_into``) does not raise on the thread reading the socket: that would
abort the association, and the peer would never learn why.  The file is deleted at once, the
rest of the data set is read and dropped, and ``failure`` holds the reason, which the C-STORE
handler answers with 0xA700 once the data set has arrived.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import dimse_messages

from pixport.errors import LimitExceeded, StorageUnavailable, storage_error

WRITE_BUFFER = 64 * 1024


@dataclass
class Receiving:
    """Where incoming data sets go (None: ``tempfile.gettempdir()``), and how large one may grow."""

    max_bytes: int | None = None
    directory: str | None = None


# This process's default (``receive_into``); an association may have its own (``receive_for``).
RECEIVING = Receiving()
_ASSOCIATION_ATTRIBUTE = "pixport_receiving"
# The receiving association's own, while pynetdicom decodes a message for it (``receiving_as``).
_CURRENT: ContextVar[Receiving | None] = ContextVar("pixport_receiving", default=None)


def receive_into(directory: Path, max_bytes: int) -> None:
    """Have every incoming data set written in ``directory``, none past ``max_bytes``: process-wide.

    The listener points this at the archive's staging area, so that the C-STORE handler adopts
    the file where it is instead of copying it (``tempfile``'s default directory is what
    pynetdicom uses, so this is for a process that serves DICOM only).
    """
    tempfile.tempdir = str(directory.absolute())
    RECEIVING.max_bytes = max_bytes


def receive_for(assoc: Any, directory: Path, max_bytes: int | None) -> None:
    """Have ``assoc``'s incoming data sets written in ``directory``, none past ``max_bytes``.

    For an association of a process that does more than serve DICOM: the requester of a C-GET
    (``scu.get``) receives into the archive's staging area, under its size limit, and leaves
    the process-wide default alone.
    """
    setattr(assoc, _ASSOCIATION_ATTRIBUTE, Receiving(max_bytes, str(directory.absolute())))


def receiving_of(assoc: Any) -> Receiving:
    """Where ``assoc``'s incoming data sets go: its own setting, else the process's."""
    own: Receiving | None = getattr(assoc, _ASSOCIATION_ATTRIBUTE, None)
    return own if own is not None else RECEIVING


@contextlib.contextmanager
def receiving_as(assoc: Any) -> Iterator[None]:
    """Files pynetdicom makes in this block (it makes them with no word of the association) are ``assoc``'s."""
    token = _CURRENT.set(getattr(assoc, _ASSOCIATION_ATTRIBUTE, None))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def _write_error(exc: OSError) -> StorageUnavailable:
    return storage_error(exc, full="no space left to receive the data set", failed="cannot write the received data set")


class _Dropped:
    """What the rest of a failed data set is written to: nothing."""

    closed = False

    def write(self, data: bytes | memoryview) -> int:
        return len(data)

    def flush(self) -> None:
        return

    def close(self) -> None:
        return


class HashingTemporaryFile:
    """pynetdicom's NamedTemporaryFile for a data set, with a running SHA-256 and byte count.

    Made directly (``os.open`` with ``O_EXCL``, an explicit buffer size) rather than through
    ``tempfile.NamedTemporaryFile``, whose wrapper, name sequence and ``isatty`` probe were a
    measurable part of a small C-STORE.  The name is random, in ``tempfile.gettempdir()``
    (the listener points that at the archive's staging area), or the receiving association's
    own directory (``receive_for``).
    """

    def __init__(
        self, *, delete: bool = False, mode: str = "wb", suffix: str = "", receiving: Receiving | None = None
    ) -> None:
        if delete or mode != "wb":
            msg = "only delete=False, mode='wb' (as pynetdicom asks)"
            raise ValueError(msg)
        if receiving is None:
            receiving = _CURRENT.get() or RECEIVING
        directory = receiving.directory or tempfile.gettempdir()
        self._max_bytes = receiving.max_bytes
        self._sha = hashlib.sha256()
        self.size = 0  # bytes received, written or not
        self.failure: StorageUnavailable | LimitExceeded | None = None
        self._file: Any = _Dropped()
        self.name: str
        while True:
            name = os.path.join(directory, f"tmp{os.urandom(8).hex()}{suffix}")  # noqa: PTH118  a str path, as pynetdicom's
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:  # pragma: no cover - 64 random bits
                continue
            except OSError as exc:  # no inode left, say: answered like a failed write
                self.name = name
                self.failure = _write_error(exc)
                return
            break
        self.name = name
        self._file = open(fd, "wb", buffering=WRITE_BUFFER)  # noqa: PTH123, SIM115  closed by close()

    @property
    def file(self) -> HashingTemporaryFile:
        """Itself: pynetdicom flushes ``file.file`` after each fragment, and a flush can fail too."""
        return self

    def write(self, data: bytes | memoryview) -> int:
        length = len(data)
        self.size += length
        if self.failure is not None:
            return length
        if self._max_bytes is not None and self.size > self._max_bytes:
            self._fail(LimitExceeded(f"object is larger than {self._max_bytes} bytes"))
            return length
        try:
            self._file.write(data)
        except OSError as exc:
            self._fail(_write_error(exc))
            return length
        self._sha.update(data)
        return length

    def flush(self) -> None:
        if self.failure is None:
            try:
                self._file.flush()
            except OSError as exc:
                self._fail(_write_error(exc))

    def _fail(self, failure: StorageUnavailable | LimitExceeded) -> None:
        """Stop writing: delete what was written; the rest of the data set is dropped (module doc)."""
        self.failure = failure
        file, self._file = self._file, _Dropped()
        with contextlib.suppress(OSError):  # closing flushes the buffer, which fails again
            file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.name)  # noqa: PTH108  a str path

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def close(self) -> None:
        """Close; a failure to write what is still buffered fails the data set (module doc)."""
        try:
            self._file.close()
        except OSError as exc:
            self._fail(_write_error(exc))

    def __del__(self) -> None:
        # As tempfile's wrapper does: a file pynetdicom abandoned (a cancelled or aborted
        # transfer) is closed when dropped, not reported as a leaked resource.
        file = self.__dict__.get("_file")
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_file"], name)


def received_digest(request: Any) -> tuple[str, int] | None:
    """(SHA-256, size) of a C-STORE request's data set as written, if it was hashed on arrival."""
    received = getattr(request, "_dataset_file", None)
    if isinstance(received, HashingTemporaryFile):
        received.flush()
        return received.hexdigest(), received.size
    return None


def receive_failure(request: Any) -> StorageUnavailable | LimitExceeded | None:
    """Why a C-STORE request's data set could not be written as it arrived (module doc), if so."""
    received = getattr(request, "_dataset_file", None)
    if isinstance(received, HashingTemporaryFile):
        received.flush()
        return received.failure
    return None


def install() -> None:
    """Hash every data set pynetdicom writes to a file as it arrives; idempotent."""
    vars(dimse_messages)["NamedTemporaryFile"] = HashingTemporaryFile
