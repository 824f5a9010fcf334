"""Fast codecs for DIMSE command sets and the File Meta of received C-STOREs.

Every DIMSE message carries a command set: a handful of group 0000 elements, always Implicit
VR Little Endian (PS3.7 6.3.1).  pynetdicom encodes and decodes them with pydicom's general
dataset reader and writer (and encodes each outgoing one twice, once to learn its length), and
writes the File Meta of each received C-STORE data set the same way.  That general machinery
was about 0.5 ms of every small C-STORE (docs/performance.md); the formats here are fixed and
small, so they are written directly.

Only the shapes these functions know are handled; anything else (an unknown element, a VR or
value they do not expect) goes to pydicom as before, so the results are always pydicom's own:
tests/unit/test_commandset.py compares both on every command pynetdicom builds.
``install()`` puts them in pynetdicom's DIMSE message module (see ``reactor.install`` for why
that is pinned to one pynetdicom version).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from io import BytesIO
from typing import Any, BinaryIO, cast

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info as pydicom_write_file_meta_info
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, dimse_messages, dsutils

_ELEMENT = struct.Struct("<HHI")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")
MAX_SHORT_LENGTH = 0xFFFF  # a 2-byte value length

# Command set elements (PS3.7 Annex E) whose value this module encodes: tag -> VR.
_COMMAND_VRS: dict[int, str] = {
    0x00000000: "UL",  # Command Group Length
    0x00000002: "UI",  # Affected SOP Class UID
    0x00000003: "UI",  # Requested SOP Class UID
    0x00000100: "US",  # Command Field
    0x00000110: "US",  # Message ID
    0x00000120: "US",  # Message ID Being Responded To
    0x00000600: "AE",  # Move Destination
    0x00000700: "US",  # Priority
    0x00000800: "US",  # Command Data Set Type
    0x00000900: "US",  # Status
    0x00000902: "LO",  # Error Comment
    0x00000903: "US",  # Error ID
    0x00001000: "UI",  # Affected SOP Instance UID
    0x00001001: "UI",  # Requested SOP Instance UID
    0x00001002: "US",  # Event Type ID
    0x00001008: "US",  # Action Type ID
    0x00001020: "US",  # Number of Remaining Sub-operations
    0x00001021: "US",  # Number of Completed Sub-operations
    0x00001022: "US",  # Number of Failed Sub-operations
    0x00001023: "US",  # Number of Warning Sub-operations
    0x00001030: "AE",  # Move Originator Application Entity Title
    0x00001031: "US",  # Move Originator Message ID
}


class Unsupported(Exception):
    """A shape this module does not encode: pydicom does it."""


def _text(value: Any, padding: bytes) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise Unsupported
    data = value.encode("ascii")  # UnicodeEncodeError (a ValueError) -> pydicom
    return data + padding if len(data) % 2 else data


def _value(vr: str, value: Any) -> bytes:
    if vr == "US":
        return b"" if value is None else _US.pack(value)
    if vr == "UL":
        return b"" if value is None else _UL.pack(value)
    if vr == "UI":
        return _text(value, b"\0")
    return _text(value, b" ")


def encode_command_set(dataset: Dataset) -> bytes:
    """A command set as Implicit VR Little Endian bytes (raises Unsupported, ValueError)."""
    parts = []
    for tag in sorted(dataset.keys()):
        vr = _COMMAND_VRS.get(tag)
        if vr is None:
            raise Unsupported
        element = dataset[tag]
        value = element.value
        if vr != element.VR or isinstance(value, (list, bytes)):
            raise Unsupported
        data = _value(vr, value)
        parts.append(_ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(data)))
        parts.append(data)
    return b"".join(parts)


def encode_command_values(values: dict[int, Any]) -> bytes:
    """A command set from tag -> value, its Command Group Length computed, as pynetdicom writes it.

    For messages built without a pydicom Dataset (``pdata.command_set_bytes``); raises
    Unsupported or ValueError for what ``encode_command_set`` would not encode either.
    """
    parts = []
    for tag in sorted(values):
        if tag == 0:  # Command Group Length: computed below
            continue
        vr = _COMMAND_VRS.get(tag)
        value = values[tag]
        if vr is None or isinstance(value, (list, bytes)):
            raise Unsupported
        data = _value(vr, value)
        parts.append(_ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(data)))
        parts.append(data)
    body = b"".join(parts)
    return _ELEMENT.pack(0, 0, 4) + _UL.pack(len(body)) + body


def _elements(data: bytes) -> Iterator[tuple[int, str, int, int]]:
    """(tag, VR, value start, value end) of each element; Unsupported for the unknown or cut."""
    offset = 0
    end = len(data)
    while offset < end:
        if offset + 8 > end:
            raise Unsupported
        group, number, length = _ELEMENT.unpack_from(data, offset)
        tag = (group << 16) | number
        vr = _COMMAND_VRS.get(tag)
        value_start = offset + 8
        offset = value_start + length
        if vr is None or offset > end:
            raise Unsupported
        yield tag, vr, value_start, offset


def decode_command_set(data: bytes) -> Dataset:
    """A command set from Implicit VR Little Endian bytes; raises Unsupported for the unusual."""
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    for tag, vr, value_start, value_end in _elements(data):
        elements[Tag(tag)] = RawDataElement(
            Tag(tag),
            vr,
            value_end - value_start,
            data[value_start:value_end],
            value_start,
            True,  # noqa: FBT003  implicit VR
            True,  # noqa: FBT003  little endian
        )
    dataset = Dataset(elements)
    dataset.set_original_encoding(True, True)  # noqa: FBT003  as pydicom's reader does
    return dataset


def decode_command_values(data: bytes) -> dict[int, int | str]:
    """A command set as tag -> value (US and UL as int, text stripped of its padding).

    For readers that need a few values and no pydicom Dataset (``fast_store``); raises
    Unsupported for an element this module does not know, or a malformed value.
    """
    values: dict[int, int | str] = {}
    for tag, vr, value_start, value_end in _elements(data):
        if vr in {"US", "UL"}:
            number = _US if vr == "US" else _UL
            if value_end - value_start != number.size:
                raise Unsupported
            values[tag] = number.unpack_from(data, value_start)[0]
            continue
        try:
            text = data[value_start:value_end].decode("ascii")
        except UnicodeDecodeError as exc:
            raise Unsupported from exc
        values[tag] = text.rstrip("\0 ") if vr == "UI" else text.strip(" ")
    return values


def encode(dataset: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:  # noqa: FBT001, FBT002  pynetdicom's signature
    """The ``dsutils.encode`` of pynetdicom, direct for command sets."""
    if is_implicit_vr and is_little_endian and not deflated:
        try:
            return encode_command_set(dataset)
        except (Unsupported, ValueError, struct.error, TypeError, KeyError):
            pass
    return dsutils.encode(dataset, is_implicit_vr, is_little_endian, deflated)


def decode(stream: BytesIO, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> Dataset:  # noqa: FBT001, FBT002
    """The ``dsutils.decode`` of pynetdicom, direct for command sets."""
    if is_implicit_vr and is_little_endian and not deflated:
        try:
            return decode_command_set(stream.getvalue())
        except Unsupported:
            pass
    return dsutils.decode(stream, is_implicit_vr, is_little_endian, deflated)


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The File Meta group pynetdicom writes before a received data set (after the preamble)."""
    body = b"".join(
        (
            _explicit_long(0x0001, b"OB", b"\x00\x01"),
            _explicit(0x0002, b"UI", _text(str(sop_class_uid), b"\0")),
            _explicit(0x0003, b"UI", _text(str(sop_instance_uid), b"\0")),
            _explicit(0x0010, b"UI", _text(str(transfer_syntax), b"\0")),
            _explicit(0x0012, b"UI", _text(PYNETDICOM_IMPLEMENTATION_UID, b"\0")),
            _explicit(0x0013, b"SH", _text(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
        )
    )
    return _explicit(0x0000, b"UL", _UL.pack(len(body))) + body


def _explicit(element: int, vr: bytes, data: bytes) -> bytes:
    if len(data) > MAX_SHORT_LENGTH:
        raise Unsupported
    return _EXPLICIT_SHORT.pack(0x0002, element, vr, len(data)) + data


def _explicit_long(element: int, vr: bytes, data: bytes) -> bytes:
    return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(data)) + data


class _FileMeta:
    """What ``create_file_meta`` returns here: the three values, for ``write_file_meta``."""

    def __init__(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> None:
        self.values = (sop_class_uid, sop_instance_uid, transfer_syntax)


def create_file_meta(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, **options: Any) -> Any:
    """The ``create_file_meta`` of pynetdicom as dimse_messages calls it (no options): deferred."""
    if options:
        return _pydicom_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax, **options)
    return _FileMeta(sop_class_uid, sop_instance_uid, transfer_syntax)


def _pydicom_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, **options: Any) -> Any:
    return dsutils.create_file_meta(
        sop_class_uid=UID(sop_class_uid),
        sop_instance_uid=UID(sop_instance_uid),
        transfer_syntax=UID(transfer_syntax),
        **options,
    )


def write_file_meta_info(fp: BinaryIO, file_meta: Any, enforce_standard: bool = True) -> None:  # noqa: FBT001, FBT002
    """The ``write_file_meta_info`` of pydicom, for the deferred File Meta above."""
    if isinstance(file_meta, _FileMeta):
        try:
            fp.write(file_meta_bytes(*file_meta.values))
        except (Unsupported, ValueError):
            pass
        else:
            return
        file_meta = _pydicom_file_meta(*file_meta.values)
    pydicom_write_file_meta_info(cast("Any", fp), file_meta, enforce_standard=enforce_standard)


def install() -> None:
    """Use these codecs in pynetdicom's DIMSE message module; idempotent."""
    vars(dimse_messages).update(
        encode=encode, decode=decode, create_file_meta=create_file_meta, write_file_meta_info=write_file_meta_info
    )
