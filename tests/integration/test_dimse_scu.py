"""PixPort as a DICOM client against real peers: DCMTK storescp and dcmqrscp, and Orthanc.

The library (``pixport.dimse.scu``) and the commands (``pixport dimse ...``, as subprocesses).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dimse_support import after_meta, free_port
from peers import Peer, dcmqrscp, load_with_storescu, orthanc, orthanc_get, storescp
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)
from structlog.testing import capture_logs

from pixport.archive.node import Archive
from pixport.config import DimseSettings, LimitSettings, RemoteNode, Settings, StorageSettings
from pixport.dimse import scu
from pixport.dimse.network import configure_pynetdicom
from pixport.dimse.received import RECEIVING
from pixport.errors import ConfigurationError, PeerUnavailable
from pixport.wiring import build_archive

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
PIXPORT = Path(sys.executable).with_name("pixport")
SCU_AET = "PIXPORT"
CT_SMALL = CORPUS / "modality" / "ct" / "CT_small.dcm"
MR_SMALL = CORPUS / "modality" / "mr" / "MR_small.dcm"
# No Data Set Trailing Padding (FFFC,FFFC) in these: DCMTK-based peers (Orthanc, dcmqrscp) drop it
# when they send, as PS3.5 7.7 allows, so only files without it can come back byte-identical.
CT_SIGNED = CORPUS / "modality" / "ct" / "ct_SignedCT.dcm"
CT_VEDRAN = CORPUS / "modality" / "ct" / "ct_VedranZdesic.dcm"
CT_JPEG_LOSSLESS = CORPUS / "modality" / "ct" / "ct_GuillemVela_jpegll.dcm"
KOREAN = sorted((CORPUS / "charset").glob("korean_*utf8*.dcm"))
ORTHANC_SET = [*KOREAN, CT_JPEG_LOSSLESS]
KOREAN_NAME = "Hong^Gildong=洪^吉洞=홍^길동"
# Several transfer syntaxes, one file per SOP Instance UID (the corpus reuses some UIDs).
AS_STORED = [
    CORPUS / "transfer-syntax" / name
    for name in (
        "implicit_MR_small_implicit.dcm",
        "bigendian_SC_rgb_small_odd.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "jpeg-baseline_SC_rgb_jpeg_dcmtk.dcm",
        "jpegls-lossless_CT1_JLSL",
        "rle_CT1_RLE",
    )
] + [CT_SMALL]


def remote_of(peer: Peer) -> RemoteNode:
    return RemoteNode(ae_title=peer.ae_title, host="127.0.0.1", port=peer.port)


def data_set_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file: what travels in a C-STORE, without the File Meta."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def received_by_uid(folder: Path) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.iterdir()}


def stored_by_uid(archive: Archive) -> dict[str, bytes]:
    stored = {}
    for uid, digest in archive.index.iter_digests():
        with archive.blobs.open(digest) as fp:
            stored[uid] = fp.read()
    return stored


@pytest.fixture
def settings() -> DimseSettings:
    return DimseSettings(ae_title=SCU_AET, acse_timeout=10, dimse_timeout=30, network_timeout=30)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    node = build_archive(Settings(storage=StorageSettings(data_dir=tmp_path / "archive")))
    yield node
    node.close()


@pytest.fixture(scope="module")
def orthanc_with_korean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Peer, Peer]]:
    """Orthanc holding what PixPort sent it, and a storescp it knows as a C-MOVE destination."""
    tmp = tmp_path_factory.mktemp("orthanc")
    with storescp(tmp, "MOVEDEST") as destination, orthanc(tmp, modalities={"MOVEDEST": destination.port}) as node:
        results = scu.send(DimseSettings(ae_title=SCU_AET), remote_of(node), ORTHANC_SET)
        assert all(r.ok for r in results), results
        yield node, destination


# ---------------------------------------------------------------------------------------------
# DCMTK storescp: C-ECHO, C-STORE
# ---------------------------------------------------------------------------------------------


def test_echo_storescp(tmp_path: Path, settings: DimseSettings) -> None:
    with storescp(tmp_path) as peer:
        assert scu.echo(settings, remote_of(peer)) == 0x0000


def test_send_as_stored_is_byte_identical(tmp_path: Path, settings: DimseSettings) -> None:
    with storescp(tmp_path) as peer:
        results = scu.send(settings, remote_of(peer), AS_STORED)
    assert [r.ok for r in results] == [True] * len(AS_STORED), results
    assert not any(r.transcoded for r in results)
    received = received_by_uid(peer.folder)
    assert len(received) == len(AS_STORED)
    for path, result in zip(AS_STORED, results, strict=True):
        assert result.sop_instance_uid is not None
        got = received[result.sop_instance_uid]
        assert data_set_bytes(got) == data_set_bytes(path), path.name
        assert pydicom.dcmread(got).file_meta.TransferSyntaxUID == result.transfer_syntax


def test_send_decodes_when_the_peer_takes_only_uncompressed(tmp_path: Path, settings: DimseSettings) -> None:
    jpeg = CORPUS / "transfer-syntax" / "jpegls-lossless_CT1_JLSL"
    with storescp(tmp_path, accept_all=False) as peer:
        [result] = scu.send(settings, remote_of(peer), [jpeg])
    assert result.ok
    assert result.transcoded
    assert result.transfer_syntax == ExplicitVRLittleEndian
    [got] = peer.folder.iterdir()
    received = pydicom.dcmread(got)
    original = pydicom.dcmread(jpeg)
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert (received.pixel_array == original.pixel_array).all()


def test_send_data_sets_and_reports_unreadable_files(tmp_path: Path, settings: DimseSettings) -> None:
    dataset = pydicom.dcmread(MR_SMALL)
    dataset.SOPInstanceUID = generate_uid()
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not DICOM")
    with storescp(tmp_path) as peer:
        results = scu.send(settings, remote_of(peer), [dataset, not_dicom])
    by_source = {r.source: r for r in results}
    assert by_source["dataset #1"].ok
    assert by_source["dataset #1"].sop_instance_uid == dataset.SOPInstanceUID
    assert not by_source[str(not_dicom)].ok
    assert by_source[str(not_dicom)].reason
    assert list(received_by_uid(peer.folder)) == [dataset.SOPInstanceUID]


def test_many_instances_share_one_association(tmp_path: Path, settings: DimseSettings) -> None:
    copies = []
    for n in range(5):
        dataset = pydicom.dcmread(CT_SMALL)
        dataset.SOPInstanceUID = generate_uid()
        path = tmp_path / f"ct{n}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        copies.append(path)
    associations: list[int] = []
    ae = AE(ae_title="COUNTER")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    handlers = [(evt.EVT_REQUESTED, lambda _e: associations.append(1)), (evt.EVT_C_STORE, lambda _e: 0x0000)]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    try:
        remote = RemoteNode(ae_title="COUNTER", host="127.0.0.1", port=server.server_address[1])
        assert all(r.ok for r in scu.send(settings, remote, copies))
    finally:
        server.shutdown()
    assert len(associations) == 1


def test_tcp_nodelay_on_the_scu_socket(tmp_path: Path, settings: DimseSettings) -> None:
    from pynetdicom.presentation import build_context  # noqa: PLC0415

    with storescp(tmp_path) as peer, scu.associate(settings, remote_of(peer), [build_context(Verification)]) as assoc:
        sock = assoc.dul.socket.socket
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


# pynetdicom 3.0.4 drops (without closing) the socket of a refused connection (transport.py,
# AssociationSocket.connect): its ResourceWarning is the library's, not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unreachable_peer_raises_peer_unavailable(settings: DimseSettings) -> None:
    with socket.socket() as sock:  # a port that is certainly closed: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        remote = RemoteNode(ae_title="NOBODY", host="127.0.0.1", port=port)
        with pytest.raises(PeerUnavailable, match=r"NOBODY@127\.0\.0\.1:\d+ is unavailable: no connection"):
            scu.echo(settings, remote)
        with pytest.raises(PeerUnavailable):
            scu.send(settings, remote, [CT_SMALL])


def test_rejected_association_raises_peer_unavailable(tmp_path: Path, settings: DimseSettings) -> None:
    with dcmqrscp(tmp_path, "QRSCP") as peer:
        wrong = RemoteNode(ae_title="NOT-QRSCP", host="127.0.0.1", port=peer.port)
        with pytest.raises(PeerUnavailable, match="rejected the association"):
            scu.echo(settings, wrong)


def test_a_peer_rejecting_and_closing_at_once_is_reported_as_rejecting(settings: DimseSettings) -> None:
    """A-ASSOCIATE-RJ and the connection's close arrive together, fifty times over.

    pynetdicom's requestor looks at the socket only after its request is sent; by then our DUL
    has often read the rejection and the close already, and pynetdicom reports an abort.
    """
    rejection = bytes((0x03, 0, 0, 0, 0, 4, 0, 0x01, 0x01, 0x07))  # permanent, called AE title not recognised
    listening = socket.create_server(("127.0.0.1", 0))
    rounds = 50

    def reject_all() -> None:
        for _ in range(rounds):
            connection, _ = listening.accept()
            with connection:
                connection.recv(65536)  # the A-ASSOCIATE-RQ (one read is enough on loopback)
                connection.sendall(rejection)

    peer = threading.Thread(target=reject_all, daemon=True)
    peer.start()
    try:
        remote = RemoteNode(ae_title="REJECTER", host="127.0.0.1", port=listening.getsockname()[1])
        for _ in range(rounds):
            with pytest.raises(PeerUnavailable, match="rejected the association"):
                scu.echo(settings, remote)
    finally:
        peer.join(10)
        listening.close()


def test_send_opens_a_new_association_after_an_abort(settings: DimseSettings) -> None:
    """A scripted peer (pynetdicom) aborts on the first C-STORE it receives, then accepts."""
    received: list[str] = []
    aborted = threading.Event()

    def handle_store(event: Any) -> int:
        if not aborted.is_set():
            aborted.set()
            event.assoc.abort()
            return 0xC000
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="FLAKY")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        port = server.server_address[1]
        results = scu.send(settings, RemoteNode(ae_title="FLAKY", host="127.0.0.1", port=port), [CT_SMALL])
    finally:
        server.shutdown()
    assert aborted.is_set()
    assert [r.ok for r in results] == [True], results
    assert received == [str(pydicom.dcmread(CT_SMALL).SOPInstanceUID)]


def test_resolve_remote_known_and_ad_hoc() -> None:
    settings = DimseSettings(remotes=[RemoteNode(ae_title="PACS", host="10.0.0.5", port=104, tls=True)])
    assert scu.resolve_remote(settings, "PACS").tls
    ad_hoc = scu.resolve_remote(settings, "OTHER@192.0.2.1:11112")
    assert (ad_hoc.ae_title, ad_hoc.host, ad_hoc.port, ad_hoc.tls) == ("OTHER", "192.0.2.1", 11112, False)
    with pytest.raises(ConfigurationError):
        scu.resolve_remote(settings, "UNKNOWN")


# ---------------------------------------------------------------------------------------------
# DCMTK dcmqrscp: C-FIND, C-GET, C-MOVE
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qrscp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Peer, Peer]]:
    """dcmqrscp loaded with two CT studies by storescu, and a storescp destination."""
    tmp = tmp_path_factory.mktemp("qr")
    with storescp(tmp, "QRDEST") as destination, dcmqrscp(tmp, "QRSCP", known={"QRDEST": destination.port}) as peer:
        load_with_storescu(peer, [CT_SIGNED, CT_VEDRAN])
        yield peer, destination


def test_find_on_dcmqrscp(qrscp: tuple[Peer, Peer], settings: DimseSettings) -> None:
    peer, _ = qrscp
    ct = pydicom.dcmread(CT_SIGNED, stop_before_pixels=True)
    matches = scu.find(settings, remote_of(peer), "STUDY", {"PatientID": ct.PatientID, "PatientName": ""})
    assert [m.StudyInstanceUID for m in matches] == [ct.StudyInstanceUID]
    assert str(matches[0].PatientName) == str(ct.PatientName)
    series = scu.find(settings, remote_of(peer), "SERIES", {"StudyInstanceUID": ct.StudyInstanceUID, "Modality": ""})
    assert [(s.SeriesInstanceUID, s.Modality) for s in series] == [(ct.SeriesInstanceUID, "CT")]


def test_get_from_dcmqrscp_into_the_archive(
    qrscp: tuple[Peer, Peer], settings: DimseSettings, archive: Archive
) -> None:
    peer, _ = qrscp
    ct = pydicom.dcmread(CT_SIGNED, stop_before_pixels=True)
    retrieval = scu.get(settings, remote_of(peer), "STUDY", [ct.StudyInstanceUID], archive)
    assert retrieval.ok, retrieval
    assert retrieval.completed == 1
    assert [r.status for r in retrieval.instances] == ["stored"]
    stored = stored_by_uid(archive)
    assert list(stored) == [ct.SOPInstanceUID]
    blob = archive.blobs.staging_dir / "check.dcm"
    blob.write_bytes(stored[ct.SOPInstanceUID])
    assert data_set_bytes(blob) == data_set_bytes(CT_SIGNED)
    # Again: the archive's duplicate rule applies to what C-GET brings.
    again = scu.get(settings, remote_of(peer), "STUDY", [ct.StudyInstanceUID], archive)
    assert [r.status for r in again.instances] == ["duplicate"]


def test_get_leaves_no_received_file_behind(
    qrscp: tuple[Peer, Peer], settings: DimseSettings, archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a C-GET brings is received into the archive's staging area and adopted from there.

    Not into the process's temporary folder, where pynetdicom, as a requester, never deletes it.
    """
    peer, _ = qrscp
    temporary = tmp_path / "process-tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))

    def copied(*args: object, **kwargs: object) -> object:
        raise AssertionError("a received data set was copied instead of adopted")

    monkeypatch.setattr(archive.ingest, "stage_stream", copied)
    ct = pydicom.dcmread(CT_SIGNED, stop_before_pixels=True)
    retrieval = scu.get(settings, remote_of(peer), "STUDY", [ct.StudyInstanceUID], archive)
    assert [r.status for r in retrieval.instances] == ["stored"]
    assert list(temporary.iterdir()) == []
    assert list(archive.blobs.staging_dir.iterdir()) == []
    assert (RECEIVING.max_bytes, RECEIVING.directory) == (None, None)  # the process default is left alone


def test_get_refuses_an_instance_over_the_size_limit_as_it_arrives(
    qrscp: tuple[Peer, Peer], settings: DimseSettings, tmp_path: Path
) -> None:
    """0xA700 to the peer, the reason kept, nothing of it on disk: as the listener does."""
    peer, _ = qrscp
    limit = 64 * 1024
    assert Path(CT_SIGNED).stat().st_size > limit
    node = build_archive(
        Settings(storage=StorageSettings(data_dir=tmp_path / "small"), limits=LimitSettings(max_object_bytes=limit))
    )
    try:
        ct = pydicom.dcmread(CT_SIGNED, stop_before_pixels=True)
        with capture_logs() as logs:
            retrieval = scu.get(settings, remote_of(peer), "STUDY", [ct.StudyInstanceUID], node)
        # Stopped while it arrived (received.py), not read whole and refused by the ingest.
        assert [entry["error"] for entry in logs if entry["event"] == "dimse.store.not_received"] == ["LimitExceeded"]
        assert [(r.status, r.failure_code, r.reason) for r in retrieval.instances] == [
            ("rejected", 0xA700, f"object is larger than {limit} bytes")
        ]
        assert (retrieval.completed, retrieval.failed) == (0, 1)  # the peer heard it
        assert stored_by_uid(node) == {}
        assert list(node.blobs.staging_dir.iterdir()) == []
    finally:
        node.close()


def test_get_answers_a_conflicting_duplicate_as_our_scp_does(
    qrscp: tuple[Peer, Peer], settings: DimseSettings, archive: Archive, tmp_path: Path
) -> None:
    """Each instance a C-GET brings is stored before it is answered, and a conflict is 0111 to the peer."""
    peer, _ = qrscp
    other = pydicom.dcmread(CT_SIGNED)
    other.InstitutionName = "ANOTHER HOSPITAL"  # the same SOP Instance UID, other bytes
    held = tmp_path / "held.dcm"
    other.save_as(held, enforce_file_format=True)
    assert [r.status for r in archive.ingest.ingest_paths([held])] == ["stored"]
    retrieval = scu.get(settings, remote_of(peer), "STUDY", [other.StudyInstanceUID], archive)
    assert [r.status for r in retrieval.instances] == ["conflict"]
    # The peer heard the conflict: it counts the sub-operation failed, not completed.
    assert (retrieval.completed, retrieval.failed) == (0, 1)
    assert not retrieval.ok
    assert stored_by_uid(archive)[str(other.SOPInstanceUID)] == held.read_bytes()


def test_get_cut_off_mid_instance_leaves_nothing_behind(settings: DimseSettings, archive: Archive) -> None:
    """A peer that vanishes halfway through a C-GET's C-STORE: its partial file is deleted.

    The peer is pynetdicom, sending the first half of the sub-operation's PDUs by hand and
    then closing its socket once the partial data set is in our staging area.
    """
    ct = pydicom.dcmread(CT_SIGNED)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ct, enforce_file_format=False)
    data_set = after_meta(buffer.getvalue())
    staging = archive.blobs.staging_dir
    cut: list[bool] = []

    def handle_get(event: Any) -> Iterator[Any]:
        yield 1
        context = next(c for c in event.assoc.accepted_contexts if c.abstract_syntax == CTImageStorage)
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = CTImageStorage
        request.AffectedSOPInstanceUID = ct.SOPInstanceUID
        request.Priority = 2
        request.DataSet = io.BytesIO(data_set)
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        fragments = list(message.encode_msg(context.context_id, 4096))
        for pdata in fragments[: len(fragments) // 2]:
            event.assoc.dul.send_pdu(pdata)
        deadline = time.monotonic() + 10
        while not any(p.stat().st_size for p in staging.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.01)
        cut.append(any(staging.iterdir()))
        event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)  # gone, without A-ABORT

    configure_pynetdicom()
    peer_ae = AE(ae_title="CUTOFF")
    peer_ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    peer_ae.add_supported_context(CTImageStorage, ct.file_meta.TransferSyntaxUID, scu_role=True, scp_role=True)
    port = free_port()
    server = peer_ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_GET, handle_get)])
    try:
        remote = RemoteNode(ae_title="CUTOFF", host="127.0.0.1", port=port)
        with pytest.raises(PeerUnavailable):
            scu.get(settings, remote, "STUDY", [ct.StudyInstanceUID], archive, sop_class_uids=[CTImageStorage])
    finally:
        server.shutdown()
    assert cut == [True]  # the partial data set was in staging when the peer vanished
    deadline = time.monotonic() + 10
    while any(staging.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(staging.iterdir()) == []
    assert stored_by_uid(archive) == {}


def test_move_from_dcmqrscp_to_storescp(qrscp: tuple[Peer, Peer], settings: DimseSettings) -> None:
    peer, destination = qrscp
    ct = pydicom.dcmread(CT_VEDRAN, stop_before_pixels=True)
    retrieval = scu.move(settings, remote_of(peer), "QRDEST", "STUDY", [ct.StudyInstanceUID])
    assert retrieval.status == 0x0000
    assert (retrieval.completed, retrieval.failed) == (1, 0)
    received = received_by_uid(destination.folder)
    assert data_set_bytes(received[str(ct.SOPInstanceUID)]) == data_set_bytes(CT_VEDRAN)


# ---------------------------------------------------------------------------------------------
# Orthanc: send, find (Korean names), get, move
# ---------------------------------------------------------------------------------------------


def test_orthanc_received_what_was_sent(orthanc_with_korean: tuple[Peer, Peer]) -> None:
    node, _ = orthanc_with_korean
    statistics = orthanc_get(node, "/statistics")
    assert isinstance(statistics, dict)
    assert statistics["CountInstances"] == len(ORTHANC_SET)


def test_find_korean_names_from_orthanc(orthanc_with_korean: tuple[Peer, Peer], settings: DimseSettings) -> None:
    node, _ = orthanc_with_korean
    expected = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in KOREAN[:2]}
    matches = scu.find(settings, remote_of(node), "STUDY", {"PatientName": "Hong*", "PatientID": ""})
    assert {m.StudyInstanceUID for m in matches} == expected
    for match in matches:
        name = match.PatientName
        assert str(name) == KOREAN_NAME
        assert (name.alphabetic, name.ideographic, name.phonetic) == ("Hong^Gildong", "洪^吉洞", "홍^길동")
        assert match.to_json_dict()["00100010"]["Value"] == [
            {"Alphabetic": "Hong^Gildong", "Ideographic": "洪^吉洞", "Phonetic": "홍^길동"}
        ]


def test_get_from_orthanc_is_byte_identical(
    orthanc_with_korean: tuple[Peer, Peer], settings: DimseSettings, archive: Archive
) -> None:
    node, _ = orthanc_with_korean
    sent = ORTHANC_SET
    studies = sorted({str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in sent})
    retrieval = scu.get(settings, remote_of(node), "STUDY", studies, archive)
    assert retrieval.ok, retrieval
    assert retrieval.completed == len(sent)
    stored = stored_by_uid(archive)
    check = archive.blobs.staging_dir / "check.dcm"
    for path in sent:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        check.write_bytes(stored[uid])
        assert data_set_bytes(check) == data_set_bytes(path), path.name


def test_move_from_orthanc_to_storescp(orthanc_with_korean: tuple[Peer, Peer], settings: DimseSettings) -> None:
    node, destination = orthanc_with_korean
    ct = pydicom.dcmread(CT_JPEG_LOSSLESS, stop_before_pixels=True)
    retrieval = scu.move(settings, remote_of(node), "MOVEDEST", "STUDY", [ct.StudyInstanceUID])
    assert retrieval.status == 0x0000
    assert (retrieval.completed, retrieval.failed) == (1, 0)
    received = received_by_uid(destination.folder)
    assert data_set_bytes(received[str(ct.SOPInstanceUID)]) == data_set_bytes(CT_JPEG_LOSSLESS)


# ---------------------------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------------------------


def pixport(data_dir: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXPORT_")}
    env |= {"PIXPORT_STORAGE__DATA_DIR": str(data_dir), "PIXPORT_DIMSE__AE_TITLE": SCU_AET, "COLUMNS": "250"}
    return subprocess.run(
        [str(PIXPORT), *map(str, args)], env=env, capture_output=True, text=True, timeout=240, check=False
    )


def test_cli_echo_send_and_unreachable(tmp_path: Path) -> None:
    folder = tmp_path / "to-send"
    folder.mkdir()
    for path in AS_STORED[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "readme.txt").write_text("not DICOM")
    with storescp(tmp_path) as peer:
        echoed = pixport(tmp_path / "data", "dimse", "echo", peer.address)
        assert echoed.returncode == 0, echoed.stderr
        assert "status 0x0000" in echoed.stdout
        sent = pixport(tmp_path / "data", "dimse", "send", "--json", peer.address, folder)
        assert sent.returncode == 0, sent.stderr
        summary = json.loads(sent.stdout)
        assert (summary["found"], summary["sent"], summary["sent_as_stored"], summary["skipped"]) == (3, 3, 3, 1)
        table = pixport(tmp_path / "data", "dimse", "send", peer.address, AS_STORED[0])
        assert "Send summary" in table.stdout
        assert "every DICOM instance was stored" in table.stdout
        # A mistyped path is not a success: the rest is sent, and the command fails and says why.
        missing = tmp_path / "no-such-folder"
        partly = pixport(tmp_path / "data", "dimse", "send", "--json", peer.address, AS_STORED[1], missing)
        assert partly.returncode == 1, partly.stderr
        summary = json.loads(partly.stdout)
        assert (summary["found"], summary["sent"], summary["not_read"], summary["skipped"]) == (1, 1, 1, 0)
        assert summary["not_read_sources"] == [{"source": str(missing), "reason": "no such file or folder"}]
        shown = pixport(tmp_path / "data", "dimse", "send", peer.address, missing)
        assert shown.returncode == 1
        assert "no such file or folder" in shown.stdout
        assert "Result: 1 source could not be read." in shown.stdout
        # A folder with nothing to send fails too, rather than report that all went well.
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "notes.txt").write_text("not DICOM")
        nothing = pixport(tmp_path / "data", "dimse", "send", peer.address, empty)
        assert nothing.returncode == 1
        assert "Result: nothing was sent: no DICOM instance was found." in nothing.stdout
    gone = pixport(tmp_path / "data", "dimse", "echo", peer.address)
    assert gone.returncode == 1
    assert f"pixport: DICOM peer {peer.address} is unavailable" in gone.stderr
    unknown = pixport(tmp_path / "data", "dimse", "echo", "NOT-CONFIGURED")
    assert unknown.returncode == 2
    assert "unknown DICOM node" in unknown.stderr


def test_cli_find_get_move_against_orthanc(orthanc_with_korean: tuple[Peer, Peer], tmp_path: Path) -> None:
    node, _ = orthanc_with_korean
    found = pixport(tmp_path / "data", "dimse", "find", node.address, "-k", "PatientName=Hong*", "--json")
    assert found.returncode == 0, found.stderr
    documents = json.loads(found.stdout)
    assert len(documents) == 2
    assert {d["00100010"]["Value"][0]["Phonetic"] for d in documents} == {"홍^길동"}
    assert "Hong" not in found.stderr  # no patient names in logs
    table = pixport(tmp_path / "data", "dimse", "find", node.address, "--level", "study", "-k", "PatientName=Hong*")
    assert table.returncode == 0, table.stderr
    assert "洪^吉洞" in table.stdout
    ct = pydicom.dcmread(CT_JPEG_LOSSLESS, stop_before_pixels=True)
    got = pixport(tmp_path / "data", "dimse", "get", "--json", node.address, ct.StudyInstanceUID)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["stored"] == 1
    listed = pixport(tmp_path / "data", "archive", "check", "--json")
    assert json.loads(listed.stdout)["instances_checked"] == 1
    moved = pixport(tmp_path / "data", "dimse", "move", "--json", node.address, "MOVEDEST", ct.StudyInstanceUID)
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["completed"] == 1
    shown = pixport(tmp_path / "data", "dimse", "move", node.address, "MOVEDEST", ct.StudyInstanceUID)
    assert shown.returncode == 0, shown.stderr
    assert "Result: 1 instance sent." in shown.stdout
    refused = pixport(tmp_path / "data", "dimse", "move", node.address, "UNKNOWNDEST", ct.StudyInstanceUID)
    assert refused.returncode == 1
    assert "Result: C-MOVE ended with status 0xC000." in refused.stdout  # Orthanc's answer to an unknown destination
    unknown = pixport(tmp_path / "data", "dimse", "get", node.address, generate_uid())
    assert unknown.returncode == 1
    assert "Result: C-GET ended with status 0xC000." in unknown.stdout  # Orthanc's answer to no match


def test_cli_get_and_move_of_nothing_fail(qrscp: tuple[Peer, Peer], tmp_path: Path) -> None:
    """A UID the node does not hold (mistyped, say) retrieves nothing: not a success.

    dcmqrscp answers such a retrieve with success and no sub-operation (Orthanc with 0xC000).
    """
    peer, _ = qrscp
    for command in (["get"], ["move", "QRDEST"]):
        nothing = pixport(tmp_path / "data", "dimse", command[0], peer.address, *command[1:], generate_uid())
        assert nothing.returncode == 1, (command, nothing.stdout, nothing.stderr)
        assert "0x0000" in nothing.stdout  # the node said success
        assert "Result: the node had no instance matching these UIDs." in nothing.stdout


def test_cli_serve_runs_or_explains(tmp_path: Path) -> None:
    """`dimse serve` exists; with no listener module it says so (not a traceback)."""
    done = pixport(tmp_path / "data", "dimse", "serve", "--help")
    assert done.returncode == 0
    assert "Serve as a DICOM node" in done.stdout
