"""Acceptors made ready before their connections (pixport.dimse.acceptor) in a real listener."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from dimse_support import AE_TITLE, Listener, association_request, dcmtk, start_listener
from pynetdicom import AE, evt, fsm
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pixport.dimse import acceptor as acceptor_module
from pixport.dimse import reactor, scp
from pixport.dimse.acceptor import WAITING_NAME, ReadyAcceptor
from pixport.dimse.network import configure_pynetdicom
from pixport.dimse.reactor import EventDrivenDUL


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    yield from start_listener(tmp_path)


def wait_for_ready(listener: Listener) -> ReadyAcceptor:
    """The listener's ready acceptor, once it has one (made while idle, within about 0.5 s)."""
    for _ in range(200):
        ready: ReadyAcceptor | None = listener.server.acceptors.ready
        if ready is not None:
            return ready
        threading.Event().wait(0.025)
    pytest.fail("the listener made no acceptor ready while idle")


def requestor() -> AE:
    configure_pynetdicom()
    ae = AE(ae_title="ACCEPTORTEST")
    ae.add_requested_context(Verification)
    return ae


def test_an_idle_listener_makes_an_acceptor_ready_that_no_one_counts_as_busy(listener: Listener) -> None:
    ready = wait_for_ready(listener)
    assert ready.is_alive()
    assert ready.dul.is_alive()  # both threads started, waiting
    assert ready.name == WAITING_NAME
    assert listener.server.active_associations == []  # no "busy" delay before accepting
    assert not ready.is_acceptor  # nor one of the AE's maximum_associations


def test_the_next_connection_is_served_by_the_ready_acceptor(listener: Listener) -> None:
    ready = wait_for_ready(listener)
    assoc = requestor().associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    try:
        assert assoc.is_established
        assert listener.server.active_associations == [ready]
        # pynetdicom's acceptor marks itself established just after it has sent A-ASSOCIATE-AC,
        # which the requestor may have read by then: a moment to catch up.
        deadline = time.monotonic() + 5
        while not ready.is_established and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready.is_established
        assert ready.requestor.ae_title == "ACCEPTORTEST"
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
    ready.join(10)
    assert not ready.is_alive()
    assert not ready.dul.is_alive()


def test_an_association_that_ends_leaves_the_next_acceptor_ready(listener: Listener) -> None:
    first = wait_for_ready(listener)
    for _ in range(3):
        result = dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", str(listener.port))
        assert result.returncode == 0, result.stderr
    first.join(10)
    following = wait_for_ready(listener)
    assert following is not first
    assert following.name == WAITING_NAME


def test_the_ae_timeouts_in_force_at_connection_apply(listener: Listener) -> None:
    """An acceptor made ready earlier takes the AE's timeouts as they are when a caller connects."""
    ready = wait_for_ready(listener)
    listener.server.ae.network_timeout = 17
    listener.server.ae.dimse_timeout = 19
    assoc = requestor().associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    try:
        assert listener.server.active_associations == [ready]
        assert ready.network_timeout == 17
        assert ready.dimse_timeout == 19
    finally:
        assoc.release()


def test_a_handler_bound_after_the_acceptor_was_made_is_called(listener: Listener) -> None:
    old = wait_for_ready(listener)
    established: list[object] = []
    listener.server.bind(evt.EVT_ESTABLISHED, lambda event: established.append(event.assoc))
    old.join(10)
    assert not old.is_alive()  # the ready one, without the binding, was discarded
    assoc = requestor().associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    try:
        assert assoc.is_established
    finally:
        assoc.release()
    assert len(established) == 1
    assert established[0] is not old


def test_closing_the_listener_ends_its_ready_acceptor(tmp_path: Path) -> None:
    started = start_listener(tmp_path)
    listener = next(started)
    ready = wait_for_ready(listener)
    with pytest.raises(StopIteration):
        next(started)  # shutdown and server_close
    ready.join(10)
    ready.dul.join(10)
    assert not ready.is_alive()
    assert not ready.dul.is_alive()
    assert isinstance(ready.dul, reactor.EventDrivenDUL)
    assert ready.dul._wake_receive is None  # its socket pair is closed
    assert listener.server.acceptors.ready is None
    assert not [t for t in threading.enumerate() if t.name == WAITING_NAME and t is ready]


def test_an_association_ends_without_polling_for_its_dul(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom looks every 10 ms for the DUL's return to idle; here it is woken when it does."""
    monkeypatch.setattr(reactor, "KILL_CHECK", 3600.0)  # a poll would outlast the test
    ready = wait_for_ready(listener)
    assoc = requestor().associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    assert assoc.is_established
    assoc.release()
    ready.join(30)
    assert not ready.is_alive()
    assert ready.is_released


def test_a_connection_that_cannot_be_attached_ends_its_acceptor(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while handing over the connection leaves no acceptor waiting forever."""
    ready = wait_for_ready(listener)
    original = acceptor_module.AssociationSocket
    failures: list[bool] = []

    def failing_once(*args: object, **kwargs: object) -> object:
        if not failures:
            failures.append(True)
            raise OSError("the socket went away")
        return original(*args, **kwargs)

    monkeypatch.setattr(acceptor_module, "AssociationSocket", failing_once)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as refused:
        assert refused.recv(1) == b""  # closed without a word
    ready.join(10)
    ready.dul.join(10)
    assert not ready.is_alive()
    assert not ready.dul.is_alive()
    assoc = requestor().associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    try:
        assert assoc.is_established  # the next caller is served
    finally:
        assoc.release()


def test_the_ready_acceptor_takes_no_place_among_the_associations_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a limit of 2 per process, two callers are served and a third refused."""
    monkeypatch.setattr(scp, "MAX_ASSOCIATIONS", 2)
    started = start_listener(tmp_path)
    listener = next(started)
    associations = []
    try:
        wait_for_ready(listener)
        ae = requestor()
        for _ in range(2):
            associations.append(ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE))
            assert associations[-1].is_established
        third = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
        associations.append(third)
        assert third.is_rejected
    finally:
        for assoc in associations:
            if assoc.is_established:
                assoc.release()
        with pytest.raises(StopIteration):
            next(started)


def test_a_caller_that_hangs_up_at_once_ends_its_acceptor_cleanly(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DUL runs before ``attach`` returns: the caller's address must be set before it can act.

    A caller that connects and closes (a port probe, a failed TLS client) makes the DUL go
    Sta1 -> Sta2 (Evt5) -> Sta1 (Evt17, AA-5), and AA-5 reads the caller's address. Here the
    DUL is given the time to do so inside ``set_socket``, the window in which a CI run once
    found it unset (an AttributeError on the DUL's thread).
    """
    ready = wait_for_ready(listener)
    original = ReadyAcceptor.set_socket
    back_in_window: list[bool] = []

    def set_socket_then_let_the_dul_act(self: ReadyAcceptor, sock: object) -> None:
        original(self, sock)
        dul = cast("EventDrivenDUL", self.dul)
        dul.wake()  # as attach does next: the DUL may have looked for work before the socket was set
        back_in_window.append(dul.back_to_idle.wait(5))

    monkeypatch.setattr(ReadyAcceptor, "set_socket", set_socket_then_let_the_dul_act)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10):
        pass  # connected, then closed without a word
    ready.join(10)
    assert not ready.is_alive()
    assert back_in_window == [True]  # the DUL went through AA-5 back to Sta1 within the window
    assert ready.dul.state_machine.current_state == "Sta1"
    monkeypatch.undo()
    assoc = requestor().associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    try:
        assert assoc.is_established  # the next caller is served
    finally:
        assoc.release()


@pytest.mark.parametrize("sends", [b"", b"\x01\x00"], ids=["nothing", "part-of-a-pdu-header"])
def test_a_caller_that_hangs_up_before_asking_frees_its_place_at_once(listener: Listener, sends: bytes) -> None:
    """Not after ``acse_timeout``: port probes and health checks would hold the places meanwhile."""
    listener.server.ae.acse_timeout = 3600  # read by the acceptor when the connection comes
    ready = wait_for_ready(listener)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as probe:
        probe.sendall(sends)
    ready.join(10)
    assert not ready.is_alive()
    assert not ready.is_established
    assert ready.dul.state_machine.current_state == "Sta1"
    assert listener.server.active_associations == []
    assoc = requestor().associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    try:
        assert assoc.is_established
    finally:
        assoc.release()


def test_a_caller_that_asks_then_hangs_up_ends_its_acceptor(listener: Listener) -> None:
    """A request already in when the connection closes is read first, and the acceptor ends."""
    listener.server.ae.acse_timeout = 3600
    ready = wait_for_ready(listener)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as caller:
        caller.sendall(association_request(AE_TITLE, "ACCEPTORTEST"))
    ready.join(10)
    assert not ready.is_alive()
    assert not ready.is_established
    assert listener.server.active_associations == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dul_action_that_fails_before_the_request_ends_the_acceptor(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom stops a DUL whose action raised outside Sta1: the acceptor must not wait on."""
    listener.server.ae.acse_timeout = 3600
    ready = wait_for_ready(listener)

    def failing(dul: object) -> str:
        raise RuntimeError("an action that fails")

    description, _, next_state = fsm.ACTIONS["AA-5"]
    monkeypatch.setitem(fsm.ACTIONS, "AA-5", (description, failing, next_state))
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10):
        pass  # AA-5 runs when the DUL sees the connection closed
    ready.join(10)
    assert not ready.is_alive()
    assert ready.dul.state_machine.current_state == "Sta2"  # the action failed: never back to Sta1
    assert listener.server.active_associations == []
