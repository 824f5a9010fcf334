"""What every DICOM association needs, as service or as client: TCP_NODELAY, TLS, privacy.

Peers built on DCMTK stall about 40 ms per C-STORE when Nagle's algorithm holds back the
last small PDU waiting for an ACK that delayed-ACK holds back in turn: every socket we accept
or open gets TCP_NODELAY (``NODELAY_HANDLERS``, bound to EVT_CONN_OPEN).
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from pynetdicom import _config, evt

from pixport.config import DimseSettings, RemoteNode
from pixport.dimse import commandset, fast_store, reactor, received, uids
from pixport.errors import ConfigurationError


def configure_pynetdicom() -> None:
    """Process-wide pynetdicom settings; idempotent.

    Identifiers of C-FIND requests and responses carry patient names and IDs: pynetdicom
    must not log them.  Incoming C-STORE data sets are written to a file as they arrive
    rather than held in memory.  pynetdicom's own logging handlers, which describe every PDU
    and DIMSE message it sends or receives, are not bound: its logger is at WARNING anyway,
    and they cost about 0.1 ms per message to build lines nobody reads.  UIDs are validated
    once per distinct value (``uids``), not once per use.
    """
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.STORE_RECV_CHUNKED_DATASET = True
    reactor.install()
    fast_store.install()
    commandset.install()
    received.install()
    uids.install()
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: Nagle's algorithm off on the association's socket."""
    enable_nodelay(event.assoc.dul.socket.socket)


def enable_nodelay(sock: socket.socket | None) -> None:
    """TCP_NODELAY on one socket (a no-op if it is already closed)."""
    if sock is not None and sock.fileno() >= 0:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


NODELAY_HANDLERS: list[tuple[Any, Any]] = [(evt.EVT_CONN_OPEN, set_nodelay)]


def _bcp195(context: ssl.SSLContext) -> ssl.SSLContext:
    """DICOM PS3.15 BCP 195 profile: TLS 1.2 or later, strong AEAD cipher suites."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM")
    return context


def server_ssl_context(settings: DimseSettings) -> ssl.SSLContext | None:
    """The listener's TLS context, or None when no certificate is configured."""
    if settings.tls_certificate is None and settings.tls_private_key is None:
        return None
    if settings.tls_certificate is None or settings.tls_private_key is None:
        msg = "dimse.tls_certificate and dimse.tls_private_key go together"
        raise ConfigurationError(msg)
    context = _bcp195(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(settings.tls_certificate, settings.tls_private_key)
    if settings.tls_ca_certificates is not None:
        context.load_verify_locations(settings.tls_ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ssl_context(settings: DimseSettings, remote: RemoteNode) -> ssl.SSLContext | None:
    """The TLS context for calling ``remote``, or None if it is not a TLS node."""
    if not remote.tls:
        return None
    context = _bcp195(ssl.create_default_context(ssl.Purpose.SERVER_AUTH))
    if settings.tls_ca_certificates is not None:
        context.load_verify_locations(settings.tls_ca_certificates)
    if settings.tls_certificate is not None and settings.tls_private_key is not None:
        context.load_cert_chain(settings.tls_certificate, settings.tls_private_key)
    return context


def find_remote(settings: DimseSettings, ae_title: str) -> RemoteNode | None:
    """The known node with this AE title (trailing spaces ignored), if any."""
    wanted = ae_title.strip()
    return next((r for r in settings.remotes if r.ae_title.strip() == wanted), None)
