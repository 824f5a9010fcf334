"""C-GET and C-MOVE sub-operations written straight to the socket (dimse/pdata.py), with DCMTK peers.

DCMTK's getscu and storescp receive what the listener sends at several maximum PDU lengths;
each instance must arrive byte for byte as stored, whether the P-DATA-TF PDUs were written
directly or, with the fast path off, by pynetdicom.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dimse_support import (
    AE_TITLE,
    CORPUS,
    Listener,
    after_meta,
    dcmtk,
    free_port,
    sop_instance_uid,
    start_listener,
    stored,
    tool,
)
from pydicom.uid import generate_uid

from pixport.dimse import pdata

CT = CORPUS / "modality" / "ct" / "CT_small.dcm"
UID_ROOT = "1.2.826.0.1.3680043.8.498."


def larger_cts(folder: Path, count: int) -> list[Path]:
    """Synthetic CT slices of one study, 300x301 16-bit (180,600 bytes of pixels: 45 PDUs of 4 kB)."""
    folder.mkdir()
    study = generate_uid(UID_ROOT, entropy_srcs=["pdata-study"])
    series = generate_uid(UID_ROOT, entropy_srcs=["pdata-series"])
    paths = []
    for number in range(count):
        dataset = pydicom.dcmread(CT)
        dataset.StudyInstanceUID = study
        dataset.SeriesInstanceUID = series
        dataset.SOPInstanceUID = generate_uid(UID_ROOT, entropy_srcs=["pdata", str(number)])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.InstanceNumber = number + 1
        dataset.Rows, dataset.Columns = 300, 301
        dataset.PixelData = bytes((number + i) % 251 for i in range(300 * 301 * 2))
        path = folder / f"ct{number}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    yield from start_listener(tmp_path)


@pytest.fixture
def direct_sends(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each ``pdata.send_pdus`` call returned (True: the message was written directly)."""
    results: list[bool] = []
    original = pdata.send_pdus

    def recording(dul: Any, pdus: list[pdata.Pdu]) -> bool:
        result = original(dul, pdus)
        results.append(result)
        return result

    monkeypatch.setattr(pdata, "send_pdus", recording)
    return results


def store(listener: Listener, paths: list[Path]) -> str:
    result = dcmtk("storescu", "-aec", AE_TITLE, "127.0.0.1", listener.port, *paths)
    assert result.returncode == 0, result.stderr
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def assert_received_as_stored(listener: Listener, folder: Path, sent: list[Path]) -> None:
    received = {sop_instance_uid(path): path for path in folder.iterdir()}
    assert set(received) == {sop_instance_uid(path) for path in sent}
    for uid, path in received.items():
        assert after_meta(path.read_bytes()) == listener.dataset_bytes(uid)


@pytest.mark.parametrize("max_pdu", ["4096", "16384", "131072"])
@pytest.mark.parametrize("fast", [True, False])
def test_getscu_receives_every_instance_as_stored(
    listener: Listener,
    tmp_path: Path,
    direct_sends: list[bool],
    monkeypatch: pytest.MonkeyPatch,
    max_pdu: str,
    *,
    fast: bool,
) -> None:
    monkeypatch.setattr(pdata, "FAST_SEND", fast)
    cts = larger_cts(tmp_path / "cts", 3)
    study = store(listener, [*cts, CT])  # CT_small: another study, not retrieved
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk(
        "getscu", "+B", "-S", "-pdu", max_pdu, "-aet", "GETSCU", "-aec", AE_TITLE, "-od", out,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", listener.port,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_received_as_stored(listener, out, cts)
    # Each C-STORE, each pending C-GET response and the final one.
    assert direct_sends == ([True] * (2 * len(cts) + 1) if fast else [])


@pytest.mark.parametrize("max_pdu", ["8192", "65536"])
def test_movescu_destination_receives_every_instance_as_stored(
    tmp_path: Path, direct_sends: list[bool], max_pdu: str
) -> None:
    """The sub-operations go on the association PixPort opens to the destination (DCMTK storescp)."""
    port = free_port()
    out = tmp_path / "moved"
    out.mkdir()
    cts = larger_cts(tmp_path / "cts", 4)
    for listener in start_listener(tmp_path, remotes=[{"ae_title": "DEST", "host": "127.0.0.1", "port": port}]):
        study = store(listener, cts)
        command = [tool("storescp"), "+B", "-pdu", max_pdu, "-od", str(out), "-aet", "DEST", str(port)]
        with subprocess.Popen(command) as receiver:
            try:
                time.sleep(0.5)
                result = dcmtk(
                    "movescu", "-S", "-aet", "MOVESCU", "-aem", "DEST", "-aec", AE_TITLE,
                    "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", listener.port,
                )  # fmt: skip
                assert result.returncode == 0, result.stderr
            finally:
                receiver.terminate()
        assert_received_as_stored(listener, out, cts)
    # Each C-STORE to the destination, each pending C-MOVE response and the final one.
    assert direct_sends == [True] * (2 * len(cts) + 1)


def test_a_missing_blob_fails_its_sub_operation_only(listener: Listener, tmp_path: Path) -> None:
    """A blob that cannot be read fails its sub-operation: the others are sent, the C-GET warns."""
    cts = larger_cts(tmp_path / "cts", 3)
    study = store(listener, cts)
    lost = sop_instance_uid(cts[1])
    listener.archive.blobs.path_of(stored(listener.archive, lost).digest).unlink()  # type: ignore[attr-defined]
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk(
        "getscu", "+B", "-v", "-S", "-aet", "GETSCU", "-aec", AE_TITLE, "-od", out,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", listener.port,
    )  # fmt: skip
    report = result.stdout + result.stderr
    assert "Warning" in report, report
    assert "Number of Completed Suboperations : 2" in report, report
    assert "Number of Failed Suboperations    : 1" in report, report
    assert_received_as_stored(listener, out, [cts[0], cts[2]])
