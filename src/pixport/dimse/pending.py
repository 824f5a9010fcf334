"""Pending C-FIND responses written to the association many at a time.

pynetdicom sends each pending response of a C-FIND as its own DIMSE message: it builds and
encodes a command set, splits the identifier into P-DATA primitives and sends each as its own
PDU, one socket write per PDU.  That was about 0.4 ms per response, more than finding and
encoding the match itself (docs/performance.md).  Every pending response of one C-FIND has the
same command set, so here it is encoded once, and a batch of responses goes out in one write:
the same PDUs pynetdicom would send (the command set, then the identifier, each split at the
peer's maximum PDU length, one P-DATA-TF PDU per fragment), back to back.

The write happens under the lock that the event-driven DUL (``reactor.EventDrivenDUL``) holds
for every state-machine action and every direct P-DATA send, and only when the association is
established with nothing queued ahead, as ``EventDrivenDUL.send_pdu`` does for one PDU.  Over
TLS, with any other DUL, or when a handler is bound to EVT_DIMSE_SENT, EVT_PDU_SENT or
EVT_DATA_SENT (which expect a call per message or PDU; PixPort binds none, and pynetdicom's
logging handlers are not bound either), ``PendingWriter.for_event`` gives None and the handler
yields its responses to pynetdicom one by one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from pynetdicom import evt

from pixport.dimse.pdu_reader import P_DATA_TF_TYPE
from pixport.dimse.reactor import EventDrivenDUL

C_FIND_RSP = 0x8020
DATA_SET_PRESENT = 0x0001  # Command Data Set Type, as pynetdicom sets it
PENDING = 0xFF00
COMMAND_LAST = 0x03  # message control header: command, last fragment
COMMAND_MORE = 0x01
DATA_SET_LAST = 0x02
DATA_SET_MORE = 0x00
PDV_OVERHEAD = 6  # item length (4), presentation context ID (1), message control header (1)
# Events triggered for each message or PDU sent: with a handler bound, pynetdicom sends.
PER_MESSAGE_EVENTS = (evt.EVT_DIMSE_SENT, evt.EVT_PDU_SENT, evt.EVT_DATA_SENT)

_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")
_PDU_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")


def _element(tag: int, value: bytes) -> bytes:
    return _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid(value: str) -> bytes:
    data = value.encode("ascii")
    return data + b"\0" if len(data) % 2 else data


def command_set(message_id: int, sop_class_uid: str, status: int) -> bytes:
    """A C-FIND-RSP command set with an identifier, in Implicit VR Little Endian (PS3.7 9.3.2.2)."""
    body = b"".join(
        (
            _element(0x00000002, _uid(sop_class_uid)),  # Affected SOP Class UID
            _element(0x00000100, _US.pack(C_FIND_RSP)),  # Command Field
            _element(0x00000120, _US.pack(message_id)),  # Message ID Being Responded To
            _element(0x00000800, _US.pack(DATA_SET_PRESENT)),  # Command Data Set Type
            _element(0x00000900, _US.pack(status)),  # Status
        )
    )
    return _element(0x00000000, _UL.pack(len(body))) + body


def pdus(context_id: int, data: bytes, max_pdu_length: int, *, command: bool) -> bytes:
    """``data`` as P-DATA-TF PDUs, one fragment each, split as pynetdicom splits it (PS3.8 9.3.5)."""
    size = len(data) if max_pdu_length == 0 else max_pdu_length - PDV_OVERHEAD
    last, more = (COMMAND_LAST, COMMAND_MORE) if command else (DATA_SET_LAST, DATA_SET_MORE)
    parts = []
    for offset in range(0, max(len(data), 1), max(size, 1)):
        fragment = data[offset : offset + size]
        header = last if offset + size >= len(data) else more
        item_length = len(fragment) + 2  # context ID and message control header
        parts.append(_PDU_HEADER.pack(P_DATA_TF_TYPE, item_length + 4))
        parts.append(_PDV_HEADER.pack(item_length, context_id, header))
        parts.append(fragment)
    return b"".join(parts)


class PendingWriter:
    """Writes pending responses of one C-FIND straight to its association's socket."""

    def __init__(self, dul: EventDrivenDUL, context_id: int, command: bytes, max_pdu_length: int) -> None:
        self._dul = dul
        self._context_id = context_id
        self._max_pdu_length = max_pdu_length
        self._command = pdus(context_id, command, max_pdu_length, command=True)

    @classmethod
    def for_event(cls, event: Any) -> PendingWriter | None:
        """A writer for the C-FIND of ``event``, or None where pynetdicom must send (see the module doc)."""
        assoc = event.assoc
        dul = assoc.dul
        if not isinstance(dul, EventDrivenDUL) or not dul._direct_send_possible():  # noqa: SLF001  the reactor's rule
            return None
        if any(assoc.get_handlers(event_type) for event_type in PER_MESSAGE_EVENTS):
            return None
        request = event.request
        command = command_set(int(request.MessageID), str(request.AffectedSOPClassUID), PENDING)
        return cls(dul, int(event.context.context_id), command, int(assoc.dimse.maximum_pdu_size or 0))

    def encode(self, identifier: bytes) -> bytes:
        """One pending response: its command set and identifier PDUs."""
        return self._command + pdus(self._context_id, identifier, self._max_pdu_length, command=False)

    def send(self, identifiers: Iterable[bytes]) -> bool:
        """Write these pending responses in one go; False (nothing written) if it cannot be done now."""
        data = b"".join(self.encode(identifier) for identifier in identifiers)
        dul = self._dul
        with dul._send_lock:  # noqa: SLF001  the lock of every state-machine action (reactor.py)
            if dul.state_machine.current_state != "Sta6" or dul.to_provider_queue.qsize() or dul.socket is None:
                return False
            dul.socket.send(data)
        return True
