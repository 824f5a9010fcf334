"""The archive as a DICOM service, driven by DCMTK's tools (real peers)."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dimse_support import (
    AE_TITLE,
    CORPUS,
    Listener,
    after_meta,
    association_request,
    dcmtk,
    dcmtk_environment,
    free_port,
    sop_instance_uid,
    start_listener,
    stored,
    tool,
)
from pydicom.uid import UID, generate_uid
from pynetdicom import AE, evt

from pixport.storage.base import Match, Query

CT = CORPUS / "modality" / "ct" / "CT_small.dcm"
KOREAN_ISO2022 = CORPUS / "charset" / "korean_chrI2_iso2022-ir149.dcm"
KOREAN_UTF8 = CORPUS / "charset" / "korean_chrI2_utf8.dcm"
TRANSFER_SYNTAXES = sorted((CORPUS / "transfer-syntax").iterdir())
HONG = "Hong^Gildong=洪^吉洞=홍^길동"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    yield from start_listener(tmp_path)


def storescu(listener: Listener, *files: Path, calling: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    return dcmtk("storescu", "-R", "-nh", "-aet", calling, "-aec", AE_TITLE, "127.0.0.1", listener.port, *files)


def send_as_stored(port: int, called: str, files: list[Path], *, every_one: bool = True) -> None:
    """Each file in its own SOP class and transfer syntax, by DCMTK's dcmsend, never decompressed.

    (storescu proposes a fixed list of SOP classes: it skips, with exit code 0, an Encapsulated
    STL or any class it does not know.)  A file dcmsend will not send (a SOP Instance UID it
    calls invalid) goes by pynetdicom, as a data set with its own UIDs (its File Meta's differ).
    ``every_one``: the peer must accept every file's transfer syntax (PixPort does; DCMTK's
    storescp does not).
    """
    result = dcmtk("dcmsend", "-v", "-dn", "-nh", "-aec", called, "127.0.0.1", port, *files, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = result.stdout + result.stderr
    refused = [path for path in files if f"cannot add DICOM file to the transfer list: {path}:" in summary]
    assert len(refused) <= 1, refused
    if not every_one:
        return
    assert f"sent to the peer       : {len(files) - len(refused)}" in summary, summary[summary.find("Status") :]
    for path in refused:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        ae = AE(ae_title="DCMSEND")
        ae.add_requested_context(header.SOPClassUID, header.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        assert assoc.is_established
        try:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000, path.name
        finally:
            assoc.release()


def test_echoscu(listener: Listener) -> None:
    result = dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", listener.port)
    assert result.returncode == 0, result.stderr


def test_a_released_association_logs_no_error(listener: Listener, caplog: pytest.LogCaptureFixture) -> None:
    """The peer closing its connection after A-RELEASE-RP is how an association ends, not a fault."""
    caplog.set_level(logging.INFO, logger="pynetdicom")
    for _ in range(3):
        result = dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", listener.port)
        assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 10
    while listener.server.active_associations and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not listener.server.active_associations
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def reference_receipt(
    tmp_path: Path, files: list[Path], send: Callable[[int, str, list[Path]], object] | None = None
) -> dict[str, tuple[str, bytes]]:
    """What ``send`` (dcmsend) puts on the wire, as DCMTK's storescp receives it bit-preserving: syntax and data set."""
    port = free_port()
    out = tmp_path / "reference"
    out.mkdir()
    with subprocess.Popen([tool("storescp"), "+B", "+xa", "-od", str(out), "-aet", "REF", str(port)]) as receiver:
        try:
            time.sleep(0.5)
            if send is None:
                send_as_stored(port, "REF", files, every_one=False)
            else:
                send(port, "REF", files)
        finally:
            receiver.terminate()
    received = {}
    for path in out.iterdir():
        syntax = str(pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID)
        received[sop_instance_uid(path)] = (syntax, after_meta(path.read_bytes()))
    return received


DICOMDIR = "1.2.840.10008.1.3.10"  # Media Storage Directory: not an object a C-STORE carries


def by_sop_instance(uid: str) -> Query:
    return Query(level="instance", matches=[Match("sop_instance_uid", "single", uid)])


def corpus_storage_objects() -> dict[str, list[Path]]:
    """Every storage object in the corpus with File Meta (modalities, syntaxes, charsets, media), by SOP Instance UID.

    Three files have no usable File Meta (no transfer syntax to propose) and no DICOM tool
    sends them as they are; media import takes them (tests/contract).
    """
    by_uid: dict[str, list[Path]] = {}
    for folder in ("modality", "transfer-syntax", "charset", "media"):
        for path in sorted((CORPUS / folder).rglob("*")):
            if not path.is_file():
                continue
            try:
                meta = pydicom.filereader.read_file_meta_info(path)
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except pydicom.errors.InvalidDicomError:
                continue
            if "TransferSyntaxUID" not in meta or "SOPInstanceUID" not in header:
                continue
            if str(header.SOPClassUID) != DICOMDIR:
                by_uid.setdefault(str(header.SOPInstanceUID), []).append(path)
    return by_uid


def test_every_storage_object_in_the_corpus_stored_as_sent(tmp_path: Path) -> None:
    """Each SOP class and transfer syntax of the corpus, sent by DCMTK, is stored byte for byte as sent.

    Files sharing a SOP Instance UID (one image in several syntaxes) go to separate listeners,
    round by round, so that each is stored, not found a duplicate or a conflict.
    """
    by_uid = corpus_storage_objects()
    rounds = max(len(paths) for paths in by_uid.values())
    classes: set[str] = set()
    syntaxes: set[str] = set()
    compared = refused = 0
    for round_ in range(rounds):
        files = [paths[round_] for paths in by_uid.values() if len(paths) > round_]
        for node in start_listener(tmp_path / f"round{round_}"):
            send_as_stored(node.port, AE_TITLE, files)
            sent = reference_receipt(tmp_path / f"round{round_}", files)
            for path in files:
                uid = sop_instance_uid(path)
                header = pydicom.dcmread(path, stop_before_pixels=True)
                if not (header.get("StudyInstanceUID") and header.get("SeriesInstanceUID")):
                    assert not node.archive.index.search(by_sop_instance(uid)), path.name  # A900, as STOW-RS
                    refused += 1
                    continue
                syntax = str(pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID)
                if uid in sent:  # the syntax it went in (DCMTK sends what it reads, whatever the File Meta says)
                    syntax, data_set = sent[uid]
                    assert node.dataset_bytes(uid) == data_set, path.name
                    compared += 1
                assert stored(node.archive, uid).transfer_syntax_uid == syntax, path.name
                classes.add(str(header.SOPClassUID))
                syntaxes.add(syntax)
            assert list(node.archive.blobs.staging_dir.iterdir()) == []
    files_sent = sum(len(paths) for paths in by_uid.values())
    assert len(classes) == 24, sorted(classes)
    # Every syntax of the corpus but Explicit VR Big Endian, which dcmsend sends as Little
    # Endian (the next test proposes it with storescu).
    assert len(syntaxes) == 12, sorted(syntaxes)
    assert "1.2.840.10008.1.2.2" not in syntaxes
    # All but the four storescp cannot take or that have no Study Instance UID, checked byte for byte.
    assert (compared, refused) == (files_sent - 4, 1)


def test_big_endian_on_the_wire_is_stored_as_sent(tmp_path: Path) -> None:
    files = sorted((CORPUS / "transfer-syntax").glob("bigendian_*.dcm"))
    assert len(files) == 3

    def storescu_big_endian(port: int, called: str, paths: list[Path]) -> None:
        result = dcmtk("storescu", "-v", "-xb", "-nh", "-aec", called, "127.0.0.1", port, *paths)
        assert result.returncode == 0, result.stderr
        assert (result.stdout + result.stderr).count("Received Store Response (Success)") == len(paths)

    sent = reference_receipt(tmp_path, files, storescu_big_endian)
    for node in start_listener(tmp_path):
        storescu_big_endian(node.port, AE_TITLE, files)
        for path in files:
            uid = sop_instance_uid(path)
            syntax, data_set = sent[uid]
            assert syntax == "1.2.840.10008.1.2.2", path.name
            assert stored(node.archive, uid).transfer_syntax_uid == syntax, path.name
            assert node.dataset_bytes(uid) == data_set, path.name


def test_storescu_twice_is_a_duplicate_success(listener: Listener) -> None:
    assert storescu(listener, CT).returncode == 0
    result = storescu(listener, CT)
    assert result.returncode == 0, result.stderr
    assert listener.archive.index.count_instances() == 1


def findscu(listener: Listener, model: str, *keys: str) -> list[pydicom.Dataset]:
    out = listener.archive.blobs.staging_dir.parent / f"find-{time.monotonic_ns()}"
    out.mkdir()
    args = [a for key in keys for a in ("-k", key)]
    result = dcmtk(
        "findscu", model, "-aet", "FINDSCU", "-aec", AE_TITLE, "-X", "-od", out, *args, "127.0.0.1", listener.port
    )
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.iterdir())]


@pytest.mark.parametrize("model", ["-S", "-P"])
def test_findscu_korean_names_whole_with_utf8(listener: Listener, model: str) -> None:
    assert storescu(listener, KOREAN_ISO2022, KOREAN_UTF8, CT).returncode == 0
    responses = findscu(
        listener,
        model,
        "QueryRetrieveLevel=STUDY",
        "PatientName=홍*",
        "PatientID=",
        "StudyInstanceUID=",
        "SpecificCharacterSet=ISO_IR 192",
    )
    assert len(responses) == 2
    for response in responses:
        assert response.SpecificCharacterSet == "ISO_IR 192"
        assert str(response.PatientName) == HONG
        assert {e.keyword for e in response} == {
            "SpecificCharacterSet",
            "QueryRetrieveLevel",
            "PatientName",
            "PatientID",
            "StudyInstanceUID",
        }


def test_findscu_every_level(listener: Listener) -> None:
    assert storescu(listener, KOREAN_UTF8, CT).returncode == 0
    study, series, sop = (
        str(pydicom.dcmread(CT).get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    )
    patients = findscu(
        listener, "-P", "QueryRetrieveLevel=PATIENT", "PatientName=", "PatientID=", "NumberOfPatientRelatedStudies="
    )
    assert len(patients) == 2
    assert HONG in {str(p.PatientName) for p in patients}
    studies = findscu(
        listener,
        "-S",
        "QueryRetrieveLevel=STUDY",
        "ModalitiesInStudy=CT",
        "StudyInstanceUID=",
        "NumberOfStudyRelatedInstances=",
    )
    assert [(s.StudyInstanceUID, s.NumberOfStudyRelatedInstances) for s in studies] == [(study, 1)]
    series_rows = findscu(
        listener, "-S", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}", "SeriesInstanceUID=", "Modality="
    )
    assert [(s.SeriesInstanceUID, s.Modality) for s in series_rows] == [(series, "CT")]
    images = findscu(
        listener,
        "-S",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study}",
        f"SeriesInstanceUID={series}",
        "SOPInstanceUID=",
        "Rows=",
    )
    assert [(i.SOPInstanceUID, i.Rows) for i in images] == [(sop, 128)]
    assert findscu(listener, "-S", "QueryRetrieveLevel=STUDY", "StudyDate=19000101-19000102", "StudyInstanceUID=") == []


def test_getscu_retrieves_stored_bytes_or_a_decoded_copy(listener: Listener, tmp_path: Path) -> None:
    jpeg = CORPUS / "transfer-syntax" / "jpeg-baseline_SC_rgb_jpeg_dcmtk.dcm"
    files = [CT, jpeg]
    send_as_stored(listener.port, AE_TITLE, files)
    for proposal, wanted in (("+xy", [jpeg]), ("+x=", files)):  # JPEG Baseline first; uncompressed only
        out = tmp_path / proposal
        out.mkdir()
        for path in wanted:
            study = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
            result = dcmtk(
                "getscu", "+B", proposal, "-S", "-aet", "GETSCU", "-aec", AE_TITLE, "-od", out,
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", listener.port,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
        received = {sop_instance_uid(p): p for p in out.iterdir()}
        assert set(received) == {sop_instance_uid(p) for p in wanted}
        ct_uid, jpeg_uid = sop_instance_uid(CT), sop_instance_uid(jpeg)
        if ct_uid in received:
            assert after_meta(received[ct_uid].read_bytes()) == listener.dataset_bytes(ct_uid)
        if proposal == "+xy":
            assert after_meta(received[jpeg_uid].read_bytes()) == listener.dataset_bytes(jpeg_uid)
        else:
            decoded = pydicom.dcmread(received[jpeg_uid])
            assert decoded.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            assert decoded.pixel_array.shape == pydicom.dcmread(jpeg).pixel_array.shape


def test_movescu_to_storescp_and_unknown_destination(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "moved"
    out.mkdir()
    remotes = [{"ae_title": "DEST", "host": "127.0.0.1", "port": port}]
    files = [CT, CORPUS / "transfer-syntax" / "jpegls-lossless_MR_small.dcm"]
    for node in start_listener(tmp_path, remotes=remotes):
        send_as_stored(node.port, AE_TITLE, files)
        # storescp accepts only uncompressed syntaxes by default: the JPEG-LS object goes decoded.
        with subprocess.Popen([tool("storescp"), "+B", "-od", str(out), "-aet", "DEST", str(port)]) as receiver:
            try:
                time.sleep(0.5)
                for path in files:
                    study = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
                    result = dcmtk(
                        "movescu", "-S", "-aet", "MOVESCU", "-aem", "DEST", "-aec", AE_TITLE,
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", node.port,
                    )  # fmt: skip
                    assert result.returncode == 0, result.stderr
                unknown = dcmtk(
                    "movescu", "-S", "-aet", "MOVESCU", "-aem", "NOWHERE", "-aec", AE_TITLE,
                    "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.3", "127.0.0.1", node.port,
                )  # fmt: skip
                assert "movedestinationunknown" in (unknown.stdout + unknown.stderr).lower()
            finally:
                receiver.terminate()
        moved = {sop_instance_uid(p): p for p in out.iterdir()}
        assert set(moved) == {sop_instance_uid(p) for p in files}
        ct_uid = sop_instance_uid(CT)
        assert after_meta(moved[ct_uid].read_bytes()) == node.dataset_bytes(ct_uid)
        mr = pydicom.dcmread(moved[sop_instance_uid(files[1])])
        assert mr.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert mr.pixel_array.shape == (64, 64)


def test_unknown_caller_is_refused(tmp_path: Path) -> None:
    remotes = [{"ae_title": "KNOWN", "host": "127.0.0.1", "port": 104}]
    for node in start_listener(tmp_path, remotes=remotes, allow_any_caller=False):
        refused = dcmtk("echoscu", "-aet", "STRANGER", "-aec", AE_TITLE, "127.0.0.1", node.port)
        assert refused.returncode != 0
        assert "reject" in (refused.stdout + refused.stderr).lower()
        accepted = dcmtk("echoscu", "-aet", "KNOWN", "-aec", AE_TITLE, "127.0.0.1", node.port)
        assert accepted.returncode == 0, accepted.stderr


A_ASSOCIATE_AC_TYPE = 0x02
A_ASSOCIATE_RJ_TYPE = 0x03
A_RELEASE_RQ = bytes((0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0))


def answer_from(address: str, port: int, calling: str) -> tuple[int, bytes]:
    """The listener's answer to a Verification A-ASSOCIATE-RQ from ``address``: PDU type, body.

    A bare socket bound to one of the loopback addresses (127.0.0.0/8 all reach the listener),
    released at once when accepted.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as caller:
        caller.settimeout(10)
        caller.bind((address, 0))
        caller.connect(("127.0.0.1", port))
        caller.sendall(association_request(AE_TITLE, calling))
        header = read_exactly(caller, 6)
        body = read_exactly(caller, int.from_bytes(header[2:6], "big"))
        if header[0] == A_ASSOCIATE_AC_TYPE:
            caller.sendall(A_RELEASE_RQ)
            read_exactly(caller, 10)  # A-RELEASE-RP
        return header[0], body


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the listener closed the connection"
        data += chunk
    return bytes(data)


def test_a_known_caller_from_another_host_is_refused_when_hosts_are_checked(tmp_path: Path) -> None:
    remotes = [
        {"ae_title": "KNOWN", "host": "127.0.0.1", "port": 104},
        {"ae_title": "NAMED", "host": "localhost", "port": 104},  # resolved when the listener starts
        {"ae_title": "NOWHERE", "host": "no-such-host.invalid", "port": 104},
    ]
    for node in start_listener(tmp_path, remotes=remotes, allow_any_caller=False, check_caller_host=True):
        accepted = dcmtk("echoscu", "-aet", "KNOWN", "-aec", AE_TITLE, "127.0.0.1", node.port)
        assert accepted.returncode == 0, accepted.stderr
        assert answer_from("127.0.0.1", node.port, "NAMED")[0] == A_ASSOCIATE_AC_TYPE
        for calling in ("KNOWN", "NAMED", "NOWHERE"):
            kind, body = answer_from("127.0.0.2", node.port, calling)
            # Rejected, permanent, "calling AE title not recognized": the answer to an unknown
            # title, so a prober learns nothing more.
            assert (kind, body[1:4]) == (A_ASSOCIATE_RJ_TYPE, bytes((0x01, 0x01, 0x03))), calling
        assert answer_from("127.0.0.1", node.port, "STRANGER") == (A_ASSOCIATE_RJ_TYPE, bytes((0, 1, 1, 3)))
        # Each rejected acceptor ends once its caller has closed: no place held.
        deadline = time.monotonic() + 10
        while node.server.active_associations and time.monotonic() < deadline:
            time.sleep(0.01)
        assert node.server.active_associations == []


def test_hosts_are_not_checked_unless_asked(tmp_path: Path) -> None:
    remotes = [{"ae_title": "KNOWN", "host": "127.0.0.1", "port": 104}]
    for node in start_listener(tmp_path, remotes=remotes, allow_any_caller=False):
        assert answer_from("127.0.0.2", node.port, "KNOWN")[0] == A_ASSOCIATE_AC_TYPE


def test_accepted_sockets_have_tcp_nodelay(listener: Listener) -> None:
    """Every association socket the listener accepts has Nagle's algorithm off."""
    seen: list[int] = []

    def check(event: Any) -> None:
        sock = event.assoc.dul.socket.socket
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    listener.server.bind(evt.EVT_ESTABLISHED, check)  # runs after EVT_CONN_OPEN's NODELAY handler
    small = CORPUS / "charset" / "chrFren_latin1.dcm"
    for _ in range(3):
        result = dcmtk("storescu", "-R", "-aec", AE_TITLE, "127.0.0.1", listener.port, small)
        assert result.returncode == 0, result.stderr
    assert seen == [1, 1, 1]


def distinct_copies(folder: Path, count: int, tag: str) -> list[Path]:
    """``count`` copies of the small CT, each with its own SOP Instance UID."""
    folder.mkdir()
    paths = []
    for number in range(count):
        dataset = pydicom.dcmread(CT)
        dataset.SOPInstanceUID = generate_uid("1.2.826.0.1.3680043.8.498.", entropy_srcs=[tag, str(number)])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        path = folder / f"{number}.dcm"
        dataset.save_as(path)
        paths.append(path)
    return paths


# Delayed ACK holds a Nagle-held write about 40 ms on Linux: 30 C-STOREs that stall take 1.2 s or
# more longer than with TCP_NODELAY, against a few ms each when they do not.
C_STORES = 30
STALL = 0.6


def test_storescu_with_nagle_is_not_stalled_per_instance(listener: Listener, tmp_path: Path) -> None:
    """storescu without TCP_NODELAY (DCMTK's default) writes a C-STORE in several Nagle-held writes.

    The listener acknowledges each PDU it reads at once (quick ACK), so these do not wait for
    delayed ACK.
    """
    seconds = {}
    for nodelay in (True, False):
        files = distinct_copies(tmp_path / f"nodelay-{nodelay}", C_STORES, f"nagle-{nodelay}")
        command = [tool("storescu"), "-nh", "-aet", "STORESCU", "-aec", AE_TITLE, "127.0.0.1", str(listener.port)]
        started = time.monotonic()
        result = subprocess.run(
            [*command, *map(str, files)],
            env=dcmtk_environment(nodelay=nodelay),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        seconds[nodelay] = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert all(stored(listener.archive, sop_instance_uid(f)) for f in files)
    assert seconds[False] - seconds[True] < STALL, seconds


def test_each_association_gets_its_own_copy_of_the_supported_contexts(listener: Listener) -> None:
    """The cheap copy (scp.CheaplyCopiedContext) still gives every association contexts of its own."""
    accepted: list[Any] = []
    listener.server.bind(evt.EVT_ESTABLISHED, lambda event: accepted.append(event.assoc))
    for _ in range(2):
        assert dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", listener.port).returncode == 0
    assert len(accepted) == 2
    first, second = (assoc.acceptor.supported_contexts for assoc in accepted)
    server = listener.server.contexts
    assert [(c.abstract_syntax, c.transfer_syntax) for c in first] == [
        (c.abstract_syntax, c.transfer_syntax) for c in server
    ]
    assert all(a is not b and a.transfer_syntax is not b.transfer_syntax for a, b in zip(first, server, strict=True))
    before = list(server[0].transfer_syntax)
    first[0].transfer_syntax.append(UID("1.2.3.4"))  # one association changing its copy in place
    assert second[0].transfer_syntax == server[0].transfer_syntax == before


def test_the_listener_counts_the_associations_it_serves(listener: Listener) -> None:
    """``serving`` follows associations as they come and go, as pynetdicom's thread count does."""
    server = listener.server
    assert server.serving == len(server.active_associations) == 0
    ae = AE(ae_title="COUNTED")
    ae.add_requested_context("1.2.840.10008.1.1")
    first = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    second = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    try:
        assert first.is_established
        assert second.is_established
        assert server.serving == len(server.active_associations) == 2
        first.release()
        deadline = time.monotonic() + 5
        while server.serving != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.serving == len(server.active_associations) == 1
        second.abort()
        while server.serving != 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.serving == len(server.active_associations) == 0
    finally:
        for assoc in (first, second):
            if assoc.is_established:
                assoc.abort()


def test_the_data_fsync_overlaps_parsing_only_for_a_lone_association(
    listener: Listener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone, a C-STORE hands its data's fsync to a helper thread; beside another association, it syncs itself."""
    helpers: list[str] = []
    ingest = listener.archive.ingest
    real = ingest.sync_in_background

    def counting(staged: Any) -> Any:
        helpers.append(staged.digest)
        return real(staged)

    monkeypatch.setattr(ingest, "sync_in_background", counting)
    files = distinct_copies(tmp_path / "alone", 2, "alone")
    result = dcmtk("storescu", "-aec", AE_TITLE, "127.0.0.1", listener.port, *files)
    assert result.returncode == 0, result.stderr
    assert len(helpers) == 2
    helpers.clear()
    ae = AE(ae_title="BYSTANDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    other = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    try:
        assert other.is_established
        files = distinct_copies(tmp_path / "beside", 2, "beside")
        result = dcmtk("storescu", "-aec", AE_TITLE, "127.0.0.1", listener.port, *files)
        assert result.returncode == 0, result.stderr
    finally:
        other.release()
    assert helpers == []
    assert listener.archive.index.count_instances() == 4


def findscu_file(listener: Listener, model: str, identifier: Path) -> list[pydicom.Dataset]:
    """findscu with its identifier read from a file (as devices' captured queries are replayed)."""
    out = listener.archive.blobs.staging_dir.parent / f"find-{time.monotonic_ns()}"
    out.mkdir()
    result = dcmtk(
        "findscu", model, "-aet", "FINDSCU", "-aec", AE_TITLE, "-X", "-od", out, "127.0.0.1", listener.port, identifier
    )
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.iterdir())]


def test_an_identifier_in_iso_2022_ir_149_is_understood(listener: Listener, tmp_path: Path) -> None:
    """A Korean query as an older modality sends it (KS X 1001 with ISO 2022 escapes), answered in UTF-8."""
    assert storescu(listener, KOREAN_ISO2022, KOREAN_UTF8, CT).returncode == 0
    query = pydicom.Dataset()
    query.SpecificCharacterSet = ["", "ISO 2022 IR 149"]
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = "홍*"  # matched on every component group, as QIDO-RS does
    query.PatientID = ""
    query.StudyInstanceUID = ""
    identifier = tmp_path / "korean-query.dcm"
    pydicom.dcmwrite(identifier, query, implicit_vr=False, little_endian=True)
    assert b"\x1b$)C" in identifier.read_bytes()  # the KS X 1001 escape: the query really is ISO 2022
    responses = findscu_file(listener, "-S", identifier)
    assert len(responses) == 2
    for response in responses:
        assert response.SpecificCharacterSet == "ISO_IR 192"
        assert str(response.PatientName) == HONG


def test_a_zeiss_oct_query_is_answered(listener: Listener, tmp_path: Path) -> None:
    """The C-FIND identifier captured from a Zeiss OCT (corpus/dimse): IMAGE level, no UIDs, a sequence key."""
    scan = pydicom.dcmread(CT)
    scan.PatientID = "Zeiss-0042"
    scan.PatientBirthDate = "19850312"
    scan.SOPInstanceUID = generate_uid()
    scan.file_meta.MediaStorageSOPInstanceUID = scan.SOPInstanceUID
    path = tmp_path / "oct.dcm"
    scan.save_as(path, enforce_file_format=True)
    assert storescu(listener, path, KOREAN_UTF8).returncode == 0
    responses = findscu_file(listener, "-S", CORPUS / "dimse" / "zeiss_oct_cfind_query.dcm")
    assert [(r.PatientID, r.SOPInstanceUID, r.QueryRetrieveLevel) for r in responses] == [
        ("Zeiss-0042", scan.SOPInstanceUID, "IMAGE")
    ]
    assert responses[0].SpecificCharacterSet == "ISO_IR 192"
