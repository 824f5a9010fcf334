"""PixPort as a DICOM client (SCU): C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE with pynetdicom.

The gateway calls these functions to talk to a hospital's PACS; ``pixport dimse`` wraps them as
commands.  Every association opened here has TCP_NODELAY on its socket (``NODELAY_HANDLERS``)
and TLS when the remote node says ``tls = true`` (``client_ssl_context``).

* ``send`` proposes, for each SOP class, each file's own transfer syntax and Explicit and
  Implicit VR Little Endian.  A file whose own syntax was accepted goes out as stored, streamed
  from disk without decoding (``STORE_SEND_CHUNKED_DATASET``); otherwise it is decoded to
  Explicit VR Little Endian first.  One association carries many instances; an association that
  aborts is opened again once.
* ``find`` asks in UTF-8 (Specific Character Set ``ISO_IR 192``) so that names in any script
  come back whole, and returns the identifiers as pydicom data sets.
* ``get`` (C-GET) takes the SCP role for the storage classes it proposes; every instance
  received goes through the archive's one ingest pipeline.
* ``move`` (C-MOVE) asks the peer to send to a third node and returns its counts.

A peer that cannot be reached, rejects the association or aborts it raises ``PeerUnavailable``.
Messages carry AE titles, addresses, UIDs and status codes, never identifiers' contents.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import pydicom
from pydicom import datadict
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts, build_context, build_role
from pynetdicom.status import code_to_category

from pixport.archive.ingest import InstanceResult
from pixport.archive.node import Archive
from pixport.config import DimseSettings, RemoteNode
from pixport.dicom.pixels import transcode_to_explicit_vr_little_endian
from pixport.dimse.network import NODELAY_HANDLERS, client_ssl_context, configure_pynetdicom, find_remote
from pixport.dimse.received import receive_for
from pixport.dimse.store import discard_partial_data_set, store_event
from pixport.errors import (
    BadQuery,
    ConfigurationError,
    PeerUnavailable,
    PixelDataError,
)

Level = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
Model = Literal["study", "patient"]
Sendable = str | PathLike[str] | Dataset

MAX_CONTEXTS = 128  # presentation context IDs are odd numbers 1..255 (PS3.8 9.3.2.2)
LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# Syntaxes a C-GET proposes, one context each, so the peer can send what it stores unchanged.
RETRIEVE_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    JPEG2000,
    JPEGLSNearLossless,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
# Query/Retrieve information models (PS3.4 C.6) and Verification, by UID.
VERIFICATION = "1.2.840.10008.1.1"
FIND_MODELS = {"patient": "1.2.840.10008.5.1.4.1.2.1.1", "study": "1.2.840.10008.5.1.4.1.2.2.1"}
MOVE_MODELS = {"patient": "1.2.840.10008.5.1.4.1.2.1.2", "study": "1.2.840.10008.5.1.4.1.2.2.2"}
GET_MODELS = {"patient": "1.2.840.10008.5.1.4.1.2.1.3", "study": "1.2.840.10008.5.1.4.1.2.2.3"}
UNIQUE_KEYS: dict[str, str] = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
CANNOT_UNDERSTAND = 0xC000
AD_HOC_NODE = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to one instance offered to ``send``."""

    source: str
    """The file path, or ``dataset #N`` for an in-memory data set."""
    sop_instance_uid: str | None = None
    status: int | None = None
    """The peer's C-STORE status; None when the instance was not sent."""
    transfer_syntax: str | None = None
    """The transfer syntax it was sent in."""
    transcoded: bool = False
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """The peer stored it (success or warning status)."""
        return self.status is not None and code_to_category(self.status) in {"Success", "Warning"}


@dataclass(slots=True)
class Retrieval:
    """The outcome of a C-GET or C-MOVE: the final status and the sub-operation counts."""

    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    instances: list[InstanceResult] = field(default_factory=list)
    """C-GET only: what the local archive did with each instance received."""

    @property
    def ok(self) -> bool:
        """Every sub-operation succeeded and every received instance is stored."""
        return self.status == 0 and self.failed == 0 and all(r.ok for r in self.instances)


# --------------------------------------------------------------------------------------------
# Nodes and associations
# --------------------------------------------------------------------------------------------


def resolve_remote(settings: DimseSettings, text: str) -> RemoteNode:
    """A known node by AE title (``dimse.remotes``), or an ad-hoc one written ``AET@host:port``."""
    known = find_remote(settings, text)
    if known is not None:
        return known
    match = AD_HOC_NODE.match(text.strip())
    if match is None:
        msg = f"unknown DICOM node {text!r}: not in dimse.remotes, and not written AET@host:port"
        raise ConfigurationError(msg)
    host = match["host"].strip("[]")
    try:
        return RemoteNode(ae_title=match["aet"], host=host, port=int(match["port"]))
    except ValueError as exc:
        msg = f"invalid DICOM node {text!r}: the port must be 1 to 65535"
        raise ConfigurationError(msg) from exc


def describe(remote: RemoteNode) -> str:
    """``AET@host:port``, for messages."""
    return f"{remote.ae_title}@{remote.host}:{remote.port}"


def _application_entity(settings: DimseSettings) -> AE:
    configure_pynetdicom()
    # Files go out as stored, read from disk in PDU-sized pieces, never decoded (send).
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.connection_timeout = settings.acse_timeout
    return ae


def _wake_waiter(event: Any) -> None:
    """EVT_ABORTED / EVT_CONN_CLOSE: end a wait for a response that can no longer come.

    pynetdicom otherwise waits the whole DIMSE timeout after a peer's A-ABORT (seen with
    DCMTK's storescp refusing an instance).
    """
    event.assoc.dimse.msg_queue.put((None, None))


WAKE_HANDLERS: list[tuple[Any, Any]] = [(evt.EVT_ABORTED, _wake_waiter), (evt.EVT_CONN_CLOSE, _wake_waiter)]


def request_association(
    settings: DimseSettings,
    remote: RemoteNode,
    contexts: Sequence[PresentationContext],
    *,
    roles: Sequence[Any] = (),
    handlers: Sequence[tuple[Any, Any]] = (),
) -> Association:
    """An established association with ``remote``, or ``PeerUnavailable``.

    TCP_NODELAY is set on the socket as soon as it connects; TLS is used for TLS nodes.
    """
    ae = _application_entity(settings)
    context = client_ssl_context(settings, remote)
    connected: list[bool] = []
    try:
        assoc = ae.associate(
            remote.host,
            remote.port,
            list(contexts),
            ae_title=remote.ae_title,
            ext_neg=list(roles) or None,
            tls_args=None if context is None else (context, remote.host),
            evt_handlers=[
                *NODELAY_HANDLERS,
                *WAKE_HANDLERS,
                (evt.EVT_CONN_OPEN, lambda _event: connected.append(True)),
                *handlers,
            ],
        )
    except (OSError, ssl.SSLError) as exc:
        msg = f"DICOM peer {describe(remote)} is unavailable: {type(exc).__name__}"
        raise PeerUnavailable(msg) from exc
    if assoc.is_established:
        return assoc
    _close_transport(assoc)
    if not connected and context is not None:
        # pynetdicom logs and swallows the handshake's SSLError (an unknown CA, a name mismatch…).
        reason = "no TLS connection could be made (refused, unreachable, timed out, or the TLS handshake failed)"
    elif not connected:
        reason = "no connection could be made (refused, unreachable or timed out)"
    elif _was_rejected(assoc):
        reason = "it rejected the association"
    elif assoc.is_aborted and context is not None:
        # TLS 1.3: a refused client certificate is only seen on the first read after the handshake.
        reason = "it aborted the association (or refused our TLS client certificate)"
    elif assoc.is_aborted:
        reason = "it aborted the association"
    else:
        reason = "the association could not be established"
    msg = f"DICOM peer {describe(remote)} is unavailable: {reason}"
    raise PeerUnavailable(msg)


def _was_rejected(assoc: Association) -> bool:
    """Whether the peer answered A-ASSOCIATE-RJ, even where pynetdicom reports an abort.

    pynetdicom's requestor checks that the socket is connected only after it has sent the
    request; a peer that rejects and closes at once (DCMTK's dcmqrscp does) can have its
    A-ASSOCIATE-RJ read and the connection closed by then, and pynetdicom aborts without
    looking at the answer, which still waits, unread, among the primitives for the user.
    """
    if assoc.is_rejected:
        return True
    waiting = list(assoc.dul.to_user_queue.queue)
    return any(isinstance(primitive, A_ASSOCIATE) and primitive.result in {0x01, 0x02} for primitive in waiting)


def _close_transport(assoc: Association) -> None:
    """Close the socket of an association that failed.

    pynetdicom's ``_shutdown_socket`` skips ``close`` when ``shutdown`` raises, as it does on a
    connection the peer has already closed (a TLS alert, a refused handshake): the socket would
    stay open until the association is garbage-collected.
    """
    transport = assoc.dul.socket
    sock = transport.socket if transport is not None else None
    if sock is not None:
        sock.close()


@contextmanager
def associate(
    settings: DimseSettings,
    remote: RemoteNode,
    contexts: Sequence[PresentationContext],
    *,
    roles: Sequence[Any] = (),
    handlers: Sequence[tuple[Any, Any]] = (),
) -> Iterator[Association]:
    """An association for the ``with`` block, released (or aborted on error) at its end."""
    assoc = request_association(settings, remote, contexts, roles=roles, handlers=handlers)
    try:
        yield assoc
    except BaseException:
        assoc.abort()
        raise
    if assoc.is_established:
        assoc.release()


def _status(response: Dataset | None, remote: RemoteNode, operation: str) -> int:
    """The status of a DIMSE response; an empty one means the association is gone."""
    status = None if response is None else response.get("Status")
    if status is None:
        msg = f"DICOM peer {describe(remote)} is unavailable: the association ended during {operation}"
        raise PeerUnavailable(msg)
    return int(status)


# --------------------------------------------------------------------------------------------
# C-ECHO
# --------------------------------------------------------------------------------------------


def echo(settings: DimseSettings, remote: RemoteNode) -> int:
    """C-ECHO ``remote``; the status it answers (0x0000 when all is well)."""
    with associate(settings, remote, [build_context(VERIFICATION)]) as assoc:
        return _status(assoc.send_c_echo(), remote, "C-ECHO")


# --------------------------------------------------------------------------------------------
# C-STORE
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Offer:
    """One instance to send, with what its presentation context needs."""

    name: str
    payload: Path | Dataset
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def _offer(item: Sendable, number: int) -> _Offer | SendResult:
    """Read what ``send`` needs to know about one item: a file's meta, or a data set's UIDs."""
    if isinstance(item, Dataset):
        return _dataset_offer(item, f"dataset #{number}", item)
    path = Path(item)
    try:
        meta = read_file_meta_info(path)
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        return SendResult(str(path), reason=f"not a readable DICOM file: {type(exc).__name__}")
    if all(k in meta for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")):
        return _Offer(
            str(path),
            path,
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
        )
    try:  # no usable File Meta Information: decode it and send it as a data set
        dataset = pydicom.dcmread(path, force=True)
    except Exception as exc:  # noqa: BLE001  any parser failure refuses this file only
        return SendResult(str(path), reason=f"not a readable DICOM file: {type(exc).__name__}")
    return _dataset_offer(dataset, str(path), dataset)


def _dataset_offer(dataset: Dataset, name: str, payload: Dataset) -> _Offer | SendResult:
    if "SOPClassUID" not in dataset or "SOPInstanceUID" not in dataset:
        return SendResult(name, reason="no SOP Class UID or SOP Instance UID")
    meta = getattr(dataset, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit = dataset.original_encoding[0] if dataset.original_encoding[0] is not None else False
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        dataset.file_meta = meta
    return _Offer(name, payload, str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), str(meta.TransferSyntaxUID))


def _contexts_for(offer: _Offer) -> list[tuple[str, tuple[str, ...]]]:
    """The instance's own syntax alone, and both Little Endian syntaxes as a fallback.

    Deflated files are inflated and sent as Little Endian: their stored stream may have an odd
    length, which no PDV may carry (DCMTK aborts the association).
    """
    fallback = (offer.sop_class_uid, LITTLE_ENDIAN)
    if offer.transfer_syntax == DeflatedExplicitVRLittleEndian:
        return [fallback]
    return [(offer.sop_class_uid, (offer.transfer_syntax,)), fallback]


def plan_associations(offers: Sequence[_Offer]) -> list[tuple[list[PresentationContext], list[_Offer]]]:
    """Group instances so that each group's presentation contexts fit one association."""
    groups: list[tuple[dict[tuple[str, tuple[str, ...]], None], list[_Offer]]] = []
    for offer in offers:
        wanted = _contexts_for(offer)
        if groups:
            keys, members = groups[-1]
            if len(keys.keys() | set(wanted)) <= MAX_CONTEXTS:
                keys.update(dict.fromkeys(wanted))
                members.append(offer)
                continue
        groups.append((dict.fromkeys(wanted), [offer]))
    return [([build_context(sop, list(syntaxes)) for sop, syntaxes in keys], members) for keys, members in groups]


def _accepted(assoc: Association, sop_class_uid: str, syntaxes: Iterable[str]) -> str | None:
    """The first of ``syntaxes`` the peer accepted for this SOP class, if any."""
    accepted = {
        str(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == sop_class_uid and cx.transfer_syntax
    }
    return next((ts for ts in syntaxes if ts in accepted), None)


def _decoded(offer: _Offer) -> Dataset:
    """The instance re-encoded as Explicit VR Little Endian, pixels decompressed."""
    if isinstance(offer.payload, Dataset):
        buffer = BytesIO()
        pydicom.dcmwrite(buffer, offer.payload, enforce_file_format=True)
        buffer.seek(0)
        data = transcode_to_explicit_vr_little_endian(buffer)
    else:
        with offer.payload.open("rb") as fp:
            data = transcode_to_explicit_vr_little_endian(fp)
    return pydicom.dcmread(BytesIO(data))


def _store(assoc: Association, offer: _Offer) -> SendResult | None:
    """C-STORE one instance; None if the association was lost on the way."""
    native = None
    if offer.transfer_syntax != DeflatedExplicitVRLittleEndian:
        native = _accepted(assoc, offer.sop_class_uid, [offer.transfer_syntax])
    payload: Path | Dataset
    if native is not None:
        payload, syntax, transcoded = offer.payload, native, False
    elif _accepted(assoc, offer.sop_class_uid, LITTLE_ENDIAN) is not None:
        try:
            payload, syntax, transcoded = _decoded(offer), ExplicitVRLittleEndian, True
        except (PixelDataError, OSError) as exc:
            # An OSError's text repeats the file's path, which may hold a patient's name.
            detail = exc.strerror if isinstance(exc, OSError) else str(exc)
            return SendResult(offer.name, offer.sop_instance_uid, reason=f"cannot be decoded: {detail}")
    else:
        reason = f"the peer accepts no transfer syntax for SOP Class {offer.sop_class_uid}"
        return SendResult(offer.name, offer.sop_instance_uid, reason=reason)
    if not assoc.is_established:
        return None
    try:
        response = assoc.send_c_store(payload)
    except (ValueError, AttributeError) as exc:
        reason = f"cannot be encoded for sending: {type(exc).__name__}"
        return SendResult(offer.name, offer.sop_instance_uid, reason=reason)
    except RuntimeError:  # the association went away before the request
        return None
    status = response.get("Status") if response is not None else None
    if status is None:
        return None
    return SendResult(offer.name, offer.sop_instance_uid, int(status), syntax, transcoded)


def send(
    settings: DimseSettings,
    remote: RemoteNode,
    items: Iterable[Sendable],
    *,
    on_result: Callable[[SendResult], None] | None = None,
) -> list[SendResult]:
    """C-STORE files (paths) or data sets to ``remote``; one result per item, in order.

    An association the peer aborts is opened again and the instance offered once more; an
    instance it aborts twice is reported failed.  Raises ``PeerUnavailable`` if the peer cannot
    be reached (again); instances acknowledged before that were stored by the peer.
    """
    results: list[SendResult] = []

    def report(result: SendResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    offers: list[_Offer] = []
    for number, item in enumerate(items, start=1):
        offered = _offer(item, number)
        if isinstance(offered, SendResult):
            report(offered)
        else:
            offers.append(offered)
    for contexts, members in plan_associations(offers):
        assoc: Association | None = None
        try:
            for offer in members:
                for _attempt in range(2):
                    if assoc is None or not assoc.is_established:
                        assoc = request_association(settings, remote, contexts)
                    result = _store(assoc, offer)
                    if result is not None:
                        report(result)
                        break
                    if assoc.is_established:  # pynetdicom may not have seen the A-ABORT yet
                        assoc.abort()
                    assoc = None
                else:
                    reason = "the peer aborted the association twice while receiving it"
                    report(SendResult(offer.name, offer.sop_instance_uid, reason=reason))
        finally:
            if assoc is not None and assoc.is_established:
                assoc.release()
    return results


# --------------------------------------------------------------------------------------------
# C-FIND
# --------------------------------------------------------------------------------------------


def tag_of(key: str) -> int:
    """A keyword (``PatientName``) or a tag (``00100010``, ``(0010,0010)``) as an int."""
    text = key.strip()
    hexa = re.sub(r"[(),\s]", "", text)
    if re.fullmatch(r"[0-9A-Fa-f]{8}", hexa):
        return int(hexa, 16)
    tag = datadict.tag_for_keyword(text)
    if tag is None:
        msg = f"unknown attribute {text!r}: use a DICOM keyword or a tag such as 00100010"
        raise BadQuery(msg)
    return int(tag)


def build_identifier(level: Level, query_keys: Mapping[str, str]) -> Dataset:
    r"""A C-FIND identifier: the level, UTF-8, the level's unique key, and the given keys.

    An empty value asks for the attribute back; ``\\`` separates a list of UIDs.
    """
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.QueryRetrieveLevel = level
    setattr(identifier, UNIQUE_KEYS[level], "")
    for key, value in query_keys.items():
        tag = tag_of(key)
        try:
            vr = datadict.dictionary_VR(tag)
        except KeyError as exc:
            msg = f"attribute {key!r} is not in the DICOM dictionary"
            raise BadQuery(msg) from exc
        if vr == "SQ":
            msg = f"sequence attribute {key!r} cannot be used as a query key here"
            raise BadQuery(msg)
        identifier.add_new(tag, vr, value.split("\\") if "\\" in value else value)
    return identifier


def find(
    settings: DimseSettings,
    remote: RemoteNode,
    level: Level,
    query_keys: Mapping[str, str],
    model: Model = "study",
) -> list[Dataset]:
    """C-FIND at ``level`` in the Study Root or Patient Root model; the matches' identifiers.

    Raises ``BadQuery`` if the peer refuses the query (its status in the message).
    """
    identifier = build_identifier(level, query_keys)
    find_model = FIND_MODELS[model]
    matches: list[Dataset] = []
    with associate(settings, remote, [build_context(find_model)]) as assoc:
        for response, match in assoc.send_c_find(identifier, find_model):
            status = _status(response, remote, "C-FIND")
            category = code_to_category(status)
            if category == "Pending":
                if match is not None:
                    matches.append(match)
            elif category in {"Failure", "Cancel"}:
                msg = f"DICOM peer {describe(remote)} refused the C-FIND (status 0x{status:04X})"
                raise BadQuery(msg)
    return matches


# --------------------------------------------------------------------------------------------
# C-GET and C-MOVE
# --------------------------------------------------------------------------------------------


def retrieve_identifier(
    level: Level,
    uids: Sequence[str],
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    patient_id: str | None = None,
) -> Dataset:
    """The C-GET / C-MOVE identifier: ``uids`` are the unique keys at ``level``.

    Below the study level, the Study Root model also needs the parents' UIDs.
    """
    if not uids:
        msg = "a retrieve needs at least one UID"
        raise BadQuery(msg)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    if patient_id is not None:
        identifier.PatientID = patient_id
    if level in {"SERIES", "IMAGE"}:
        if study_instance_uid is None:
            msg = f"a {level} retrieve needs the Study Instance UID"
            raise BadQuery(msg)
        identifier.StudyInstanceUID = study_instance_uid
    if level == "IMAGE":
        if series_instance_uid is None:
            msg = "an IMAGE retrieve needs the Series Instance UID"
            raise BadQuery(msg)
        identifier.SeriesInstanceUID = series_instance_uid
    setattr(identifier, UNIQUE_KEYS[level], list(uids) if len(uids) > 1 else uids[0])
    return identifier


def _final_counts(response: Dataset, status: int) -> Retrieval:
    def count(keyword: str) -> int:
        value = response.get(keyword)
        return int(value) if value is not None else 0

    return Retrieval(
        status,
        completed=count("NumberOfCompletedSuboperations"),
        failed=count("NumberOfFailedSuboperations"),
        warning=count("NumberOfWarningSuboperations"),
    )


def move(  # noqa: PLR0913  the standard's parameters
    settings: DimseSettings,
    remote: RemoteNode,
    destination_ae: str,
    level: Level,
    uids: Sequence[str],
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    patient_id: str | None = None,
    model: Model = "study",
) -> Retrieval:
    """C-MOVE: ask ``remote`` to send the instances to the node called ``destination_ae``."""
    identifier = retrieve_identifier(
        level,
        uids,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        patient_id=patient_id,
    )
    move_model = MOVE_MODELS[model]
    final = Retrieval(CANNOT_UNDERSTAND)
    with associate(settings, remote, [build_context(move_model)]) as assoc:
        for response, _ in assoc.send_c_move(identifier, destination_ae, move_model):
            status = _status(response, remote, "C-MOVE")
            final = _final_counts(response, status)
    return final


def storage_contexts(sop_class_uids: Iterable[str], budget: int) -> list[PresentationContext]:
    """One context per (SOP class, syntax) so a C-GET peer can send each instance as stored.

    The common syntaxes come first; when the classes are many, rarer syntaxes are left out.
    Without known classes, pynetdicom's storage contexts (Little Endian and Big Endian).
    """
    classes = list(dict.fromkeys(sop_class_uids))
    if not classes:
        return [build_context(str(cx.abstract_syntax)) for cx in StoragePresentationContexts[:budget]]
    contexts: list[PresentationContext] = []
    for syntax in RETRIEVE_SYNTAXES:
        for sop_class in classes:
            if len(contexts) < budget:
                contexts.append(build_context(sop_class, [syntax]))
    return contexts


def _sop_classes_of(
    settings: DimseSettings,
    remote: RemoteNode,
    level: Level,
    identifier: Dataset,
    model: Model,
) -> set[str]:
    """The SOP classes the retrieve will bring, from C-FIND; empty if the peer cannot say."""
    keys: dict[str, str] = {"SOPClassUID": ""}
    if "PatientID" in identifier:
        keys["PatientID"] = str(identifier.PatientID)
    try:
        if level == "IMAGE":
            series = [(str(identifier.StudyInstanceUID), str(identifier.SeriesInstanceUID))]
        elif level == "SERIES":
            series = [(str(identifier.StudyInstanceUID), uid) for uid in _as_list(identifier.SeriesInstanceUID)]
        elif level == "STUDY":
            series = [
                (study, str(match.SeriesInstanceUID))
                for study in _as_list(identifier.StudyInstanceUID)
                for match in find(settings, remote, "SERIES", {**keys, "StudyInstanceUID": study}, model)
                if "SeriesInstanceUID" in match
            ]
        else:
            return set()
        found: set[str] = set()
        for study, series_uid in series:
            query = {**keys, "StudyInstanceUID": study, "SeriesInstanceUID": series_uid}
            found.update(
                str(m.SOPClassUID) for m in find(settings, remote, "IMAGE", query, model) if m.get("SOPClassUID")
            )
    except (BadQuery, AttributeError):
        return set()
    return found


def _as_list(value: object) -> list[str]:
    """A UID or a list of UIDs (pydicom's MultiValue) as a list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return [str(value)]


class _Receiver:
    """EVT_C_STORE handler of a C-GET: store each instance durably before answering it.

    The same path as the listener's C-STORE (``store.store_event``): the peer hears success
    only once the instance is durable and indexed, and a full disk, a conflicting duplicate or
    a data set that is not the one announced get their own status, as from our SCP.
    """

    def __init__(self, archive: Archive, source: str) -> None:
        self.archive = archive
        self.source = source
        self.results: list[InstanceResult] = []

    def handle_store(self, event: Any) -> Dataset | int:
        try:
            answer, result = store_event(self.archive.ingest, event, self.source)
        finally:
            # pynetdicom deletes the received file after its Storage SCP's handler, not after a
            # C-GET requester's: here it would stay in the temporary folder, patient data and all.
            _discard_received(event)
        self.results.append(result)
        return answer


def _discard_received(event: Any) -> None:
    """Close and delete the file pynetdicom wrote a received data set to (gone already if adopted)."""
    received = getattr(event.request, "_dataset_file", None)
    if received is None:
        return
    with contextlib.suppress(OSError):
        received.close()
    Path(received.name).unlink(missing_ok=True)


def get(  # noqa: PLR0913  the standard's parameters
    settings: DimseSettings,
    remote: RemoteNode,
    level: Level,
    uids: Sequence[str],
    into: Archive,
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    patient_id: str | None = None,
    model: Model = "study",
    sop_class_uids: Iterable[str] | None = None,
) -> Retrieval:
    """C-GET the instances into the archive ``into``, through its ingest pipeline.

    The storage SOP classes proposed (with the SCP role) are ``sop_class_uids`` if given, else
    those a C-FIND reports, else pynetdicom's list of storage classes.
    """
    identifier = retrieve_identifier(
        level,
        uids,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        patient_id=patient_id,
    )
    classes = (
        set(sop_class_uids)
        if sop_class_uids is not None
        else _sop_classes_of(settings, remote, level, identifier, model)
    )
    get_model = GET_MODELS[model]
    contexts = [build_context(get_model), *storage_contexts(sorted(classes), MAX_CONTEXTS - 1)]
    roles = [build_role(uid, scp_role=True) for uid in dict.fromkeys(str(cx.abstract_syntax) for cx in contexts[1:])]
    receiver = _Receiver(into, f"dimse:{remote.ae_title}")
    final = Retrieval(CANNOT_UNDERSTAND)
    handlers = [
        (evt.EVT_C_STORE, receiver.handle_store),
        # A peer that aborts or vanishes mid-instance: its partial file is deleted, as the
        # listener's would be.
        (evt.EVT_CONN_CLOSE, discard_partial_data_set),
    ]
    with associate(settings, remote, contexts, roles=roles, handlers=handlers) as assoc:
        # Into the archive's staging area, under its size limit, as the listener receives: a
        # data set too large, or a full disk, is answered 0xA700 as it arrives (received.py),
        # and one that arrives whole is adopted where it is, not copied.
        receive_for(assoc, into.blobs.staging_dir, into.ingest.limits.max_object_bytes)
        for response, _ in assoc.send_c_get(identifier, get_model):
            status = _status(response, remote, "C-GET")
            final = _final_counts(response, status)
    final.instances = receiver.results
    return final
