"""Malformed PDUs and peers that vanish mid-PDU: the listener aborts, keeps nothing, stays up."""

from __future__ import annotations

import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dimse_support
import pytest
from dimse_support import AE_TITLE, CORPUS, Listener, dcmtk, start_listener
from pynetdicom.association import Association

CT = CORPUS / "modality" / "ct" / "CT_small.dcm"
A_ABORT = 0x07
MAX_PDU = 4096


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    yield from start_listener(tmp_path)


@pytest.fixture
def receiving_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the listener writes data sets as they arrive (this test's own, not the shared /tmp)."""
    folder = tmp_path / "receiving"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def half_sent_c_store(listener: Listener, receiving: Path) -> Association:
    """A C-STORE cut off halfway (``dimse_support.half_sent_c_store``), its partial file on disk."""
    assoc = dimse_support.half_sent_c_store(listener.port, CT, "PDUFAULTS", MAX_PDU)
    assert wait_for(lambda: any(receiving.iterdir())), "the partial data set should be on disk"
    return assoc


def assert_nothing_kept_and_still_serving(listener: Listener, receiving: Path) -> None:
    assert wait_for(lambda: not any(receiving.iterdir())), "the partial data set was left behind"
    assert listener.archive.index.count_instances() == 0
    assert list(listener.archive.blobs.staging_dir.iterdir()) == []
    result = dcmtk("storescu", "-aec", AE_TITLE, "127.0.0.1", listener.port, CT)
    assert result.returncode == 0, result.stderr
    assert listener.archive.index.count_instances() == 1


def test_an_unknown_pdu_type_mid_transfer_is_aborted(listener: Listener, receiving_dir: Path) -> None:
    assoc = half_sent_c_store(listener, receiving_dir)
    assoc.dul.socket.send(struct.pack(">BBL", 0x0B, 0, 4) + b"junk")
    assert wait_for(lambda: assoc.is_aborted), "the listener should answer with A-ABORT"
    assert_nothing_kept_and_still_serving(listener, receiving_dir)


def test_an_undecodable_pdu_mid_transfer_is_aborted(listener: Listener, receiving_dir: Path) -> None:
    assoc = half_sent_c_store(listener, receiving_dir)
    # A P-DATA-TF whose one PDV item claims more bytes than the PDU holds.
    item = struct.pack(">LBB", 5000, 1, 0x00) + bytes(10)
    assoc.dul.socket.send(struct.pack(">BBL", 0x04, 0, len(item)) + item)
    assert wait_for(lambda: assoc.is_aborted), "the listener should answer with A-ABORT"
    assert_nothing_kept_and_still_serving(listener, receiving_dir)


def test_a_peer_vanishing_mid_pdu_leaves_nothing_behind(listener: Listener, receiving_dir: Path) -> None:
    assoc = half_sent_c_store(listener, receiving_dir)
    transport = assoc.dul.socket.socket
    assert transport is not None
    # Half of a P-DATA-TF PDU, then the connection is gone (no A-ABORT, no A-RELEASE).
    transport.send(struct.pack(">BBL", 0x04, 0, 2000) + bytes(700))
    transport.shutdown(socket.SHUT_RDWR)
    assert_nothing_kept_and_still_serving(listener, receiving_dir)
    assoc.kill()
    transport.close()


@pytest.mark.parametrize("pdu_type", [0x01, 0x04])
def test_a_huge_announced_pdu_from_a_vanishing_peer(listener: Listener, pdu_type: int) -> None:
    """A peer announcing a 4 GB PDU, sending a little and closing: the listener just carries on."""
    with socket.create_connection(("127.0.0.1", listener.port)) as raw:
        raw.sendall(struct.pack(">BBL", pdu_type, 0, 0xFFFFFFFF) + bytes(1000))
    assert dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", listener.port).returncode == 0


def test_an_unknown_pdu_type_before_association_is_aborted(listener: Listener) -> None:
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as raw:
        raw.sendall(struct.pack(">BBL", 0x0B, 0, 0))
        answer = raw.recv(10)
    assert answer[:1] == bytes((A_ABORT,))
    assert dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", listener.port).returncode == 0


def test_a_peer_stalling_mid_pdu_is_dropped_after_the_network_timeout(tmp_path: Path, receiving_dir: Path) -> None:
    """A peer that stops mid-PDU without closing: the connection ends after ``network_timeout``."""
    listeners = start_listener(tmp_path, network_timeout=1)
    listener = next(listeners)
    try:
        assoc = half_sent_c_store(listener, receiving_dir)
        transport = assoc.dul.socket.socket
        assert transport is not None
        transport.send(struct.pack(">BBL", 0x04, 0, 2000) + bytes(700))  # and then silence
        assert wait_for(lambda: not assoc.is_established), "the listener should have dropped the connection"
        assert_nothing_kept_and_still_serving(listener, receiving_dir)
        assoc.kill()
        transport.close()
    finally:
        listeners.close()
