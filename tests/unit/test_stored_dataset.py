"""The data set a C-GET/C-MOVE sub-operation sends as stored: what pynetdicom reads of it, its bytes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from pixport.dimse.retrieve import StoredDataset, _data_set_bytes, _read_data_set

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def test_pynetdicom_reads_the_uids_it_counts_failures_by() -> None:
    odd = "1.2.3.4.5"  # an odd length: padded on the wire, read back without the pad
    stored = StoredDataset(CT_CLASS, odd, "1.2.840.10008.1.2.1", b"data")
    assert isinstance(stored, Dataset)
    assert stored  # pynetdicom sends a pending data set only if it is truthy
    assert hasattr(stored, "SOPInstanceUID")
    assert stored.SOPInstanceUID == odd
    assert stored.SOPClassUID == CT_CLASS
    assert stored.stored.encoded == b"data"
    assert stored.stored.transfer_syntax_uid == "1.2.840.10008.1.2.1"


def _part10_files() -> list[Path]:
    files = sorted(path for path in CORPUS.rglob("*.dcm") if path.read_bytes()[128:132] == b"DICM")
    return files[:20]


@pytest.mark.parametrize("path", _part10_files(), ids=lambda path: path.name)
def test_the_data_set_read_from_a_file_is_the_one_after_its_file_meta(path: Path) -> None:
    data = path.read_bytes()
    expected = _data_set_bytes(data)
    assert _read_data_set(io.BytesIO(data)) == expected
    meta = dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    assert len(data) - len(expected) == 132 + 12 + meta.FileMetaInformationGroupLength


def test_a_file_without_a_preamble_is_sent_as_it_is() -> None:
    assert _read_data_set(io.BytesIO(b"\x08\x00\x05\x00CS\x00\x00")) == b"\x08\x00\x05\x00CS\x00\x00"


def test_a_file_cut_inside_its_file_meta_is_refused() -> None:
    data = bytes(128) + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + (200).to_bytes(4, "little") + bytes(50)
    with pytest.raises(ValueError, match="File Meta"):
        _read_data_set(io.BytesIO(data))
