"""C-STORE failure statuses and faults: conflict, malformed objects, disk full, an aborted transfer."""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from dimse_support import (
    AE_TITLE,
    CORPUS,
    Listener,
    after_meta,
    dcmtk,
    half_sent_c_store,
    start_listener,
    store_answer,
)
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from test_disk_full import small_disk  # noqa: F401  fixture

from pixport.archive.ingest import IngestPipeline
from pixport.dimse import received
from pixport.samples import PATIENTS, ct_series

CT = CORPUS / "modality" / "ct" / "CT_small.dcm"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    yield from start_listener(tmp_path)


def store_status(listener: Listener, dataset: pydicom.Dataset | Path) -> int:
    """C-STORE with pynetdicom (for data sets DCMTK refuses to send); the status code."""
    return store_answer(listener, pydicom.dcmread(dataset) if isinstance(dataset, Path) else dataset)[0]


def storescu_status(listener: Listener, path: Path) -> str:
    result = dcmtk("storescu", "-v", "-nh", "-aec", AE_TITLE, "127.0.0.1", listener.port, path)
    return result.stdout + result.stderr


def test_conflicting_duplicate_is_0111_and_nothing_overwritten(listener: Listener, tmp_path: Path) -> None:
    assert "Success" in storescu_status(listener, CT)
    changed = pydicom.dcmread(CT)
    changed.StudyDescription = "changed, same SOP Instance UID"
    altered = tmp_path / "altered.dcm"
    changed.save_as(altered)
    output = storescu_status(listener, altered)
    assert "Status: 0x111)" in output, output
    assert listener.archive.index.count_instances() == 1
    assert len(listener.archive.index.list_conflicts()) == 1


def send_raw(listener: Listener, sop_class: str, sop_instance: str, syntax: str, data_set: bytes) -> int:
    """C-STORE these exact data set bytes (pynetdicom would re-encode, and so repair, a data set)."""
    ae = AE(ae_title="FAULTS")
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = sop_class
        request.AffectedSOPInstanceUID = sop_instance
        request.Priority = 2
        request.DataSet = io.BytesIO(data_set)
        assoc._reactor_checkpoint.clear()  # as send_c_store does: the reactor must not take the reply
        while not assoc._is_paused:
            time.sleep(0.0001)
        assoc.dimse.send_msg(request, assoc.accepted_contexts[0].context_id)
        _, response = assoc.dimse.get_msg(block=True)
        assoc._reactor_checkpoint.set()
        return int(response.Status)
    finally:
        assoc.release()


def test_malformed_objects_get_precise_statuses(listener: Listener) -> None:
    truncated = CORPUS / "malformed" / "MR_truncated.dcm"
    header = pydicom.dcmread(truncated, stop_before_pixels=True)
    status = send_raw(
        listener, header.SOPClassUID, header.SOPInstanceUID, header.file_meta.TransferSyntaxUID,
        after_meta(truncated.read_bytes()),
    )  # fmt: skip
    assert status == 0xC000
    no_uids = pydicom.dcmread(CT)
    del no_uids.StudyInstanceUID
    assert store_status(listener, no_uids) == 0xA900
    assert listener.archive.index.count_instances() == 0
    assert list(listener.archive.blobs.staging_dir.iterdir()) == []


def test_data_set_uids_differing_from_the_request_is_a900(listener: Listener) -> None:
    ds = pydicom.dcmread(CT)
    status = send_raw(
        listener, ds.SOPClassUID, "1.2.3.4.5.6.7", ds.file_meta.TransferSyntaxUID, after_meta(CT.read_bytes())
    )
    assert status == 0xA900
    assert listener.archive.index.count_instances() == 0


def test_unknown_private_sop_class_is_accepted(listener: Listener) -> None:
    private = CORPUS / "malformed" / "unknown_private_sop_class.dcm"
    assert store_status(listener, private) == 0x0000
    assert listener.archive.index.count_instances() == 1


def test_disk_full_is_a700_and_the_node_stays_up(small_disk: Path) -> None:  # noqa: F811
    for node in start_listener(small_disk):
        assert store_status(node, CT) == 0x0000
        big = list(ct_series(PATIENTS[1], "disk-full", slices=1, size=1400))  # ~4 MiB each: more than the disk holds
        assert store_status(node, big[0]) == 0xA700
        assert node.archive.index.count_instances() == 1
        assert list(node.archive.blobs.staging_dir.iterdir()) == []
        assert dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", node.port).returncode == 0


@pytest.fixture
def receive_in_staging(monkeypatch: pytest.MonkeyPatch) -> Callable[[Listener], list[Path]]:
    """Receive as ``pixport dimse serve`` does: each data set written straight into the staging area.

    The other tests' listeners run in the test process, where data sets arrive in the system's
    temporary folder and are copied in.  Returns the files the C-STORE handler adopted in place.
    """
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    monkeypatch.setattr(received.RECEIVING, "max_bytes", received.RECEIVING.max_bytes)
    adopted: list[Path] = []
    adopt = IngestPipeline.adopt_file

    def adopt_and_record(self: IngestPipeline, path: Path, hashed: tuple[str, int] | None = None) -> object:
        adopted.append(path)
        return adopt(self, path, hashed)

    monkeypatch.setattr(IngestPipeline, "adopt_file", adopt_and_record)

    def configure(node: Listener) -> list[Path]:
        received.receive_into(node.archive.blobs.staging_dir, node.archive.ingest.limits.max_object_bytes)
        return adopted

    return configure


def test_disk_full_while_the_data_set_arrives_is_a700_and_nothing_is_left(
    small_disk: Path,  # noqa: F811
    receive_in_staging: Callable[[Listener], list[Path]],
) -> None:
    for node in start_listener(small_disk):
        adopted = receive_in_staging(node)
        assert store_status(node, CT) == 0x0000
        assert len(adopted) == 1, "the data set should have been written in place, as in the listener"
        big = next(ct_series(PATIENTS[1], "disk-full-in-place", slices=1, size=1400))  # ~4 MiB: more than the disk
        assert store_answer(node, big) == (0xA700, "no space left to receive the data set")
        assert len(adopted) == 1
        assert node.archive.index.count_instances() == 1
        assert list(node.archive.blobs.staging_dir.iterdir()) == []
        # The association was answered, not aborted, and the node stores what fits.
        small = next(ct_series(PATIENTS[2], "after-disk-full", slices=1, size=64))
        assert store_answer(node, small) == (0x0000, "")
        assert node.archive.index.count_instances() == 2


def test_a_data_set_over_the_size_limit_is_dropped_as_it_arrives(
    tmp_path: Path, receive_in_staging: Callable[[Listener], list[Path]]
) -> None:
    for node in start_listener(tmp_path, limits={"max_object_bytes": 300_000}):
        adopted = receive_in_staging(node)
        big = next(ct_series(PATIENTS[1], "over-the-limit", slices=1, size=1024))  # ~2 MiB
        assert store_answer(node, big) == (0xA700, "object is larger than 300000 bytes")
        assert adopted == [], "refused from the bytes counted as they arrived, before any ingest step"
        assert list(node.archive.blobs.staging_dir.iterdir()) == []
        assert node.archive.index.count_instances() == 0
        assert store_status(node, CT) == 0x0000


def test_stored_with_remarks_is_warning_b007(listener: Listener) -> None:
    """Stored as sent, with the remark in Error Comment: B007 (B000 would claim a coercion)."""
    dataset = pydicom.dcmread(CT)
    dataset.SeriesInstanceUID = "1.2.03.4"  # a component with a leading zero
    status, comment = store_answer(listener, dataset)
    assert status == 0xB007
    assert comment == "SeriesInstanceUID 1.2.03.4 is not a conformant UID"
    assert listener.archive.index.count_instances() == 1


def test_element_and_nesting_limits_are_a700(tmp_path: Path) -> None:
    """The ingest limits other than the object's size, over DIMSE (the same rules as STOW-RS)."""
    long_text = pydicom.dcmread(CT)
    long_text.ImageComments = "x" * 2000  # LT, not Pixel Data: the element limit applies
    nested = pydicom.dcmread(CT)
    inner = pydicom.Dataset()
    inner.CodeValue = "1"
    for _ in range(3):
        outer = pydicom.Dataset()
        outer.ConceptNameCodeSequence = [inner]
        inner = outer
    nested.ContentSequence = [inner]
    limits = {"max_element_bytes": 1024, "max_sequence_depth": 2}
    for node in start_listener(tmp_path, limits=limits):
        assert store_answer(node, long_text) == (0xA700, "element (0020,4000) is longer than 1024 bytes")
        assert store_answer(node, nested) == (0xA700, "sequences nested deeper than 2 levels")
        assert node.archive.index.count_instances() == 0
        assert list(node.archive.blobs.staging_dir.iterdir()) == []


def test_abort_mid_transfer_leaves_nothing_behind(
    listener: Listener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scripted SCU sends the command and part of a data set, then aborts (pynetdicom parrot style)."""
    # pynetdicom's partial file goes to this test's own folder: /tmp is shared with parallel tests.
    pynetdicom_tmp = tmp_path / "pynetdicom-tmp"
    pynetdicom_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(pynetdicom_tmp))
    assoc = half_sent_c_store(listener.port, CT, "ABORTER")
    time.sleep(0.5)
    assert list(pynetdicom_tmp.iterdir()), "the partial data set should be on disk before the abort"
    assoc.abort()
    time.sleep(0.5)
    assert listener.archive.index.count_instances() == 0
    assert list(listener.archive.blobs.staging_dir.iterdir()) == []
    assert list(pynetdicom_tmp.iterdir()) == []
    # The node stays up and takes the same object whole.
    assert store_status(listener, CT) == 0x0000
