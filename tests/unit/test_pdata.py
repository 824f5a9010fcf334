"""pixport.dimse.pdata writes the P-DATA-TF PDUs pynetdicom would, byte for byte."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_FIND_RSP, C_GET_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from pixport.dimse import commandset, pdata

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
# The lengths that matter around a 16 kB PDU: one byte, one fragment exactly, one byte more, ...
STEP = 16384 - 6
DATA_LENGTHS = (0, 1, 2, 99, STEP - 1, STEP, STEP + 1, 2 * STEP, 2 * STEP + 1, 525_456)
MAX_PDU_LENGTHS = (0, 7, 8, 200, 4096, 16384, 16390, 131_072, 1 << 24)


def c_store_rq(data: bytes) -> Any:
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.Priority = 2
    primitive.AffectedSOPClassUID = CT_IMAGE
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012"
    primitive.MoveOriginatorApplicationEntityTitle = "MOVESCU"
    primitive.MoveOriginatorMessageID = 3
    primitive.DataSet = io.BytesIO(data)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return message


def other_messages() -> list[Any]:
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    store_rsp = C_STORE()
    store_rsp.MessageIDBeingRespondedTo = 9
    store_rsp.AffectedSOPClassUID = CT_IMAGE
    store_rsp.AffectedSOPInstanceUID = "1.2.3.4"
    store_rsp.Status = 0
    get_rsp = C_GET()
    get_rsp.MessageIDBeingRespondedTo = 2
    get_rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.3"
    get_rsp.Status = 0xFF00
    get_rsp.NumberOfRemainingSuboperations = 499
    get_rsp.NumberOfCompletedSuboperations = 1
    get_rsp.NumberOfFailedSuboperations = 0
    get_rsp.NumberOfWarningSuboperations = 0
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientName = "Hong^Gildong"
    identifier.StudyInstanceUID = "1.2.3"
    find_rsp = C_FIND()
    find_rsp.MessageIDBeingRespondedTo = 5
    find_rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    find_rsp.Status = 0xFF00
    find_rsp.Identifier = io.BytesIO(encode(identifier, True, True))  # noqa: FBT003
    messages = []
    for cls, primitive in ((C_ECHO_RQ, echo), (C_STORE_RSP, store_rsp), (C_GET_RSP, get_rsp), (C_FIND_RSP, find_rsp)):
        message = cls()
        message.primitive_to_message(primitive)
        messages.append(message)
    return messages


def pynetdicom_bytes(message: Any, context_id: int, max_pdu_length: int) -> bytes:
    return b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(context_id, max_pdu_length))


def our_bytes(message: Any, context_id: int, max_pdu_length: int) -> bytes:
    command_set = commandset.encode(message.command_set, True, True)  # noqa: FBT003
    assert command_set is not None
    pdus = pdata.encode_message(message, context_id, max_pdu_length, command_set)
    assert pdus is not None
    for header, data in pdus:
        assert len(header) + len(data) <= max_pdu_length + 6 or max_pdu_length == 0
    return b"".join(header + bytes(data) for header, data in pdus)


@pytest.mark.parametrize("max_pdu_length", MAX_PDU_LENGTHS)
@pytest.mark.parametrize("length", DATA_LENGTHS)
def test_c_store_request_as_pynetdicom_writes_it(length: int, max_pdu_length: int) -> None:
    if max_pdu_length < 16 and length > 4 * STEP:
        pytest.skip("hundreds of thousands of PDUs: slow and says nothing more")
    data = bytes(range(256)) * (length // 256) + bytes(length % 256)
    message = c_store_rq(data)
    expected = pynetdicom_bytes(message, 5, max_pdu_length)
    assert our_bytes(c_store_rq(data), 5, max_pdu_length) == expected


@pytest.mark.parametrize("max_pdu_length", MAX_PDU_LENGTHS)
def test_other_messages_as_pynetdicom_writes_them(max_pdu_length: int) -> None:
    for message, again in zip(other_messages(), other_messages(), strict=True):
        assert our_bytes(again, 255, max_pdu_length) == pynetdicom_bytes(message, 255, max_pdu_length)


def test_a_fragment_never_exceeds_the_peer_maximum() -> None:
    pdus = pdata.fragment(1, b"x" * (3 * STEP + 5), 0, 16384)
    assert [len(data) for _, data in pdus] == [STEP, STEP, STEP, 5]
    assert [header[-1] for header, _ in pdus] == [0, 0, 0, pdata.LAST]


@pytest.mark.parametrize("max_pdu_length", [1, 6])
def test_lengths_pynetdicom_refuses_are_left_to_it(max_pdu_length: int) -> None:
    message = c_store_rq(b"data")
    command_set = commandset.encode(message.command_set, True, True)  # noqa: FBT003
    assert command_set is not None
    assert pdata.encode_message(message, 1, max_pdu_length, command_set) is None
    with pytest.raises((ValueError, ZeroDivisionError)):  # what pynetdicom does with them
        pynetdicom_bytes(message, 1, max_pdu_length)


def test_a_data_set_streamed_from_a_file_is_left_to_pynetdicom(tmp_path: Path) -> None:
    message = c_store_rq(b"")
    message.data_set = None
    message._data_set_path = (tmp_path / "x.dcm", 132)
    command_set = commandset.encode(message.command_set, True, True)  # noqa: FBT003
    assert command_set is not None
    assert pdata.encode_message(message, 1, 16384, command_set) is None
