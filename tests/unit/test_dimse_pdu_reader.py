"""Whole PDUs read from a socket (pixport.dimse.pdu_reader)."""

from __future__ import annotations

import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from pynetdicom.pdu import P_DATA_TF

from pixport.dimse import pdu_reader
from pixport.dimse.pdu_reader import ClosedBetweenPdus, UnknownPduType, pdv_items, read_pdu


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair()
    with ours, peer:
        yield ours, peer


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def send_slowly(peer: socket.socket, data: bytes, piece: int) -> threading.Thread:
    """Send ``data`` in pieces of ``piece`` bytes from another thread (reads see partial PDUs)."""

    def run() -> None:
        for start in range(0, len(data), piece):
            peer.sendall(data[start : start + piece])

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_pdu_is_read_whole_however_it_arrives(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    body = bytes(range(256)) * 2048  # 512 kB, as a CT slice's P-DATA
    first, second = pdu(0x04, body), pdu(0x05, b"\0\0\0\0")
    sender = send_slowly(peer, first + second, 1000)
    assert read_pdu(ours, 10) == first
    assert read_pdu(ours, 10) == second
    sender.join()


def test_a_connection_closed_mid_pdu_is_end_of_file(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    peer.sendall(pdu(0x04, bytes(1000))[:500])
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(EOFError):
        read_pdu(ours, 10)


def test_a_connection_closed_mid_header_is_end_of_file(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    peer.sendall(b"\x04\x00\x00")
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(EOFError):
        read_pdu(ours, 10)


def test_an_unknown_pdu_type_is_refused_before_its_body_is_read(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    peer.sendall(pdu(0x09, b"whatever"))
    with pytest.raises(UnknownPduType) as caught:
        read_pdu(ours, 10)
    assert caught.value.pdu_type == 0x09
    assert ours.recv(100) == b"whatever"  # left unread


def test_a_huge_announced_length_costs_only_what_arrives(pair: tuple[socket.socket, socket.socket]) -> None:
    """A peer announcing a 4 GB PDU and sending 10 bytes must not make us allocate 4 GB."""
    ours, peer = pair
    peer.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF) + bytes(10))
    peer.shutdown(socket.SHUT_WR)
    tracemalloc.start()
    try:
        with pytest.raises(EOFError):
            read_pdu(ours, 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * pdu_reader.GROWTH_STEP


def test_a_pdu_above_the_preallocation_limit_grows_to_its_length(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pdu_reader, "PREALLOCATE_LIMIT", 1000)
    monkeypatch.setattr(pdu_reader, "GROWTH_STEP", 300)
    ours, peer = pair
    data = pdu(0x04, bytes(range(250)) * 10)  # 2,500 bytes: nine steps, the last one short
    sender = send_slowly(peer, data, 700)
    assert read_pdu(ours, 10) == data
    sender.join()


def test_a_peer_stalling_mid_pdu_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    peer.sendall(pdu(0x04, bytes(1000))[:500])  # and then nothing, the connection still open
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        read_pdu(ours, 0.2)
    assert time.monotonic() - started >= 0.2


def test_a_stall_shorter_than_the_timeout_is_waited_for(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    data = pdu(0x04, bytes(1000))
    peer.sendall(data[:500])
    later = threading.Timer(0.1, peer.sendall, (data[500:],))
    later.start()
    assert read_pdu(ours, 5) == data
    later.join()


def test_a_connection_closed_between_pdus_is_told_apart(pair: tuple[socket.socket, socket.socket]) -> None:
    """A peer closing after its last PDU (as after A-RELEASE-RP) is not a PDU cut short."""
    ours, peer = pair
    peer.sendall(pdu(0x05, b"\0\0\0\0"))
    peer.shutdown(socket.SHUT_WR)
    assert read_pdu(ours, 10) == pdu(0x05, b"\0\0\0\0")
    with pytest.raises(ClosedBetweenPdus):
        read_pdu(ours, 10)


@pytest.mark.parametrize("sent", [b"\x00", b"\x04\x00\x00", pdu(0x04, bytes(100))[:50]])
def test_a_connection_closed_inside_a_pdu_is_not_a_close_between_pdus(
    pair: tuple[socket.socket, socket.socket], sent: bytes
) -> None:
    ours, peer = pair
    peer.sendall(sent)
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(EOFError) as raised:
        read_pdu(ours, 10)
    assert not isinstance(raised.value, ClosedBetweenPdus)


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">LBB", len(data) + 2, context_id, control) + data


def test_pdv_items_are_views_of_each_fragment_with_its_control_header() -> None:
    """As pynetdicom's P_DATA_TF decodes them: (context ID, control header + fragment)."""
    whole = bytearray(pdu(0x04, pdv(1, 0x03, b"command") + pdv(3, 0x00, b"") + pdv(1, 0x02, bytes(range(256)) * 40)))
    items = pdv_items(whole)
    assert items is not None
    assert all(isinstance(data, memoryview) for _, data in items)
    decoded = P_DATA_TF()
    decoded.decode(bytes(whole))
    assert [(context_id, bytes(data)) for context_id, data in items] == [
        (context_id, bytes(data)) for context_id, data in decoded.to_primitive().presentation_data_value_list
    ]
    whole[12] = 0x7A  # a view, not a copy: the first fragment's first byte (after 6 + 4 + 1 + 1)
    assert bytes(items[0][1][1:2]) == b"\x7a"


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no item at all
        struct.pack(">LBB", 50, 1, 0x02) + b"short",  # an item longer than the PDU
        struct.pack(">LB", 1, 1),  # an item without its control header
        pdv(1, 0x02, b"data") + b"\x00\x00",  # a truncated item header after a good item
    ],
    ids=["empty", "overrun", "no-control-header", "truncated-header"],
)
def test_a_malformed_p_data_has_no_items(body: bytes) -> None:
    """None: the PDU is then left to pynetdicom's decoder, which aborts as it always has."""
    assert pdv_items(bytearray(pdu(0x04, body))) is None
