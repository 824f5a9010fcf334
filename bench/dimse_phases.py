"""Where a single C-FIND association's time goes, PixPort against Orthanc, with a raw-socket client.

``findscu`` spends most of its run starting up (single runs spread over 40 ms on a 2-core
machine), which hides the servers' own differences of a few milliseconds.  This client has
no start-up: it connects, sends a prepared A-ASSOCIATE-RQ, one C-FIND (the benchmark's query:
QueryRetrieveLevel=STUDY, PatientID of the patient with most studies, five return keys) and
A-RELEASE-RQ, and times each phase from its side.  Servers alternate round by round.

    .venv/bin/python bench/dimse_phases.py [--associations 200] [--rounds 4] [--small 2000]

Same data and server set-up as ``dimse_bench.py`` (one listener process per core; Orthanc
with 8 DICOM threads), the small studies only.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.pdu import A_ASSOCIATE_RQ, A_RELEASE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.presentation import build_context

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dimse_bench as db
import generate

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
RETURN_KEYS = ("StudyInstanceUID", "PatientName", "StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedInstances")
A_ASSOCIATE_AC, P_DATA_TF, A_RELEASE_RP = 0x02, 0x04, 0x06
STATUS = 0x00000900


def association_request(called: str) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = db.BENCH_AET
    primitive.called_ae_title = called
    context = build_context(STUDY_ROOT_FIND, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.276.0.7230010.3.0.3.6.7"  # as findscu's
    primitive.user_information = [maximum, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _encoded(dataset: Dataset, *, implicit: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, dataset)
    return bytes(buffer.getvalue())


def find_request(patient_id: str) -> bytes:
    """One P-DATA-TF PDU per part: the command (Implicit VR) and the identifier (Explicit VR)."""
    command = Dataset()
    command.AffectedSOPClassUID = STUDY_ROOT_FIND
    command.CommandField = 0x0020
    command.MessageID = 1
    command.Priority = 0
    command.CommandDataSetType = 0x0001
    command.CommandGroupLength = len(_encoded(command, implicit=True))
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = patient_id
    for key in RETURN_KEYS:
        setattr(identifier, key, "")

    def pdu(data: bytes, header: int) -> bytes:
        item = struct.pack(">IBB", len(data) + 2, 1, header) + data
        return struct.pack(">BBI", P_DATA_TF, 0, len(item)) + item

    return pdu(_encoded(command, implicit=True), 0x03) + pdu(_encoded(identifier, implicit=False), 0x02)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    pdu_type, _, length = struct.unpack(">BBI", _read_exactly(sock, 6))
    return pdu_type, _read_exactly(sock, length)


def _final_status_seen(body: bytes) -> bool:
    """Whether a P-DATA-TF body holds a whole command set whose Status is not Pending."""
    position = 0
    while position < len(body):
        (length,) = struct.unpack_from(">I", body, position)
        header = body[position + 5]
        value = body[position + 6 : position + 4 + length]
        position += 4 + length
        if header & 0x03 != 0x03:  # not the last fragment of a command
            continue
        offset = 0
        while offset + 8 <= len(value):  # Implicit VR Little Endian elements
            group, element, size = struct.unpack_from("<HHI", value, offset)
            if (group << 16 | element) == STATUS:
                (status,) = struct.unpack_from("<H", value, offset + 8)
                return status not in (0xFF00, 0xFF01)
            offset += 8 + size
    return False


def one_association(port: int, request: bytes, query: bytes) -> tuple[float, float, float]:
    """Milliseconds: connect to A-ASSOCIATE-AC, C-FIND to its final response, A-RELEASE."""
    start = time.perf_counter()
    with socket.create_connection((db.HOST, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        if read_pdu(sock)[0] != A_ASSOCIATE_AC:
            raise db.BenchError("association not accepted")
        accepted = time.perf_counter()
        sock.sendall(query)
        while True:
            pdu_type, body = read_pdu(sock)
            if pdu_type != P_DATA_TF:
                raise db.BenchError(f"PDU type {pdu_type:#04x} during the C-FIND")
            if _final_status_seen(body):
                break
        answered = time.perf_counter()
        sock.sendall(bytes(A_RELEASE_RQ().encode()))
        if read_pdu(sock)[0] != A_RELEASE_RP:
            raise db.BenchError("release not answered")
        released = time.perf_counter()
    return (accepted - start) * 1e3, (answered - accepted) * 1e3, (released - answered) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--associations", type=int, default=200, help="per server and round (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default %(default)s)")
    parser.add_argument("--small", type=int, default=generate.FULL_SMALL, help="small studies stored first")
    options = parser.parse_args(argv)
    args = db.parse_args(["--quick"])
    plan = generate.ensure_data(generate.build_plan(1, options.small, generate.DEFAULT_OUT))
    query = find_request(plan.query_patient_id())
    tmp = Path(tempfile.mkdtemp(prefix="pixport-dimse-phases-"))
    with db.cleanup(tmp):
        move = db.start_move_destination(tmp)
        nodes = []
        for name in args.server_names:
            node = db.start(name, tmp, "phases", args, move)
            db.store_phase(node, plan.small_files, 1, tmp, [])
            nodes.append(node)
        requests = {node.name: association_request(node.aet) for node in nodes}
        for node in nodes:  # warm-up
            for _ in range(20):
                one_association(node.port, requests[node.name], query)
        times: dict[str, list[tuple[float, float, float]]] = {node.name: [] for node in nodes}
        for round_ in range(options.rounds):
            for node in nodes if round_ % 2 == 0 else nodes[::-1]:
                for _ in range(options.associations):
                    times[node.name].append(one_association(node.port, requests[node.name], query))
    print(f"median of {options.associations * options.rounds} associations per server, ms:")
    print(f"{'server':8s} {'connect->AC':>12s} {'C-FIND':>8s} {'release':>8s} {'total':>8s}")
    for name, phases in times.items():
        medians = [statistics.median(p[i] for p in phases) for i in range(3)]
        total = statistics.median(sum(p) for p in phases)
        print(f"{name:8s} {medians[0]:12.2f} {medians[1]:8.2f} {medians[2]:8.2f} {total:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
