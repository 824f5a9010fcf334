"""The event-driven association loops (pixport.dimse.reactor) with real peers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dimse_support import AE_TITLE, CORPUS, Listener, dcmtk, start_listener
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pixport.dimse import reactor
from pixport.dimse.network import configure_pynetdicom
from pixport.dimse.store import handle_c_store

SMALL = CORPUS / "charset" / "chrFren_latin1.dcm"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    yield from start_listener(tmp_path)


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_accepted_and_requested_associations_use_the_event_driven_loops(listener: Listener) -> None:
    accepted: list[Any] = []
    listener.server.bind(evt.EVT_ESTABLISHED, lambda event: accepted.append(event.assoc))
    configure_pynetdicom()
    ae = AE(ae_title="REACTORTEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    try:
        assert assoc.is_established
        assert isinstance(assoc.dul, reactor.EventDrivenDUL)
        assert isinstance(assoc.dimse, reactor.WakingDIMSE)
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
    assert len(accepted) == 1
    assert isinstance(accepted[0].dul, reactor.EventDrivenDUL)


def test_an_idle_association_waits_instead_of_polling(listener: Listener) -> None:
    """Over half a second of silence the DUL loop wakes about every IDLE_CHECK, not every ms."""
    configure_pynetdicom()
    ae = AE(ae_title="REACTORTEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    waits = 0
    original = assoc.dul._wait_for_work

    def counting() -> None:
        nonlocal waits
        waits += 1
        original()

    try:
        assert assoc.is_established
        assoc.dul._wait_for_work = counting
        threading.Event().wait(0.5)
        assert assoc.send_c_echo().Status == 0  # and it still answers at once when asked
    finally:
        assoc.release()
    assert 0 < waits < 0.5 / reactor.IDLE_CHECK * 3


def test_many_associations_leave_no_descriptor_behind(listener: Listener) -> None:
    """Each association's wake-up socket pair is closed when its loop ends."""
    result = dcmtk("storescu", "-aec", AE_TITLE, "127.0.0.1", listener.port, SMALL)
    assert result.returncode == 0, result.stderr
    before = open_fds()
    for _ in range(20):
        result = dcmtk("storescu", "-aec", AE_TITLE, "127.0.0.1", listener.port, SMALL)
        assert result.returncode == 0, result.stderr
    for _ in range(100):
        if not [t for t in threading.enumerate() if "Acceptor" in t.name]:
            break
        threading.Event().wait(0.05)
    assert open_fds() <= before + 2


def test_install_refuses_another_pynetdicom(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reactor, "_installed", False)
    monkeypatch.setattr(reactor.pynetdicom, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match=r"pynetdicom 3\.0\.x, found 9\.9\.9"):
        reactor.install()


def test_a_c_store_is_served_on_the_receiving_thread_and_answers_in_order(listener: Listener) -> None:
    """An idle acceptor serves C-STOREs on its DUL thread; storescu's instances all arrive."""
    threads: list[bool] = []

    def recording(event: Any) -> Any:
        threads.append(threading.current_thread() is event.assoc.dul)
        return handle_c_store(event, archive=listener.archive)

    listener.server.bind(evt.EVT_C_STORE, reactor.safe_on_receiving_thread(recording))
    files = [CORPUS / "modality" / "ct" / "CT_small.dcm", SMALL]
    result = dcmtk("storescu", "-aec", AE_TITLE, "127.0.0.1", listener.port, *files, *files)
    assert result.returncode == 0, result.stderr
    assert threads == [True] * 2 * len(files)  # the second time: duplicates, answered the same way
    assert listener.archive.index.count_instances() == len(files)


class StallingCheckpoint(threading.Event):
    """A reactor checkpoint whose waiter, once armed, stalls just after getting through.

    It stands for the association thread being descheduled between passing the checkpoint
    and marking itself unpaused, until a DIMSE message is queued: the window in which a
    ``send_*`` call from another thread sees the loop still paused, goes ahead, and may find
    its response taken by the loop.
    """

    def __init__(self, messages: Any) -> None:
        super().__init__()
        self.set()
        self.messages = messages
        self.armed = threading.Event()
        self.passed = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        result = super().wait(timeout)
        if self.armed.is_set() and threading.current_thread() is not threading.main_thread():
            self.armed.clear()
            self.passed.set()
            for _ in range(1000):
                if self.messages.qsize():
                    break
                threading.Event().wait(0.001)
        return result


def test_a_send_from_another_thread_keeps_its_response(listener: Listener) -> None:
    """The association loop, stalled right after its checkpoint, must not take a response.

    This happened under C-MOVE: the thread serving the move sends each C-STORE on the
    association to the destination, whose own loop sometimes took the C-STORE response
    ("Received unexpected C-STORE service message") and the sub-operation then waited forever.
    """
    configure_pynetdicom()
    ae = AE(ae_title="REACTORTEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    get_msg = assoc.dimse.get_msg

    def late_get_msg(block: bool = False) -> Any:  # noqa: FBT001, FBT002  pynetdicom's signature
        if block:  # the sender, slow to come back for its response
            threading.Event().wait(0.2)
        return get_msg(block)

    try:
        assert assoc.is_established
        assoc.dimse_timeout = 2
        assoc.dimse.get_msg = late_get_msg
        for _ in range(3):
            checkpoint = StallingCheckpoint(assoc.dimse.msg_queue)
            assoc._reactor_checkpoint = checkpoint
            checkpoint.armed.set()
            assert checkpoint.passed.wait(2)
            assert assoc.send_c_echo().get("Status") == 0
            assert assoc.is_established
    finally:
        assoc.release()


def test_a_borrowed_socket_is_read_by_the_borrower_only(listener: Listener) -> None:
    """While a thread borrows the socket, the DUL thread leaves it alone; a PDU handed over reaches pynetdicom."""
    configure_pynetdicom()
    ae = AE(ae_title="REACTORTEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    try:
        assert assoc.is_established
        context_id = assoc.accepted_contexts[0].context_id
        echo = C_ECHO()
        echo.MessageID = 7
        echo.AffectedSOPClassUID = Verification
        assoc._reactor_checkpoint.clear()  # as a send_* call does: the association loop keeps off the queue
        while not assoc._is_paused:
            threading.Event().wait(0.001)
        with assoc.dul.borrow_socket() as reader:
            assert reader is not None
            assert reader.read_pdu(0.1) is None  # nothing yet
            assoc.dimse.send_msg(echo, context_id)
            data = reader.read_pdu(5)  # the DUL thread, had it read the response, would leave None here
            assert data is not None
            assert data[0] == 0x04  # P-DATA-TF
            threading.Event().wait(3 * reactor.IDLE_CHECK)
            assert assoc.dimse.msg_queue.qsize() == 0
            reader.hand_over(data)
        _, response = assoc.dimse.get_msg(block=True)
        assert response is not None
        assert (response.MessageIDBeingRespondedTo, response.Status) == (7, 0)
        assoc._reactor_checkpoint.set()
        assert assoc.send_c_echo().Status == 0  # and the DUL thread reads the socket again
    finally:
        assoc.release()


def test_no_borrowing_where_handlers_watch_what_is_received(listener: Listener) -> None:
    configure_pynetdicom()
    ae = AE(ae_title="REACTORTEST")
    ae.add_requested_context(Verification)
    seen: list[Any] = []
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE, evt_handlers=[(evt.EVT_PDU_RECV, seen.append)])
    try:
        with assoc.dul.borrow_socket() as reader:
            assert reader is None
        assert assoc.send_c_echo().Status == 0
        assert seen
    finally:
        assoc.release()


def test_answers_to_association_and_release_requests_are_sent_by_the_association_thread(listener: Listener) -> None:
    """A-ASSOCIATE-AC and A-RELEASE-RP go out from the association's thread, not via a DUL wake-up."""
    sent: list[tuple[str, bool]] = []

    def record(event: Any) -> None:
        sent.append((type(event.pdu).__name__, threading.current_thread() is event.assoc))

    listener.server.bind(evt.EVT_PDU_SENT, record)
    configure_pynetdicom()
    ae = AE(ae_title="REACTORTEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    assert assoc.is_established
    assoc.release()
    for _ in range(100):
        if len(sent) >= 2:
            break
        threading.Event().wait(0.05)
    assert sent == [("A_ASSOCIATE_AC", True), ("A_RELEASE_RP", True)]


def test_the_dul_looking_at_its_queue_during_a_direct_answer_does_not_act_twice(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DUL's own loop peeks at the queue right when the association thread answers directly.

    ``send_pdu`` puts the A-ASSOCIATE-AC (or A-RELEASE-RP) primitive in the queue and runs its
    action; here the DUL's look at the queue (``_process_recv_primitive``) is started in
    between, on another thread, at the worst moment.  It must wait for the action, find the
    queue empty and queue nothing: an event queued then would be acted on in the wrong state,
    and the association aborted.
    """
    act = reactor.EventDrivenDUL._act
    raced: list[str] = []
    peeks: list[tuple[threading.Thread, list[bool]]] = []

    def act_after_a_peek(self: reactor.EventDrivenDUL, event: str) -> None:
        if event in {"Evt7", "Evt14"} and threading.get_ident() != self.ident:  # the direct answer
            found: list[bool] = []
            peek = threading.Thread(target=lambda: found.append(self._process_recv_primitive()))
            peek.start()
            peek.join(0.2)  # it waits for the send lock, which this thread holds until it has answered
            peeks.append((peek, found))
            raced.append(event)
        act(self, event)

    monkeypatch.setattr(reactor.EventDrivenDUL, "_act", act_after_a_peek)
    for _ in range(3):
        result = dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", listener.port)
        assert result.returncode == 0, result.stderr
    assert raced.count("Evt7") == 3
    assert raced.count("Evt14") == 3
    for peek, found in peeks:
        peek.join(10)
        assert found == [False], "the DUL's look found an answer already sent (and would act on it again)"
