"""Pixel data of one stored instance: frames, decoded frames, transcoding and rendering.

These are the functions WADO-RS frames, rendered and thumbnail resources and transcoding
call.  Each takes a seekable binary file holding the stored instance exactly as received, and
reads only what it needs: the header up to Pixel Data, then the requested frames.

* ``read_frames``: frames as stored (native slices, or compressed bitstreams).
* ``decode_frames``: frames as native little endian bytes, i.e. what
  ``application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1`` carries (PS3.18 8.7.3).
* ``transcode_to_explicit_vr_little_endian``: the whole instance re-encoded, decompressed.
* ``render`` and ``thumbnail``: consumer-quality JPEG or PNG (PS3.18 8.3.5 rendered media).

Everything that goes wrong with the pixels raises ``PixelDataError``; a frame number outside
the instance raises ``NotFound``; a rendering option that cannot be honoured raises ``BadQuery``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from io import BytesIO
from typing import IO, Any, BinaryIO, cast, overload

import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filereader import read_dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from pixport.dicom.pixel_frames import StoredPixels, check_frame_numbers, open_stored_pixels
from pixport.dicom.pixel_header import (
    DEFLATED,
    EXPLICIT_VR_LITTLE_ENDIAN,
    HEADER_ERRORS,
    StoredHeader,
    has_pixel_data,
    read_header,
    swap_bytes,
    swap_word_values,
)
from pixport.dicom.pixel_render import check_render_options, encode_image, render_array
from pixport.errors import PixelDataError

__all__ = [
    "decode_frames",
    "read_frames",
    "render",
    "thumbnail",
    "transcode_to_explicit_vr_little_endian",
]

PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
# Digital Signatures (FFFA,FFFA) no longer match a re-encoded object; (FFFC,FFFC) is padding.
DROPPED_AFTER_PIXELS = 0xFFFAFFFA


def read_frames(fp: IO[bytes], frame_numbers: Sequence[int]) -> list[bytes]:
    """The frames (numbered from 1) as stored: native slices or compressed bitstreams.

    Native frames keep the stored byte order; a 1-bit frame that does not start on a byte
    boundary is re-packed to start at bit 0.  Encapsulated frames are found through the
    Extended or Basic Offset Table when either fits, else one fragment per frame, else by the
    end-of-image marker; several fragments of one frame are joined.
    """
    stored = open_stored_pixels(fp)
    numbers = list(frame_numbers)
    check_frame_numbers(stored, numbers)
    return [stored.frame(number - 1) for number in numbers]


def decode_frames(fp: IO[bytes], frame_numbers: Sequence[int]) -> list[bytes]:
    """The frames (numbered from 1) as native little endian Pixel Data, decoded if compressed.

    Decoded colour frames come back as pydicom decodes them (YBR_FULL_422 JPEG and YBR_RCT /
    YBR_ICT JPEG 2000 as interleaved RGB), the photometric interpretation that
    ``transcode_to_explicit_vr_little_endian`` writes.  Native frames are returned as stored,
    byte-swapped when the instance is big endian; 1-bit frames stay packed.
    """
    stored = open_stored_pixels(fp)
    numbers = list(frame_numbers)
    check_frame_numbers(stored, numbers)
    return [_little_endian_frame(stored, number - 1) for number in numbers]


@overload
def transcode_to_explicit_vr_little_endian(fp: IO[bytes]) -> bytes: ...
@overload
def transcode_to_explicit_vr_little_endian(fp: IO[bytes], out: IO[bytes]) -> None: ...
def transcode_to_explicit_vr_little_endian(fp: IO[bytes], out: IO[bytes] | None = None) -> bytes | None:
    """Re-encode the whole instance as Explicit VR Little Endian Part 10, pixels decompressed.

    Returns the bytes, or writes them to ``out`` and returns None.  An instance that is Explicit
    VR Little Endian already is copied unchanged.  Compressed Pixel Data is decoded as by
    ``decode_frames`` and the Image Pixel module updated as pydicom's ``decompress`` does
    (Photometric Interpretation, Planar Configuration); the SOP Instance UID is kept.
    """
    header = read_header(fp)
    if _is_explicit_vr_little_endian(header):
        fp.seek(0)
        if out is None:
            return fp.read()
        shutil.copyfileobj(fp, out)
        return None
    dataset = _transcoded_dataset(fp, header)
    buffer = BytesIO() if out is None else out
    try:
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError, UnicodeError) as exc:
        msg = f"the instance cannot be written as Explicit VR Little Endian: {type(exc).__name__}"
        raise PixelDataError(msg) from exc
    if out is None:
        assert isinstance(buffer, BytesIO)  # noqa: S101 - narrows the type for mypy
        return buffer.getvalue()
    return None


def render(
    fp: IO[bytes],
    frame_number: int = 1,
    *,
    media_type: str = "image/jpeg",
    window: tuple[float, float] | None = None,
    viewport: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """One frame as a consumer-quality 8-bit JPEG or PNG (PS3.18 rendered resources).

    ``window`` is (center, width) in modality units (after rescale); without it the frame's
    window from the data set is used, else its VOI LUT, else the frame's minimum to maximum.
    MONOCHROME1 is inverted; PALETTE COLOR and YBR become RGB.  ``viewport`` is the largest
    (width, height): the image is scaled to fit it, keeping its aspect ratio.
    """
    check_render_options(media_type, window, viewport, quality)
    stored = open_stored_pixels(fp)
    check_frame_numbers(stored, [frame_number])
    array, photometric = _decoded_array(stored, frame_number - 1)
    if not stored.little_endian:
        # Lookup tables (palette, VOI, modality) in OW are raw big endian bytes: make them
        # little endian, and say so, for pydicom's LUT functions.
        swap_word_values(stored.dataset)
        stored.dataset.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    try:
        pixels = render_array(array, stored.dataset, photometric, frame_number - 1, window)
    except (MemoryError, ValueError, TypeError, OverflowError, FloatingPointError, LookupError, AttributeError) as exc:
        msg = f"frame {frame_number} cannot be rendered: {type(exc).__name__}"
        raise PixelDataError(msg) from exc
    return encode_image(pixels, media_type, viewport, quality)


def thumbnail(fp: IO[bytes], size: int = 128, media_type: str = "image/jpeg") -> bytes:
    """The middle frame (the only one, for single-frame instances) rendered to fit a ``size`` square."""
    stored = open_stored_pixels(fp)
    middle = stored.description.number_of_frames // 2 + 1
    return render(fp, middle, media_type=media_type, viewport=(size, size))


def decoded_frame(stored: StoredPixels, index: int) -> bytes:
    """One frame (numbered from 0) as native little endian bytes, decoded if compressed."""
    return _little_endian_frame(stored, index)


def _little_endian_frame(stored: StoredPixels, index: int) -> bytes:
    if not stored.encapsulated:
        return stored.native_frame(index, little_endian=True)
    array, _ = _decoded_array(stored, index)
    return _array_bytes(array)


def _array_bytes(array: npt.NDArray[Any]) -> bytes:
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _decoder_options(stored: StoredPixels) -> dict[str, Any]:
    description = stored.description
    return {
        "rows": description.rows,
        "columns": description.columns,
        "samples_per_pixel": description.samples_per_pixel,
        "bits_allocated": description.bits_allocated,
        "bits_stored": description.bits_stored,
        "pixel_representation": description.pixel_representation,
        "photometric_interpretation": description.photometric_interpretation or "MONOCHROME2",
        "planar_configuration": description.planar_configuration,
        "number_of_frames": 1,
        "pixel_keyword": stored.pixel_keyword,
    }


def _decoded_array(stored: StoredPixels, index: int) -> tuple[npt.NDArray[Any], str]:
    """Decode one frame with pydicom: (array, photometric interpretation of the array)."""
    frame = stored.frame(index) if stored.encapsulated else stored.native_frame(index, little_endian=True)
    if stored.encapsulated:
        uid = stored.transfer_syntax_uid
        source = encapsulate([frame])
    else:
        uid = UID(EXPLICIT_VR_LITTLE_ENDIAN)
        source = frame
    try:
        decoder = get_decoder(uid)
        array, properties = decoder.as_array(source, **_decoder_options(stored))
    except Exception as exc:
        msg = f"frame {index + 1} cannot be decoded from {uid.name or uid}: {type(exc).__name__}"
        raise PixelDataError(msg) from exc
    # pydicom gives a str-valued Enum here; str() of it is its value.
    photometric = str(properties.get("photometric_interpretation", stored.description.photometric_interpretation))
    return array, photometric


def _is_explicit_vr_little_endian(header: StoredHeader) -> bool:
    meta = header.dataset.file_meta
    has_meta = bool(meta) and "TransferSyntaxUID" in meta
    encoding = header.dataset.original_encoding
    return has_meta and header.transfer_syntax_uid == EXPLICIT_VR_LITTLE_ENDIAN and encoding == (False, True)


def _transcoded_dataset(fp: IO[bytes], header: StoredHeader) -> Dataset:
    """The whole instance in memory, with native little endian Pixel Data and updated meta."""
    dataset: Dataset
    if header.transfer_syntax_uid == DEFLATED:
        try:
            fp.seek(0)
            dataset = pydicom.dcmread(fp, force=True)  # inflated in memory, values little endian
        except HEADER_ERRORS as exc:
            msg = f"the deflated instance cannot be inflated and parsed: {type(exc).__name__}"
            raise PixelDataError(msg) from exc
    else:
        dataset = header.dataset
        implicit, little = dataset.original_encoding
        if little is False:
            swap_word_values(dataset)
        if has_pixel_data(fp, header):
            stored = open_stored_pixels(fp, header)
            _set_pixel_data(fp, dataset, stored)
            _add_trailing_elements(fp, dataset, stored.value_end(), implicit=bool(implicit), little=little is not False)
    dataset.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    return dataset


def _set_pixel_data(fp: IO[bytes], dataset: Dataset, stored: StoredPixels) -> None:
    description = stored.description
    if stored.encapsulated:
        value = _decompress(dataset, stored)
    else:
        fp.seek(stored.value_offset)
        length = stored.value_length or 0
        value = fp.read(length)
        if len(value) < length or len(value) * 8 < description.frame_bits * description.number_of_frames:
            msg = "Pixel Data is truncated; it cannot be transcoded"
            raise PixelDataError(msg)
        if not stored.little_endian and stored.vr != "OB":
            bits = description.bits_allocated
            value = swap_bytes(value, bits // 8 if bits > 8 else 2)  # noqa: PLR2004 - 8 and 1-bit OW is swapped in words
    if len(value) >= 0xFFFFFFFE:  # noqa: PLR2004
        msg = "the Pixel Data would be longer than a DICOM value can be"
        raise PixelDataError(msg)
    vr = {"FloatPixelData": "OF", "DoubleFloatPixelData": "OD"}.get(stored.pixel_keyword)
    tag = {"PixelData": 0x7FE00010, "FloatPixelData": 0x7FE00008, "DoubleFloatPixelData": 0x7FE00009}
    dataset.add_new(
        tag[stored.pixel_keyword],
        vr or ("OB" if description.bits_allocated <= 8 else "OW"),  # noqa: PLR2004
        value + b"\x00" * (len(value) % 2),
    )


def _decompress(dataset: Dataset, stored: StoredPixels) -> bytes:
    """Decode every frame and update the Image Pixel module, as pydicom's ``decompress`` does."""
    frames: list[bytes] = []
    photometric = stored.description.photometric_interpretation
    for index in range(stored.description.number_of_frames):
        array, photometric = _decoded_array(stored, index)
        frames.append(_array_bytes(array))
    dataset.PhotometricInterpretation = photometric
    if stored.description.samples_per_pixel > 1:
        dataset.PlanarConfiguration = 0
    if "NumberOfFrames" in dataset or len(frames) > 1:
        dataset.NumberOfFrames = len(frames)
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in dataset:
            del dataset[keyword]
    return b"".join(frames)


def _add_trailing_elements(fp: IO[bytes], dataset: Dataset, end: int, *, implicit: bool, little: bool) -> None:
    """Copy elements stored after Pixel Data (private groups), dropping padding and signatures."""
    fp.seek(0, 2)
    if end >= fp.tell():
        return
    fp.seek(end)
    try:
        trailing = read_dataset(cast("BinaryIO", fp), implicit, little)
        for tag in [tag for tag in trailing.keys() if tag >= DROPPED_AFTER_PIXELS]:  # noqa: SIM118 - deleting while iterating
            del trailing[tag]
        if not little:
            swap_word_values(trailing)
        elements = list(trailing)
    except HEADER_ERRORS:
        return  # unreadable bytes after Pixel Data: keep what precedes them
    for element in elements:
        dataset[element.tag] = element
