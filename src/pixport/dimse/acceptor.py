"""Acceptor associations made ahead of their connections: their set-up off the caller's path.

pynetdicom makes an association when its connection is accepted: the ``Association`` (its DUL,
DIMSE and ACSE providers, nine queues, some thirty locks and conditions, the event bindings,
a copy of the supported contexts), then its two threads, one started by the other.  Measured
from a raw client against one listener process, that was 1.5-1.9 ms of the 3.4 ms from
connect to A-ASSOCIATE-AC; Orthanc answers in about 0.5 ms.  A single ``findscu`` (one
association, one query) pays it every time.

Here a listener keeps one acceptor ready (``ReadyAcceptor``): made, its threads started and
waiting, before any caller connects.  An accepted connection is handed to it (``attach``);
what is left on the caller's path is pynetdicom's own: reading and decoding A-ASSOCIATE-RQ,
negotiating, sending A-ASSOCIATE-AC.  The next one is made when an association of the
process ends (its peer already has its last answer) or while the process is idle
(``scp.ListenerServer.service_actions``); a connection that finds none ready gets one made
on the spot, as before.

Until attached, a ready acceptor is not an active association for pynetdicom's server (its
thread is not named ``AcceptorThread``), holds no connection and no timer, and its DUL thread
sleeps until woken (``reactor.EventDrivenDUL._wait_for_work``).
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.transport import AddressInformation, AssociationSocket

from pixport.dimse.reactor import EventDrivenDUL

# The thread's name until a connection arrives: pynetdicom's server counts as active only the
# threads named "AcceptorThread…" (``AssociationServer.active_associations``).
WAITING_NAME = "ReadyForConnection"
ENDED_NAME = "AssociationEnded"


class ReadyAcceptor(Association):
    """An acceptor association whose threads wait for a connection (``attach``).

    Made as pynetdicom's ``RequestHandler._create_association`` makes one, minus the
    connection: the server's AE title and addresses, a copy of its supported contexts, its
    bound handlers.  ``discard`` ends one that will not be used.
    """

    def __init__(self, server: Any) -> None:
        super().__init__(server.ae, MODE_ACCEPTOR)
        self._server = server
        self._listener = server  # a scp.ListenerServer (not imported: it imports this module)
        self.name = WAITING_NAME
        self._connected = threading.Event()
        self._discarded = False
        ae = server.ae
        self.acceptor.maximum_length = ae.maximum_pdu_size
        self.acceptor.ae_title = server.ae_title
        self.acceptor.address_info = AddressInformation.from_tuple(server.server_address)
        self.acceptor.implementation_class_uid = ae.implementation_class_uid
        self.acceptor.implementation_version_name = ae.implementation_version_name
        self.acceptor.supported_contexts = [context.__deepcopy__({}) for context in server.contexts]
        for event, handlers in server._handlers.items():  # noqa: SLF001  as pynetdicom binds them
            if event.is_intervention and handlers:
                self.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in handlers:
                    self.bind(event, handler, args)

    @property
    def is_acceptor(self) -> bool:
        """Not until attached: pynetdicom counts the live acceptors against the AE's maximum."""
        return self._connected.is_set() and not self._discarded

    def start(self) -> None:
        """Start both threads: the DUL's here, so that both run once this returns."""
        self.dul.start()
        self._started_dul = True  # pynetdicom's run_reactor would start it otherwise
        super().start()

    def run_reactor(self) -> None:
        """Wait for a connection, then run as pynetdicom's acceptor."""
        self._dul_ready.wait()
        self._connected.wait()
        if self._discarded:
            self.dul.kill_dul()
            return
        try:
            if self._caller_asked():
                super().run_reactor()
            else:
                self._end_unasked()
        finally:
            # No longer an active association for the server (which delays accepting while it
            # has some, so that an idle sibling process takes the caller), while it makes the
            # next acceptor: 1-2 ms, more in a fresh process.
            self.name = ENDED_NAME
            self._listener.association_ended()

    def _caller_asked(self) -> bool:
        """Wait until the caller's A-ASSOCIATE-RQ is in; False if it hangs up first or is late.

        pynetdicom's acceptor waits ``acse_timeout`` for the request whatever happens, so a
        caller that connects and closes (a port probe, a load balancer's health check, a TLS
        client that gives up) held an association slot, and delayed this process's next
        accept, for that long (30 s by default).  The DUL wakes this thread when it is back
        in Sta1 (``reactor.EventDrivenDUL._act``).
        """
        dul = cast("EventDrivenDUL", self.dul)
        timeout = self.acse_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while dul.to_user_queue.empty():
            # An action that failed stops the DUL outside Sta1 (pynetdicom's do_action kills
            # it), and its last wake-up may come while it still counts as alive.
            if dul.back_to_idle.is_set() or dul._kill_thread or not dul.is_alive():  # noqa: SLF001
                return False
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            dul.user_wake.wait(remaining)
            dul.user_wake.clear()  # anything set meanwhile is looked at again above
        return True

    def _end_unasked(self) -> None:
        """End as pynetdicom's acceptor does when no request came in time."""
        self.kill()
        sock = cast("AssociationSocket", self.dul.socket)
        if sock is not None and sock.socket is not None:
            self._listener.shutdown_request(sock.socket)

    def attach(self, request: Any, client_address: Any) -> None:
        """Serve this accepted connection, as pynetdicom's ``RequestHandler.handle`` does."""
        ae = self.ae
        # The AE's timeouts as they are now, not as they were when this was made.
        self.acse_timeout = ae.acse_timeout
        self.dimse_timeout = ae.dimse_timeout
        self.network_timeout = ae.network_timeout
        self.connection_timeout = ae.connection_timeout
        # The address first: the DUL is running already and acts on Evt5 as soon as it is
        # queued; a caller that has hung up takes it on to AA-5, which reads the address.
        self.requestor.address_info = AddressInformation.from_tuple(client_address)
        self.set_socket(AssociationSocket(self, client_socket=request))  # queues Evt5
        self.name = f"AcceptorThread@{time.strftime('%Y%m%d%H%M%S')}"  # as pynetdicom names it
        evt.trigger(self, evt.EVT_CONN_OPEN, {"address": client_address})
        cast("EventDrivenDUL", self.dul).wake()  # it may have looked at its queue before the socket was set
        self._connected.set()

    def discard(self) -> None:
        """End an acceptor that was never attached: its threads stop, nothing was sent."""
        if self._connected.is_set():
            return
        self._discarded = True
        self._connected.set()

    def abort(self, block: bool = True) -> None:  # noqa: FBT001, FBT002  pynetdicom's signature
        """Discard when never attached (``AE.shutdown`` aborts every association it counts)."""
        if not self._connected.is_set():
            self.discard()
            return
        super().abort(block)


class AcceptorSlot:
    """The one ``ReadyAcceptor`` a listener keeps ready; taken by the next connection."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._ready: ReadyAcceptor | None = None
        self._closed = False

    @property
    def ready(self) -> ReadyAcceptor | None:
        """The acceptor waiting for the next connection, if one is."""
        return self._ready

    def take(self) -> ReadyAcceptor:
        """The ready acceptor, or one made now if none is."""
        with self._lock:
            ready, self._ready = self._ready, None
        return ready if ready is not None else self._start()

    def fill(self) -> None:
        """Make an acceptor ready, unless one is or the listener is closing."""
        with self._lock:
            if self._ready is not None or self._closed:
                return
            self._ready = self._start()

    def empty(self, *, close: bool = False) -> None:
        """Discard the ready acceptor (the handlers changed, or the listener closes)."""
        with self._lock:
            ready, self._ready = self._ready, None
            self._closed = self._closed or close
        if ready is not None:
            ready.discard()

    def _start(self) -> ReadyAcceptor:
        acceptor = ReadyAcceptor(self._server)
        acceptor.start()
        return acceptor
