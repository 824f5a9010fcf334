"""The fast command-set and File Meta codecs give exactly pydicom's bytes and datasets."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import dimse, dimse_messages, dimse_primitives, dsutils

from pixport.dimse import commandset

ODD_UID = "1.2.840.10008.5.1.4.1.1.2"  # 25 characters
EVEN_UID = "2.25.123456789012345678901234567890123456"  # 40 characters


def _request(cls: Any, **values: Any) -> Any:
    primitive = cls()
    for name, value in values.items():
        setattr(primitive, name, value)
    return primitive


def _identifier() -> io.BytesIO:
    return io.BytesIO(b"\x10\x00\x20\x00\x02\x00\x00\x00X ")


def primitives() -> list[tuple[str, Any]]:
    """A message of every kind pynetdicom builds, with odd and even UIDs, texts and counts."""
    return [
        ("echo-rq", _request(dimse_primitives.C_ECHO, MessageID=1, AffectedSOPClassUID="1.2.840.10008.1.1")),
        ("echo-rsp", _request(dimse_primitives.C_ECHO, MessageIDBeingRespondedTo=1, Status=0)),
        (
            "store-rq",
            _request(
                dimse_primitives.C_STORE,
                MessageID=7,
                AffectedSOPClassUID=ODD_UID,
                AffectedSOPInstanceUID=EVEN_UID,
                Priority=2,
                MoveOriginatorApplicationEntityTitle="ORTHANC",
                MoveOriginatorMessageID=3,
                DataSet=_identifier(),
            ),
        ),
        (
            "store-rsp",
            _request(
                dimse_primitives.C_STORE,
                MessageIDBeingRespondedTo=7,
                AffectedSOPClassUID=EVEN_UID,
                AffectedSOPInstanceUID=ODD_UID,
                Status=0xA700,
                ErrorComment="object is larger than 1000 bytes",
            ),
        ),
        (
            "find-rq",
            _request(
                dimse_primitives.C_FIND, MessageID=2, AffectedSOPClassUID=ODD_UID, Priority=0, Identifier=_identifier()
            ),
        ),
        (
            "find-rsp",
            _request(
                dimse_primitives.C_FIND,
                MessageIDBeingRespondedTo=2,
                AffectedSOPClassUID=ODD_UID,
                Status=0xFF00,
                Identifier=_identifier(),
            ),
        ),
        (
            "move-rq",
            _request(
                dimse_primitives.C_MOVE,
                MessageID=3,
                AffectedSOPClassUID=ODD_UID,
                Priority=0,
                MoveDestination="STORESCP",
                Identifier=_identifier(),
            ),
        ),
        (
            "get-rsp",
            _request(
                dimse_primitives.C_GET,
                MessageIDBeingRespondedTo=4,
                AffectedSOPClassUID=ODD_UID,
                Status=0xFF00,
                NumberOfRemainingSuboperations=499,
                NumberOfCompletedSuboperations=1,
                NumberOfFailedSuboperations=0,
                NumberOfWarningSuboperations=0,
            ),
        ),
        (
            "n-action-rq",
            _request(
                dimse_primitives.N_ACTION,
                MessageID=5,
                RequestedSOPClassUID="1.2.840.10008.1.20.1",
                RequestedSOPInstanceUID="1.2.840.10008.1.20.1.1",
                ActionTypeID=1,
                ActionInformation=_identifier(),
            ),
        ),
        (
            "n-event-report-rq",
            _request(
                dimse_primitives.N_EVENT_REPORT,
                MessageID=6,
                AffectedSOPClassUID="1.2.840.10008.1.20.1",
                AffectedSOPInstanceUID="1.2.840.10008.1.20.1.1",
                EventTypeID=2,
                EventInformation=_identifier(),
            ),
        ),
        ("c-cancel", _request(dimse_primitives.C_CANCEL, MessageIDBeingRespondedTo=9)),
    ]


def command_set(primitive: Any) -> Dataset:
    """The command set pynetdicom builds for a primitive (with pydicom's codecs)."""
    if isinstance(primitive, dimse_primitives.C_CANCEL):
        message = dimse_messages.C_CANCEL_RQ()
    elif primitive.MessageIDBeingRespondedTo is None:
        message = dimse._RQ_TO_MESSAGE[type(primitive)]()
    else:
        message = dimse._RSP_TO_MESSAGE[type(primitive)]()
    message.primitive_to_message(primitive)
    return message.command_set


@pytest.mark.parametrize(("kind", "primitive"), primitives(), ids=[kind for kind, _ in primitives()])
def test_command_sets_encode_and_decode_as_pydicom_does(kind: str, primitive: Any) -> None:
    dataset = command_set(primitive)
    expected = dsutils.encode(dataset, True, True)  # noqa: FBT003
    assert expected is not None
    assert commandset.encode(dataset, True, True) == expected  # noqa: FBT003
    assert commandset.encode_command_set(dataset) == expected
    ours = commandset.decode(io.BytesIO(expected), True, True)  # noqa: FBT003
    theirs = dsutils.decode(io.BytesIO(expected), True, True)  # noqa: FBT003
    assert ours == theirs
    assert [(e.tag, e.VR, e.value) for e in ours] == [(e.tag, e.VR, e.value) for e in theirs]


@pytest.mark.parametrize(("kind", "primitive"), primitives(), ids=[kind for kind, _ in primitives()])
def test_command_values_are_pydicoms_values(kind: str, primitive: Any) -> None:
    dataset = command_set(primitive)
    encoded = dsutils.encode(dataset, True, True)  # noqa: FBT003
    assert encoded is not None
    values = commandset.decode_command_values(encoded)
    assert sorted(values) == sorted(int(element.tag) for element in dataset)
    for element in dataset:
        assert values[int(element.tag)] == element.value, element.keyword


def test_command_values_refuse_what_they_cannot_read() -> None:
    data = commandset.encode_command_set(command_set(primitives()[2][1]))
    with pytest.raises(commandset.Unsupported):
        commandset.decode_command_values(data[:-3])
    command_field_of_four_bytes = struct.pack("<HHII", 0x0000, 0x0100, 4, 1)  # US is 2 bytes
    with pytest.raises(commandset.Unsupported):
        commandset.decode_command_values(command_field_of_four_bytes)
    not_ascii = struct.pack("<HHI", 0x0000, 0x0002, 2) + "é".encode()
    with pytest.raises(commandset.Unsupported):
        commandset.decode_command_values(not_ascii)


def test_unknown_elements_and_values_go_to_pydicom() -> None:
    dataset = Dataset()
    dataset.CommandField = 0x8020
    dataset.OffendingElement = [0x00100010]  # AT: not encoded here
    with pytest.raises(commandset.Unsupported):
        commandset.encode_command_set(dataset)
    assert commandset.encode(dataset, True, True) == dsutils.encode(dataset, True, True)  # noqa: FBT003
    comment = Dataset()
    comment.ErrorComment = "café"  # not ASCII
    assert commandset.encode(comment, True, True) == dsutils.encode(comment, True, True)  # noqa: FBT003
    data_set = dsutils.encode(dataset, True, True)  # noqa: FBT003
    assert data_set is not None
    with pytest.raises(commandset.Unsupported):
        commandset.decode_command_set(data_set)
    assert commandset.decode(io.BytesIO(data_set), True, True) == dataset  # noqa: FBT003


def test_truncated_command_set_is_left_to_pydicom() -> None:
    data = commandset.encode_command_set(command_set(primitives()[2][1]))
    with pytest.raises(commandset.Unsupported):
        commandset.decode_command_set(data[:-3])


@pytest.mark.parametrize("sop_instance_uid", [ODD_UID, EVEN_UID])
@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"])
def test_file_meta_as_pydicom_writes_it(sop_instance_uid: str, transfer_syntax: str) -> None:
    expected = io.BytesIO()
    uids = {"sop_class_uid": EVEN_UID, "sop_instance_uid": sop_instance_uid, "transfer_syntax": transfer_syntax}
    write_file_meta_info(expected, dsutils.create_file_meta(**uids))
    ours = io.BytesIO()
    commandset.write_file_meta_info(ours, commandset.create_file_meta(**uids))
    assert ours.getvalue() == expected.getvalue()
    assert commandset.file_meta_bytes(EVEN_UID, sop_instance_uid, transfer_syntax) == expected.getvalue()


def test_installed_in_pynetdicom() -> None:
    commandset.install()
    assert dimse_messages.encode is commandset.encode
    assert dimse_messages.decode is commandset.decode
    assert dimse_messages.write_file_meta_info is commandset.write_file_meta_info
