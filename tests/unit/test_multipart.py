"""The streaming multipart/related splitter: every way a body can be cut into chunks."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixport.archive.ingest import InstanceResult
from pixport.archive.multipart import MultipartError, StowReceiver
from pixport.archive.staging import StagedFile, StagingFile

BOUNDARY = "b0undary-x"
PARTS = [b"first part \r\n-- not a delimiter --b0undary", b"", bytes(range(256)) * 40, b"\r\n\r\n"]


def body(parts: list[bytes], *, preamble: bytes = b"", padding: bytes = b"") -> bytes:
    out = preamble
    for part in parts:
        out += f"--{BOUNDARY}".encode() + padding + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
    return out + f"--{BOUNDARY}--\r\nepilogue".encode()


def receive(data: bytes, chunk: int, tmp_path: Path, max_bytes: int = 1 << 20) -> StowReceiver:
    receiver = StowReceiver(BOUNDARY, lambda: StagingFile(tmp_path, max_bytes))
    for start in range(0, len(data), chunk):
        receiver.write(data[start : start + chunk])
    receiver.finish()
    return receiver


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 13, 64, 1000, 1 << 20])
def test_parts_survive_any_chunking(tmp_path: Path, chunk: int) -> None:
    receiver = receive(body(PARTS, preamble=b"ignored preamble\r\n", padding=b" \t"), chunk, tmp_path)
    staged = [item for item in receiver.items if isinstance(item, StagedFile)]
    assert [item.path.read_bytes() for item in staged] == PARTS
    assert receiver.parts == len(PARTS)


def test_other_part_types_are_refused_and_skipped(tmp_path: Path) -> None:
    data = (
        f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nDICOM\r\n--{BOUNDARY}--"
    ).encode()
    receiver = receive(data, 7, tmp_path)
    assert isinstance(receiver.items[0], InstanceResult)
    assert "text/plain" in (receiver.items[0].reason or "")
    assert isinstance(receiver.items[1], StagedFile)
    assert receiver.items[1].path.read_bytes() == b"DICOM"


def test_an_unclosed_body_cuts_the_last_part_and_leaves_no_file(tmp_path: Path) -> None:
    data = body(PARTS).split(f"--{BOUNDARY}--".encode())[0][:-40]
    receiver = receive(data, 100, tmp_path)
    assert isinstance(receiver.items[-1], InstanceResult)
    assert receiver.items[-1].reason == "part was cut short"
    staged = {item.path for item in receiver.items if isinstance(item, StagedFile)}
    assert set(tmp_path.iterdir()) == staged


def test_an_oversized_part_is_refused_and_the_rest_kept(tmp_path: Path) -> None:
    receiver = receive(body([b"x" * 5000, b"small"]), 512, tmp_path, max_bytes=4096)
    assert isinstance(receiver.items[0], InstanceResult)
    assert receiver.items[0].failure_code == 0xA700
    assert isinstance(receiver.items[1], StagedFile)
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("data", [b"", b"no delimiter at all", f"--{BOUNDARY}junk\r\n".encode()])
def test_malformed_bodies_raise(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(MultipartError):
        receive(data, 4, tmp_path)
