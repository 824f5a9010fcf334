"""The archive's DICOM application entity: services, accepted callers, handlers, server socket.

Services (SCP): Verification; Storage for every SOP class, known, retired, private or unknown
(pynetdicom's unrestricted storage service), with whatever transfer syntax the caller proposes
first; Patient Root and Study Root Query/Retrieve FIND, MOVE and GET (with SCP/SCU role
selection for the storage sub-operations of C-GET); Storage Commitment Push Model.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from functools import partial
from typing import Any

import structlog
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from pixport.archive.node import Archive
from pixport.config import Settings
from pixport.dimse.acceptor import AcceptorSlot
from pixport.dimse.callers import permitted_addresses, refuse_from_elsewhere
from pixport.dimse.commitment import STORAGE_COMMITMENT_PUSH_MODEL, handle_n_action
from pixport.dimse.find import handle_c_find
from pixport.dimse.network import NODELAY_HANDLERS, configure_pynetdicom, server_ssl_context
from pixport.dimse.reactor import safe_on_receiving_thread
from pixport.dimse.retrieve import handle_c_get, handle_c_move
from pixport.dimse.store import discard_partial_data_set, handle_c_store

# Transfer syntaxes accepted for the non-storage services (storage takes whatever is proposed).
QUERY_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"]
NO_CALLER = "-no-caller-allowed-"  # longer than any AE title: matches no calling AE

log = structlog.get_logger(__name__)


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server: TLS handshakes off the accepting thread; a shareable socket.

    pynetdicom wraps each accepted socket in TLS on the one thread that accepts connections,
    handshake included: a caller that connects and never speaks TLS (a port scan, a plain
    DICOM peer that waits for a reply) would hold up every other caller.  Here the accepting
    thread only wraps the socket; the handshake runs on the connection's own thread, bounded
    by ``acse_timeout``, and a failed one closes that connection only.

    With ``shared_socket`` (the supervisor's listening socket, inherited by every listener
    process) all the processes wait on one accept queue, and a process already serving
    associations waits ``BUSY_ACCEPT_DELAY`` per association before it takes a new one, so
    that an idle sibling takes it first.  The kernel's SO_REUSEPORT hashing, used before,
    often gave two of four associations to the same process while another stayed idle.
    """

    shared_socket: socket.socket | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.acceptors = AcceptorSlot(self)  # before pynetdicom's __init__, which binds handlers
        self._serving = 0
        self._serving_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    @property
    def serving(self) -> int:
        """Associations attached and not yet ended: ``active_associations``, counted as they go.

        pynetdicom's property lists every thread of the process to count them, which was 2% of
        the listener's Python time when every C-STORE asked (``store._alone``).
        """
        return self._serving

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve, with an acceptor made ready first (``serve`` has made it already).

        Not on the first idle look, half a second in, when a sibling process may be counting
        on this one to accept while it is busy.
        """
        self.acceptors.fill()
        super().serve_forever(poll_interval)

    def service_actions(self) -> None:
        """Make an acceptor ready while the process is idle; nothing else between requests.

        pynetdicom's forced ``gc.collect()`` every 60 requests is left out.  A full
        collection of a listener's heap takes about 35 ms with the GIL held, stalling every
        association of the process (a C-FIND, C-STOREs in flight).  Python's own collector
        still frees dead associations' reference cycles, and ``serve`` freezes the objects
        made at start-up so that its full collections stay short.

        This runs after every accepted connection too: an acceptor is made here only when no
        association is active, so that making it never competes with one for the GIL.
        """
        if not self.serving:
            self.acceptors.fill()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to the acceptor made ready for it (``acceptor.py``)."""
        acceptor = self.acceptors.take()
        with self._serving_lock:
            self._serving += 1  # before it can end (``association_ended``)
        try:
            acceptor.attach(request, client_address)
        except BaseException:
            acceptor.discard()  # its threads end; socketserver closes the connection
            with self._serving_lock:
                self._serving -= 1
            raise

    def association_ended(self) -> None:
        """Called on an association's thread once its peer has had its last answer."""
        with self._serving_lock:
            self._serving -= 1
        self.acceptors.fill()

    def bind(self, event: Any, handler: Any, args: Any = None) -> None:
        super().bind(event, handler, args)
        self.acceptors.empty()  # the ready one lacks this binding

    def unbind(self, event: Any, handler: Any) -> None:
        super().unbind(event, handler)
        self.acceptors.empty()

    def server_close(self) -> None:
        self.acceptors.empty(close=True)
        if self.shared_socket is None:
            super().server_close()
            return
        # Not pynetdicom's server_close: its shutdown(SHUT_RDWR) of the listening socket stops
        # it listening in every process that shares it.  A worker stopping on its own left its
        # siblings polling a dead socket (accept failing with EINVAL at once, at 100% CPU).
        if self.socket is not None:
            self.socket.close()

    def server_bind(self) -> None:
        if self.shared_socket is None:
            super().server_bind()
            return
        if self.socket is not None:
            self.socket.close()
        self.socket = self.shared_socket
        self.socket.setblocking(False)  # noqa: FBT003  a sibling may accept first: no blocking accept()
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.shared_socket is None:
            super().server_activate()  # a shared socket is listening already

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.socket is None:  # pragma: no cover  socketserver calls this only while listening
            msg = "the server socket is closed"
            raise OSError(msg)
        if self.shared_socket is not None:
            busy = self.serving
            if busy:
                time.sleep(min(busy * BUSY_ACCEPT_DELAY, MAX_ACCEPT_DELAY))
        client_socket, address = self.socket.accept()  # BlockingIOError when a sibling was quicker
        client_socket.setblocking(True)  # noqa: FBT003  as pynetdicom expects accepted sockets
        if self.ssl_context is not None:
            client_socket = self.ssl_context.wrap_socket(client_socket, server_side=True, do_handshake_on_connect=False)
        return client_socket, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand a plain TCP connection over on this thread; a TLS one on its own (its handshake).

        pynetdicom starts a thread per connection only to create the association, which then
        starts its own two threads: the extra thread cost 0.3 ms of the 2.7 ms from connect
        to A-ASSOCIATE-AC.
        """
        if isinstance(request, ssl.SSLSocket):
            super().process_request(request, client_address)
            return
        self.process_request_thread(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket) and not _tls_handshake(request, client_address, self.ae.acse_timeout):
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)


def _tls_handshake(sock: ssl.SSLSocket, client_address: Any, timeout: float | None) -> bool:
    """Complete the server side of a TLS handshake within ``timeout`` seconds; False if it fails."""
    try:
        sock.settimeout(timeout)
        sock.do_handshake()
        sock.settimeout(None)  # as pynetdicom leaves accepted sockets: blocking, no timeout
    except OSError as exc:  # ssl.SSLError, a timeout, a reset connection
        log.warning(
            "dimse.tls.handshake_failed",
            address=str(client_address[0]) if isinstance(client_address, tuple) else str(client_address),
            error=type(exc).__name__,
            reason=getattr(exc, "reason", None),
        )
        return False
    return True


MAX_ASSOCIATIONS = 64  # per listener process (docs/conformance.md)
# Seconds a listener process serving N associations waits, N times, before accepting another.
BUSY_ACCEPT_DELAY = 0.005
MAX_ACCEPT_DELAY = 0.05


def build_ae(settings: Settings) -> Any:
    """An AE configured from ``settings.dimse``: services, timeouts, accepted callers."""
    configure_pynetdicom()
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    dimse = settings.dimse
    ae = AE(ae_title=dimse.ae_title)
    ae.acse_timeout = dimse.acse_timeout
    ae.dimse_timeout = dimse.dimse_timeout
    ae.network_timeout = dimse.network_timeout
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.maximum_pdu_size = 0  # no limit on what peers send us
    ae.require_called_aet = False
    for sop_class in (
        Verification,
        PatientRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelFind,
        PatientRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelMove,
        PatientRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelGet,
    ):
        ae.add_supported_context(sop_class, QUERY_TRANSFER_SYNTAXES)
    ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, QUERY_TRANSFER_SYNTAXES)
    if not dimse.allow_any_caller:
        # pynetdicom accepts any caller when the list is empty: no known node means nobody.
        callers = [remote.ae_title.strip() for remote in dimse.remotes]
        ae._require_calling_aet = callers or [NO_CALLER]  # noqa: SLF001  bypasses AE title validation for the sentinel
    return ae


def event_handlers(archive: Archive, settings: Settings) -> list[tuple[Any, Any]]:
    """Every handler the listener binds (TCP_NODELAY first)."""
    callers = []
    if settings.dimse.check_caller_host:
        permitted = permitted_addresses(settings.dimse.remotes)
        callers.append((evt.EVT_REQUESTED, partial(refuse_from_elsewhere, permitted=permitted)))
    return [
        *NODELAY_HANDLERS,
        *callers,
        (evt.EVT_C_ECHO, _handle_c_echo),
        (evt.EVT_C_STORE, safe_on_receiving_thread(partial(handle_c_store, archive=archive))),
        (evt.EVT_C_FIND, partial(handle_c_find, archive=archive)),
        (evt.EVT_C_GET, partial(handle_c_get, archive=archive)),
        (evt.EVT_C_MOVE, partial(handle_c_move, archive=archive, settings=settings.dimse)),
        (evt.EVT_N_ACTION, partial(handle_n_action, archive=archive, settings=settings.dimse)),
        (evt.EVT_CONN_CLOSE, discard_partial_data_set),
    ]


def _handle_c_echo(event: Any) -> int:  # noqa: ARG001  the event carries nothing we need
    return 0x0000


def make_server(archive: Archive, settings: Settings, listen_socket: socket.socket | None = None) -> Any:
    """A bound, listening association server (call ``serve_forever`` or run it in a thread).

    ``listen_socket``: a listening socket shared with sibling processes (see ListenerServer);
    without it the server binds ``dimse.host``/``dimse.port`` itself.
    """
    ae = build_ae(settings)
    address = (settings.dimse.host, settings.dimse.port)
    server_class = type("SharedListenerServer", (ListenerServer,), {"shared_socket": listen_socket})
    server = ae.make_server(
        address,
        ssl_context=server_ssl_context(settings.dimse),
        evt_handlers=event_handlers(archive, settings),
        server_class=server_class,
    )
    ae._servers.append(server)  # noqa: SLF001  as start_server does, so that shutdown() finds it
    server.contexts = [CheaplyCopiedContext.of(context) for context in server.contexts]
    return server


class CheaplyCopiedContext(PresentationContext):
    """A supported presentation context whose deep copy is a copy of its fields.

    pynetdicom deep-copies the server's supported contexts for every association it accepts;
    ``copy.deepcopy`` took half of the association's creation (0.2-0.5 ms), walking each
    context's UIDs as generic objects.  A context's fields are immutable but its transfer
    syntax list, so that list is copied and the rest shared.
    """

    @classmethod
    def of(cls, context: PresentationContext) -> CheaplyCopiedContext:
        """The same context, as this class."""
        copied = cls.__new__(cls)
        copied.__dict__.update(context.__dict__)
        copied._transfer_syntax = list(context._transfer_syntax)  # noqa: SLF001  the one mutable field
        return copied

    def __deepcopy__(self, memo: dict[int, Any]) -> CheaplyCopiedContext:
        return self.of(self)
