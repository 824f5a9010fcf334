"""C-STORE requests received by an acceptor, taken straight from the P-DATA stream.

For each C-STORE, pynetdicom assembles a DIMSE message from the P-DATA fragments, converts it
to a request primitive, triggers EVT_C_STORE through its Storage service class, builds a
response primitive, converts it to a message and encodes it again.  Profiled on one
association, that machinery was the larger part of the time of a small C-STORE outside our
handler.  A C-STORE's shape is fixed, so this provider takes it directly:

- the command set (one or more command fragments) is decoded with ``commandset``;
- if it is a C-STORE request with a data set, on an accepted presentation context, the data
  set's fragments are written as they arrive to a staging file after its File Meta, hashed on
  the way (``received.HashingTemporaryFile``, exactly as pynetdicom's path would write it);
- after the last fragment the EVT_C_STORE handler bound to the association is called with
  the request, the file's path and the association, as pynetdicom calls it;
- its status becomes a C-STORE response command, sent as one P-DATA-TF PDU.

Any other message, and anything unexpected (another command, a data set of an unaccepted
context, a command set this module cannot decode), goes through pynetdicom as before; so do
all messages of an association we requested, and every C-STORE whose bound handler is not
marked ``reactor.safe_on_receiving_thread`` (it runs on the DUL thread here).  Like the rest
of ``pixport.dimse`` reaching into pynetdicom, this is installed by
``network.configure_pynetdicom`` and pinned to pynetdicom 3.0.  EVT_DIMSE_RECV and
EVT_DIMSE_SENT are not triggered for these messages (nothing of ours binds them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import association as pynetdicom_association
from pynetdicom import evt
from pynetdicom.pdu_primitives import P_DATA

from pixport.dimse import commandset, reactor, received
from pixport.dimse.pdu_reader import P_DATA_TF_TYPE
from pixport.dimse.received import HashingTemporaryFile

LOGGER = logging.getLogger("pynetdicom.dimse")

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101
HANDLER_FAILED = 0xC211  # pynetdicom's status for an exception in the handler
COMMAND_LAST_FRAGMENT = 0x03
# Command set tags (PS3.7 E.1).
AFFECTED_SOP_CLASS_UID = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
PRIORITY = 0x00000700
COMMAND_DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
ERROR_COMMENT = 0x00000902
ERROR_COMMENT_LENGTH = 64  # LO
AFFECTED_SOP_INSTANCE_UID = 0x00001000
MOVE_ORIGINATOR_AE_TITLE = 0x00001030
MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031
_PDU_HEADER = struct.Struct(">BBL")
_PDV_HEADER = struct.Struct(">LBB")

# False sends every message through pynetdicom (for A/B measurements).
FAST_STORES = True


@dataclass
class StoreRequest:
    """The C-STORE request as the handler reads it (the attributes of pynetdicom's primitive)."""

    MessageID: int  # DICOM keywords, as on pynetdicom's C_STORE
    AffectedSOPClassUID: str
    AffectedSOPInstanceUID: str
    Priority: int
    MoveOriginatorApplicationEntityTitle: str | None
    MoveOriginatorMessageID: int | None
    _dataset_file: HashingTemporaryFile


@dataclass
class StoreEvent:
    """What an EVT_C_STORE handler gets: the association, the request and its data set's file."""

    assoc: Any
    request: StoreRequest
    context: Any
    event: Any = evt.EVT_C_STORE

    @property
    def dataset_path(self) -> Path:
        return Path(self.request._dataset_file.name)  # noqa: SLF001


@dataclass
class _Incoming:
    context_id: int
    request: StoreRequest


class FastStoreDIMSE(reactor.WakingDIMSE):
    """The DIMSE provider, with C-STORE requests to an acceptor taken directly (module doc)."""

    def __init__(self, assoc: Any) -> None:
        super().__init__(assoc)
        self._command = bytearray()
        self._incoming: _Incoming | None = None

    @property
    def partial_data_set_file(self) -> HashingTemporaryFile | None:
        """The file of a data set still arriving (for the clean-up when a connection drops)."""
        return self._incoming.request._dataset_file if self._incoming else None  # noqa: SLF001

    def takes_fragments(self) -> bool:
        """Whether the next P-DATA fragments are ours to take (else pynetdicom assembles them)."""
        return (
            FAST_STORES
            and self.message is None
            and self.assoc.is_acceptor
            and (self._incoming is not None or reactor.store_handler_is_safe_on_receiving_thread(self.assoc))
        )

    def receive_primitive(self, primitive: P_DATA) -> None:
        if not self.takes_fragments():
            self._pynetdicom_receive(primitive)
            return
        self.receive_fragments(primitive.presentation_data_value_list)

    def receive_fragments(self, values: Sequence[tuple[int, bytes | memoryview]]) -> None:
        """A P-DATA-TF's fragments, each its control header and data, read by the DUL thread.

        The DUL hands them straight from the PDU it read (``reactor.EventDrivenDUL``) when
        ``takes_fragments``; they are views into its buffer, used before this returns.
        """
        for position, (context_id, data) in enumerate(values):
            control = data[0]
            if self._incoming is not None:
                if control & 1 or context_id != self._incoming.context_id:
                    self._abandon()  # a protocol error: pynetdicom answers it as usual
                    self._forward(values[position:])
                    return
                self._incoming.request._dataset_file.write(memoryview(data)[1:])  # noqa: SLF001
                if control & 2:
                    self._serve()
                continue
            if not control & 1:
                self._forward(values[position:])  # a data set with no command: pynetdicom's case
                return
            self._command += memoryview(data)[1:]
            if control & 2:
                command = bytes(self._command)
                self._command.clear()
                self._incoming = self._begin(context_id, command)
                if self._incoming is None:
                    self._forward([(context_id, bytes((COMMAND_LAST_FRAGMENT,)) + command), *values[position + 1 :]])
                    return

    def _forward(self, values: Sequence[tuple[int, bytes | memoryview]]) -> None:
        """Hand fragments to pynetdicom's own assembly (as one P-DATA primitive)."""
        forwarded = P_DATA()
        forwarded.presentation_data_value_list = [[context_id, bytes(data)] for context_id, data in values]  # type: ignore[misc]
        self._pynetdicom_receive(forwarded)

    def _pynetdicom_receive(self, primitive: P_DATA) -> None:
        """Assemble as pynetdicom does, its data set files made where this association receives."""
        with received.receiving_as(self.assoc):
            super().receive_primitive(primitive)

    def _begin(self, context_id: int, command: bytes) -> _Incoming | None:
        """Start receiving a C-STORE's data set, or None if the message is not one we take."""
        try:
            fields = commandset.decode_command_values(command)
            if fields.get(COMMAND_FIELD) != C_STORE_RQ or fields.get(COMMAND_DATA_SET_TYPE, NO_DATA_SET) == NO_DATA_SET:
                return None
            sop_class = str(fields[AFFECTED_SOP_CLASS_UID])
            sop_instance = str(fields[AFFECTED_SOP_INSTANCE_UID])
            message_id = int(fields[MESSAGE_ID])
            priority = int(fields.get(PRIORITY, 0))
            originator = fields.get(MOVE_ORIGINATOR_AE_TITLE)
            originator_id = fields.get(MOVE_ORIGINATOR_MESSAGE_ID)
        except (commandset.Unsupported, KeyError, TypeError, ValueError):
            return None
        context = self.assoc._accepted_cx.get(context_id)  # noqa: SLF001
        if context is None or not sop_class or not sop_instance:
            return None
        file = HashingTemporaryFile(delete=False, mode="wb", suffix=".dcm", receiving=received.receiving_of(self.assoc))
        try:
            file.write(bytes(128) + b"DICM")
            file.write(commandset.file_meta_bytes(sop_class, sop_instance, str(context.transfer_syntax[0])))
        except BaseException:
            file.close()
            Path(file.name).unlink(missing_ok=True)
            raise
        request = StoreRequest(
            message_id,
            sop_class,
            sop_instance,
            priority,
            str(originator) if originator else None,
            int(originator_id) if originator_id is not None else None,
            file,
        )
        return _Incoming(context_id, request)

    def _abandon(self) -> None:
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            file = incoming.request._dataset_file  # noqa: SLF001
            file.close()
            Path(file.name).unlink(missing_ok=True)

    def _serve(self) -> None:
        """Call the EVT_C_STORE handler, then answer; the data set's file is gone afterwards."""
        incoming, self._incoming = self._incoming, None
        assert incoming is not None  # noqa: S101  called after the last fragment only
        request = incoming.request
        file = request._dataset_file  # noqa: SLF001
        file.file.flush()
        context = self.assoc._accepted_cx[incoming.context_id]  # noqa: SLF001
        try:
            status, comment = self._call_handler(StoreEvent(self.assoc, request, context.as_tuple))
        finally:
            file.close()
            with contextlib.suppress(FileNotFoundError):  # the handler moved it into the blob store, or not
                os.unlink(file.name)  # noqa: PTH108  no Path for a call that mostly fails
        if self.assoc.is_established:
            self._respond(incoming.context_id, request, status, comment)

    def _call_handler(self, event: StoreEvent) -> tuple[int, str | None]:
        handler, arguments = cast("tuple[Any, list[Any] | None]", self.assoc.get_handlers(evt.EVT_C_STORE))
        try:
            result = handler(event, *arguments) if arguments else handler(event)
        except Exception as exc:  # noqa: BLE001  as pynetdicom: an exception answers 0xC211
            LOGGER.error("%s in the EVT_C_STORE handler", type(exc).__name__)  # noqa: TRY400  type only
            return HANDLER_FAILED, None
        if isinstance(result, Dataset):
            comment = result.get("ErrorComment")
            return int(result.Status), str(comment) if comment else None
        return int(result), None

    def _respond(self, context_id: int, request: StoreRequest, status: int, comment: str | None) -> None:
        values: dict[int, Any] = {
            AFFECTED_SOP_CLASS_UID: request.AffectedSOPClassUID,
            COMMAND_FIELD: C_STORE_RSP,
            MESSAGE_ID_BEING_RESPONDED_TO: request.MessageID,
            COMMAND_DATA_SET_TYPE: NO_DATA_SET,
            STATUS: status,
            AFFECTED_SOP_INSTANCE_UID: request.AffectedSOPInstanceUID,
        }
        if comment:
            # A command set is in the default repertoire (PS3.7 6.3.1); Error Comment is LO.
            values[ERROR_COMMENT] = comment.encode("ascii", "replace").decode()[:ERROR_COMMENT_LENGTH]
        command = commandset.encode_command_values(values)
        pdu = (
            _PDU_HEADER.pack(P_DATA_TF_TYPE, 0, _PDV_HEADER.size + len(command))
            + _PDV_HEADER.pack(2 + len(command), context_id, COMMAND_LAST_FRAGMENT)
            + command
        )
        cast("reactor.EventDrivenDUL", self.dul).send_raw(pdu)


def discard_partial(dimse: Any) -> bool:
    """Delete the file of a C-STORE data set cut off mid-transfer, if this provider had one."""
    partial = getattr(dimse, "partial_data_set_file", None)
    if partial is None:
        return False
    with contextlib.suppress(OSError):
        partial.close()
    Path(partial.name).unlink(missing_ok=True)
    return True


def install() -> None:
    """Take C-STORE requests directly in every association created from now on; idempotent."""
    reactor.install()
    pynetdicom_association.DIMSEServiceProvider = FastStoreDIMSE  # type: ignore[attr-defined]
