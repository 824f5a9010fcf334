"""Pending C-FIND responses encoded directly against pynetdicom's own encoding of the message."""

from __future__ import annotations

import itertools
from io import BytesIO

from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.pdu import P_DATA_TF

from pixport.dimse.network import configure_pynetdicom
from pixport.dimse.pending import PENDING, command_set, pdus

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"


def pynetdicom_bytes(message_id: int, sop_class_uid: str, identifier: bytes, context_id: int, max_pdu: int) -> bytes:
    """What pynetdicom's C-FIND SCP puts on the wire for one pending response."""
    response = C_FIND()
    response.MessageID = message_id
    response.MessageIDBeingRespondedTo = message_id
    response.AffectedSOPClassUID = sop_class_uid
    response.Status = PENDING
    response.Identifier = BytesIO(identifier)
    message = C_FIND_RSP()
    message.primitive_to_message(response)
    return b"".join(P_DATA_TF(primitive).encode() for primitive in message.encode_msg(context_id, max_pdu))


def test_same_bytes_as_pynetdicom() -> None:
    configure_pynetdicom()  # as the listener runs it (its command set codec: dimse/commandset.py)
    cases = itertools.product(
        [1, 7, 65535],
        [STUDY_ROOT_FIND, PATIENT_ROOT_FIND],
        [2, 181, 1000, 20000],
        [1, 255],
        [0, 16384, 100, 8, 187],  # 0 = no limit; small ones fragment command sets too
    )
    for message_id, sop_class_uid, size, context_id, max_pdu in cases:
        identifier = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        ours = pdus(context_id, command_set(message_id, sop_class_uid, PENDING), max_pdu, command=True)
        ours += pdus(context_id, identifier, max_pdu, command=False)
        assert ours == pynetdicom_bytes(message_id, sop_class_uid, identifier, context_id, max_pdu)
