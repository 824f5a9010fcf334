"""Data sets hashed as pynetdicom writes them (pixport.dimse.received)."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from pynetdicom import dimse_messages

from pixport.dimse import commandset, received
from pixport.errors import LimitExceeded, OutOfResources, StorageUnavailable


def test_digest_and_size_are_those_of_the_file_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    written = received.HashingTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    # What pynetdicom writes: preamble, prefix, File Meta, then each data fragment.
    written.write(b"\x00" * 128)
    written.write(b"DICM")
    meta = commandset.create_file_meta(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid="2.25.1", transfer_syntax="1.2.840.10008.1.2.1"
    )
    commandset.write_file_meta_info(written, meta)
    for fragment in (b"\x08\x00\x16\x00UI\x1a\x00", b"1.2.840.10008.5.1.4.1.1.2\x00"):
        written.write(fragment)
        written.file.flush()
    request = SimpleNamespace(_dataset_file=written)
    digest, size = received.received_digest(request) or ("", -1)
    content = Path(written.name).read_bytes()
    written.close()
    assert size == len(content)
    assert digest == hashlib.sha256(content).hexdigest()


def test_requests_without_a_hashed_file_have_no_digest() -> None:
    assert received.received_digest(SimpleNamespace(_dataset_file=None)) is None
    assert received.received_digest(SimpleNamespace()) is None


def test_installed_in_pynetdicom() -> None:
    received.install()
    assert dimse_messages.NamedTemporaryFile is received.HashingTemporaryFile


class _FullDisk:
    """A file whose writes and flushes fail as on a full disk (a real one: tests/integration)."""

    def __init__(self, error: int) -> None:
        self.error = error
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:  # noqa: ARG002  fails whatever it is given
        raise OSError(self.error, os.strerror(self.error))

    def flush(self) -> None:
        raise OSError(self.error, os.strerror(self.error))

    def close(self) -> None:
        self.closed = True
        raise OSError(self.error, os.strerror(self.error))  # closing flushes: it fails again


@pytest.fixture
def receiving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("tempfile.tempdir", None)
    monkeypatch.setattr(received.RECEIVING, "max_bytes", None)
    received.receive_into(tmp_path, 1000)
    return tmp_path


@pytest.mark.parametrize(
    ("error", "failure", "message"),
    [
        (errno.ENOSPC, OutOfResources, "no space left to receive the data set"),
        (errno.EIO, StorageUnavailable, "cannot write the received data set: Input/output error"),
    ],
)
def test_a_failed_write_deletes_the_file_drops_the_rest_and_keeps_the_reason(
    receiving: Path, error: int, failure: type[Exception], message: str
) -> None:
    written = received.HashingTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    assert Path(written.name).parent == receiving
    written.write(b"\x00" * 100)
    written._file.close()
    full = _FullDisk(error)
    written._file = full
    assert written.write(b"x" * 50) == 50  # as if written: no exception on the socket's thread
    assert full.closed
    assert not Path(written.name).exists()
    assert written.write(b"y" * 50) == 50
    written.file.flush()  # what pynetdicom calls after each fragment
    written.close()
    request = SimpleNamespace(_dataset_file=written)
    assert type(received.receive_failure(request)) is failure
    assert str(received.receive_failure(request)) == message
    assert written.size == 200


def test_a_failed_flush_is_kept_as_the_reason(receiving: Path) -> None:
    written = received.HashingTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    written._file.close()
    written._file = _FullDisk(errno.ENOSPC)
    request = SimpleNamespace(_dataset_file=written)
    assert isinstance(received.receive_failure(request), OutOfResources)
    assert not Path(written.name).exists()


def test_writing_stops_at_the_size_limit(receiving: Path) -> None:
    written = received.HashingTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    written.write(b"a" * 600)
    written.flush()
    assert Path(written.name).stat().st_size == 600
    written.write(b"b" * 600)  # 1,200 bytes: past the limit of 1,000
    assert not Path(written.name).exists()
    assert list(receiving.iterdir()) == []
    written.write(b"c" * 600)
    written.close()
    failure = received.receive_failure(SimpleNamespace(_dataset_file=written))
    assert isinstance(failure, LimitExceeded)
    assert failure.reason == "object is larger than 1000 bytes"


def test_no_file_can_be_made(receiving: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_inode(*args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "open", no_inode)
    written = received.HashingTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    written.write(b"x" * 10)
    written.file.flush()
    written.close()
    assert isinstance(received.receive_failure(SimpleNamespace(_dataset_file=written)), OutOfResources)


def test_a_whole_data_set_has_no_failure(receiving: Path) -> None:
    written = received.HashingTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    written.write(b"z" * 1000)  # exactly the limit
    assert received.receive_failure(SimpleNamespace(_dataset_file=written)) is None
    assert Path(written.name).stat().st_size == 1000
    written.close()


def test_an_association_can_receive_elsewhere_under_its_own_limit(receiving: Path, tmp_path: Path) -> None:
    """``receive_for``: files pynetdicom makes for that association only, the process default kept."""
    own = tmp_path / "own"
    own.mkdir()
    assoc = SimpleNamespace()
    other = SimpleNamespace()
    received.receive_for(assoc, own, 100)
    with received.receiving_as(assoc):
        mine = received.HashingTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    with received.receiving_as(other):
        theirs = received.HashingTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    outside = received.HashingTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    assert Path(mine.name).parent == own
    assert Path(theirs.name).parent == receiving
    assert Path(outside.name).parent == receiving
    for written in (mine, theirs, outside):
        written.write(b"z" * 500)  # past the association's 100, within the process's 1,000
    assert isinstance(received.receive_failure(SimpleNamespace(_dataset_file=mine)), LimitExceeded)
    assert not Path(mine.name).exists()
    assert received.receive_failure(SimpleNamespace(_dataset_file=theirs)) is None
    assert received.receive_failure(SimpleNamespace(_dataset_file=outside)) is None
    for written in (mine, theirs, outside):
        written.close()
    assert received.receiving_of(assoc) == received.Receiving(100, str(own.absolute()))
    assert received.receiving_of(other) is received.RECEIVING
    assert received.RECEIVING.max_bytes == 1000
