"""C-MOVE and C-GET SCP: send stored instances as they were stored.

Each sub-operation sends the stored bytes in their original transfer syntax.  If the peer did
not accept that transfer syntax for the SOP class, a decoded Explicit VR Little Endian copy is
sent instead; if that cannot be made either, the sub-operation fails.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Iterator
from typing import IO, Any, NamedTuple, cast

import structlog
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pixport.archive.node import Archive
from pixport.archive.query import parse_query
from pixport.config import DimseSettings
from pixport.dicom.pixels import transcode_to_explicit_vr_little_endian
from pixport.dimse import pdata
from pixport.dimse.find import LEVELS, query_parameters
from pixport.dimse.network import NODELAY_HANDLERS, client_ssl_context, find_remote
from pixport.errors import BadQuery
from pixport.storage.base import StoredInstance

log = structlog.get_logger(__name__)

PENDING = 0xFF00
SUCCESS = 0x0000
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
MAX_SUBOPERATIONS = 0xFFFF
MAX_CONTEXTS = 128
UNIQUE_KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
LEVEL_KEY = dict(zip(("PATIENT", "STUDY", "SERIES", "IMAGE"), UNIQUE_KEYS, strict=True))
WILDCARDS = frozenset("*?")
SOP_CLASS_UID = Tag(0x0008, 0x0016)
SOP_INSTANCE_UID = Tag(0x0008, 0x0018)
UNCOMPRESSED = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
LOOKAHEAD_MAX_BYTES = 64 * 1024 * 1024


def find_instances(archive: Archive, identifier: Dataset) -> list[StoredInstance]:
    """The stored instances an identifier asks for, by its level and unique keys; raise ``BadQuery``."""
    level_name = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level_name not in LEVELS:
        msg = "unknown Query/Retrieve Level"  # not the peer's text: it is logged
        raise BadQuery(msg)
    keys = [identifier[keyword] for keyword in UNIQUE_KEYS if keyword in identifier and identifier[keyword].value]
    # A retrieve names what it moves (PS3.4 C.4.2.2.1): the level's own unique key, one value or
    # a list, no wildcards.  Otherwise "PatientID=*" at PATIENT level would send the whole
    # archive to any known destination.  Messages name keys, never values (patient data).
    own = LEVEL_KEY[level_name]
    if not any(element.keyword == own for element in keys):
        msg = f"no {own} for a {level_name} level retrieve"
        raise BadQuery(msg)
    for element in keys:
        values = element.value if element.VM > 1 else [element.value]
        if any(WILDCARDS.intersection(str(value)) for value in values):
            msg = f"wildcard in {element.keyword}: a retrieve names its instances"
            raise BadQuery(msg)
    level = LEVELS[level_name]
    parsed = parse_query(level, query_parameters(keys))
    parsed.query.limit = MAX_SUBOPERATIONS
    rows = archive.index.search(parsed.query)
    instances: list[StoredInstance] = []
    for row in rows:
        instances.extend(
            archive.index.list_instances(row.study_instance_uid, row.series_instance_uid, row.sop_instance_uid)
        )
    return instances[:MAX_SUBOPERATIONS]


class Stored(NamedTuple):
    """What a ``StoredDataset`` sends: its encoded data set, in the transfer syntax named."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    encoded: bytes


class StoredDataset(Dataset):
    """A data set to send as these exact bytes (``send_stored``), not re-encoded by pydicom.

    pynetdicom's C-GET/C-MOVE service sends only ``Dataset`` objects and re-encodes them (pydicom
    writes every sequence with undefined length, for one).  It holds the two UIDs pynetdicom reads
    to count a failed sub-operation, as raw elements (decoded only if read: setting them through
    pydicom, with its checks, took most of the 75 µs this object cost per sub-operation); what
    is sent is ``stored``.
    """

    def __init__(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, encoded: bytes) -> None:
        super().__init__()
        for tag, uid in ((SOP_CLASS_UID, sop_class_uid), (SOP_INSTANCE_UID, sop_instance_uid)):
            value = _even(uid.encode("ascii"))
            self._dict[tag] = RawDataElement(
                tag, "UI", len(value), value, value_tell=0, is_implicit_VR=False, is_little_endian=True
            )
        self.__dict__["stored"] = Stored(sop_class_uid, sop_instance_uid, transfer_syntax_uid, encoded)


def _even(value: bytes) -> bytes:
    """A UI value padded to an even length with a NUL (PS3.5 6.2)."""
    return value + b"\0" if len(value) % 2 else value


def send_stored(assoc: Any, lookahead: Lookahead | None = None) -> None:
    """Make ``assoc.send_c_store`` send a ``StoredDataset``'s bytes as they are.

    With ``lookahead``, the next sub-operation's data set is read while the peer stores each one.

    Mirrors the end of pynetdicom 3.0.4's ``Association.send_c_store`` with the data set already
    encoded (the C-STORE primitive carries encoded bytes).  Other data sets go through unchanged.
    Every message on the association (the C-STOREs, and the pending C-GET responses pynetdicom
    sends after each) is written by ``pdata.send_message``; each C-STORE response is read by
    ``pdata.exchange`` on this thread, where it can be.
    """
    original = assoc.send_c_store
    pdata.send_directly(assoc)
    context_ids: dict[tuple[str, str], int] = {}  # (SOP Class, transfer syntax) -> accepted context

    def send_c_store(dataset: Any, msg_id: int = 1, priority: int = 2, originator_aet: str | None = None,
                     originator_id: int | None = None) -> Dataset:  # fmt: skip
        if not isinstance(dataset, StoredDataset):
            wake_dul(assoc)  # pynetdicom's send_c_store waits for its DUL thread to read the response
            return cast("Dataset", original(dataset, msg_id, priority, originator_aet, originator_id))
        stored: Stored = dataset.__dict__["stored"]
        key = (stored.sop_class_uid, stored.transfer_syntax_uid)
        context_id = context_ids.get(key)
        if context_id is None:  # raises ValueError if none was accepted: a failed sub-operation
            context = assoc._get_valid_context(*key, "scu", allow_conversion=False)  # noqa: SLF001
            context_id = context_ids[key] = context.context_id
        request = C_STORE()
        request.MessageID = msg_id
        request.Priority = priority
        request.MoveOriginatorApplicationEntityTitle = originator_aet
        request.MoveOriginatorMessageID = originator_id
        request.AffectedSOPClassUID = stored.sop_class_uid
        request.AffectedSOPInstanceUID = stored.sop_instance_uid
        request.DataSet = io.BytesIO(stored.encoded)
        assoc._reactor_checkpoint.clear()  # noqa: SLF001  as send_c_store does
        while not assoc._is_paused:  # noqa: SLF001
            time.sleep(0.0001)
        response = pdata.exchange(assoc, request, context_id, lookahead.read_next if lookahead else None)
        assoc._reactor_checkpoint.set()  # noqa: SLF001
        if response is None:
            assoc._handle_no_response()  # noqa: SLF001
            return Dataset()
        if response.is_valid_response and not any(
            getattr(response, keyword, None) is not None for keyword in response.STATUS_OPTIONAL_KEYWORDS
        ):
            return _bare_status(response.Status)
        return cast("Dataset", assoc._check_received_status(response))  # noqa: SLF001

    assoc.send_c_store = send_c_store


@functools.cache
def _bare_status(code: int) -> Dataset:
    """``_check_received_status`` of a response with a Status only, made once per code.

    pynetdicom's C-GET/C-MOVE loop only reads its Status; making a Dataset for each
    sub-operation took 18 µs.  Shared: never change it.
    """
    result = Dataset()
    result.Status = code
    return result


def wake_dul(assoc: Any) -> None:
    """Make the association's DUL thread watch its socket again now, after sub-operations read it.

    While ``pdata.exchange`` reads a response, that thread waits without watching the socket
    (``reactor.EventDrivenDUL.borrow_socket``) and looks again only after ``IDLE_CHECK``; anything
    that waits for it to read (pynetdicom's own sending, the peer's next request) wakes it first.
    """
    wake = getattr(assoc.dul, "wake", None)
    if wake is not None:
        wake()


def _data_set_bytes(data: bytes) -> bytes:
    """The data set of a Part 10 file (after the File Meta group), or the bytes as they are."""
    if data[128:132] != b"DICM":
        return data
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, always Explicit VR LE
    return data[144 + meta_length :]


def _read_data_set(blob: IO[bytes]) -> bytes:
    """``_data_set_bytes`` of a stored file, read without copying the data set once more."""
    head = blob.read(144)
    if head[128:132] != b"DICM":
        return head + blob.read()
    meta_length = int.from_bytes(head[140:144], "little")
    if len(blob.read(meta_length)) != meta_length:
        msg = "stored file ends inside its File Meta"
        raise ValueError(msg)
    return blob.read()


def stored_dataset(archive: Archive, instance: StoredInstance, accepted: set[tuple[str, str]]) -> Dataset:
    """The instance to send: as stored if its transfer syntax was accepted, else Explicit VR LE.

    Little Endian data sets go as Implicit VR where only that was accepted (pynetdicom
    re-encodes them).  If nothing usable was accepted, or decoding fails, the data set returned
    cannot be sent: pynetdicom counts a failed sub-operation for it.
    """
    syntaxes = {syntax for sop_class, syntax in accepted if sop_class == instance.sop_class_uid}
    stored_syntax = instance.transfer_syntax_uid
    uids = (instance.sop_class_uid, instance.sop_instance_uid)
    with archive.blobs.open(instance.digest) as blob:
        if stored_syntax in syntaxes:
            return StoredDataset(*uids, stored_syntax, _read_data_set(blob))
        if stored_syntax in UNCOMPRESSED and syntaxes & UNCOMPRESSED:
            return dcmread(blob)
        if syntaxes & UNCOMPRESSED:
            try:
                decoded = transcode_to_explicit_vr_little_endian(blob)
            except Exception as exc:  # noqa: BLE001  counted as a failed sub-operation
                log.warning(
                    "dimse.retrieve.transcode_failed",
                    sop_instance_uid=instance.sop_instance_uid,
                    error=type(exc).__name__,
                )
            else:
                if ExplicitVRLittleEndian in syntaxes:
                    return StoredDataset(*uids, ExplicitVRLittleEndian, _data_set_bytes(decoded))
                return dcmread(io.BytesIO(decoded))
    log.info("dimse.retrieve.not_accepted", sop_instance_uid=instance.sop_instance_uid)
    return StoredDataset(*uids, stored_syntax, b"")


class Lookahead:
    """Sub-operations' data sets, the next one read while the peer stores the current one.

    Each C-STORE sub-operation waits for the peer to receive the data set and answer; reading
    the next blob then, instead of after the answer, takes it off the chain of waits
    (``send_stored`` calls ``read_next`` once a request is sent).  One instance at most is held
    ahead, and only one no larger than ``LOOKAHEAD_MAX_BYTES``: a retrieve of large multi-frame
    objects holds one at a time, as before.
    """

    def __init__(self, archive: Archive, instances: list[StoredInstance], accepted: set[tuple[str, str]]) -> None:
        self._archive = archive
        self.instances = instances
        self._accepted = accepted  # filled when the sending association is established (C-MOVE)
        self._taken = -1
        self._ahead: tuple[int, Dataset | Exception] | None = None

    def take(self, position: int) -> Dataset:
        """The data set of ``instances[position]`` (``stored_dataset``), read ahead or now."""
        self._taken = position
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] != position:
            return stored_dataset(self._archive, self.instances[position], self._accepted)
        if isinstance(ahead[1], Exception):
            raise ahead[1]
        return ahead[1]

    def read_next(self) -> None:
        """Read the data set after the one taken last, if small enough; a failure waits for ``take``."""
        position = self._taken + 1
        if (
            self._ahead is not None
            or position >= len(self.instances)
            or self.instances[position].size > LOOKAHEAD_MAX_BYTES
        ):
            return
        try:
            self._ahead = (position, stored_dataset(self._archive, self.instances[position], self._accepted))
        except Exception as exc:  # noqa: BLE001  raised by ``take``: the sub-operation it belongs to fails
            self._ahead = (position, exc)


def storage_contexts(instances: list[StoredInstance]) -> list[PresentationContext]:
    """Contexts to propose to a move destination: each stored (class, syntax), and Explicit VR LE.

    Past the 128 an association can carry, the Little Endian context of every class is kept
    first: with it any instance of the class can still go, decoded; without it, none whose
    stored syntax the destination refuses.
    """
    fallbacks = {
        (instance.sop_class_uid, (ExplicitVRLittleEndian, ImplicitVRLittleEndian)): None for instance in instances
    }
    stored_syntaxes = {
        (instance.sop_class_uid, (instance.transfer_syntax_uid,)): None
        for instance in instances
        if instance.transfer_syntax_uid not in UNCOMPRESSED
    }
    chosen = [*fallbacks, *stored_syntaxes][:MAX_CONTEXTS]
    result = []
    for sop_class, syntaxes in chosen:
        context = PresentationContext()
        context.abstract_syntax = sop_class
        context.transfer_syntax = list(syntaxes)
        result.append(context)
    return result


def accepted_pairs(assoc: Any) -> set[tuple[str, str]]:
    """(SOP Class, transfer syntax) of every accepted presentation context of an association."""
    return {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}


def handle_c_get(event: Any, archive: Archive) -> Iterator[Any]:
    """EVT_C_GET: yield the number of sub-operations, then (Pending, data set) for each; never raise."""
    try:
        instances = find_instances(archive, event.identifier)
    except BadQuery as exc:
        log.info("dimse.get.bad_identifier", reason=str(exc))
        # pynetdicom answers a count of 0 with Success: one (failed) sub-operation carries the status.
        yield 1
        yield IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
        return
    except Exception as exc:  # noqa: BLE001
        log.error("dimse.get.failed", error=type(exc).__name__)  # noqa: TRY400
        yield 1
        yield UNABLE_TO_PROCESS, None
        return
    log.info("dimse.get", instances=len(instances))
    yield len(instances)
    accepted = {
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in event.assoc.accepted_contexts if cx.as_scu
    }
    lookahead = Lookahead(archive, instances, accepted)
    send_stored(event.assoc, lookahead)
    yield from _suboperations(event, lookahead, [event.assoc])


def handle_c_move(event: Any, archive: Archive, settings: DimseSettings) -> Iterator[Any]:
    """EVT_C_MOVE: yield the destination, the number of sub-operations, then each data set."""
    destination = find_remote(settings, str(event.move_destination or "").strip())
    if destination is None:
        log.info("dimse.move.unknown_destination")
        yield None, None
        return
    try:
        instances = find_instances(archive, event.identifier)
    except BadQuery as exc:
        log.info("dimse.move.bad_identifier", reason=str(exc))
        instances, failure = [], IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    except Exception as exc:  # noqa: BLE001
        log.error("dimse.move.failed", error=type(exc).__name__)  # noqa: TRY400
        instances, failure = [], UNABLE_TO_PROCESS
    else:
        failure = SUCCESS
    accepted: set[tuple[str, str]] = set()
    senders: list[Any] = []
    lookahead = Lookahead(archive, instances, accepted)

    def remember_contexts(assoc_event: Any) -> None:
        accepted.update(accepted_pairs(assoc_event.assoc))
        send_stored(assoc_event.assoc, lookahead)
        senders.append(assoc_event.assoc)

    ssl_context = client_ssl_context(settings, destination)
    options: dict[str, Any] = {
        "ae_title": destination.ae_title,
        "contexts": storage_contexts(instances) or [build_context(Verification)],
        "evt_handlers": [*NODELAY_HANDLERS, (evt.EVT_ESTABLISHED, remember_contexts)],
    }
    if ssl_context is not None:
        options["tls_args"] = (ssl_context, destination.host)
    yield destination.host, destination.port, options
    if failure != SUCCESS:
        # pynetdicom answers a count of 0 with Success: one (failed) sub-operation carries the status.
        yield 1
        yield failure, None
        return
    log.info("dimse.move", destination=destination.ae_title, instances=len(instances))
    pdata.send_directly(event.assoc)  # the pending C-MOVE responses
    yield len(instances)
    yield from _suboperations(event, lookahead, senders)


def _suboperations(event: Any, lookahead: Lookahead, senders: list[Any]) -> Iterator[tuple[int, Dataset | None]]:
    """Each sub-operation's (status, data set); ``senders``: the associations that send them."""
    try:
        yield from _each_suboperation(event, lookahead)
    finally:
        for assoc in senders:
            wake_dul(assoc)  # the association's next PDUs are its DUL thread's to read


def _each_suboperation(event: Any, lookahead: Lookahead) -> Iterator[tuple[int, Dataset | None]]:
    for position, instance in enumerate(lookahead.instances):
        if event.is_cancelled:
            cancelled = Dataset()
            cancelled.FailedSOPInstanceUIDList = []
            yield 0xFE00, cancelled
            return
        try:
            dataset = lookahead.take(position)
        except Exception as exc:  # noqa: BLE001  a blob that cannot be read fails one sub-operation
            log.error(  # noqa: TRY400  type only: a traceback may quote patient data
                "dimse.retrieve.read_failed", sop_instance_uid=instance.sop_instance_uid, error=type(exc).__name__
            )
            dataset = Dataset()
            dataset.SOPClassUID = instance.sop_class_uid
            dataset.SOPInstanceUID = instance.sop_instance_uid
        yield PENDING, dataset
