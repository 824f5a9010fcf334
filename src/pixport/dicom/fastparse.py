"""Fast header parse: DICOM JSON straight from the bytes, without building a pydicom Dataset.

``read_header`` walks a Part 10 file (Explicit or Implicit VR Little Endian) up to the top-level
Pixel Data element with ``struct.unpack_from`` on a memory map, and builds the instance's DICOM
JSON exactly as ``build_metadata`` does it with pydicom (``Dataset.to_json_dict`` with
``suppress_invalid_tags=True``, which converts values in pydicom's strict reading mode).

It handles the common case only.  Whenever pydicom would do something this module does not
reproduce exactly (drop an element whose value does not validate, switch encodings, correct a VR,
tolerate a malformed structure) it raises ``FastPathUnsupported``, and the caller parses the
object with pydicom instead.  Rejections it raises itself (``MalformedInstance`` for truncation,
``LimitExceeded``) are the ones the pydicom path raises for the same objects.
"""

from __future__ import annotations

import base64
import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom.config
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import private_dictionary_VR
from pydicom.dataelem import _LUT_DESCRIPTOR_TAGS  # type: ignore[attr-defined]
from pydicom.filereader import _dictionary_vr_fast  # type: ignore[attr-defined]
from pydicom.filewriter import _AMBIGUOUS_OB_OW_TAGS, _AMBIGUOUS_US_SS_TAGS, _OVERLAY_DATA_TAGS
from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]
from pydicom.valuerep import STR_VR_REGEXES, TEXT_VR_DELIMS
from pydicom.values import convert_PN

from pixport.dicom.metadata import BASE_MARKER, PYDICOM_MODE_LOCK, bulk_data_path
from pixport.errors import LimitExceeded, MalformedInstance

if TYPE_CHECKING:
    from pixport.dicom.parse import ParseLimits


class FastPathUnsupported(Exception):
    """The object needs something the fast path does not reproduce exactly; use pydicom."""


IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
UNSUPPORTED_TS = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})  # big endian, deflated
PIXEL_DATA = 0x7FE00010
PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
CHARSET_TAG = 0x00080005
PIXREP_TAG = 0x00280103
LUT_DESCRIPTOR_TAG = 0x00283002
LUT_DATA_TAG = 0x00283006
PREAMBLE_END = 132
META_UID_TAGS = frozenset({0x00020002, 0x00020003, 0x00020010})
MAX_UID_LENGTH = 64
UN_LENGTH_LIMIT = 0xFFFF
# Identifying UIDs are read by parse.py before the JSON is built, so pydicom converts them
# without validation; every other value is converted in strict mode.
UNVALIDATED_TOP_LEVEL = frozenset({0x00080016, 0x00080018, 0x0020000E, 0x0020000D})

_SHORT = "AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US"
_LONG = "OB OD OF OL OV OW SQ UC UN UR UT SV UV"
SHORT_VRS = {vr.encode(): vr for vr in _SHORT.split()}
LONG_VRS = {vr.encode(): vr for vr in _LONG.split()}
STANDARD_VRS = frozenset(SHORT_VRS.values()) | frozenset(LONG_VRS.values())
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
NUMBER_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8}
MAX_TEXT_LENGTH = {"LO": 64, "SH": 16, "LT": 10240, "ST": 1024}
DEFAULT_ENCODINGS = ("iso8859",)
SIMPLE_PN_ENCODINGS = frozenset({("iso8859",), ("UTF8",), ("utf_8",)})
PN_MAX_COMPONENTS = 3
PN_MAX_COMPONENT_LENGTH = 64
IS_MAX_LENGTH = 12
DS_MAX_LENGTH = 16
IS_RANGE = 2**31

_IS_RE = STR_VR_REGEXES["IS"]
_DS_RE = STR_VR_REGEXES["DS"]
_UI_RE = STR_VR_REGEXES["UI"]
_HHL = struct.Struct("<HHL").unpack_from
_HH2SH = struct.Struct("<HH2sH").unpack_from
_L = struct.Struct("<L").unpack_from
_HH = struct.Struct("<HH").unpack_from
_ESC = 0x1B


@dataclass(slots=True)
class FastHeader:
    """What ``read_header`` found: File Meta values, the JSON, and the Pixel Data extent."""

    transfer_syntax_uid: str
    media_storage_sop_class_uid: str
    media_storage_sop_instance_uid: str
    # SOPClassUID, SOPInstanceUID, SeriesInstanceUID, StudyInstanceUID as pydicom's str(value)
    identifying: dict[str, str]
    json: dict[str, Any]
    pixel_data_vr: str | None
    pixel_data_offset: int | None = None
    encapsulated: bool = False
    fragments: int = 0
    bulk: list[tuple[dict[str, Any], int, int]] = field(default_factory=list)

    def metadata(self, uids: tuple[str, str, str, str]) -> dict[str, Any]:
        """The DICOM JSON, with BulkDataURIs for ``uids`` (as ``build_metadata`` makes it)."""
        nested_pixel_data = 0  # icon images: numbered before the top-level Pixel Data
        for entry, tag, occurrence in self.bulk:
            entry["BulkDataURI"] = BASE_MARKER + bulk_data_path(uids, tag, occurrence)
            nested_pixel_data += tag == PIXEL_DATA
        self.bulk = []
        if self.pixel_data_vr is not None:
            self.json["7FE00010"] = {
                "vr": self.pixel_data_vr if self.pixel_data_vr in {"OB", "OW"} else "OW",
                "BulkDataURI": BASE_MARKER + bulk_data_path(uids, PIXEL_DATA, nested_pixel_data),
            }
        return self.json


def read_header(path: Path, limits: ParseLimits) -> FastHeader:
    """Parse the header of the Part 10 file at ``path``; see the module docstring."""
    with path.open("rb") as fp:
        size = fp.seek(0, 2)
        if size < PREAMBLE_END + 8:
            raise FastPathUnsupported
        with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _Parser(buf, size, limits).run()


def _truncated(tag: int | None = None) -> MalformedInstance:
    if tag is None:
        return MalformedInstance("object is truncated")
    return MalformedInstance(f"object is truncated inside element ({tag >> 16:04X},{tag & 0xFFFF:04X})")


_vr_cache: dict[int, str | None] = {}


def _dictionary_vr(tag: int) -> str | None:
    try:
        return _vr_cache[tag]
    except KeyError:
        pass
    try:
        vr: str | None = str(_dictionary_vr_fast(tag))
    except KeyError:
        vr = None
    if len(_vr_cache) < 10000:  # noqa: PLR2004
        _vr_cache[tag] = vr
    return vr


_encodings_cache: dict[tuple[str, ...], tuple[str, ...]] = {}


def _encodings(value: str | list[str]) -> tuple[str, ...]:
    key = (value,) if isinstance(value, str) else (*value, "\\")
    try:
        return _encodings_cache[key]
    except KeyError:
        pass
    result = tuple(convert_encodings(value))
    if len(_encodings_cache) < 1000:  # noqa: PLR2004
        _encodings_cache[key] = result
    return result


def _decode(raw: bytes, encodings: tuple[str, ...]) -> str:
    """Text as pydicom's ``decode_bytes`` gives it in strict mode (or unsupported)."""
    try:
        if _ESC not in raw:
            return raw.decode(encodings[0])
        with PYDICOM_MODE_LOCK, pydicom.config.strict_reading():
            return decode_bytes(raw, list(encodings), TEXT_VR_DELIMS)
    except (UnicodeError, LookupError, ValueError) as exc:
        raise FastPathUnsupported from exc


def _split_default(raw: bytes) -> list[str]:
    """``values.multi_string`` of a default-charset value (the items, before typing)."""
    return raw.decode("latin-1").rstrip(" \x00").split("\\")


def _valid(regex: re.Pattern[str], value: str) -> bool:
    return not value or (regex.match(value) is not None and value[-1] != "\n")


def _text_values(vr: str, raw: bytes, encodings: tuple[str, ...]) -> list[str]:
    """JSON values of CS-like and text VRs (empty list: no Value)."""
    if vr in {"CS", "DA", "TM", "DT", "AS"}:
        values = _split_default(raw)
    elif vr in {"LO", "SH", "UC"}:
        limit = MAX_TEXT_LENGTH.get(vr)
        values = _decode(raw, encodings).split("\\")
        if limit is not None and any(len(v) > limit for v in values):
            raise FastPathUnsupported
        values = [v.rstrip("\0 ") for v in values]
    elif vr in {"LT", "ST", "UT"}:
        text = _decode(raw, encodings)
        limit = MAX_TEXT_LENGTH.get(vr)
        if limit is not None and len(text) > limit:
            raise FastPathUnsupported
        values = [text.rstrip("\0 ")]
    elif vr == "AE":
        values = [v.strip() for v in raw.decode("latin-1").split("\\")]
    else:  # UR
        values = [raw.decode("latin-1").rstrip()]
    if len(values) == 1 and not values[0]:
        return []
    return values


def _ui_values(raw: bytes, *, validate: bool) -> list[str]:
    items = raw.decode("latin-1").rstrip("\0 ").rstrip(" \x00").split("\\")
    if validate:
        for item in items:
            if len(item) > MAX_UID_LENGTH or not _valid(_UI_RE, item):
                raise FastPathUnsupported
    values = [item.strip() for item in items]
    if len(values) == 1 and not values[0]:
        return []
    return values


def _is_values(raw: bytes) -> list[int]:
    items = _split_default(raw)
    if len(items) == 1 and not items[0]:
        return []
    values = []
    for item in items:
        if not item.strip() or len(item) > IS_MAX_LENGTH or not _valid(_IS_RE, item):
            raise FastPathUnsupported
        number = int(item)
        if not -IS_RANGE <= number < IS_RANGE:
            raise FastPathUnsupported
        values.append(number)
    return values


def _ds_values(raw: bytes) -> list[float]:
    items = raw.decode("latin-1").strip().rstrip(" \x00").split("\\")
    if len(items) == 1 and not items[0]:
        return []
    values = []
    for item in items:
        text = item.strip()
        if not text or len(text) > DS_MAX_LENGTH or not _valid(_DS_RE, text):
            raise FastPathUnsupported
        values.append(float(text))
    return values


def _pn_values(raw: bytes, encodings: tuple[str, ...]) -> list[dict[str, str]]:
    if encodings not in SIMPLE_PN_ENCODINGS or _ESC in raw:
        return _pn_values_pydicom(raw, encodings)
    try:
        names = raw.rstrip(b"\x00 ").decode(encodings[0]).split("\\")
    except UnicodeError as exc:
        raise FastPathUnsupported from exc
    values = []
    for name in names:
        components = name.split("=")
        if len(components) > PN_MAX_COMPONENTS or any(len(c) > PN_MAX_COMPONENT_LENGTH for c in components):
            raise FastPathUnsupported
        while components and not components[-1]:
            components.pop()
        if not components:
            if len(names) == 1:
                return []
            raise FastPathUnsupported
        values.append(_pn_json(components))
    return values


def _pn_json(components: list[str] | tuple[str, ...]) -> dict[str, str]:
    result = {"Alphabetic": components[0]}
    if len(components) > 1:
        result["Ideographic"] = components[1]
    if len(components) > 2:  # noqa: PLR2004
        result["Phonetic"] = components[2]
    return result


def _pn_values_pydicom(raw: bytes, encodings: tuple[str, ...]) -> list[dict[str, str]]:
    """PN in a character set with code extensions: pydicom's own conversion, strict mode."""
    try:
        with PYDICOM_MODE_LOCK, pydicom.config.strict_reading():
            value = convert_PN(raw, list(encodings))
            names = list(value) if isinstance(value, list) or hasattr(value, "append") else [value]
            if len(names) == 1 and not names[0]:
                return []
            return [_pn_json(name.components) for name in names]
    except Exception as exc:  # any failure means pydicom would drop the element
        raise FastPathUnsupported from exc


def _number_values(vr: str, raw: bytes) -> list[Any]:
    size = NUMBER_SIZES[vr]
    if len(raw) % size:
        raise FastPathUnsupported
    return list(struct.unpack(f"<{len(raw) // size}{NUMBER_FORMATS[vr]}", raw))


class _Dataset:
    """Per data set state: what pydicom looks up in the same data set."""

    __slots__ = ("creators", "encodings", "last_tag", "lut_descriptor", "own_text", "pixel_rep")

    def __init__(self, encodings: tuple[str, ...]) -> None:
        self.encodings = encodings
        self.last_tag = -1
        self.creators: dict[int, str] = {}
        self.pixel_rep: int | None = None
        self.lut_descriptor: list[Any] | None = None
        self.own_text = False  # text decoded before a Specific Character Set in this data set


class _Parser:
    def __init__(self, buf: mmap.mmap, size: int, limits: ParseLimits) -> None:
        self.buf = buf
        self.size = size
        self.max_element = limits.max_element_bytes
        self.max_depth = limits.max_sequence_depth
        self.inline_limit = (limits.bulk_data_threshold // 4) * 3
        self.implicit = False
        self.seen: dict[int, int] = {}
        self.bulk: list[tuple[dict[str, Any], int, int]] = []
        self.pending_limit: LimitExceeded | None = None
        self.lazy = 0

    # ---------------------------------------------------------------- file meta
    def run(self) -> FastHeader:
        buf = self.buf
        if buf[128:132] != b"DICM":
            raise FastPathUnsupported
        pos = PREAMBLE_END
        meta: dict[int, bytes] = {}
        while pos + 8 <= self.size:
            group, element, vr_bytes, length = _HH2SH(buf, pos)
            if group != 2:  # noqa: PLR2004
                break
            if vr_bytes in SHORT_VRS:
                pos += 8
            elif vr_bytes in LONG_VRS:
                if pos + 12 > self.size:
                    raise _truncated()
                (length,) = _L(buf, pos + 8)
                pos += 12
            else:
                raise FastPathUnsupported
            if length == UNDEFINED_LENGTH or pos + length > self.size:
                raise FastPathUnsupported
            tag = group << 16 | element
            if tag in meta or (tag in META_UID_TAGS and vr_bytes != b"UI"):
                raise FastPathUnsupported
            meta[tag] = buf[pos : pos + length]
            pos += length
        ts = self._meta_uid(meta, 0x00020010)
        if not ts or ts in UNSUPPORTED_TS or ts not in UID_dictionary:
            raise FastPathUnsupported
        if UID_dictionary[ts][1] != "Transfer Syntax":
            raise FastPathUnsupported
        self.implicit = ts == IMPLICIT_LE
        if pos + 6 > self.size:
            raise FastPathUnsupported
        # pydicom checks the first element's VR against the transfer syntax and follows the data.
        first_vr = buf[pos + 4 : pos + 6]
        found_implicit = not (0x40 < first_vr[0] < 0x5B and 0x40 < first_vr[1] < 0x5B)  # noqa: PLR2004
        if found_implicit != self.implicit or _HH(buf, pos)[0] == 0:
            raise FastPathUnsupported
        identifying: dict[int, str] = {}
        json, pixel_at = self.dataset(pos, self.size, 0, DEFAULT_ENCODINGS, top=identifying)
        header = FastHeader(
            transfer_syntax_uid=ts,
            media_storage_sop_class_uid=self._meta_uid(meta, 0x00020002),
            media_storage_sop_instance_uid=self._meta_uid(meta, 0x00020003),
            identifying={
                "SOPClassUID": identifying.get(0x00080016, ""),
                "SOPInstanceUID": identifying.get(0x00080018, ""),
                "SeriesInstanceUID": identifying.get(0x0020000E, ""),
                "StudyInstanceUID": identifying.get(0x0020000D, ""),
            },
            json=json,
            pixel_data_vr=None,
            bulk=self.bulk,
        )
        if pixel_at < self.size:
            self.pixel_data(header, pixel_at)
        return header

    @staticmethod
    def _meta_uid(meta: dict[int, bytes], tag: int) -> str:
        raw = meta.get(tag)
        if raw is None:
            return ""
        items = raw.decode("latin-1").rstrip("\0 ").rstrip(" \x00").split("\\")
        if len(items) != 1:
            raise FastPathUnsupported
        return items[0].strip()

    # ---------------------------------------------------------------- pixel data
    def pixel_data(self, header: FastHeader, position: int) -> None:
        """The Pixel Data extent, as ``parse._pixel_data_extent`` finds it."""
        buf, size = self.buf, self.size
        if position + 8 > size:
            msg = "object is truncated inside the Pixel Data header"
            raise MalformedInstance(msg)
        if self.implicit:
            vr = "OW"
            (length,) = _L(buf, position + 4)
            value_at = position + 8
        else:
            vr_bytes = buf[position + 4 : position + 6]
            vr = vr_bytes.decode("ascii", "replace")
            if vr_bytes in LONG_VRS:
                if position + 12 > size:
                    msg = "object is truncated inside the Pixel Data header"
                    raise MalformedInstance(msg)
                (length,) = _L(buf, position + 8)
                value_at = position + 12
            else:
                (length,) = struct.unpack_from("<H", buf, position + 6)
                value_at = position + 8
        header.pixel_data_offset = position
        if length != UNDEFINED_LENGTH:
            if value_at + length > size:
                msg = "Pixel Data is truncated"
                raise MalformedInstance(msg)
            header.pixel_data_vr = vr
            return
        pos = value_at
        items = 0
        while True:
            if pos + 8 > size:
                msg = "encapsulated Pixel Data is truncated (no sequence delimiter)"
                raise MalformedInstance(msg)
            group, element, item_length = _HHL(buf, pos)
            item_tag = group << 16 | element
            pos += 8
            if item_tag == SEQUENCE_DELIMITER:
                header.pixel_data_vr = "OB"
                header.encapsulated = True
                header.fragments = max(items - 1, 0)
                return
            if item_tag != ITEM or item_length == UNDEFINED_LENGTH:
                msg = "encapsulated Pixel Data has a malformed item"
                raise MalformedInstance(msg)
            if pos + item_length > size:
                msg = "encapsulated Pixel Data is truncated"
                raise MalformedInstance(msg)
            pos += item_length
            items += 1

    # ---------------------------------------------------------------- data sets
    def dataset(  # noqa: C901, PLR0912, PLR0915
        self,
        pos: int,
        end: int,
        depth: int,
        encodings: tuple[str, ...],
        *,
        top: dict[int, str] | None = None,
        delimited: bool = False,
    ) -> tuple[dict[str, Any], int]:
        """Parse elements from ``pos``; return the JSON and the position after the data set.

        At the top level (``top`` given) stop at Pixel Data; an item of undefined length
        (``delimited``) ends with its delimiter, anything else at ``end``.
        """
        buf, size, implicit = self.buf, self.size, self.implicit
        out: dict[str, Any] = {}
        state = _Dataset(encodings)
        while True:
            if pos >= end:
                if delimited:
                    raise self.truncated(end)
                if pos > end:
                    raise FastPathUnsupported
                if top is not None and self.pending_limit:
                    raise self.pending_limit
                return out, pos
            if pos + 8 > end:
                if top is None:
                    raise self.truncated(end)
                raise FastPathUnsupported  # a few trailing bytes: pydicom ignores them
            if implicit:
                group, element, length = _HHL(buf, pos)
                vr: str | None = None
                value_at = pos + 8
            else:
                group, element, vr_bytes, length = _HH2SH(buf, pos)
                vr = SHORT_VRS.get(vr_bytes)
                value_at = pos + 8
                if vr is None and group != 0xFFFE:  # noqa: PLR2004
                    vr = LONG_VRS.get(vr_bytes)
                    if vr is None:
                        raise FastPathUnsupported
                    if pos + 12 > end:
                        raise self.truncated(end)
                    (length,) = _L(buf, pos + 8)
                    value_at = pos + 12
            tag = group << 16 | element
            if group == 0xFFFE:  # noqa: PLR2004
                if tag == ITEM_DELIMITER and delimited:
                    return out, pos + 8
                raise FastPathUnsupported
            if top is not None and tag in PIXEL_DATA_TAGS:
                if self.pending_limit:
                    raise self.pending_limit
                return out, pos
            if tag <= state.last_tag:
                raise FastPathUnsupported  # duplicate or out of order: pydicom's dict order differs
            state.last_tag = tag
            if vr is None:
                vr = self.implicit_vr(tag, state)
            elif vr == "UN":
                self.check_un(tag, length, state)
            if length == UNDEFINED_LENGTH:
                if implicit and group & 1:
                    if not self.next_is_item(value_at):
                        raise FastPathUnsupported
                elif vr != "SQ":
                    raise FastPathUnsupported
                items, pos = self.sequence(value_at, None, depth + 1, state.encodings, end)
                out[f"{tag:08X}"] = {"vr": "SQ", "Value": items}
                continue
            pos = value_at + length
            if length > self.max_element:
                msg = f"element ({group:04X},{element:04X}) is longer than {self.max_element} bytes"
                if top is None:
                    raise LimitExceeded(msg)
                # pydicom defers the value and refuses it after reading the whole header
                self.pending_limit = self.pending_limit or LimitExceeded(msg)
                if pos > size:
                    raise self.pending_limit
                continue
            if pos > end:
                if top is not None:
                    raise self.pending_limit or _truncated(tag)
                raise self.truncated(end, tag)
            if vr == "SQ":
                if length == 0:
                    if depth + 1 > self.max_depth:
                        self.too_deep()
                    out[f"{tag:08X}"] = {"vr": "SQ", "Value": []}
                    continue
                # pydicom parses a defined-length sequence later, from its bytes alone
                self.lazy += 1
                items, after = self.sequence(value_at, pos, depth + 1, state.encodings, pos)
                self.lazy -= 1
                if after != pos:
                    raise FastPathUnsupported
                out[f"{tag:08X}"] = {"vr": "SQ", "Value": items}
                continue
            raw = buf[value_at:pos]
            if tag == CHARSET_TAG:
                if vr != "CS":
                    raise FastPathUnsupported
                values = _text_values("CS", raw, DEFAULT_ENCODINGS)
                new = _encodings(values if len(values) > 1 else (values[0] if values else ""))
                if state.own_text and new != state.encodings:
                    raise FastPathUnsupported
                state.encodings = new
                out["00080005"] = {"vr": vr, "Value": values} if values else {"vr": vr}
                continue
            out[f"{tag:08X}"] = self.element(tag, vr, raw, state, top)
        raise AssertionError  # pragma: no cover

    def too_deep(self) -> None:
        msg = f"sequences nested deeper than {self.max_depth} levels"
        raise LimitExceeded(msg)

    def next_is_item(self, pos: int) -> bool:
        return pos + 4 <= self.size and _HH(self.buf, pos) == (0xFFFE, 0xE000)

    def truncated(self, bound: int, tag: int | None = None) -> MalformedInstance:
        """The error for a value running past ``bound``: truncation if that is the end of the file.

        Past the end of a defined-length container, or inside a sequence pydicom parses from its
        bytes later, pydicom's behaviour is not reproduced here.
        """
        if bound < self.size or self.lazy:
            raise FastPathUnsupported
        return _truncated(tag)

    def sequence(
        self, pos: int, end: int | None, depth: int, encodings: tuple[str, ...], bound: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Items from ``pos`` to ``end`` (or to the sequence delimiter when ``end`` is None)."""
        if depth > self.max_depth:
            self.too_deep()
        buf = self.buf
        items: list[dict[str, Any]] = []
        limit = bound if end is None else end
        while True:
            if end is not None and pos >= end:
                return items, pos
            if pos + 8 > limit:
                raise self.truncated(limit)
            group, element, length = _HHL(buf, pos)
            tag = group << 16 | element
            pos += 8
            if tag == SEQUENCE_DELIMITER:
                if end is not None:
                    raise FastPathUnsupported
                return items, pos
            if tag != ITEM:
                raise FastPathUnsupported
            if length == UNDEFINED_LENGTH:
                item, pos = self.dataset(pos, limit, depth, encodings, delimited=True)
            else:
                if pos + length > limit:
                    raise self.truncated(limit)
                if not self.implicit and length:
                    self.check_explicit_item(pos)
                item, pos = self.dataset(pos, pos + length, depth, encodings)
            items.append(item)

    def check_explicit_item(self, pos: int) -> None:
        """Refuse an item whose first VR is not two letters (pydicom reads it as implicit VR)."""
        if pos + 6 <= self.size:
            vr = self.buf[pos + 4 : pos + 6]
            if not (0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B):  # noqa: PLR2004
                raise FastPathUnsupported

    # ---------------------------------------------------------------- VRs
    def implicit_vr(self, tag: int, state: _Dataset) -> str:
        if tag >> 16 & 1:
            return self.private_vr(tag, state)
        vr = _dictionary_vr(tag)
        if vr is None:
            if tag & 0xFFFF == 0:
                return "UL"
            raise FastPathUnsupported  # pydicom (strict) drops an unknown public tag
        return vr

    @staticmethod
    def private_vr(tag: int, state: _Dataset) -> str:
        element = tag & 0xFFFF
        if 0x0010 <= element < 0x0100:  # noqa: PLR2004
            return "LO"
        if element & 0xFF00:
            creator_tag = tag & 0xFFFF0000 | element >> 8
            creator = state.creators.get(creator_tag)
            if creator is not None:
                try:
                    vr = str(private_dictionary_VR(tag, creator))
                except KeyError:
                    return "UN"
                if vr not in STANDARD_VRS:
                    raise FastPathUnsupported
                return vr
        return "UN"

    def check_un(self, tag: int, length: int, state: _Dataset) -> None:
        """Explicit UN that pydicom would replace by a known VR (CP-246): not handled here."""
        if length == UNDEFINED_LENGTH:
            raise FastPathUnsupported
        if tag >> 16 & 1:
            if self.private_vr(tag, state) != "UN":
                raise FastPathUnsupported
        elif _dictionary_vr(tag) is not None:
            raise FastPathUnsupported

    @staticmethod
    def ambiguous(tag: int, state: _Dataset, *, top: bool) -> str:
        """Resolve an ambiguous dictionary VR as pydicom's ``correct_ambiguous_vr_element``."""
        if tag in _AMBIGUOUS_US_SS_TAGS:
            if tag < PIXREP_TAG:
                raise FastPathUnsupported  # Pixel Representation comes later in the data set
            if state.pixel_rep is not None:
                return "US" if state.pixel_rep == 0 else "SS"
            if top:
                return "US"
            raise FastPathUnsupported  # inherited Pixel Representation: not reproduced here
        if tag in _AMBIGUOUS_OB_OW_TAGS or tag in _OVERLAY_DATA_TAGS or tag == 0x7FE00010:  # noqa: PLR2004
            return "OW"
        if tag == LUT_DATA_TAG and state.lut_descriptor:
            return "US" if state.lut_descriptor[0] == 1 else "OW"
        raise FastPathUnsupported  # stays ambiguous in pydicom

    # ---------------------------------------------------------------- values
    def element(  # noqa: C901, PLR0912
        self, tag: int, vr: str, raw: bytes, state: _Dataset, top: dict[int, str] | None
    ) -> dict[str, Any]:
        if " " in vr:
            vr = self.ambiguous(tag, state, top=top is not None)
        if not raw:
            if tag in {PIXREP_TAG, LUT_DESCRIPTOR_TAG}:
                raise FastPathUnsupported  # an empty one changes how pydicom resolves ambiguous VRs
            return {"vr": vr}
        values: list[Any]
        if vr in BINARY_VRS:
            entry: dict[str, Any] = {"vr": vr}
            if len(raw) > self.inline_limit:
                occurrence = self.seen.get(tag, 0)
                self.seen[tag] = occurrence + 1
                entry["BulkDataURI"] = ""
                self.bulk.append((entry, tag, occurrence))
            else:
                entry["InlineBinary"] = base64.b64encode(raw).decode("ascii")
            return entry
        if vr in NUMBER_FORMATS:
            values = _number_values(vr, raw)
            if tag in _LUT_DESCRIPTOR_TAGS and len(values) > 1 and values[0] < 0:
                if self.implicit:
                    raise FastPathUnsupported  # pydicom validates the first value as US and drops it
                values[0] += 65536  # the raw_element_value hook's fix
            if tag == PIXREP_TAG:
                if len(values) != 1:
                    raise FastPathUnsupported
                state.pixel_rep = values[0]
            elif tag == LUT_DESCRIPTOR_TAG:
                if len(values) < 2:  # noqa: PLR2004  pydicom indexes it to resolve LUT Data's VR
                    raise FastPathUnsupported
                state.lut_descriptor = values
            return {"vr": vr, "Value": values}
        if vr == "UI":
            if top is not None and tag in UNVALIDATED_TOP_LEVEL:
                values = _ui_values(raw, validate=False)
                if len(values) > 1:
                    raise FastPathUnsupported
                top[tag] = values[0] if values else ""
            else:
                values = _ui_values(raw, validate=True)
        elif vr == "PN":
            state.own_text = True
            values = _pn_values(raw, state.encodings)
        elif vr == "IS":
            values = _is_values(raw)
        elif vr == "DS":
            values = _ds_values(raw)
        elif vr == "AT":
            if len(raw) % 4:
                raise FastPathUnsupported
            values = [f"{g:04X}{e:04X}" for g, e in struct.iter_unpack("<HH", raw)]
        else:
            if vr in {"LO", "SH", "UC", "LT", "ST", "UT"}:
                state.own_text = True
            values = _text_values(vr, raw, state.encodings)
            if (tag >> 16) & 1 and 0x0010 <= tag & 0xFFFF < 0x0100 and vr == "LO":  # noqa: PLR2004
                if len(values) != 1:
                    raise FastPathUnsupported
                state.creators[tag] = values[0]
        if top is not None and tag in UNVALIDATED_TOP_LEVEL and vr != "UI":
            raise FastPathUnsupported
        if not values:
            return {"vr": vr}
        return {"vr": vr, "Value": values}
