"""pixport.dimse.pdata writes the P-DATA-TF PDUs pynetdicom would, byte for byte."""

from __future__ import annotations

import io
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from pixport.dimse import commandset, pdata

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
# The lengths that matter around a 16 kB PDU: one byte, one fragment exactly, one byte more, ...
STEP = 16384 - 6
DATA_LENGTHS = (0, 1, 2, 99, STEP - 1, STEP, STEP + 1, 2 * STEP, 2 * STEP + 1, 525_456)
MAX_PDU_LENGTHS = (0, 7, 8, 200, 4096, 16384, 16390, 131_072, 1 << 24)


def c_store_rq(data: bytes, *, moved: bool = True) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.Priority = 2
    primitive.AffectedSOPClassUID = CT_IMAGE
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012"
    if moved:
        primitive.MoveOriginatorApplicationEntityTitle = "MOVESCU"
        primitive.MoveOriginatorMessageID = 3
    primitive.DataSet = io.BytesIO(data)
    return primitive


def identifier() -> io.BytesIO:
    dataset = Dataset()
    dataset.QueryRetrieveLevel = "STUDY"
    dataset.PatientName = "Hong^Gildong"
    dataset.StudyInstanceUID = "1.2.3"
    return io.BytesIO(encode(dataset, True, True))  # noqa: FBT003


def retrieve_response(cls: type[C_GET | C_MOVE], status: int, *, counts: bool, failed: bool) -> C_GET | C_MOVE:
    """A C-GET or C-MOVE response as pynetdicom's service class builds them."""
    primitive = cls()
    primitive.MessageID = 2  # set by pynetdicom, not part of a response's command set
    primitive.MessageIDBeingRespondedTo = 2
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.3"
    primitive.Status = status
    if counts:
        primitive.NumberOfRemainingSuboperations = 499
        primitive.NumberOfCompletedSuboperations = 1
        primitive.NumberOfFailedSuboperations = 0
        primitive.NumberOfWarningSuboperations = 0
    if failed:
        failures = Dataset()
        failures.FailedSOPInstanceUIDList = ["1.2.3.4", "1.2.3.5"]
        primitive.Identifier = io.BytesIO(encode(failures, True, True))  # noqa: FBT003
    return primitive


def primitives() -> list[Any]:
    """Every kind of message C-GET and C-MOVE send, and a few others."""
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    echo_rsp = C_ECHO()
    echo_rsp.MessageIDBeingRespondedTo = 1
    echo_rsp.AffectedSOPClassUID = "1.2.840.10008.1.1"
    echo_rsp.Status = 0
    store_rsp = C_STORE()
    store_rsp.MessageIDBeingRespondedTo = 9
    store_rsp.AffectedSOPClassUID = CT_IMAGE
    store_rsp.AffectedSOPInstanceUID = "1.2.3.4"
    store_rsp.Status = 0xA700
    store_rsp.ErrorComment = "out of resources"
    find_rq = C_FIND()
    find_rq.MessageID = 5
    find_rq.Priority = 0
    find_rq.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    find_rq.Identifier = identifier()
    find_rsp = C_FIND()
    find_rsp.MessageIDBeingRespondedTo = 5
    find_rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    find_rsp.Status = 0xFF00
    find_rsp.Identifier = identifier()
    move_rq = C_MOVE()
    move_rq.MessageID = 6
    move_rq.Priority = 2
    move_rq.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    move_rq.MoveDestination = "STORESCP"
    move_rq.Identifier = identifier()
    return [
        echo,
        echo_rsp,
        c_store_rq(b"\0" * 1000),
        c_store_rq(b"\0" * 1000, moved=False),
        c_store_rq(b""),
        store_rsp,
        find_rq,
        find_rsp,
        move_rq,
        *(
            retrieve_response(cls, status, counts=counts, failed=failed)
            for cls in (C_GET, C_MOVE)
            for status, counts, failed in ((0xFF00, True, False), (0x0000, False, False), (0xB000, False, True))
        ),
    ]


def pynetdicom_bytes(primitive: Any, context_id: int, max_pdu_length: int) -> bytes:
    """What pynetdicom's DIMSEServiceProvider.send_msg hands to the DUL, as bytes on the wire."""
    table = _RQ_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is None else _RSP_TO_MESSAGE
    message = table[type(primitive)]()
    message.primitive_to_message(primitive)
    return b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(context_id, max_pdu_length))


def our_bytes(primitive: Any, context_id: int, max_pdu_length: int) -> bytes:
    pdus = pdata.encode_primitive(primitive, context_id, max_pdu_length)
    assert pdus is not None
    for header, data in pdus:
        assert len(header) + len(data) <= max_pdu_length + 6 or max_pdu_length == 0
    return b"".join(header + bytes(data) for header, data in pdus)


# Tiny PDU lengths with large data sets would mean hundreds of thousands of PDUs: slow, and
# they say nothing the small data sets do not.
STORE_CASES = [
    (length, max_pdu_length)
    for length in DATA_LENGTHS
    for max_pdu_length in MAX_PDU_LENGTHS
    if not (max_pdu_length < 16 and length > 4 * STEP)
]


@pytest.mark.parametrize(("length", "max_pdu_length"), STORE_CASES)
def test_c_store_request_as_pynetdicom_writes_it(length: int, max_pdu_length: int) -> None:
    data = bytes(range(256)) * (length // 256) + bytes(length % 256)
    primitive = c_store_rq(data)
    assert our_bytes(primitive, 5, max_pdu_length) == pynetdicom_bytes(primitive, 5, max_pdu_length)


@pytest.mark.parametrize("max_pdu_length", MAX_PDU_LENGTHS)
def test_other_messages_as_pynetdicom_writes_them(max_pdu_length: int) -> None:
    for primitive in primitives():
        assert our_bytes(primitive, 255, max_pdu_length) == pynetdicom_bytes(primitive, 255, max_pdu_length)


def test_a_fragment_never_exceeds_the_peer_maximum() -> None:
    pdus = pdata.fragment(1, b"x" * (3 * STEP + 5), 0, 16384)
    assert [len(data) for _, data in pdus] == [STEP, STEP, STEP, 5]
    assert [header[-1] for header, _ in pdus] == [0, 0, 0, pdata.LAST]


@pytest.mark.parametrize("max_pdu_length", [1, 6])
def test_lengths_pynetdicom_refuses_are_left_to_it(max_pdu_length: int) -> None:
    primitive = c_store_rq(b"data")
    assert pdata.encode_primitive(primitive, 1, max_pdu_length) is None
    with pytest.raises((ValueError, ZeroDivisionError)):  # what pynetdicom does with them
        pynetdicom_bytes(primitive, 1, max_pdu_length)


def test_what_the_direct_encoder_does_not_know_is_left_to_pynetdicom(tmp_path: Path) -> None:
    from_file = c_store_rq(b"")
    from_file.DataSet = None
    from_file._dataset_path = (tmp_path / "x.dcm", 132)
    offending = C_STORE()
    offending.MessageIDBeingRespondedTo = 9
    offending.AffectedSOPClassUID = CT_IMAGE
    offending.Status = 0xA900
    offending.OffendingElement = [0x00100010]  # AT, not one of commandset's
    latin = C_STORE()
    latin.MessageIDBeingRespondedTo = 9
    latin.AffectedSOPClassUID = CT_IMAGE
    latin.Status = 0xC000
    latin.ErrorComment = "donn\u00e9es"  # not ASCII
    for primitive in (from_file, offending, latin):
        assert pdata.command_set_bytes(primitive) is None
        assert pdata.encode_primitive(primitive, 1, 16384) is None
    for primitive in (offending, latin):
        assert pynetdicom_bytes(primitive, 1, 16384)  # pynetdicom sends them


def store_response(status: int, comment: str | None = None, instance: str = "1.2.3.44") -> C_STORE:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 12
    primitive.AffectedSOPClassUID = CT_IMAGE
    primitive.AffectedSOPInstanceUID = instance
    primitive.Status = status
    if comment:
        primitive.ErrorComment = comment
    return primitive


def pynetdicom_decoded(pdu: bytes) -> Any:
    """The primitive pynetdicom's DIMSE provider makes of one received P-DATA-TF PDU."""
    received = P_DATA_TF()
    received.decode(pdu)
    message = DIMSEMessage()
    assert message.decode_msg(received.to_primitive())
    return message.message_to_primitive()


PARAMETERS = ("MessageIDBeingRespondedTo", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Status", "ErrorComment")


@pytest.mark.parametrize(
    "sent",
    [
        store_response(0x0000),
        store_response(0x0000, instance="1.2.3.4"),  # odd length: padded with a NUL
        store_response(0xB000, "coerced"),
        store_response(0xA700, "out of resources!"),  # odd length: padded with a space
        store_response(0xC211),
    ],
)
def test_a_c_store_response_reads_as_pynetdicom_reads_it(sent: C_STORE) -> None:
    (pdu,) = [P_DATA_TF(p).encode() for p in pynetdicom_message(sent).encode_msg(3, 16384)]
    ours = pdata.c_store_response(pdu, 12, 3)
    assert ours is not None
    theirs = pynetdicom_decoded(pdu)
    assert [getattr(ours, keyword) for keyword in PARAMETERS] == [getattr(theirs, keyword) for keyword in PARAMETERS]


@pytest.mark.parametrize("instance", ["1.2.3.44", "1.2.3.4", "1.2.3.45"])
def test_a_response_read_with_its_request_is_the_same(instance: str) -> None:
    """UIDs equal to the request's are taken from it; any other is checked as pynetdicom checks it."""
    request = store_response(0, instance="1.2.3.44")  # only its UIDs matter here
    (pdu,) = [
        P_DATA_TF(p).encode() for p in pynetdicom_message(store_response(0, instance=instance)).encode_msg(3, 16384)
    ]
    ours = pdata.c_store_response(pdu, 12, 3, request)
    assert ours is not None
    theirs = pynetdicom_decoded(pdu)
    assert [getattr(ours, keyword) for keyword in PARAMETERS] == [getattr(theirs, keyword) for keyword in PARAMETERS]
    assert (ours.AffectedSOPInstanceUID is request.AffectedSOPInstanceUID) == (instance == "1.2.3.44")
    assert ours.AffectedSOPClassUID is request.AffectedSOPClassUID


def response_pdu(instance: str) -> bytes:
    """A C-STORE response to message 12 on context 3, written with ``commandset`` (any UID)."""
    command = commandset.encode_command_values(
        {
            0x00000002: CT_IMAGE,
            0x00000100: 0x8001,
            0x00000120: 12,
            0x00000800: 0x0101,
            0x00000900: 0,
            0x00001000: instance,
        }
    )
    return struct.pack(">BBLLBB", 4, 0, 6 + len(command), 2 + len(command), 3, 3) + command


@pytest.mark.parametrize("sent_request", [store_response(0), None])
def test_a_uid_pynetdicom_refuses_is_refused_with_a_request_too(sent_request: C_STORE | None) -> None:
    assert pdata.c_store_response(response_pdu("1.2." + "5" * 60), 12, 3, sent_request) is not None  # 64 characters
    assert pdata.c_store_response(response_pdu("1.2." + "5" * 62), 12, 3, sent_request) is None  # 66: over 64


def test_anything_but_the_awaited_c_store_response_is_not_read() -> None:
    ok = store_response(0)
    (pdu,) = [P_DATA_TF(p).encode() for p in pynetdicom_message(ok).encode_msg(3, 16384)]
    assert pdata.c_store_response(pdu, 12, 3) is not None
    assert pdata.c_store_response(pdu, 13, 3) is None  # another message's response
    assert pdata.c_store_response(pdu, 12, 5) is None  # another presentation context
    assert pdata.c_store_response(pdu[:-2], 12, 3) is None  # truncated
    fragmented = [P_DATA_TF(p).encode() for p in pynetdicom_message(ok).encode_msg(3, 40)]
    assert len(fragmented) > 1
    assert all(pdata.c_store_response(part, 12, 3) is None for part in fragmented)
    offending = C_STORE()
    offending.MessageIDBeingRespondedTo = 12
    offending.AffectedSOPClassUID = CT_IMAGE
    offending.Status = 0xA900
    offending.OffendingElement = [0x00100010]
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 12
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    echo.Status = 0
    for other in (offending, echo, c_store_rq(b"data")):
        for part in (P_DATA_TF(p).encode() for p in pynetdicom_message(other).encode_msg(3, 16384)):
            assert pdata.c_store_response(part, 12, 3) is None
    abort = bytes.fromhex("07 00 00000004 00 00 00 00".replace(" ", ""))
    assert pdata.c_store_response(abort, 12, 3) is None


def pynetdicom_message(primitive: Any) -> Any:
    table = _RQ_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is None else _RSP_TO_MESSAGE
    message = table[type(primitive)]()
    message.primitive_to_message(primitive)
    return message


def test_gathered_writes_deliver_every_byte_in_order_across_partial_sends() -> None:
    """A small send buffer and a slow reader make sendmsg(2) return short: nothing is lost or repeated."""
    sender, receiver = socket.socketpair()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sender.settimeout(10)
    payload = bytes(range(256)) * 4000  # 1 MB
    pdus = pdata.encode_pdus(1, b"\x00" * 40, payload, 16384)
    assert pdus is not None
    expected = b"".join(bytes(header) + bytes(data) for header, data in pdus)
    received = bytearray()

    def read() -> None:
        while len(received) < len(expected):
            received.extend(receiver.recv(3000))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for chunk in pdata._chunks(pdus):
            assert len(chunk) <= pdata.MAX_BUFFERS
            pdata.send_buffers(sender, chunk)
        reader.join(10)
    finally:
        sender.close()
        receiver.close()
    assert bytes(received) == expected


def test_runs_of_buffers_hold_whole_pdus_only() -> None:
    pdus = pdata.encode_pdus(1, b"\x00" * 40, bytes(3_000_000), 16384)
    assert pdus is not None
    runs = list(pdata._chunks(pdus))
    assert len(runs) > 1
    assert all(len(run) % 2 == 0 for run in runs)  # header and data of each PDU together
    assert sum(len(run) for run in runs) == 2 * len(pdus)
