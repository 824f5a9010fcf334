"""The archive's DICOM application entity: services, accepted callers, handlers, server socket.

Services (SCP): Verification; Storage for every SOP class, known, retired, private or unknown
(pynetdicom's unrestricted storage service), with whatever transfer syntax the caller proposes
first; Patient Root and Study Root Query/Retrieve FIND, MOVE and GET (with SCP/SCU role
selection for the storage sub-operations of C-GET); Storage Commitment Push Model.
"""

from __future__ import annotations

import socket
from functools import partial
from typing import Any

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, _config, evt
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
from pixport.dimse.commitment import STORAGE_COMMITMENT_PUSH_MODEL, handle_n_action
from pixport.dimse.find import handle_c_find
from pixport.dimse.network import NODELAY_HANDLERS, configure_pynetdicom, server_ssl_context
from pixport.dimse.retrieve import handle_c_get, handle_c_move
from pixport.dimse.store import discard_partial_data_set, handle_c_store

# Transfer syntaxes accepted for the non-storage services (storage takes whatever is proposed).
QUERY_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"]
JPIP_REFERENCED = ["1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95"]
STORAGE_TRANSFER_SYNTAXES = [*map(str, AllTransferSyntaxes), *JPIP_REFERENCED]
NO_CALLER = "-no-caller-allowed-"  # longer than any AE title: matches no calling AE


class ReusePortAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server whose socket shares its port with sibling processes."""

    def server_bind(self) -> None:
        if hasattr(socket, "SO_REUSEPORT") and self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def build_ae(settings: Settings) -> Any:
    """An AE configured from ``settings.dimse``: services, timeouts, accepted callers."""
    configure_pynetdicom()
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    dimse = settings.dimse
    ae = AE(ae_title=dimse.ae_title)
    ae.acse_timeout = dimse.acse_timeout
    ae.dimse_timeout = dimse.dimse_timeout
    ae.network_timeout = dimse.network_timeout
    ae.maximum_associations = 64
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
    return [
        *NODELAY_HANDLERS,
        (evt.EVT_C_ECHO, _handle_c_echo),
        (evt.EVT_C_STORE, partial(handle_c_store, archive=archive)),
        (evt.EVT_C_FIND, partial(handle_c_find, archive=archive)),
        (evt.EVT_C_GET, partial(handle_c_get, archive=archive)),
        (evt.EVT_C_MOVE, partial(handle_c_move, archive=archive, settings=settings.dimse)),
        (evt.EVT_N_ACTION, partial(handle_n_action, archive=archive, settings=settings.dimse)),
        (evt.EVT_CONN_CLOSE, discard_partial_data_set),
    ]


def _handle_c_echo(event: Any) -> int:  # noqa: ARG001  the event carries nothing we need
    return 0x0000


def make_server(archive: Archive, settings: Settings, *, reuse_port: bool = True) -> Any:
    """A bound, listening association server (call ``serve_forever`` or run it in a thread)."""
    ae = build_ae(settings)
    address = (settings.dimse.host, settings.dimse.port)
    server = ae.make_server(
        address,
        ssl_context=server_ssl_context(settings.dimse),
        evt_handlers=event_handlers(archive, settings),
        server_class=ReusePortAssociationServer if reuse_port else ThreadedAssociationServer,
    )
    ae._servers.append(server)  # noqa: SLF001  as start_server does, so that shutdown() finds it
    return server
