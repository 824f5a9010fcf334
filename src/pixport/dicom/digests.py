"""The three SHA-256 digests a manifest lists for each instance, read from its stored file.

* ``sha256``: the exact bytes of the file (the blob store's content address);
* ``dataset_sha256``: the bytes after the File Meta Information, which a tool that copies the
  file may rewrite (Implementation Class UID, Source AE title) without touching the data set;
* ``pixel_sha256``: the decoded pixel data in a canonical form, so a lossless re-encoding
  (JPEG-LS, JPEG 2000 reversible, RLE, deflate, another byte order) gives the same digest.

The canonical form of the pixels: a line with rows, columns, samples per pixel, frames, bits
allocated and stored, and pixel representation; then every frame as little endian samples,
colour samples interleaved (planar configuration 0), bits above Bits Stored cleared (or set
from the sign bit when signed), since an encoder keeps only Bits Stored bits.  Colour data
compressed with a colour transform (YBR_RCT/ICT in JPEG 2000) is compared as pydicom decodes
it, which is RGB.  Lossy re-encodings change the pixels and do not verify, as they should not.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import IO

import numpy as np

from pixport.dicom.pixel_frames import open_stored_pixels
from pixport.dicom.pixel_header import has_pixel_data, read_header
from pixport.dicom.pixels import decoded_frame
from pixport.errors import PixelDataError

_CHUNK = 1 << 20
_PREAMBLE = 128
_META_START = _PREAMBLE + 4


@dataclass(frozen=True, slots=True)
class InstanceDigests:
    """Size and digests (lowercase hex SHA-256) of one stored instance."""

    size: int
    sha256: str
    dataset_sha256: str
    pixel_sha256: str | None


def instance_digests(fp: IO[bytes]) -> InstanceDigests:
    """The digests of one stored instance (a seekable Part 10 file); reads it in chunks.

    Pixel data that cannot be decoded here (a codec pydicom lacks, corrupt data) gets no
    pixel digest, as an instance without pixels: it can then only verify by its bytes.
    """
    start = data_set_offset(fp)
    whole, data_set = hashlib.sha256(), hashlib.sha256()
    fp.seek(0)
    position = 0
    while chunk := fp.read(_CHUNK):
        whole.update(chunk)
        if position + len(chunk) > start:
            data_set.update(chunk[max(0, start - position) :])
        position += len(chunk)
    try:
        pixels = pixel_data_sha256(fp)
    except PixelDataError:
        pixels = None
    return InstanceDigests(position, whole.hexdigest(), data_set.hexdigest(), pixels)


def data_set_offset(fp: IO[bytes]) -> int:
    """Where the data set starts: after the preamble, ``DICM`` and the File Meta group, if any."""
    fp.seek(_PREAMBLE)
    if fp.read(4) != b"DICM":
        return 0
    position = _META_START
    while True:
        fp.seek(position)
        head = fp.read(8)
        if len(head) < 8:  # noqa: PLR2004  tag and VR/length
            return position
        group, element = struct.unpack("<HH", head[:4])
        if group != 2:  # noqa: PLR2004  File Meta is group 0002, always explicit VR little endian
            return position
        vr = head[4:6]
        if vr in {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"}:
            length = struct.unpack("<I", fp.read(4))[0]
            position += 12 + length
        else:
            length = struct.unpack("<H", head[6:8])[0]
            if element == 0 and vr == b"UL":
                fp.seek(position + 8)
                group_length: int = struct.unpack("<I", fp.read(4))[0]
                return position + 12 + group_length
            position += 8 + length


def pixel_data_sha256(fp: IO[bytes]) -> str | None:
    """The digest of the decoded pixel data in canonical form; None without pixel data."""
    header = read_header(fp)
    if not has_pixel_data(fp, header):
        return None
    stored = open_stored_pixels(fp, header)
    d = stored.description
    digest = hashlib.sha256(
        f"{d.rows}x{d.columns}x{d.samples_per_pixel}x{d.number_of_frames}"
        f" bits {d.bits_allocated}/{d.bits_stored} signed {d.pixel_representation}\n".encode("ascii")
    )
    for index in range(d.number_of_frames):
        frame = decoded_frame(stored, index)
        digest.update(
            _canonical_frame(
                frame,
                bits_allocated=d.bits_allocated,
                bits_stored=d.bits_stored,
                signed=d.pixel_representation == 1,
                samples=d.samples_per_pixel,
                planar=d.planar_configuration == 1 and not stored.encapsulated,
            )
        )
    return digest.hexdigest()


def _canonical_frame(
    frame: bytes, *, bits_allocated: int, bits_stored: int, signed: bool, samples: int, planar: bool
) -> bytes:
    if bits_allocated not in (8, 16, 32, 64):
        return frame  # 1-bit frames: packed bits, nothing to normalize
    array = np.frombuffer(frame, dtype=f"<u{bits_allocated // 8}")
    if planar and samples > 1:
        array = array.reshape(samples, -1).T.reshape(-1)
    if 0 < bits_stored < bits_allocated:
        mask = (1 << bits_stored) - 1
        values = array.astype(np.int64) & mask
        if signed:
            sign = 1 << (bits_stored - 1)
            values = (values ^ sign) - sign
            values &= (1 << bits_allocated) - 1
        array = values.astype(f"<u{bits_allocated // 8}")
    return array.tobytes()
