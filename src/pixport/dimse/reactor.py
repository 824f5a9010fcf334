"""Event-driven loops for pynetdicom's associations, instead of sleep-and-poll.

Each pynetdicom association runs two threads that poll: the DUL reactor checks its socket and
its queues and sleeps ``_run_loop_delay`` when nothing happened, and the association reactor
sleeps 1 ms before every look at the DIMSE message queue.  A C-STORE passes through both loops
several times (request command, data set, response), so those sleeps were about half of the
time of a small C-STORE on one association (docs/performance.md).

Here both loops block until there is work instead:

- the DUL reactor waits in ``select`` on its socket and on a wake-up socket pair, which is
  written whenever another thread queues a primitive or an event for it;
- the association reactor waits on an event set whenever a DIMSE message or an upper-layer
  primitive (release, abort) is queued for it;
- a P-DATA fragment (a piece of a DIMSE message) is sent by the thread that produced it, when
  the association is established and nothing is queued ahead of it, instead of being handed
  to the DUL thread: one thread switch less per C-STORE response, and none per fragment when
  we send data sets (C-STORE as a client, C-GET and C-MOVE sub-operations); likewise this
  side's answer to an A-ASSOCIATE-RQ or A-RELEASE-RQ, on the association's thread.  A lock keeps
  those sends and every state-machine action apart, so PDUs never interleave or reorder.  Not
  over TLS: one SSL connection must not be read and written from two threads at once;
- a C-STORE request reaching an idle acceptor is served on the DUL thread that received it
  (``MessageQueue``), without a hand-over to the association thread;
- the fragments of a P-DATA-TF PDU that the DIMSE provider takes itself (``fast_store``) go to
  it as views into the buffer the PDU was read into, without pynetdicom's decoding, queues,
  state-machine lookup and P-DATA primitive (``_hand_fragments``: the Sta6 + Evt10 case only).
- a thread that sends a request and waits for its response (a C-GET or C-MOVE sub-operation)
  may borrow the socket and read the response itself (``borrow_socket``): no hand-over to the
  DUL thread and back per request; what it does not take it hands to the state machine.

Both still wake every ``IDLE_CHECK`` seconds to run their timers (ARTIM, network timeout).
The state machine, the PDU and DIMSE codecs and every service stay pynetdicom's own.

``install()`` puts these loops in place for every association of the process: it replaces the
two provider classes that ``Association.__init__`` instantiates and the acceptor/requestor
reactor method.  That reaches into pynetdicom's internals, so the version is pinned
(constraints.txt) and ``install`` refuses any other: the loops below mirror pynetdicom 3.0's own.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pynetdicom
from pynetdicom import association as pynetdicom_association
from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, A_RELEASE, P_DATA

from pixport.dimse.pdu_reader import P_DATA_TF_TYPE, ClosedBetweenPdus, UnknownPduType, pdv_items, read_pdu

SUPPORTED_PYNETDICOM = "3.0."
# Events whose handlers expect to see every PDU or message received (no borrowed reads then).
_RECEIVE_EVENTS = (evt.EVT_PDU_RECV, evt.EVT_DATA_RECV, evt.EVT_DIMSE_RECV)
# Events pynetdicom triggers for each PDU it reads and acts on (none then for a P-DATA-TF's
# fragments handed straight to the DIMSE provider, see ``_hand_fragments``).
_PER_PDU_EVENTS = (evt.EVT_PDU_RECV, evt.EVT_DATA_RECV, evt.EVT_FSM_TRANSITION)
# Seconds either loop waits at most when nothing arrives, to look at its timers.
IDLE_CHECK = 0.05

LOGGER = logging.getLogger("pynetdicom.dul")


def quick_ack(transport: socket.socket | None) -> None:
    """Acknowledge what has been received now, rather than after delayed ACK's 40 ms.

    Setting TCP_QUICKACK sends any pending ACK at once; Linux leaves quick-ACK mode again on
    its own, so it is set after every read that matters.  A no-op elsewhere and on a closed
    socket.
    """
    if transport is None:
        return
    with contextlib.suppress(OSError, AttributeError, ValueError):  # TCP_QUICKACK is Linux's
        transport.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class WakingQueue(queue.Queue[Any]):
    """A queue that calls ``on_put`` after every put, to wake the thread that consumes it."""

    def __init__(self, on_put: Callable[[], None]) -> None:
        super().__init__()
        self._on_put = on_put

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:  # noqa: FBT001, FBT002  queue.Queue's signature
        super().put(item, block, timeout)
        self._on_put()


class EventDrivenDUL(DULServiceProvider):
    """The DICOM upper layer, its reactor blocking in ``select`` until there is work."""

    def __init__(self, assoc: Any) -> None:
        super().__init__(assoc)
        self._wake_lock = threading.Lock()
        # Held by every state-machine action and every direct P-DATA send (see the module doc).
        self._send_lock = threading.RLock()
        # Held by whichever thread reads the socket: this one, or a borrower (borrow_socket).
        self._read_lock = threading.Lock()
        receive, send = socket.socketpair()
        receive.setblocking(False)  # noqa: FBT003  socket API
        send.setblocking(False)  # noqa: FBT003
        self._wake_receive: socket.socket | None = receive
        self._wake_send: socket.socket | None = send
        # Set when something is queued for the association's reactor (see WakingDIMSE too).
        self.user_wake = threading.Event()
        self.to_provider_queue = WakingQueue(self.wake)
        self.event_queue = WakingQueue(self.wake)
        self.to_user_queue = WakingQueue(self.user_wake.set)
        # Set once the state machine is back in Sta1 (idle) after the connection: from then on
        # the association may stop this thread (see kill_association).
        self.back_to_idle = threading.Event()

    def wake(self) -> None:
        """Make the reactor look at its queues now (a no-op from the reactor's own thread)."""
        if threading.get_ident() == self.ident:
            return
        with self._wake_lock:
            if self._wake_send is not None:
                # A full buffer means a wake-up is already pending.
                with contextlib.suppress(OSError):
                    self._wake_send.send(b"\0")

    def send_pdu(self, primitive: Any) -> None:
        """Send a P-DATA fragment or an answer at once when nothing is ahead of it; else queue it.

        An answer is this side's reply to the peer's A-ASSOCIATE-RQ or A-RELEASE-RQ: the
        state machine's action for it runs here, on the association's thread, instead of this
        thread being woken to run it (0.15-0.25 ms per hand-over, measured on association
        set-up).  Only in the state that awaits that answer and with nothing queued ahead.
        """
        if self._direct_send_possible():
            with self._send_lock:
                if not self.to_provider_queue.qsize():
                    state = self.state_machine.current_state
                    if isinstance(primitive, P_DATA) and state == "Sta6":
                        self._send(P_DATA_TF(primitive))
                        return
                    event = _answer_event(primitive, state)
                    if event is not None and not self.event_queue.qsize():
                        queue.Queue.put(self.to_provider_queue, primitive)  # the action takes it; no wake-up
                        self._act(event)
                        return
        super().send_pdu(primitive)

    def _process_recv_primitive(self) -> bool:
        """The look at the next primitive to send (pynetdicom's), under ``_send_lock``.

        pynetdicom peeks at the queue's head and queues the matching event, and the action
        takes the primitive off later.  ``send_pdu`` puts an answer in the queue and runs its
        action at once, both under the lock: a peek between the two, unlocked, queued the
        event a second time, and the state machine then met Evt7 in Sta6 and aborted the
        association (seen once in four associations' set-up on a fresh listener).
        """
        with self._send_lock:
            return bool(super()._process_recv_primitive())

    def _act(self, event: str) -> None:
        """Run the state machine's action for ``event`` (the caller holds ``_send_lock``)."""
        self.state_machine.do_action(event)
        if self.state_machine.current_state == "Sta1":
            self.back_to_idle.set()
            self.user_wake.set()  # an acceptor still waiting for a request stops waiting

    def send_raw(self, data: bytes) -> None:
        """Send an encoded PDU now, ordered after any state-machine action in progress."""
        with self._send_lock:
            if self.socket is not None:
                self.socket.send(data)

    def _direct_send_possible(self) -> bool:
        transport = self.socket.socket if self.socket is not None else None
        return transport is not None and not isinstance(transport, ssl.SSLSocket)

    @contextlib.contextmanager
    def borrow_socket(self) -> Iterator[BorrowedSocket | None]:
        """Read incoming PDUs on the calling thread for a while; None where it cannot be done.

        For a thread that sends a request and waits for its response (a C-GET or C-MOVE
        sub-operation): it reads the response itself instead of waiting for this thread to read,
        decode and queue it, and for the association thread to wake; two hand-overs between
        threads fewer per request.  Meanwhile this thread leaves the socket alone (it skips it
        while the borrower holds ``_read_lock``, and its ``select`` stops watching it from its
        next wait).  Whatever the borrower does not take it hands back (``hand_over``) for the
        state machine, as if this thread had read it.  None over TLS (see the module doc), when
        not established, or with a handler bound to EVT_PDU_RECV, EVT_DATA_RECV or
        EVT_DIMSE_RECV, which expect to see every PDU or message.
        """
        transport = self.socket.socket if self.socket is not None else None
        if (
            transport is None
            or isinstance(transport, ssl.SSLSocket)
            or self.state_machine.current_state != "Sta6"
            or any(self.assoc.get_handlers(event) for event in _RECEIVE_EVENTS)
        ):
            yield None
            return
        with self._read_lock:
            yield BorrowedSocket(self, transport)

    def _is_transport_event(self) -> bool:
        """The socket check of pynetdicom, unless a borrower is reading the socket."""
        if not self._read_lock.acquire(blocking=False):
            return False
        try:
            return bool(super()._is_transport_event())
        finally:
            self._read_lock.release()

    def _read_pdu_data(self) -> None:
        """Read one PDU and hand it to the state machine, as pynetdicom's reader does.

        The socket is put in quick-ACK mode first: DCMTK's storescu, without TCP_NODELAY in its
        environment (the default), writes a C-STORE's PDU header and its command in two writes,
        and Nagle's algorithm holds the second until the first is acknowledged.  After our
        previous response the kernel treats the connection as interactive and delays that ACK
        about 40 ms, hoping to piggyback it on data we do not send: 48 ms per small instance.
        Quick-ACK mode sends it now, and while it lasts each read that empties the buffer
        acknowledges at once.

        On a plain TCP socket the PDU is read whole into one buffer (``pdu_reader``), waiting
        at most ``network_timeout`` for each next piece of it; the events queued for each
        outcome are pynetdicom's (Evt17 for a connection that closes, fails or stalls mid-PDU,
        Evt19 for an unknown or undecodable PDU).  Over TLS pynetdicom reads it, with
        ``network_timeout`` set on the socket so that its waits are bounded too.
        """
        transport = self.socket.socket if self.socket is not None else None
        if transport is not None:
            quick_ack(transport)
        if transport is None or isinstance(transport, ssl.SSLSocket):
            if transport is not None and transport.gettimeout() is None:
                # Bounded waits for TLS too: a read stalled mid-PDU fails after network_timeout.
                transport.settimeout(self.network_timeout)
            super()._read_pdu_data()
            return
        pdu_data = self.read_whole_pdu(transport)
        if pdu_data is None:
            return
        if pdu_data[0] == P_DATA_TF_TYPE and self._hand_fragments(pdu_data):
            return
        try:
            pdu, event = self._decode_pdu(pdu_data)
        except Exception:  # noqa: BLE001  as pynetdicom: an undecodable PDU is Evt19
            LOGGER.error("Unable to decode the received PDU data")  # noqa: TRY400  no data in the log
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _hand_fragments(self, pdu: bytearray) -> bool:
        """Give a P-DATA-TF's fragments to a DIMSE provider that takes them directly; whether done.

        What pynetdicom does with a P-DATA-TF in Sta6 (Evt10, action DT-2) is to pass its
        fragments to the DIMSE provider and stay in Sta6; on the way it copies the PDU twice
        (to bytes, then each fragment), queues it and its event, looks the action up and builds
        a P-DATA primitive: about 70 µs per 128 kB PDU of a CT slice, five per slice.  Here the
        fragments go as views into the buffer the PDU was read into, under the lock every
        state-machine action holds.  Only in Sta6 with no event queued ahead (so the order of
        actions is the one pynetdicom would follow), for a well-formed PDU (a malformed one takes
        pynetdicom's path, which aborts as before), with no handler bound to the per-PDU
        events, and for a provider that asks for them (``FastStoreDIMSE.takes_fragments``).
        """
        take = getattr(self.assoc.dimse, "receive_fragments", None)
        wanted = getattr(self.assoc.dimse, "takes_fragments", None)
        if take is None or wanted is None or any(self.assoc.get_handlers(event) for event in _PER_PDU_EVENTS):
            return False
        items = pdv_items(pdu)
        if items is None:
            return False
        # The state is read under the lock: the association's thread sends the A-ASSOCIATE-AC
        # and enters Sta6 in one action under it, and the peer's first P-DATA can arrive between
        # the two.
        with self._send_lock:
            if self.event_queue.qsize() or self.state_machine.current_state != "Sta6" or not wanted():
                return False
            take(items)
        return True

    def read_whole_pdu(self, transport: socket.socket) -> bytearray | None:
        """The next PDU from a plain socket (``pdu_reader``); None once its fault is queued.

        Faults become pynetdicom's events: Evt19 for an unknown PDU type, Evt17 for a
        connection that closes, fails or stalls mid-PDU for ``network_timeout``.
        """
        try:
            return read_pdu(transport, self.network_timeout, quick_ack)
        except UnknownPduType as exc:
            LOGGER.error("Unknown PDU type received '0x%02X'", exc.pdu_type)  # noqa: TRY400  as pynetdicom
            self.event_queue.put("Evt19")
        except ClosedBetweenPdus:  # the peer's close after A-RELEASE-RP, or its abrupt end: no error
            self.event_queue.put("Evt17")
        except (OSError, EOFError, ValueError):  # TimeoutError is an OSError
            LOGGER.error("Connection closed before the entire PDU was received")  # noqa: TRY400  as pynetdicom
            self.event_queue.put("Evt17")
        return None

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self.wake()
            if threading.current_thread() is not self:
                self.join()
            return True
        return False

    def _wait_for_work(self) -> None:
        """Block until the socket has data, a wake-up arrives, or IDLE_CHECK passes."""
        if self.to_provider_queue.qsize() or self.event_queue.qsize():
            return
        receive = self._wake_receive
        if receive is None:
            return
        watched: list[Any] = [receive]
        transport = self.socket.socket if self.socket is not None else None
        if transport is not None and not self._read_lock.locked():  # not while a borrower reads it
            if isinstance(transport, ssl.SSLSocket) and transport.pending():
                return  # decrypted bytes already buffered: select would not see them
            if transport.fileno() >= 0:
                watched.append(transport)
        # No socket yet (an acceptor made ready before its connection, see acceptor.py): no
        # timer can run out, so it sleeps until woken.
        timeout = IDLE_CHECK if self.socket is not None else None
        try:
            ready, _, _ = select.select(watched, [], [], timeout)
        except (OSError, ValueError):
            return  # the socket was closed under us: the loop's own checks handle it
        if receive in ready:
            with contextlib.suppress(OSError):
                while receive.recv(4096):
                    pass

    def run_reactor(self) -> None:
        """The DUL loop of pynetdicom, with ``_wait_for_work`` in place of its sleep."""
        self._idle_timer.start()
        idle = False
        try:
            while True:
                if not self.assoc._dul_ready.is_set():  # noqa: SLF001  pynetdicom's handshake
                    self.assoc._dul_ready.set()  # noqa: SLF001
                if idle:
                    self._wait_for_work()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception as exc:  # noqa: BLE001  as pynetdicom: any failure aborts
                    self._abort_on_exception(exc)
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    idle = True
                    continue
                with self._send_lock:
                    self._act(event)
                idle = False
        finally:
            self._close_wake_sockets()
            self.user_wake.set()  # the association's reactor notices the DUL has ended

    def _abort_on_exception(self, exc: Exception) -> None:
        """As pynetdicom does: A-ABORT straight on the socket, both reactors stopped."""
        # The type only: a decoder's message may quote received data.
        LOGGER.error("%s in the DUL reactor, aborting the association", type(exc).__name__)
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        if self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.send(abort_pdu.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True  # noqa: SLF001
        self._kill_thread = True

    def _close_wake_sockets(self) -> None:
        with self._wake_lock:
            for end in (self._wake_receive, self._wake_send):
                if end is not None:
                    end.close()
            self._wake_receive = None
            self._wake_send = None


def _answer_event(primitive: Any, state: str) -> str | None:
    """The state machine's event for an answer sent in the state that awaits it, else None.

    Sta3 awaits the local answer to an A-ASSOCIATE-RQ (Evt7 accept, Evt8 reject), Sta8 the
    local A-RELEASE response (Evt14); as pynetdicom's ``_process_recv_primitive`` maps them.
    """
    if isinstance(primitive, A_ASSOCIATE) and primitive.result is not None and state == "Sta3":
        return "Evt7" if primitive.result == 0x00 else "Evt8"
    if isinstance(primitive, A_RELEASE) and primitive.result is not None and state == "Sta8":
        return "Evt14"
    return None


class BorrowedSocket:
    """An association's socket, read by another thread than its DUL's (``borrow_socket``)."""

    def __init__(self, dul: EventDrivenDUL, transport: socket.socket) -> None:
        self._dul = dul
        self._transport = transport

    def read_pdu(self, timeout: float | None) -> bytes | None:
        """The next whole PDU, or None if none starts within ``timeout`` seconds (None: no limit).

        A connection that closes, fails or stalls mid-PDU for ``network_timeout`` (Evt17), and a
        PDU of an unknown type (Evt19), are handed to the state machine as pynetdicom's reader
        hands them, and raise ConnectionError.

        The socket is put in quick-ACK mode first: DCMTK's tools write a response's PDU header
        and its command set in two writes and, without TCP_NODELAY in their environment (the
        default), Nagle's algorithm holds the second until the first is acknowledged, which
        delayed ACK holds back about 40 ms: every C-GET or C-MOVE sub-operation to getscu or
        storescp waited that long (Orthanc's too).
        """
        self._quick_ack()
        try:
            ready, _, _ = select.select([self._transport], [], [], timeout)
            if not ready:
                return None
        except (OSError, ValueError) as exc:
            LOGGER.error("Connection closed before the entire PDU was received")  # noqa: TRY400  as pynetdicom
            self._dul.event_queue.put("Evt17")
            raise ConnectionError from exc
        data = self._dul.read_whole_pdu(self._transport)
        if data is None:
            raise ConnectionError
        self._quick_ack()  # what was just read is acknowledged now, if it is not yet
        self._dul._idle_timer.restart()  # noqa: SLF001  as the DUL does for every PDU it reads
        return bytes(data)

    def _quick_ack(self) -> None:
        quick_ack(self._transport)

    def hand_over(self, data: bytes) -> None:
        """Give a PDU to the DUL thread, for the state machine, as if that thread had read it."""
        dul = self._dul
        try:
            pdu, event = dul._decode_pdu(bytearray(data))  # noqa: SLF001  pynetdicom's decoder
        except Exception:  # noqa: BLE001  as pynetdicom's reader: an undecodable PDU is Evt19
            LOGGER.error("Unable to decode the received PDU data")  # noqa: TRY400  no data in the log
            dul.event_queue.put("Evt19")
            return
        dul._recv_pdu.put(pdu)  # noqa: SLF001  before its event: the action takes it from there
        dul.event_queue.put(event)


class WakingDIMSE(DIMSEServiceProvider):
    """The DIMSE provider, waking the association's reactor when a message is complete."""

    def __init__(self, assoc: Any) -> None:
        super().__init__(assoc)
        self.msg_queue = MessageQueue(assoc)


class MessageQueue(WakingQueue):
    """Complete DIMSE messages for the association's reactor.

    A C-STORE request that reaches an acceptor whose reactor is idle, with nothing queued, is
    served at once on the thread that received it (the DUL's): the peer waits for its response
    and sends nothing meanwhile, so nothing is lost by not reading, and one hand-over between
    threads per instance is saved.  ``serving`` is held by whichever thread serves a request,
    so requests are still served one at a time and in order.
    """

    def __init__(self, assoc: Any) -> None:
        super().__init__(assoc.dul.user_wake.set)
        self._assoc = assoc
        self.serving = threading.Lock()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:  # noqa: FBT001, FBT002  queue.Queue's signature
        context_id, primitive = item
        if (
            INLINE_STORES
            and isinstance(primitive, C_STORE)
            and primitive.MessageIDBeingRespondedTo is None
            and self._assoc.is_acceptor
            and not self.qsize()
            and store_handler_is_safe_on_receiving_thread(self._assoc)
            and self.serving.acquire(blocking=False)
        ):
            try:
                self._assoc._serve_request(primitive, context_id)  # noqa: SLF001
            finally:
                self.serving.release()
            return
        super().put(item, block, timeout)


# False hands every request to the association thread, as pynetdicom does (A/B measurements).
INLINE_STORES = True
SAFE_ON_RECEIVING_THREAD = "pixport_safe_on_receiving_thread"


def safe_on_receiving_thread(handler: Any) -> Any:
    """Mark an EVT_C_STORE handler that may run on the DUL thread that received the request.

    Only a handler that never asks the association to abort or release (and so wait for the
    DUL thread to finish) qualifies: on that thread such a call would wait for itself.  Other
    handlers run on the association thread, as pynetdicom runs them.
    """
    setattr(handler, SAFE_ON_RECEIVING_THREAD, True)
    return handler


def store_handler_is_safe_on_receiving_thread(assoc: Any) -> bool:
    """Whether the EVT_C_STORE handler bound to ``assoc`` is marked ``safe_on_receiving_thread``."""
    handler = assoc.get_handlers(evt.EVT_C_STORE)
    return bool(handler) and getattr(handler[0], SAFE_ON_RECEIVING_THREAD, False) is True


def run_association_reactor(self: Any) -> None:
    """The association loop of pynetdicom (acceptor and requestor), waiting on an event.

    While it waits it counts as paused: a ``send_*`` call from another thread may go ahead at
    once, and the checkpoint below stops the loop before it touches a queue.
    """
    wake: threading.Event = self.dul.user_wake
    idle = False
    while not self._kill:
        self._is_paused = True
        if idle:
            wake.wait(IDLE_CHECK)
            wake.clear()
        self._reactor_checkpoint.wait()
        self._is_paused = False
        if not self._reactor_checkpoint.is_set():
            # A send_* call cleared the checkpoint after this thread got through it, and may
            # have gone ahead on seeing it still paused: its response is not ours to take.
            idle = False
            continue
        idle = True

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            with self.dimse.msg_queue.serving:
                self._serve_request(msg, context_id)
            idle = False

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            LOGGER.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            LOGGER.info("Association Aborted")
            self.dul.receive_pdu(wait=False)  # EVT_ACSE_RECV fires for subscribers
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            LOGGER.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


def kill_association(self: Any) -> None:
    """``Association.kill`` of pynetdicom, waiting for the DUL's return to Sta1 without polling.

    pynetdicom looks every 10 ms, so every association's thread outlived its connection by up
    to 10 ms after the A-RELEASE-RP: a listener process counted it as busy meanwhile
    (``scp.ListenerServer.get_request``), and its next acceptor (``acceptor.py``) was made
    that much later.
    """
    self._reactor_checkpoint.set()
    self._kill = True
    self.is_established = False
    self._is_paused = True
    dul = self.dul
    while dul.is_alive() and not dul.stop_dul():
        dul.back_to_idle.wait(KILL_CHECK)


# Seconds between looks at the DUL's state while an association stops (pynetdicom: 0.01).
KILL_CHECK = 0.01

_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Use the event-driven loops for every association created from now on; idempotent."""
    global _installed  # noqa: PLW0603  one process-wide switch
    with _install_lock:
        if _installed:
            return
        if not pynetdicom.__version__.startswith(SUPPORTED_PYNETDICOM):
            msg = (
                f"pixport.dimse.reactor mirrors pynetdicom {SUPPORTED_PYNETDICOM}x, "
                f"found {pynetdicom.__version__}: review the loops before changing the pin"
            )
            raise RuntimeError(msg)
        pynetdicom_association.DULServiceProvider = EventDrivenDUL  # type: ignore[attr-defined]
        pynetdicom_association.DIMSEServiceProvider = WakingDIMSE  # type: ignore[attr-defined]
        pynetdicom_association.Association._run_reactor = run_association_reactor  # type: ignore[method-assign]  # noqa: SLF001
        pynetdicom_association.Association.kill = kill_association  # type: ignore[method-assign]
        _installed = True
