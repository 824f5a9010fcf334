"""Data sets hashed as pynetdicom writes them (pixport.dimse.received)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from pynetdicom import dimse_messages

from pixport.dimse import commandset, received


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
