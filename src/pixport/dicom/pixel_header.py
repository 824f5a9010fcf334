"""The header of a stored object as far as its pixels go: transfer syntax and Image Pixel module.

The header is parsed by pydicom up to Pixel Data (``stop_before_pixels``); the Image Pixel
module (PS3.3 C.7.6.3) is then checked to be usable before anything is allocated for a frame.
Also the byte swapping that big endian objects need.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import IO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from pixport.errors import PixelDataError

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
PIXEL_KEYWORDS = {
    PIXEL_DATA: "PixelData",
    FLOAT_PIXEL_DATA: "FloatPixelData",
    DOUBLE_FLOAT_PIXEL_DATA: "DoubleFloatPixelData",
}
UNDEFINED_LENGTH = 0xFFFFFFFF
LONG_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"})
# A frame larger than this is refused before anything is allocated for it (a header can claim
# 65535 x 65535 pixels of 64 bits).
MAX_FRAME_BYTES = 1 << 30
BYTE = 8
# Values of these VRs are kept as raw bytes by pydicom; from big endian they must be swapped.
WORD_VRS = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
VALID_BITS_ALLOCATED = frozenset({1, 8, 16, 32, 64})
HEADER_ERRORS = (
    InvalidDicomError,
    EOFError,
    struct.error,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    NotImplementedError,
    OSError,
    UnicodeError,
    RecursionError,
    OverflowError,
    LookupError,
    zlib.error,
)


@dataclass(frozen=True, slots=True)
class ImagePixelDescription:
    """The Image Pixel module attributes that say how big a frame is (PS3.3 C.7.6.3)."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    number_of_frames: int

    @property
    def frame_bits(self) -> int:
        """The bits of one native frame (not padded: 1-bit frames need not end on a byte)."""
        return self.rows * self.columns * self.samples_per_pixel * self.bits_allocated

    @property
    def frame_length(self) -> int:
        """The bytes of one native frame once it is on its own (rounded up to a whole byte)."""
        return (self.frame_bits + 7) // 8


def swap_bytes(data: bytes, width: int) -> bytes:
    """Reverse the byte order of each ``width``-byte word of ``data`` (a trailing odd byte stays)."""
    if width <= 1:
        return data
    whole = len(data) - len(data) % width
    words = np.frombuffer(data[:whole], dtype=np.dtype(f"u{width}"))
    return words.byteswap().tobytes() + data[whole:]


@dataclass(frozen=True, slots=True)
class StoredHeader:
    """The data set up to Pixel Data, and where Pixel Data would start."""

    dataset: Dataset
    transfer_syntax_uid: UID
    position: int
    size: int


def read_header(fp: IO[bytes]) -> StoredHeader:
    """Parse the object's header, stopping before Pixel Data; ``PixelDataError`` if unparseable."""
    try:
        fp.seek(0, 2)
        size = fp.tell()
        fp.seek(0)
        dataset = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
        position = fp.tell()
    except HEADER_ERRORS as exc:
        msg = f"the object's header cannot be parsed: {type(exc).__name__}"
        raise PixelDataError(msg) from exc
    return StoredHeader(dataset, transfer_syntax_of(dataset), position, size)


def has_pixel_data(fp: IO[bytes], header: StoredHeader) -> bool:
    """Whether a Pixel Data element follows the header (for deflated objects: is in it)."""
    if header.transfer_syntax_uid == DEFLATED:
        return True  # only known once inflated; open_stored_pixels tells
    if header.position + 4 > header.size:
        return False
    fp.seek(header.position)
    little = header.dataset.original_encoding[1] is not False
    group, elem = struct.unpack("<HH" if little else ">HH", fp.read(4))
    return ((group << 16) | elem) in PIXEL_KEYWORDS


def swap_word_values(dataset: Dataset) -> None:
    """Swap the OW/OF/OL/OD/OV values pydicom keeps as raw bytes of a big endian data set.

    Pixel Data is left alone: its swapping depends on Bits Allocated.
    """
    for element in dataset.iterall():
        width = WORD_VRS.get(str(element.VR))
        if width and isinstance(element.value, bytes) and element.tag not in PIXEL_KEYWORDS:
            element.value = swap_bytes(element.value, width)


def transfer_syntax_of(dataset: Dataset) -> UID:
    """The object's Transfer Syntax UID, inferred from its encoding when File Meta lacks one."""
    meta = dataset.file_meta
    ts = str(meta.get("TransferSyntaxUID", "") or "").strip().rstrip("\x00")
    if ts:
        return UID(ts)
    implicit, little = dataset.original_encoding
    if implicit:
        return UID(IMPLICIT_VR_LITTLE_ENDIAN)
    return UID(EXPLICIT_VR_LITTLE_ENDIAN if little else EXPLICIT_VR_BIG_ENDIAN)


def _integer(dataset: Dataset, keyword: str, default: int | None = None) -> int:
    try:
        value = dataset.get(keyword)
        if isinstance(value, pydicom.multival.MultiValue):
            value = value[0] if value else None
        if value is None or value == "":
            if default is None:
                msg = f"{keyword} is missing"
                raise PixelDataError(msg)
            return default
        return int(value)
    except (ValueError, TypeError, OverflowError) as exc:
        msg = f"{keyword} is not a number"
        raise PixelDataError(msg) from exc


def describe_image_pixels(dataset: Dataset, tag: int = PIXEL_DATA) -> ImagePixelDescription:
    """Read and check the Image Pixel module; raise ``PixelDataError`` if it is unusable."""
    bits_allocated = _integer(dataset, "BitsAllocated", {FLOAT_PIXEL_DATA: 32, DOUBLE_FLOAT_PIXEL_DATA: 64}.get(tag))
    description = ImagePixelDescription(
        rows=_integer(dataset, "Rows"),
        columns=_integer(dataset, "Columns"),
        samples_per_pixel=_integer(dataset, "SamplesPerPixel", 1),
        bits_allocated=bits_allocated,
        bits_stored=_integer(dataset, "BitsStored", bits_allocated),
        pixel_representation=_integer(dataset, "PixelRepresentation", 0),
        photometric_interpretation=str(dataset.get("PhotometricInterpretation", "") or "").strip().upper(),
        planar_configuration=_integer(dataset, "PlanarConfiguration", 0),
        number_of_frames=_integer(dataset, "NumberOfFrames", 1),
    )
    checks = (
        (1 <= description.rows <= 0xFFFF, "Rows"),  # noqa: PLR2004
        (1 <= description.columns <= 0xFFFF, "Columns"),  # noqa: PLR2004
        (description.samples_per_pixel in {1, 3, 4}, "SamplesPerPixel"),
        (bits_allocated in VALID_BITS_ALLOCATED, "BitsAllocated"),
        (1 <= description.bits_stored <= bits_allocated, "BitsStored"),
        (description.pixel_representation in {0, 1}, "PixelRepresentation"),
        (description.number_of_frames >= 1, "NumberOfFrames"),
    )
    for ok, keyword in checks:
        if not ok:
            msg = f"{keyword} has a value that cannot describe Pixel Data"
            raise PixelDataError(msg)
    if description.frame_length > MAX_FRAME_BYTES:
        msg = f"one frame would take {description.frame_length} bytes, over the limit of {MAX_FRAME_BYTES}"
        raise PixelDataError(msg)
    return description
