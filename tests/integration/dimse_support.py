"""A PixPort DIMSE listener on a free loopback port, and helpers to run DCMTK against it."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE
from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

from pixport import build_archive, load_settings
from pixport.archive.node import Archive
from pixport.dimse.scp import make_server
from pixport.storage.base import Match, Query, StoredInstance

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
AE_TITLE = "PIXPORT"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Listener:
    """A running listener: its port and the archive behind it (for white-box checks)."""

    archive: Archive
    port: int
    server: Any

    def dataset_bytes(self, sop_instance_uid: str) -> bytes:
        """The stored data set (after File Meta) of an instance, read from the blob store."""
        rows = stored(self.archive, sop_instance_uid)
        with self.archive.blobs.open(rows.digest) as blob:
            return after_meta(blob.read())


def stored(archive: Archive, sop_instance_uid: str) -> StoredInstance:
    """The index entry of one instance (fails the test if it is not stored)."""
    rows = archive.index.search(
        Query(level="instance", matches=[Match("sop_instance_uid", "single", sop_instance_uid)])
    )
    assert rows, f"{sop_instance_uid} is not stored"
    row = rows[0]
    (instance,) = archive.index.list_instances(row.study_instance_uid, row.series_instance_uid, sop_instance_uid)
    return instance


def after_meta(data: bytes) -> bytes:
    """The data set of a Part 10 file: everything after the File Meta group."""
    if data[128:132] != b"DICM":
        return data
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value
    return data[144 + meta_length :]


def start_listener(tmp_path: Path, limits: dict[str, Any] | None = None, **dimse: Any) -> Iterator[Listener]:
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "allow_any_caller": True, "ae_title": AE_TITLE}
    options.update(dimse)
    settings = load_settings(storage={"data_dir": tmp_path / "pixport"}, dimse=options, limits=limits or {})
    archive = build_archive(settings)
    server = make_server(archive, settings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Listener(archive, int(server.server_address[1]), server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        archive.close()


def tool(name: str) -> str:
    """DCMTK's program (pynetdicom installs apps of the same names, e.g. storescu, into the venv)."""
    return shutil.which(name, path="/usr/bin:/usr/local/bin") or name


def dcmtk(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [tool(str(args[0])), *(str(a) for a in args[1:])]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def dcmtk_environment(*, nodelay: bool) -> dict[str, str]:
    """The environment for DCMTK's tools: by default (no TCP_NODELAY) Nagle's algorithm is on."""
    environment = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        environment["TCP_NODELAY"] = "1"
    return environment


def sop_instance_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)


def half_sent_c_store(port: int, path: Path, calling: str, max_pdu: int = 4096) -> Association:
    """An association that has sent a C-STORE command and the first half of its data set's PDUs.

    For faults mid-transfer: the caller aborts, vanishes or sends something malformed next.
    """
    ds = pydicom.dcmread(path)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=False)
    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE, max_pdu=max_pdu)
    assert assoc.is_established
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = io.BytesIO(after_meta(buffer.getvalue()))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    fragments = list(message.encode_msg(assoc.accepted_contexts[0].context_id, max_pdu))
    for pdata in fragments[: len(fragments) // 2]:
        assoc.dul.send_pdu(pdata)
    return assoc


def store_answer(listener: Listener, dataset: pydicom.Dataset, calling: str = "FAULTS") -> tuple[int, str]:
    """C-STORE with pynetdicom (for data sets DCMTK refuses to send): the status and the Error Comment."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        answer = assoc.send_c_store(dataset)
        return int(answer.Status), str(answer.get("ErrorComment", ""))
    finally:
        assoc.release()


def caller_has_nodelay(event: Any) -> bool:
    """Whether the association that called an in-process test SCP has TCP_NODELAY on its socket.

    For the associations PixPort opens itself (C-MOVE sub-operations, storage commitment
    reports) when the listener runs in the test process: the caller is found among this
    process's requesting associations by the port it called from.
    """
    port = int(event.assoc.requestor.port)
    for thread in threading.enumerate():
        if not (isinstance(thread, Association) and thread.is_requestor):
            continue
        sock = thread.dul.socket.socket if thread.dul.socket is not None else None
        if sock is not None and sock.fileno() != -1 and sock.getsockname()[1] == port:
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    msg = f"no association of this process calls from port {port}"
    raise AssertionError(msg)


def association_request(called: str, calling: str) -> bytes:
    """An A-ASSOCIATE-RQ PDU for Verification, as a requestor would send it."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    context = PresentationContext()
    context.context_id = 1
    context.abstract_syntax = "1.2.840.10008.1.1"  # Verification
    context.transfer_syntax = ["1.2.840.10008.1.2"]
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())
