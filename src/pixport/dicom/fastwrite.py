"""DICOM JSON elements straight to Little Endian bytes, for answers built from stored JSON.

A C-FIND answer is a handful of attributes taken from the DICOM JSON the index keeps (PS3.18
Annex F).  ``Dataset.from_json`` and pydicom's writer cost about 0.5 ms per answer; the common
shapes (text, Person Name, IS, US and UL values, empty elements) are encoded here directly.  Any
other shape (sequences, binary values, DS, AT, a value the type does not fit, a header a
2-byte length cannot hold) goes through pydicom for that element only, so the bytes are always
pydicom's own: tests/unit/test_fastwrite.py compares both.

Values are encoded for the Specific Character Set ``ISO_IR 192`` (UTF-8), which the caller
puts in the data set.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, NamedTuple, cast

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.tag import Tag

UTF8_CHARSET = "ISO_IR 192"
# Text VRs whose values the Specific Character Set applies to; pydicom writes the others in
# its default encoding (ISO 8859-1).
CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
SINGLE_VALUED = frozenset({"LT", "ST", "UR", "UT"})  # a backslash is part of the value
# Explicit VR elements with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
MAX_SHORT_LENGTH = 0xFFFF
LAST_GROUP_WITH_LENGTH = 0x0006  # later group lengths are retired (PS3.5 7.2)

_IMPLICIT = struct.Struct("<HHI")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2sHI")
_NUMBERS = {"US": struct.Struct("<H"), "UL": struct.Struct("<I")}


class Unsupported(Exception):
    """A shape this module does not encode: pydicom does it."""


class Encoded(NamedTuple):
    """One element: its value bytes (``value``), or pydicom's element when it encodes it."""

    tag: int
    vr: str
    value: bytes | None
    element: DataElement | None


def encode_element(tag: int, element: dict[str, Any]) -> Encoded:
    """A DICOM JSON element (``{"vr": …, "Value": […]}``), ready to be written at ``tag``."""
    vr = element.get("vr")
    # UN goes to pydicom: it gives a public tag its dictionary VR.
    if isinstance(vr, str) and vr != "UN":
        try:
            return Encoded(tag, vr, _checked(vr, _value_bytes(vr, element)), None)
        except (Unsupported, UnicodeEncodeError, struct.error):
            pass
    return Encoded(tag, str(vr), None, _pydicom_element(tag, element))


def _value_bytes(vr: str, element: dict[str, Any]) -> bytes:
    if len(element) == 1:
        return b""  # only "vr": an empty element
    values = element.get("Value")
    if len(element) != 2 or not isinstance(values, list):  # noqa: PLR2004  "vr" and "Value"
        raise Unsupported
    if not values:
        return b""
    if vr in TEXT_VRS:
        if vr in SINGLE_VALUED and len(values) != 1:
            raise Unsupported
        text = "\\".join("" if v is None else _str(v) for v in values)
        data = text.encode("utf-8" if vr in CHARSET_VRS else "latin-1")
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
        return data
    if vr == "PN":
        data = "\\".join(_person_name(v) for v in values).encode("utf-8")
        return data + b" " if len(data) % 2 else data
    if vr == "IS":
        data = "\\".join(str(_int(v)) for v in values).encode("ascii")
        return data + b" " if len(data) % 2 else data
    number = _NUMBERS.get(vr)
    if number is None:
        raise Unsupported
    return b"".join(number.pack(_int(v)) for v in values)


def _checked(vr: str, data: bytes) -> bytes:
    """``data``, unless an explicit VR header could not give its length (pydicom decides)."""
    if len(data) > MAX_SHORT_LENGTH and vr not in LONG_LENGTH_VRS:
        raise Unsupported
    return data


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise Unsupported
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Unsupported
    return value


def _person_name(value: Any) -> str:
    """As pydicom's JSON reader joins the component groups (PS3.18 F.2.2) and its writer writes them."""
    if value is None:
        return ""
    if not isinstance(value, dict) or not set(value) <= set(PN_GROUPS):
        raise Unsupported
    groups = [_str(value.get(name, "")) for name in PN_GROUPS]
    size = 3 if "Phonetic" in value else 2 if "Ideographic" in value else 1
    # pydicom's writer leaves out empty trailing component groups.
    return "=".join(groups[:size]).rstrip("=")


def _pydicom_element(tag: int, element: dict[str, Any]) -> DataElement:
    """The element as ``Dataset.from_json`` builds it."""
    dataset = Dataset.from_json({f"{tag:08X}": element})
    return dataset[tag]


def element_bytes(item: Encoded, *, implicit_vr: bool) -> bytes:
    """The whole element (tag, VR, length, value) in Implicit or Explicit VR Little Endian."""
    value = item.value
    if value is not None:
        group, number = item.tag >> 16, item.tag & 0xFFFF
        if implicit_vr:
            return _IMPLICIT.pack(group, number, len(value)) + value
        vr = item.vr.encode("ascii")
        if item.vr in LONG_LENGTH_VRS:
            return _EXPLICIT_LONG.pack(group, number, vr, 0, len(value)) + value
        return _EXPLICIT_SHORT.pack(group, number, vr, len(value)) + value
    element = cast("DataElement", item.element)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit_vr
    write_data_element(fp, element, [UTF8_CHARSET])
    return fp.getvalue()


def dataset_bytes(items: Iterable[Encoded], *, implicit_vr: bool) -> bytes:
    """A data set of these elements (in tag order) in Implicit or Explicit VR Little Endian.

    As pydicom's writer, it leaves out the retired group lengths (gggg,0000) past group 0006.
    """
    return b"".join(
        element_bytes(item, implicit_vr=implicit_vr)
        for item in sorted(items)
        if item.tag & 0xFFFF or item.tag >> 16 <= LAST_GROUP_WITH_LENGTH
    )


def to_dataset(items: Iterable[Encoded], *, implicit_vr: bool) -> Dataset:
    """A pydicom Dataset of these elements, already encoded.

    Writing it in the same transfer syntax copies the values; another syntax decodes and
    re-encodes them (as pydicom does).
    """
    elements: dict[Any, DataElement | RawDataElement] = {}
    for item in items:
        tag = Tag(item.tag)
        if item.value is None:
            elements[tag] = item.element  # type: ignore[assignment]
        else:
            elements[tag] = RawDataElement(tag, item.vr, len(item.value), item.value, 0, implicit_vr, True)  # noqa: FBT003
    dataset = Dataset(elements)
    # As pydicom's reader leaves a data set: written in the same syntax and character set (the
    # elements include Specific Character Set ISO_IR 192), its raw values are copied.
    dataset.set_original_encoding(implicit_vr, True, convert_encodings(UTF8_CHARSET))  # noqa: FBT003  little endian
    return dataset
