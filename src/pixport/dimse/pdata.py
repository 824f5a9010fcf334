"""The P-DATA-TF PDUs of a whole DIMSE message, written directly.

pynetdicom sends a DIMSE message as one P-DATA primitive per fragment, each fragment at most
the peer's maximum PDU length (DCMTK's tools propose 16 kB): every fragment becomes a
``P_DATA_TF`` object, is encoded through pynetdicom's general PDU machinery and sent by its own
call into the upper layer.  That costs about 20-40 µs per fragment, and a 525 kB CT slice is 33
fragments (docs/performance.md, C-GET and C-MOVE).  The layout is fixed (PS3.8 9.3.5 and Annex
E.2), so here the headers are packed directly and the data fragments are views of the encoded
message, never copied until they are written.

``encode_message`` returns the same bytes as pynetdicom's ``DIMSEMessage.encode_msg`` followed
by ``P_DATA_TF(primitive).encode()`` for each primitive (tests/unit/test_pdata.py compares them
on every shape), or None for what it does not handle, which then goes pynetdicom's way:
a data set streamed from a file, or a maximum PDU length pynetdicom refuses.

``send_message`` is pynetdicom's ``DIMSEServiceProvider.send_msg`` with these PDUs written
straight to the socket, the way ``reactor.EventDrivenDUL.send_pdu`` sends single fragments: only
on an established, unencrypted association with nothing queued ahead, under the DUL's send lock,
which is taken per chunk of whole PDUs so the DUL thread can act on what it receives meanwhile.
Anything else, including an association with a handler bound to EVT_PDU_SENT or EVT_DATA_SENT
(which expect one call per PDU), goes through pynetdicom.
"""

from __future__ import annotations

import contextlib
import functools
import struct
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.datadict import tag_for_keyword
from pynetdicom import evt
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
from pynetdicom.dimse_messages import _COMMAND_SET_KEYWORDS, _DATASET_KEYWORDS, _MESSAGE_TYPES
from pynetdicom.dimse_primitives import C_STORE

from pixport.dimse import commandset, reactor
from pixport.dimse.pdu_reader import P_DATA_TF_TYPE

# P-DATA-TF PDU header (type 0x04, reserved, PDU length) and the header of its one
# Presentation Data Value item (item length, presentation context ID, message control header).
_HEADER = struct.Struct(">BBLLBB")
HEADER_LENGTH = _HEADER.size  # 12
PDV_OVERHEAD = 6  # item length (4), context ID (1), message control header (1)
# Message control header bits (PS3.8 E.2): command (else data set), last fragment.
COMMAND = 0x01
LAST = 0x02
COMMAND_FIELD = 0x00000100
COMMAND_DATA_SET_TYPE = 0x00000800

# One P-DATA-TF PDU: its 12 header bytes and its fragment of the message.
Pdu = tuple[bytes, memoryview]


def fragment(context_id: int, data: bytes | memoryview, control: int, max_pdu_length: int) -> list[Pdu]:
    """``data`` (not empty) as P-DATA-TF PDUs of one PDV each, as pynetdicom fragments it.

    ``max_pdu_length`` is the peer's Maximum Length (of the PDV list of a PDU): each fragment
    carries at most ``max_pdu_length - 6`` bytes of data, or all of it when the length is 0.
    """
    view = memoryview(data)
    size = len(view)
    step = size if max_pdu_length == 0 else max_pdu_length - PDV_OVERHEAD
    pack = _HEADER.pack
    last_start = ((size - 1) // step) * step
    header = pack(P_DATA_TF_TYPE, 0, step + PDV_OVERHEAD, step + 2, context_id, control)
    pdus = [(header, view[start : start + step]) for start in range(0, last_start, step)]
    tail = size - last_start
    pdus.append((pack(P_DATA_TF_TYPE, 0, tail + PDV_OVERHEAD, tail + 2, context_id, control | LAST), view[last_start:]))
    return pdus


def encode_pdus(context_id: int, command_set: bytes, data_set: bytes | None, max_pdu_length: int) -> list[Pdu] | None:
    """Every PDU of a DIMSE message from its encoded command set and data set, or None.

    None (pynetdicom's way) for an empty command set, which has no PDU, and for a maximum PDU
    length pynetdicom refuses.  An empty data set, like none, has no PDU.
    """
    if 0 < max_pdu_length <= PDV_OVERHEAD or not command_set:
        return None
    pdus = fragment(context_id, command_set, COMMAND, max_pdu_length)
    if data_set:
        pdus.extend(fragment(context_id, data_set, 0, max_pdu_length))
    return pdus


@functools.cache
def _layout(message_class: type) -> tuple[int, tuple[tuple[int, str], ...], str | None]:
    """A message type's Command Field, its other command elements (tag, keyword), its data set keyword."""
    name = message_class.__name__
    command_field = next(
        field for field, (type_name, _) in _MESSAGE_TYPES.items() if type_name == name.replace("_", "-")
    )
    computed = {"CommandGroupLength", "CommandField", "CommandDataSetType"}
    elements = tuple(
        (int(tag_for_keyword(keyword) or 0), keyword)
        for keyword in _COMMAND_SET_KEYWORDS[name.replace("_", "-")]
        if keyword not in computed
    )
    return command_field, elements, _DATASET_KEYWORDS.get(name)


def command_set_bytes(primitive: Any) -> bytes | None:
    """The command set pynetdicom's ``primitive_to_message`` would build and encode, or None.

    Written without building a pydicom Dataset: elements whose parameter is None are left out,
    Command Data Set Type says whether the primitive carries a data set.  None for a data set
    streamed from a file and for any value ``commandset.encode_command_values`` does not encode.
    """
    if getattr(primitive, "_dataset_path", None) is not None:
        return None
    table = _RQ_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is None else _RSP_TO_MESSAGE
    message_class = table.get(type(primitive))
    if message_class is None:
        return None
    command_field, elements, data_set_keyword = _layout(message_class)
    has_data_set = data_set_keyword is not None and bool(getattr(primitive, data_set_keyword))
    values: dict[int, Any] = {COMMAND_FIELD: command_field, COMMAND_DATA_SET_TYPE: 0x0001 if has_data_set else 0x0101}
    for tag, keyword in elements:
        value = getattr(primitive, keyword)
        if value is not None:
            values[tag] = value
    try:
        return commandset.encode_command_values(values)
    except (commandset.Unsupported, ValueError, TypeError, struct.error):
        return None


def encode_primitive(primitive: Any, context_id: int, max_pdu_length: int) -> list[Pdu] | None:
    """Every PDU of the message for a DIMSE primitive, as pynetdicom would send it, or None."""
    command_set = command_set_bytes(primitive)
    if command_set is None:
        return None
    table = _RQ_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is None else _RSP_TO_MESSAGE
    data_set_keyword = _layout(table[type(primitive)])[2]
    stream = getattr(primitive, data_set_keyword) if data_set_keyword else None
    return encode_pdus(context_id, command_set, stream.getvalue() if stream is not None else None, max_pdu_length)


# False sends every message through pynetdicom (for A/B measurements).
FAST_SEND = True
# Bytes of whole PDUs written per hold of the DUL's send lock.
SEND_CHUNK = 1 << 20
# Buffers per sendmsg(2) call: well under the kernel's IOV_MAX (1024 on Linux).
MAX_BUFFERS = 512
# Events that expect a call per message or PDU sent: with a handler bound, pynetdicom sends.
_PER_MESSAGE_EVENTS = (evt.EVT_DIMSE_SENT, evt.EVT_PDU_SENT, evt.EVT_DATA_SENT)


def send_message(assoc: Any, primitive: Any, context_id: int) -> None:
    """Send a DIMSE message (a request or response primitive), as ``assoc.dimse.send_msg`` does."""
    if _direct_send_possible(assoc):
        pdus = encode_primitive(primitive, context_id, assoc.dimse.maximum_pdu_size)
        if pdus is not None and send_pdus(assoc.dul, pdus):
            return
    type(assoc.dimse).send_msg(assoc.dimse, primitive, context_id)


def send_directly(assoc: Any) -> None:
    """Make every message sent through ``assoc.dimse.send_msg`` go by ``send_message``."""
    assoc.dimse.send_msg = functools.partial(send_message, assoc)


def _direct_send_possible(assoc: Any) -> bool:
    dul = assoc.dul
    return (
        FAST_SEND
        and isinstance(dul, reactor.EventDrivenDUL)
        and dul._direct_send_possible()  # noqa: SLF001  the reactor's own rule for direct sends
        and not any(assoc.get_handlers(event) for event in _PER_MESSAGE_EVENTS)
    )


def send_pdus(dul: Any, pdus: list[Pdu]) -> bool:
    """Write encoded PDUs straight to the DUL's socket; False if they must be queued instead.

    False (nothing sent) unless the association is established and nothing is queued for the
    DUL to send.  Once started, the message is written to the end, or until the association
    leaves the established state or the connection fails (Evt17, as pynetdicom's socket does).
    """
    lock = dul._send_lock  # noqa: SLF001  shared with the reactor's direct sends
    first = True
    for chunk in _chunks(pdus):
        with lock:
            if dul.state_machine.current_state != "Sta6":
                return not first
            if first and dul.to_provider_queue.qsize():
                return False
            first = False
            transport = dul.socket.socket if dul.socket is not None else None
            if transport is None:
                return True
            try:
                send_buffers(transport, chunk)
            except OSError:
                dul.event_queue.put("Evt17")
                return True
    return True


def _chunks(pdus: list[Pdu]) -> Iterator[list[bytes | memoryview]]:
    """The PDUs' buffers in runs of about SEND_CHUNK bytes (whole PDUs only), never copied."""
    pending: list[bytes | memoryview] = []
    size = 0
    for header, data in pdus:
        pending.append(header)
        pending.append(data)
        size += len(header) + len(data)
        if size >= SEND_CHUNK or len(pending) >= MAX_BUFFERS:
            yield pending
            pending, size = [], 0
    if pending:
        yield pending


def send_buffers(transport: Any, buffers: list[bytes | memoryview]) -> None:
    """Write every buffer, in order, by gathering writes (``sendall`` of their join, without it).

    Joining a CT slice's PDUs copied its 525 kB once more before the kernel copied them again.
    """
    if not hasattr(transport, "sendmsg"):  # not a plain socket: one write of the whole run
        transport.sendall(b"".join(buffers))
        return
    views = [memoryview(buffer) for buffer in buffers]
    first = 0
    while first < len(views):
        sent = transport.sendmsg(views[first:])
        while first < len(views) and sent >= len(views[first]):
            sent -= len(views[first])
            first += 1
        if sent:
            views[first] = views[first][sent:]


# The elements of a C-STORE response this module reads itself: tag -> (keyword, VR).
_STORE_RESPONSE_ELEMENTS = {
    0x00000000: ("CommandGroupLength", "UL"),
    0x00000002: ("AffectedSOPClassUID", "UI"),
    0x00000100: ("CommandField", "US"),
    0x00000120: ("MessageIDBeingRespondedTo", "US"),
    0x00000800: ("CommandDataSetType", "US"),
    0x00000900: ("Status", "US"),
    0x00000902: ("ErrorComment", "LO"),
    0x00001000: ("AffectedSOPInstanceUID", "UI"),
}
_ELEMENT = struct.Struct("<HHI")
# The UID parameters of a C-STORE primitive, and where pynetdicom 3.0's setters keep them once checked.
_CHECKED_UIDS = {
    "AffectedSOPClassUID": "_affected_sop_class_uid",
    "AffectedSOPInstanceUID": "_affected_sop_instance_uid",
}
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101


def c_store_response(pdu: bytes, message_id: int, context_id: int, request: C_STORE | None = None) -> C_STORE | None:
    """The C-STORE response to ``message_id`` if ``pdu`` is one, whole; None for anything else.

    A P-DATA-TF PDU holding one PDV, the whole command set (PS3.7 9.3.1.2), with only the
    elements pynetdicom's own decoding would turn into these primitive parameters.  A UID equal
    to the ``request``'s is taken from it, as it was checked there: pynetdicom's checks of a
    UID cost 10-13 µs each, a quarter of reading the response.
    """
    if (
        len(pdu) < HEADER_LENGTH
        or pdu[0] != P_DATA_TF_TYPE
        or int.from_bytes(pdu[6:10], "big") != len(pdu) - 10
        or pdu[10] != context_id
        or pdu[11] != COMMAND | LAST
    ):
        return None
    values: dict[str, Any] = {}
    offset, end = HEADER_LENGTH, len(pdu)
    try:
        while offset < end:
            group, element, length = _ELEMENT.unpack_from(pdu, offset)
            keyword, vr = _STORE_RESPONSE_ELEMENTS[(group << 16) | element]
            value = pdu[offset + 8 : offset + 8 + length]
            offset += 8 + length
            if offset > end or keyword in values:
                return None
            if vr in {"US", "UL"}:
                if length != (2 if vr == "US" else 4):
                    return None
                values[keyword] = int.from_bytes(value, "little")
            else:
                values[keyword] = value.decode("ascii").rstrip("\0 " if vr == "UI" else " ")
    except (KeyError, struct.error, UnicodeDecodeError):
        return None
    if (
        values.get("CommandField") != C_STORE_RSP
        or values.get("MessageIDBeingRespondedTo") != message_id
        or values.get("CommandDataSetType") != NO_DATA_SET
        or "Status" not in values
    ):
        return None
    response = C_STORE()
    try:
        for keyword in ("MessageIDBeingRespondedTo", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Status"):
            parameter = values.get(keyword)
            if parameter is None:
                continue
            checked = getattr(request, keyword, None) if keyword in _CHECKED_UIDS else None
            if checked is not None and checked == parameter:
                setattr(response, _CHECKED_UIDS[keyword], checked)  # pynetdicom's storage, as its setter leaves it
            else:
                setattr(response, keyword, parameter)
        if values.get("ErrorComment"):
            response.ErrorComment = values["ErrorComment"]
    except (TypeError, ValueError):  # pynetdicom's own checks of each parameter
        return None
    return response


NO_RESPONSE = object()  # none within the DIMSE timeout
# False leaves every response to the DUL thread, as pynetdicom does (for A/B measurements).
READ_RESPONSES = True


def exchange(assoc: Any, request: Any, context_id: int, while_waiting: Callable[[], None] | None = None) -> Any:
    """Send a request and wait for its response primitive, reading it on this thread where possible.

    ``while_waiting`` runs once the request is sent, before the response is awaited: work for
    this thread while the peer works on the request.  It must not raise.

    The response is read from the association's borrowed socket (``reactor.borrow_socket``) and
    decoded by ``c_store_response``: no hand-over to the DUL thread and back.  Anything else that
    arrives goes to the DUL (``hand_over``) and the response is then awaited pynetdicom's way,
    as it is over TLS or with receive handlers bound.  None if no response came within the
    DIMSE timeout or the connection closed (pynetdicom's ``_handle_no_response`` then applies).
    """
    dul = assoc.dul
    borrowing = READ_RESPONSES and isinstance(dul, reactor.EventDrivenDUL) and assoc.dimse.message is None
    result: Any = None
    with dul.borrow_socket() if borrowing else contextlib.nullcontext() as reader:
        send_message(assoc, request, context_id)
        if while_waiting is not None:
            while_waiting()
        if reader is not None:
            try:
                data = reader.read_pdu(assoc.dimse_timeout)
            except ConnectionError:
                data = None
                result = NO_RESPONSE
            else:
                if data is None:
                    result = NO_RESPONSE
                elif (result := c_store_response(data, request.MessageID, context_id, request)) is None:
                    reader.hand_over(data)
    if result is NO_RESPONSE:
        return None
    if result is not None:
        return result
    if borrowing:
        dul.wake()  # it may be waiting without watching the socket: it has to read the rest
    return assoc.dimse.get_msg(block=True)[1]
