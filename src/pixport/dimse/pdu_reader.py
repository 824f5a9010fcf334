"""Whole PDUs read from a plain TCP socket into one buffer each (``read_pdu``).

pynetdicom reads a PDU 4,096 bytes per ``recv`` call, each into a new bytes object appended to
the PDU, then copies the whole again: about 130 calls and four copies for a 512 kB CT slice.
``read_pdu`` reads it into one buffer of its size with ``recv_into``, and ``pdv_items`` finds a
P-DATA-TF's fragments in that buffer without copying them.  ``read_pdu`` also bounds the wait
for the rest of a PDU that has begun: pynetdicom's blocking reads would wait forever for a peer
that stops mid-PDU without closing the connection, with the association's timers unable to
run meanwhile.
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Callable

PDU_HEADER = struct.Struct(">BBL")
PDV_ITEM_HEADER = struct.Struct(">LB")  # item length, presentation context ID (PS3.8 9.3.5.1)
P_DATA_TF_TYPE = 0x04  # the PDU type of P-DATA-TF, our one shared copy
PDU_TYPES = frozenset(range(0x01, 0x08))  # A-ASSOCIATE-RQ … A-ABORT (PS3.8 9.3)
# A PDU up to this size is read into a buffer allocated at once; a larger one grows as its bytes
# arrive, so a peer that announces a huge length and sends little costs little memory.
PREALLOCATE_LIMIT = 16 * 1024 * 1024
GROWTH_STEP = 4 * 1024 * 1024


class ClosedBetweenPdus(EOFError):
    """The connection closed before the first byte of a PDU: a peer ending as it may."""


class _Closed(EOFError):
    """The connection closed while ``_fill`` waited for more, after ``received`` bytes."""

    def __init__(self, received: int) -> None:
        super().__init__(f"connection closed after {received} bytes")
        self.received = received


class UnknownPduType(ValueError):
    """The first byte of a PDU is not a PDU type."""

    def __init__(self, pdu_type: int) -> None:
        super().__init__(f"unknown PDU type 0x{pdu_type:02X}")
        self.pdu_type = pdu_type


def read_pdu(
    transport: socket.socket, timeout: float | None, before_wait: Callable[[socket.socket], None] | None = None
) -> bytearray:
    """The next PDU, header included.

    EOFError if the connection closes before it is whole (ClosedBetweenPdus if before its first
    byte), TimeoutError if no byte of it arrives for ``timeout`` seconds (None: no limit),
    UnknownPduType (its body left unread).
    ``before_wait(transport)`` is called each time the rest has not arrived yet, before waiting
    for it (the caller's quick ACK: a peer's next write may be held until what it sent is
    acknowledged).
    """
    header = bytearray(PDU_HEADER.size)
    try:
        _fill(transport, memoryview(header), timeout, before_wait)
    except _Closed as closed:
        if closed.received:
            raise
        raise ClosedBetweenPdus from None
    pdu_type, _, length = PDU_HEADER.unpack(header)
    if pdu_type not in PDU_TYPES:
        raise UnknownPduType(pdu_type)
    if length <= PREALLOCATE_LIMIT:
        pdu = bytearray(PDU_HEADER.size + length)
        pdu[: PDU_HEADER.size] = header
        _fill(transport, memoryview(pdu)[PDU_HEADER.size :], timeout, before_wait)
        return pdu
    pdu = header
    while length:
        step = min(length, GROWTH_STEP)
        start = len(pdu)
        pdu.extend(bytes(step))  # grown only once the previous step has arrived
        _fill(transport, memoryview(pdu)[start:], timeout, before_wait)
        length -= step
    return pdu


def _fill(
    transport: socket.socket,
    view: memoryview,
    timeout: float | None,
    before_wait: Callable[[socket.socket], None] | None,
) -> None:
    """Fill ``view`` from the socket; waits in ``select`` only when nothing is there yet."""
    wanted = len(view)
    while view:
        try:
            received = transport.recv_into(view, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if before_wait is not None:
                before_wait(transport)
            ready, _, _ = select.select([transport], [], [], timeout)
            if not ready:
                msg = f"no data from the peer for {timeout} s in the middle of a PDU"
                raise TimeoutError(msg) from None
            continue
        if not received:
            raise _Closed(wanted - len(view))
        view = view[received:]


def pdv_items(pdu: bytearray) -> list[tuple[int, memoryview]] | None:
    """A whole P-DATA-TF PDU's items as (context ID, control header + fragment), or None.

    The fragments are views into ``pdu``, not copies.  None unless every item is well formed
    (a length of at least 2, within the PDU, and at least one item): the caller then leaves the
    PDU to pynetdicom's decoder, which answers what is wrong as it always has.
    """
    view = memoryview(pdu)
    end = len(pdu)
    offset = PDU_HEADER.size
    items: list[tuple[int, memoryview]] = []
    while offset < end:
        if end - offset < PDV_ITEM_HEADER.size + 1:
            return None
        length, context_id = PDV_ITEM_HEADER.unpack_from(pdu, offset)
        if length < 2 or offset + 4 + length > end:  # noqa: PLR2004  context ID + control header
            return None
        items.append((context_id, view[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return items or None
