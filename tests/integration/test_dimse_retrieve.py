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
    caller_has_nodelay,
    dcmtk,
    dcmtk_environment,
    free_port,
    sop_instance_uid,
    start_listener,
    stored,
    tool,
)
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
)

from pixport.dimse import pdata, retrieve
from pixport.errors import BadQuery

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


@pytest.fixture
def responses_read(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each C-STORE response awaited by ``pdata.exchange``: whether it was read on the sending thread."""
    results: list[bool] = []
    original = pdata.c_store_response

    def recording(pdu: bytes, message_id: int, context_id: int, request: Any = None) -> Any:
        response = original(pdu, message_id, context_id, request)
        results.append(response is not None)
        return response

    monkeypatch.setattr(pdata, "c_store_response", recording)
    return results


def store(listener: Listener, paths: list[Path]) -> str:
    result = dcmtk("storescu", "-aec", AE_TITLE, "127.0.0.1", listener.port, *paths)
    assert result.returncode == 0, result.stderr
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def move_study(listener: Listener, study: str) -> subprocess.CompletedProcess[str]:
    """movescu of one study to the destination ``DEST``."""
    return dcmtk(
        "movescu", "-S", "-aet", "MOVESCU", "-aem", "DEST", "-aec", AE_TITLE,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", listener.port,
    )  # fmt: skip


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
    responses_read: list[bool],
    max_pdu: str,
    *,
    fast: bool,
) -> None:
    monkeypatch.setattr(pdata, "FAST_SEND", fast)
    monkeypatch.setattr(pdata, "READ_RESPONSES", fast)
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
    assert responses_read == ([True] * len(cts) if fast else [])


@pytest.mark.parametrize("max_pdu", ["8192", "65536"])
def test_movescu_destination_receives_every_instance_as_stored(
    tmp_path: Path, direct_sends: list[bool], responses_read: list[bool], max_pdu: str
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
                result = move_study(listener, study)
                assert result.returncode == 0, result.stderr
            finally:
                receiver.terminate()
        assert_received_as_stored(listener, out, cts)
    # Each C-STORE to the destination, each pending C-MOVE response and the final one.
    assert direct_sends == [True] * (2 * len(cts) + 1)
    assert responses_read == [True] * len(cts)


@pytest.mark.parametrize("read_ahead", [True, False])
def test_the_next_blob_is_read_while_the_peer_stores_the_current_one(
    listener: Listener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, read_ahead: bool
) -> None:
    """Each C-STORE sent, the next sub-operation's blob is read before the response is awaited.

    Without it (an instance above ``LOOKAHEAD_MAX_BYTES``) each blob is read after the response
    to the one before.
    """
    if not read_ahead:
        monkeypatch.setattr(retrieve, "LOOKAHEAD_MAX_BYTES", 1000)  # below every CT here
    cts = larger_cts(tmp_path / "cts", 3)
    study = store(listener, cts)
    events: list[str] = []
    blobs = listener.archive.blobs
    original_open, original_response = blobs.open, pdata.c_store_response

    def recording_open(digest: str) -> Any:
        events.append("read")
        return original_open(digest)

    def recording_response(pdu: bytes, message_id: int, context_id: int, request: Any = None) -> Any:
        events.append("response")
        return original_response(pdu, message_id, context_id, request)

    monkeypatch.setattr(blobs, "open", recording_open)
    monkeypatch.setattr(pdata, "c_store_response", recording_response)
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk(
        "getscu", "+B", "-S", "-aet", "GETSCU", "-aec", AE_TITLE, "-od", out,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", listener.port,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    monkeypatch.undo()
    if read_ahead:
        assert events == ["read", "read", "response", "read", "response", "response"]
    else:
        assert events == ["read", "response"] * 3
    assert_received_as_stored(listener, out, cts)


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


def test_a_c_cancel_ahead_of_a_response_is_handed_over_and_honoured(
    listener: Listener, tmp_path: Path, responses_read: list[bool]
) -> None:
    """A C-CANCEL that arrives before the C-STORE response the sending thread waits for.

    getscu cannot cancel, so pynetdicom is the C-GET SCU here: its C-STORE handler sends the
    C-CANCEL before it answers the first sub-operation.  The listener's sending thread reads the
    C-CANCEL, hands it to the DUL (which records it), takes the response pynetdicom's way, and
    the C-GET ends as cancelled after that one sub-operation.
    """
    cts = larger_cts(tmp_path / "cts", 4)
    study = store(listener, cts)
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == 1:
            event.assoc.send_c_cancel(1, query_model=StudyRootQueryRetrieveInformationModelGet)
        return 0x0000

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(
        "127.0.0.1",
        listener.port,
        ae_title=AE_TITLE,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    try:
        started = time.monotonic()
        responses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet, msg_id=1))
        elapsed = time.monotonic() - started
    finally:
        assoc.release()
    status, _ = responses[-1]
    assert status.Status == 0xFE00  # Cancel
    assert status.NumberOfCompletedSuboperations == 1
    assert received == [sop_instance_uid(cts[0])]
    assert responses_read == [False]  # the C-CANCEL came first: handed over, not taken for the response
    assert elapsed < 5  # no wait for a DIMSE timeout


# Delayed ACK holds a Nagle-held write about 40 ms on Linux: 30 sub-operations that stall take
# 1.2 s or more longer than with TCP_NODELAY, against a few ms each when they do not.
SUB_OPERATIONS = 30
STALL = 0.6


def test_getscu_with_nagle_is_not_stalled_per_sub_operation(listener: Listener, tmp_path: Path) -> None:
    """getscu without TCP_NODELAY writes each C-STORE response in two Nagle-held writes (quick ACK)."""
    cts = larger_cts(tmp_path / "cts", SUB_OPERATIONS)
    study = store(listener, cts)
    command = [
        tool("getscu"), "-S", "-aet", "GETSCU", "-aec", AE_TITLE, "--ignore",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(listener.port),
    ]  # fmt: skip
    seconds = {}
    for nodelay in (True, False):
        started = time.monotonic()
        result = subprocess.run(
            command, env=dcmtk_environment(nodelay=nodelay), capture_output=True, text=True, timeout=60, check=False
        )
        seconds[nodelay] = time.monotonic() - started
        assert result.returncode == 0, result.stderr
    assert seconds[False] - seconds[True] < STALL, seconds


def test_a_move_destination_with_nagle_is_not_stalled_per_sub_operation(tmp_path: Path) -> None:
    """storescp without TCP_NODELAY, as the C-MOVE destination: the same two writes per response."""
    port = free_port()
    cts = larger_cts(tmp_path / "cts", SUB_OPERATIONS)
    seconds = {}
    for listener in start_listener(tmp_path, remotes=[{"ae_title": "DEST", "host": "127.0.0.1", "port": port}]):
        study = store(listener, cts)
        for nodelay in (True, False):
            out = tmp_path / f"moved-{nodelay}"
            out.mkdir()
            command = [tool("storescp"), "-od", str(out), "-aet", "DEST", str(port)]
            with subprocess.Popen(command, env=dcmtk_environment(nodelay=nodelay)) as receiver:
                try:
                    time.sleep(0.5)
                    started = time.monotonic()
                    result = move_study(listener, study)
                    seconds[nodelay] = time.monotonic() - started
                    assert result.returncode == 0, result.stderr
                finally:
                    receiver.terminate()
            assert len(list(out.iterdir())) == len(cts)
    assert seconds[False] - seconds[True] < STALL, seconds


def test_c_move_sub_associations_have_tcp_nodelay(tmp_path: Path) -> None:
    """The association PixPort opens to a C-MOVE destination (here pynetdicom, in this process)."""
    port = free_port()
    cts = larger_cts(tmp_path / "cts", 3)
    nodelay: list[bool] = []

    def on_store(event: Any) -> int:
        nodelay.append(caller_has_nodelay(event))
        return 0x0000

    destination = AE(ae_title="DEST")
    destination.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    server = destination.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        for listener in start_listener(tmp_path, remotes=[{"ae_title": "DEST", "host": "127.0.0.1", "port": port}]):
            study = store(listener, cts)
            result = move_study(listener, study)
            assert result.returncode == 0, result.stderr
    finally:
        server.shutdown()
    assert nodelay == [True] * len(cts)


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        (["QueryRetrieveLevel=PATIENT", "PatientID=*"], "wildcard in PatientID"),  # the whole archive
        (["QueryRetrieveLevel=STUDY", "PatientID=PAT-1"], "no StudyInstanceUID for a STUDY level retrieve"),
        (["QueryRetrieveLevel=SERIES", "StudyInstanceUID={study}"], "no SeriesInstanceUID for a SERIES level"),
        (["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.826.0.1.3680043.8.498.*"], "wildcard in StudyInstanceUID"),
    ],
)
def test_a_retrieve_must_name_its_instances(listener: Listener, tmp_path: Path, keys: list[str], reason: str) -> None:
    """A900 for a retrieve without its level's unique key, or with a wildcard in one: nothing is sent."""
    cts = larger_cts(tmp_path / "cts", 2)
    study = store(listener, cts)
    out = tmp_path / "got"
    out.mkdir()
    keys = [key.format(study=study) for key in keys]
    patient_root = keys[0].endswith("PATIENT")
    refused: list[str] = []
    original = retrieve.find_instances

    def find_instances(archive: Any, identifier: Any) -> Any:
        try:
            return original(archive, identifier)
        except BadQuery as exc:
            refused.append(str(exc))
            raise

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(retrieve, "find_instances", find_instances)
        result = dcmtk(
            "getscu", "-v", "-P" if patient_root else "-S", "-aec", AE_TITLE, "-od", out,
            *[arg for key in keys for arg in ("-k", key)], "127.0.0.1", listener.port,
        )  # fmt: skip
    report = result.stdout + result.stderr
    assert "Received C-GET Response (Error: DataSetDoesNotMatchSOPClass)" in report, report
    assert len(refused) == 1
    assert refused[0].startswith(reason), refused
    assert list(out.iterdir()) == []


def test_patient_root_get_at_image_level(listener: Listener, tmp_path: Path) -> None:
    cts = larger_cts(tmp_path / "cts", 3)
    store(listener, cts)
    wanted = pydicom.dcmread(cts[1], stop_before_pixels=True)
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk(
        "getscu", "+B", "-P", "-aec", AE_TITLE, "-od", out,
        "-k", "QueryRetrieveLevel=IMAGE", "-k", f"PatientID={wanted.PatientID}",
        "-k", f"StudyInstanceUID={wanted.StudyInstanceUID}", "-k", f"SeriesInstanceUID={wanted.SeriesInstanceUID}",
        "-k", f"SOPInstanceUID={wanted.SOPInstanceUID}", "127.0.0.1", listener.port,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_received_as_stored(listener, out, [cts[1]])
