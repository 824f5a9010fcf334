"""Which callers the listener serves: known AE titles, and optionally only from their hosts.

pynetdicom checks the calling AE title against ``dimse.remotes`` (``scp.build_ae``).  An AE
title is only a name the caller chooses, so with ``dimse.check_caller_host`` a known title is
also refused from any address but its node's ``host`` (as DCMTK's dcmqrscp does, and Orthanc
with ``DicomCheckModalityHost``): A-ASSOCIATE-RJ, permanent, "calling AE title not
recognized", the same answer as for an unknown title, so that a prober learns nothing more.
Host names are resolved once, when the listener starts.  TLS with client certificates
(``dimse.tls_ca_certificates``) is the stronger check; this one is for plain DICOM networks.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from pynetdicom import evt

from pixport.config import RemoteNode

log = structlog.get_logger(__name__)

REJECTED_PERMANENT = 0x01
SERVICE_USER = 0x01
CALLING_AE_NOT_RECOGNIZED = 0x03


def permitted_addresses(remotes: Iterable[RemoteNode]) -> dict[str, frozenset[str]]:
    """Each known AE title's permitted addresses: every address its nodes' hosts resolve to."""
    addresses: dict[str, set[str]] = {}
    for remote in remotes:
        permitted = addresses.setdefault(remote.ae_title.strip(), set())
        try:
            found = socket.getaddrinfo(remote.host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            # Its callers are refused until the name resolves and the listener restarts.
            log.warning("dimse.caller_host_unresolved", ae_title=remote.ae_title.strip(), host=remote.host)
            continue
        permitted.update(_normal(str(info[4][0])) for info in found)
    return {title: frozenset(found) for title, found in addresses.items()}


def _normal(address: str) -> str:
    """An address as compared: IPv4-mapped IPv6 (``::ffff:10.0.0.5``) as IPv4, zone dropped."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


def refuse_from_elsewhere(event: Any, permitted: Mapping[str, frozenset[str]]) -> None:
    """EVT_REQUESTED: reject a known AE title calling from an address not its node's.

    A title not in ``permitted`` is left to pynetdicom's own check (refused, unless
    ``dimse.allow_any_caller``).  Rejected as pynetdicom rejects in its negotiation.
    """
    assoc = event.assoc
    calling = str(assoc.requestor.primitive.calling_ae_title).strip()
    addresses = permitted.get(calling)
    if addresses is None:
        return
    address = _normal(str(assoc.requestor.address))
    if address in addresses:
        return
    log.warning("dimse.caller_refused", ae_title=calling, address=address, reason="not from its node's host")
    assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNIZED)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()
