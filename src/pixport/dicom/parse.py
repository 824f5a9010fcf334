"""Parse the header of one stored DICOM object, validate it, and extract what the index needs.

Only the header is parsed (pydicom stops before Pixel Data); the Pixel Data element is then
checked for its extent by reading item headers, so that a truncated object is refused without
reading its pixels into memory.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from pixport.dicom.fastparse import FastPathUnsupported, read_header
from pixport.dicom.metadata import PYDICOM_MODE_LOCK, build_metadata
from pixport.errors import LimitExceeded, MalformedInstance, MissingAttribute

# We validate ourselves and report per object; pydicom's own validation would only warn.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
DEFLATED = "1.2.840.10008.1.2.1.99"
ITEM = 0xFFFEE000
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
LONG_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"})
UID_FORBIDDEN = frozenset("/\\?#% \t\r\n\x00")
MAX_UID_LENGTH = 64
CONFORMANT_UID = pydicom.uid.RE_VALID_UID  # PS3.5 9.1 (a compiled pattern); the length is checked apart


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Hard limits for one object (see ``LimitSettings``)."""

    max_element_bytes: int = 256 * 1024 * 1024
    max_sequence_depth: int = 16
    bulk_data_threshold: int = 1024


@dataclass(slots=True)
class PixelDataExtent:
    """Where Pixel Data lies in the file, found without reading it."""

    offset: int
    vr: str
    encapsulated: bool
    fragments: int


@dataclass(slots=True)
class ParsedInstance:
    """What ingest needs to know of one object."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    attributes: dict[str, Any]
    metadata: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def parse_instance(path: Path, limits: ParseLimits) -> ParsedInstance:
    """Parse and validate the object at ``path``; raise an ``InstanceRejected`` subclass.

    The fast path (``fastparse``) handles the common cases; anything it does not reproduce
    exactly is parsed with pydicom, which is the reference.
    """
    try:
        return _parse_fast(path, limits)
    except FastPathUnsupported:
        # Lazily converted values read the global validation mode: see PYDICOM_MODE_LOCK.
        with PYDICOM_MODE_LOCK:
            return parse_instance_pydicom(path, limits)


def _parse_fast(path: Path, limits: ParseLimits) -> ParsedInstance:
    header = read_header(path, limits)
    warnings: list[str] = []
    uids = _checked_uids(header.identifying.__getitem__, warnings)
    _check_meta_values(
        {
            "MediaStorageSOPClassUID": header.media_storage_sop_class_uid,
            "MediaStorageSOPInstanceUID": header.media_storage_sop_instance_uid,
        },
        uids,
        warnings,
    )
    return _parsed(uids, header.transfer_syntax_uid, header.metadata(uids), header.pixel_data_vr is not None, warnings)


def parse_instance_pydicom(path: Path, limits: ParseLimits) -> ParsedInstance:
    """``parse_instance`` with pydicom only: the reference the fast path is checked against."""
    size = path.stat().st_size
    warnings: list[str] = []
    with path.open("rb") as fp:
        dataset = _read_header(fp, limits)
        position = fp.tell()
        ts_uid = _transfer_syntax(dataset, warnings)
        extent: PixelDataExtent | None = None
        if ts_uid != DEFLATED:
            _check_extents(dataset, size)
            if position > size:
                msg = "object is truncated"
                raise MalformedInstance(msg)
            if position < size:
                extent = _pixel_data_extent(fp, position, size, dataset)
    uids = _identifying_uids(dataset, warnings)
    _check_meta(dataset, uids, warnings)
    _check_depth(dataset, limits.max_sequence_depth, 0)
    try:
        metadata = build_metadata(dataset, uids, limits.bulk_data_threshold, extent.vr if extent else None)
    except (ValueError, TypeError, OverflowError, LookupError) as exc:
        msg = f"attributes cannot be represented as DICOM JSON: {type(exc).__name__}"
        raise MalformedInstance(msg) from exc
    return _parsed(uids, ts_uid, metadata, extent is not None, warnings)


def _parsed(
    uids: tuple[str, str, str, str],
    ts_uid: str,
    metadata: dict[str, Any],
    has_pixel_data: bool,  # noqa: FBT001
    warnings: list[str],
) -> ParsedInstance:
    attributes = extract_attributes(metadata, ts_uid, warnings)
    if has_pixel_data and attributes["number_of_frames"] is None:
        attributes["number_of_frames"] = 1
    return ParsedInstance(
        sop_class_uid=uids[0],
        sop_instance_uid=uids[1],
        series_instance_uid=uids[2],
        study_instance_uid=uids[3],
        transfer_syntax_uid=ts_uid,
        attributes=attributes,
        metadata=metadata,
        warnings=warnings,
    )


def _read_header(fp: IO[bytes], limits: ParseLimits) -> Dataset:
    try:
        # defer_size keeps an oversized element's value on disk; we refuse it below.
        dataset = pydicom.dcmread(fp, stop_before_pixels=True, force=True, defer_size=limits.max_element_bytes)
    except RecursionError as exc:
        msg = f"sequences nested deeper than {limits.max_sequence_depth} levels"
        raise LimitExceeded(msg) from exc
    except (InvalidDicomError, EOFError, struct.error) as exc:
        msg = "not a DICOM object or truncated header"
        raise MalformedInstance(msg) from exc
    except (ValueError, KeyError, NotImplementedError, OSError, UnicodeError, IndexError, TypeError) as exc:
        msg = f"header cannot be parsed: {type(exc).__name__}"
        raise MalformedInstance(msg) from exc
    for element in dataset.elements():
        length = getattr(element, "length", 0) or 0
        if element.tag not in PIXEL_DATA_TAGS and length != UNDEFINED_LENGTH and length > limits.max_element_bytes:
            msg = f"element {Tag(element.tag)} is longer than {limits.max_element_bytes} bytes"
            raise LimitExceeded(msg)
    return dataset


def _check_extents(dataset: Dataset, size: int) -> None:
    """Refuse an object whose top-level element claims more bytes than the file has.

    pydicom stops quietly at the end of the file; a value running past it means truncation.
    """
    for element in dataset.elements():
        value_tell = getattr(element, "value_tell", None)
        length = getattr(element, "length", 0) or 0
        if value_tell is not None and length != UNDEFINED_LENGTH and value_tell + length > size:
            msg = f"object is truncated inside element {Tag(element.tag)}"
            raise MalformedInstance(msg)


def _transfer_syntax(dataset: Dataset, warnings: list[str]) -> str:
    meta = dataset.file_meta
    ts = str(meta.get("TransferSyntaxUID", "") or "")
    implicit, little = dataset.original_encoding
    actual = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
    if not ts:
        if meta:
            warnings.append("File Meta Information has no Transfer Syntax UID; encoding inferred")
        else:
            warnings.append("no File Meta Information; encoding inferred")
        return actual
    uid = pydicom.uid.UID(ts)
    if uid.is_transfer_syntax and (uid.is_implicit_VR, uid.is_little_endian) != (implicit, little) and ts != DEFLATED:
        msg = f"File Meta Transfer Syntax {ts} does not match the data set's encoding"
        raise MalformedInstance(msg)
    return ts


def _identifying_uids(dataset: Dataset, warnings: list[str]) -> tuple[str, str, str, str]:
    def get(keyword: str) -> str:
        try:
            return str(dataset.get(keyword, "") or "")
        except (ValueError, TypeError) as exc:
            msg = f"{keyword} cannot be read"
            raise MalformedInstance(msg) from exc

    return _checked_uids(get, warnings)


def _checked_uids(get: Callable[[str], str], warnings: list[str]) -> tuple[str, str, str, str]:
    values = []
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        value = get(keyword).strip().rstrip("\x00")
        if not value:
            msg = f"{keyword} is missing or empty"
            raise MissingAttribute(msg)
        if len(value) > MAX_UID_LENGTH or not UID_FORBIDDEN.isdisjoint(value):
            msg = f"{keyword} is not a usable UID"
            raise MalformedInstance(msg)
        if CONFORMANT_UID.match(value) is None:  # pydicom's UID.is_valid, without making a UID (12 µs)
            warnings.append(f"{keyword} {value} is not a conformant UID")
        values.append(value)
    return values[0], values[1], values[2], values[3]


def _check_meta(dataset: Dataset, uids: tuple[str, str, str, str], warnings: list[str]) -> None:
    meta = dataset.file_meta
    if not meta:
        return
    _check_meta_values({keyword: str(meta.get(keyword, "") or "") for keyword in META_UIDS}, uids, warnings)


META_UIDS = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID")


def _check_meta_values(meta: dict[str, str], uids: tuple[str, str, str, str], warnings: list[str]) -> None:
    for keyword, expected in zip(META_UIDS, uids[:2], strict=True):
        value = meta[keyword].strip().rstrip("\x00")
        if not value:
            warnings.append(f"File Meta Information has no {keyword}")
        elif value != expected:
            # Common in real files (re-identified data sets, old converters); the data set wins.
            warnings.append(f"File Meta {keyword} does not match the data set; the data set's is used")


def _check_depth(dataset: Dataset, limit: int, depth: int) -> None:
    for element in dataset.elements():
        if element.VR == "SQ":
            if depth + 1 > limit:
                msg = f"sequences nested deeper than {limit} levels"
                raise LimitExceeded(msg)
            for item in dataset[element.tag].value:
                _check_depth(item, limit, depth + 1)


def _pixel_data_extent(fp: IO[bytes], position: int, size: int, dataset: Dataset) -> PixelDataExtent:
    implicit, little = dataset.original_encoding
    endian = "<" if little else ">"
    fp.seek(position)
    head = fp.read(8)
    if len(head) < 8:  # noqa: PLR2004
        msg = "object is truncated inside the Pixel Data header"
        raise MalformedInstance(msg)
    group, elem = struct.unpack(endian + "HH", head[:4])
    tag = (group << 16) | elem
    if tag not in PIXEL_DATA_TAGS:
        msg = f"unexpected element {Tag(tag)} where Pixel Data was expected"
        raise MalformedInstance(msg)
    if implicit:
        vr = "OW"
        (length,) = struct.unpack(endian + "L", head[4:8])
        value_at = position + 8
    else:
        vr_bytes = head[4:6]
        vr = vr_bytes.decode("ascii", "replace")
        if vr_bytes in LONG_VRS:
            more = fp.read(4)
            if len(more) < 4:  # noqa: PLR2004
                msg = "object is truncated inside the Pixel Data header"
                raise MalformedInstance(msg)
            (length,) = struct.unpack(endian + "L", more)
            value_at = position + 12
        else:
            (length,) = struct.unpack(endian + "H", head[6:8])
            value_at = position + 8
    if length != UNDEFINED_LENGTH:
        if value_at + length > size:
            msg = "Pixel Data is truncated"
            raise MalformedInstance(msg)
        return PixelDataExtent(position, vr, encapsulated=False, fragments=0)
    # Encapsulated: walk the item headers (Basic Offset Table, then fragments) to the delimiter.
    fp.seek(value_at)
    items = 0
    while True:
        item_head = fp.read(8)
        if len(item_head) < 8:  # noqa: PLR2004
            msg = "encapsulated Pixel Data is truncated (no sequence delimiter)"
            raise MalformedInstance(msg)
        g, e, item_length = struct.unpack(endian + "HHL", item_head)
        item_tag = (g << 16) | e
        if item_tag == SEQUENCE_DELIMITER:
            return PixelDataExtent(position, "OB", encapsulated=True, fragments=max(items - 1, 0))
        if item_tag != ITEM or item_length == UNDEFINED_LENGTH:
            msg = "encapsulated Pixel Data has a malformed item"
            raise MalformedInstance(msg)
        if fp.tell() + item_length > size:
            msg = "encapsulated Pixel Data is truncated"
            raise MalformedInstance(msg)
        fp.seek(item_length, 1)
        items += 1


TEXT_ATTRIBUTES = {
    "patient_id": "00100020",
    "issuer_of_patient_id": "00100021",
    "patient_name": "00100010",
    "patient_birth_date": "00100030",
    "patient_sex": "00100040",
    "study_date": "00080020",
    "study_time": "00080030",
    "accession_number": "00080050",
    "study_id": "00200010",
    "study_description": "00081030",
    "referring_physician_name": "00080090",
    "modality": "00080060",
    "series_description": "0008103E",
    "series_date": "00080021",
    "body_part_examined": "00180015",
    "performed_procedure_step_start_date": "00400244",
    "performed_procedure_step_start_time": "00400245",
    "specific_character_set": "00080005",
}
NUMBER_ATTRIBUTES = {
    "series_number": "00200011",
    "instance_number": "00200013",
    "number_of_frames": "00280008",
    "rows": "00280010",
    "columns": "00280011",
}
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _json_text(element: dict[str, Any] | None) -> str | None:
    if not element or not element.get("Value"):
        return None
    values = []
    for value in element["Value"]:
        if isinstance(value, dict):  # Person Name: rebuild Alphabetic=Ideographic=Phonetic
            groups = [str(value.get(group, "")) for group in PN_GROUPS]
            while groups and not groups[-1]:
                groups.pop()
            values.append("=".join(groups))
        elif value is not None:
            values.append(str(value))
    text = "\\".join(values).strip()
    return text or None


def _json_integer(element: dict[str, Any] | None, keyword: str, warnings: list[str]) -> int | None:
    if not element or not element.get("Value"):
        return None
    try:
        return int(element["Value"][0])
    except (ValueError, TypeError, OverflowError):
        warnings.append(f"{keyword} is not a number")
        return None


def extract_attributes(metadata: dict[str, Any], ts_uid: str, warnings: list[str]) -> dict[str, Any]:
    """The attributes the index stores in columns, read from the instance's DICOM JSON.

    The JSON was decoded with the object's character set once; reading it again here costs
    nothing more.
    """
    attributes: dict[str, Any] = {column: _json_text(metadata.get(tag)) for column, tag in TEXT_ATTRIBUTES.items()}
    attributes.update(
        {column: _json_integer(metadata.get(tag), column, warnings) for column, tag in NUMBER_ATTRIBUTES.items()}
    )
    attributes["transfer_syntax_uid"] = ts_uid
    for column in ("study_date", "patient_birth_date", "series_date", "performed_procedure_step_start_date"):
        value = attributes[column]
        if value is not None:
            attributes[column] = value.replace(".", "")[:8]  # tolerate ACR-NEMA style dates
    return attributes


def peek_uids(path: Path) -> tuple[str | None, str | None]:
    """Best-effort (SOP Class UID, SOP Instance UID) of an object that was refused, for the report."""
    try:
        dataset = pydicom.dcmread(
            path, stop_before_pixels=True, force=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
        )
        sop_class = str(dataset.get("SOPClassUID", "") or "") or None
        sop_instance = str(dataset.get("SOPInstanceUID", "") or "") or None
    except Exception:  # noqa: BLE001  reporting only: any failure just means "unknown"
        return None, None
    except RecursionError:
        return None, None
    return sop_class, sop_instance
