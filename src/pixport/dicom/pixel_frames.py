"""Find the frames of a stored object's Pixel Data without decoding them.

The header is parsed by pydicom up to the Pixel Data element; the element's header and, for
encapsulated (compressed) Pixel Data, the item headers of its fragments are then read by hand,
so that one frame can be served by reading that frame's bytes only.

Terms (PS3.5 Annex A.4): *native* Pixel Data is one value holding every frame back to back;
*encapsulated* Pixel Data is a sequence of items: the Basic Offset Table first, then fragments
of the compressed frames.  The Basic Offset Table (or the Extended Offset Table (7FE0,0001))
tells where each frame starts; without either, frame boundaries are inferred.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field
from io import BytesIO
from typing import IO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from pixport.dicom.pixel_header import (
    BYTE,
    DEFLATED,
    HEADER_ERRORS,
    LONG_VRS,
    PIXEL_DATA,
    PIXEL_KEYWORDS,
    UNDEFINED_LENGTH,
    ImagePixelDescription,
    StoredHeader,
    describe_image_pixels,
    read_header,
    swap_bytes,
)
from pixport.errors import NotFound, PixelDataError

ITEM = 0xFFFEE000
SEQUENCE_DELIMITER = 0xFFFEE0DD
# JPEG EOI and JPEG 2000 EOC are both FFD9: the end of a compressed frame.
END_OF_IMAGE = b"\xff\xd9"


@dataclass(slots=True)
class StoredPixels:
    """One stored object's header and where its Pixel Data lies.

    ``source`` is the file itself, or for a deflated object an in-memory copy of the
    inflated Pixel Data value; ``value_offset`` is where the value starts in ``source``.
    """

    dataset: Dataset
    transfer_syntax_uid: UID
    description: ImagePixelDescription
    pixel_keyword: str
    vr: str
    little_endian: bool
    source: IO[bytes]
    value_offset: int
    value_length: int | None  # None: undefined length, i.e. encapsulated
    source_size: int
    _frames: list[list[tuple[int, int]]] | None = field(default=None, repr=False)
    _end: int | None = field(default=None, repr=False)

    @property
    def encapsulated(self) -> bool:
        """Whether the Pixel Data is a sequence of compressed fragments."""
        return self.value_length is None

    def frame(self, index: int) -> bytes:
        """The stored bytes of the frame at 0-based ``index`` (caller checked the range)."""
        if self.encapsulated:
            return self._encapsulated_frame(index)
        return self.native_frame(index, little_endian=self.little_endian)

    def native_frame(self, index: int, *, little_endian: bool = True) -> bytes:
        """One frame of native Pixel Data, byte-swapped to little endian unless told otherwise."""
        frame_bits = self.description.frame_bits
        start_bit = index * frame_bits
        end_bit = start_bit + frame_bits
        available = min(self.value_length or 0, self.source_size - self.value_offset)
        if end_bit > available * 8:
            msg = f"Pixel Data is shorter than frame {index + 1} needs (truncated, or wrong Rows/Columns)"
            raise PixelDataError(msg)
        first, last = start_bit // 8, (end_bit + 7) // 8
        swap_words = (
            little_endian and not self.little_endian and self.vr == "OW" and self.description.bits_allocated <= BYTE
        )
        # Big endian OW holding 8 or 1-bit data: bytes are swapped in pairs counted from the
        # start of the value, so read whole words.
        begin, end = (first - first % 2, last + last % 2) if swap_words else (first, last)
        self.source.seek(self.value_offset + begin)
        chunk = self.source.read(end - begin)
        if len(chunk) < last - begin:
            msg = f"Pixel Data is truncated inside frame {index + 1}"
            raise PixelDataError(msg)
        if little_endian and not self.little_endian:
            chunk = swap_bytes(chunk, 2 if swap_words else self.description.bits_allocated // 8)
        chunk = chunk[first - begin : last - begin]
        shift = start_bit % 8
        if shift == 0 and frame_bits % 8 == 0:
            return chunk
        # Bits Allocated 1: frames are packed back to back, least significant bit first, so a
        # frame may start and end inside a byte.  Re-pack it to start at bit 0.
        bits = np.unpackbits(np.frombuffer(chunk, dtype=np.uint8), bitorder="little")
        return np.packbits(bits[shift : shift + frame_bits], bitorder="little").tobytes()

    def _encapsulated_frame(self, index: int) -> bytes:
        frames = self._frame_fragments()
        if index >= len(frames):
            msg = f"encapsulated Pixel Data holds {len(frames)} frames, not {index + 1}"
            raise PixelDataError(msg)
        parts = []
        for offset, length in frames[index]:
            self.source.seek(offset)
            data = self.source.read(length)
            if len(data) != length:
                msg = f"encapsulated Pixel Data is truncated inside frame {index + 1}"
                raise PixelDataError(msg)
            parts.append(data)
        return b"".join(parts)

    def _frame_fragments(self) -> list[list[tuple[int, int]]]:
        if self._frames is None:
            basic_offsets, fragments, self._end = _scan_items(self.source, self.value_offset, self.source_size)
            self._frames = _group_fragments(self, basic_offsets, fragments)
        return self._frames

    def value_end(self) -> int:
        """Where the Pixel Data element ends in ``source`` (after the sequence delimiter)."""
        if self.value_length is not None:
            return self.value_offset + self.value_length
        self._frame_fragments()
        assert self._end is not None  # noqa: S101 - set by the scan above
        return self._end


def open_stored_pixels(fp: IO[bytes], header: StoredHeader | None = None) -> StoredPixels:
    """Parse the header of the object in ``fp`` and locate its Pixel Data.

    Raise ``PixelDataError`` when the object cannot be parsed or has no usable Pixel Data.
    """
    header = header or read_header(fp)
    dataset, ts_uid, position, size = header.dataset, header.transfer_syntax_uid, header.position, header.size
    if ts_uid == DEFLATED:
        return _open_deflated(fp, ts_uid)
    if position >= size:
        msg = "the object has no Pixel Data"
        raise PixelDataError(msg)
    implicit, little = dataset.original_encoding
    tag, vr, value_offset, length = _read_element_header(
        fp, position, implicit=bool(implicit), little_endian=little is not False
    )
    value_length = None if length == UNDEFINED_LENGTH else length
    description = describe_image_pixels(dataset, tag)
    _check_encapsulation(ts_uid, tag, vr, encapsulated=value_length is None)
    return StoredPixels(
        dataset=dataset,
        transfer_syntax_uid=ts_uid,
        description=description,
        pixel_keyword=PIXEL_KEYWORDS[tag],
        vr=vr,
        little_endian=little is not False,
        source=fp,
        value_offset=value_offset,
        value_length=value_length,
        source_size=size,
    )


def _open_deflated(fp: IO[bytes], ts_uid: UID) -> StoredPixels:
    # The whole data set is one zlib stream: inflate it and hold the Pixel Data in memory.
    try:
        fp.seek(0)
        dataset = pydicom.dcmread(fp, force=True)
        tag = next((t for t in PIXEL_KEYWORDS if t in dataset), None)
        if tag is None:
            msg = "the object has no Pixel Data"
            raise PixelDataError(msg)
        element = dataset[tag]
        value = element.value
    except HEADER_ERRORS as exc:
        msg = f"the deflated object cannot be inflated and parsed: {type(exc).__name__}"
        raise PixelDataError(msg) from exc
    if not isinstance(value, bytes) or element.is_undefined_length:
        msg = "the deflated object's Pixel Data is not a native value"
        raise PixelDataError(msg)
    description = describe_image_pixels(dataset, tag)
    del dataset[tag]
    return StoredPixels(
        dataset=dataset,
        transfer_syntax_uid=ts_uid,
        description=description,
        pixel_keyword=PIXEL_KEYWORDS[tag],
        vr=str(element.VR),
        little_endian=True,
        source=BytesIO(value),
        value_offset=0,
        value_length=len(value),
        source_size=len(value),
    )


def _read_element_header(
    fp: IO[bytes], position: int, *, implicit: bool, little_endian: bool
) -> tuple[int, str, int, int]:
    endian = "<" if little_endian else ">"
    fp.seek(position)
    head = fp.read(8)
    if len(head) < 8:  # noqa: PLR2004
        msg = "the object is truncated inside the Pixel Data element header"
        raise PixelDataError(msg)
    group, elem = struct.unpack(endian + "HH", head[:4])
    tag = (group << 16) | elem
    if tag not in PIXEL_KEYWORDS:
        msg = "the object has no Pixel Data"
        raise PixelDataError(msg)
    if implicit:
        (length,) = struct.unpack(endian + "L", head[4:8])
        return tag, "OW", position + 8, length
    vr_bytes = head[4:6]
    if vr_bytes in LONG_VRS:
        more = fp.read(4)
        if len(more) < 4:  # noqa: PLR2004
            msg = "the object is truncated inside the Pixel Data element header"
            raise PixelDataError(msg)
        (length,) = struct.unpack(endian + "L", more)
        return tag, vr_bytes.decode("ascii"), position + 12, length
    (length,) = struct.unpack(endian + "H", head[6:8])
    return tag, vr_bytes.decode("ascii", "replace"), position + 8, length


def _check_encapsulation(ts_uid: UID, tag: int, vr: str, *, encapsulated: bool) -> None:
    compressed = ts_uid.is_transfer_syntax and ts_uid.is_compressed
    if encapsulated and (tag != PIXEL_DATA or not compressed):
        msg = f"Pixel Data {vr} has undefined length but Transfer Syntax {ts_uid} is not encapsulated"
        raise PixelDataError(msg)
    if not encapsulated and compressed:
        msg = f"Transfer Syntax {ts_uid} needs encapsulated Pixel Data but the value has a defined length"
        raise PixelDataError(msg)


def _scan_items(source: IO[bytes], start: int, size: int) -> tuple[bytes, list[tuple[int, int]], int]:
    """Read the item headers of encapsulated Pixel Data: (Basic Offset Table, [(offset, length)], end)."""
    source.seek(start)
    basic_offsets = b""
    fragments: list[tuple[int, int]] = []
    first = True
    while True:
        head = source.read(8)
        if len(head) < 8:  # noqa: PLR2004
            if first:
                msg = "encapsulated Pixel Data has no Basic Offset Table item"
                raise PixelDataError(msg)
            break  # tolerate a missing sequence delimiter at the end of the file
        group, elem, length = struct.unpack("<HHL", head)
        tag = (group << 16) | elem
        if tag == SEQUENCE_DELIMITER:
            source.seek(length, 1)
            break
        if tag != ITEM or length == UNDEFINED_LENGTH:
            msg = "encapsulated Pixel Data has a malformed item"
            raise PixelDataError(msg)
        offset = source.tell()
        if offset + length > size:
            msg = "encapsulated Pixel Data is truncated"
            raise PixelDataError(msg)
        if first:
            basic_offsets = source.read(length)
            first = False
        else:
            fragments.append((offset, length))
            source.seek(length, 1)
    if not fragments:
        msg = "encapsulated Pixel Data has no fragments"
        raise PixelDataError(msg)
    return basic_offsets, fragments, min(source.tell(), size)


def _group_fragments(
    stored: StoredPixels, basic_offsets: bytes, fragments: list[tuple[int, int]]
) -> list[list[tuple[int, int]]]:
    """Which fragments make up each frame, from the offset tables or else inferred."""
    frames = stored.description.number_of_frames
    # Offsets in both tables count from the first byte of the first fragment's item tag.
    base = fragments[0][0] - 8
    starts = {offset - 8 - base: i for i, (offset, _) in enumerate(fragments)}
    extended = _extended_offsets(stored.dataset)
    # The Extended Offset Table is only allowed with one fragment per frame (PS3.3 C.7.6.3.1.8).
    for offsets, single in ((extended, True), (_basic_offsets(basic_offsets), False)):
        by_table = _group_by_offsets(offsets, starts, fragments, frames, single=single)
        if by_table is not None:
            return by_table
    if len(fragments) <= frames:
        # One fragment per frame (RLE always, most others); fewer fragments: frames are missing.
        return [[fragment] for fragment in fragments] if frames > 1 else [fragments]
    if frames == 1:
        return [fragments]
    # More fragments than frames and no offset table: a frame ends with a fragment that ends
    # with an EOI/EOC marker (pydicom.encaps.generate_fragmented_frames does the same).
    grouped: list[list[tuple[int, int]]] = [[]]
    for offset, length in fragments:
        grouped[-1].append((offset, length))
        tail = min(length, 10)
        stored.source.seek(offset + length - tail)
        if END_OF_IMAGE in stored.source.read(tail):
            grouped.append([])
    if not grouped[-1]:
        grouped.pop()
    return grouped


def _extended_offsets(dataset: Dataset) -> list[int] | None:
    try:
        table = dataset.get("ExtendedOffsetTable")
    except HEADER_ERRORS:
        return None
    if not isinstance(table, bytes) or not table or len(table) % 8:
        return None
    return list(struct.unpack(f"<{len(table) // 8}Q", table))


def _basic_offsets(table: bytes) -> list[int] | None:
    if not table or len(table) % 4:
        return None
    return list(struct.unpack(f"<{len(table) // 4}L", table))


def _group_by_offsets(
    offsets: list[int] | None,
    starts: dict[int, int],
    fragments: list[tuple[int, int]],
    frames: int,
    *,
    single: bool,
) -> list[list[tuple[int, int]]] | None:
    """Group fragments by an offset table, or None if the table does not fit the fragments."""
    if offsets is None or len(offsets) != frames or offsets[0] != 0:
        return None
    if any(b <= a for a, b in itertools.pairwise(offsets)) or any(o not in starts for o in offsets):
        return None
    first = [starts[o] for o in offsets]
    if single:
        return [[fragments[i]] for i in first]
    bounds = [*first, len(fragments)]
    return [fragments[bounds[i] : bounds[i + 1]] for i in range(frames)]


def check_frame_numbers(stored: StoredPixels, frame_numbers: list[int]) -> None:
    """Raise ``NotFound`` for a frame number outside 1..NumberOfFrames."""
    total = stored.description.number_of_frames
    for number in frame_numbers:
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= total:
            msg = f"frame {number} does not exist; the object has {total} frames"
            raise NotFound(msg)
