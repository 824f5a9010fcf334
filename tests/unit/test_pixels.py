"""Pixel data functions over the shared DICOM corpus: frames, decoding, transcoding, rendering."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames, itemize_fragment
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from pixport.dicom.pixels import (
    decode_frames,
    read_frames,
    render,
    thumbnail,
    transcode_to_explicit_vr_little_endian,
)
from pixport.errors import BadQuery, NotFound, PixelDataError

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
# Lossy sources decode the same way every time, but only lossless ones promise equal values.
LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91"}
# 12-bit JPEG Extended: pylibjpeg's libjpeg refuses these two bitstreams (pydicom fails the same).
UNDECODABLE = {"modality/mg/MG1_JPLY", "transfer-syntax/jpeg-extended_JPEG-lossy.dcm"}


def _corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "MANIFEST.md")


def _name(path: Path) -> str:
    return path.relative_to(CORPUS).as_posix()


def _read_fully(path: Path) -> Dataset | None:
    try:
        return pydicom.dcmread(path, force=True)
    except RecursionError:
        return None


def _pixel_files() -> list[Path]:
    """Files pydicom itself reads with Pixel Data and a usable Image Pixel module."""
    found = []
    for path in _corpus_files():
        ds = _read_fully(path)
        if ds is None or not any(tag in ds for tag in PIXEL_TAGS):
            continue
        try:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except ValueError:
            continue
        if {"Rows", "Columns", "BitsAllocated"} <= set(ds.dir()) and frames >= 1:
            found.append(path)
    return found


ALL_FILES = _corpus_files()
PIXEL_FILES = _pixel_files()
IDS = [_name(p) for p in PIXEL_FILES]


DECODABLE = [p for p in PIXEL_FILES if _name(p) not in UNDECODABLE and not _name(p).startswith("malformed/")] + [
    CORPUS / name
    for name in (
        "malformed/CTImageStorage_bad_meta.dcm",
        "malformed/J2K_pixelrep_mismatch.dcm",
        "malformed/LenaTwiceWithFragments.dcm",
        "malformed/SC_rgb_small_odd.dcm",
        "malformed/bad_sequence.dcm",
        "malformed/explicit_VR-UN.dcm",
        "malformed/pt_cp246_tags_as_UN.dcm",
        "malformed/unknown_private_sop_class.dcm",
    )
]
DECODABLE_IDS = [_name(p) for p in DECODABLE]


def _frames(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _frame_array(ds: Dataset, number: int) -> np.ndarray:
    array = ds.pixel_array
    return array[number - 1] if _frames(ds) > 1 else array


def _expected_native_bytes(ds: Dataset, number: int) -> bytes:
    array = _frame_array(ds, number)
    if ds.BitsAllocated == 1:
        return np.packbits(array.ravel(), bitorder="little").tobytes()
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def _open_image(data: bytes, expected_format: str) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == expected_format
    return image


def test_corpus_is_found_and_has_pixel_files():
    assert CORPUS.is_dir(), f"the shared corpus is expected at {CORPUS}"
    assert len(ALL_FILES) > 200
    assert len(PIXEL_FILES) > 100
    assert len(DECODABLE) > 100
    assert all(p.is_file() for p in DECODABLE)


@pytest.mark.parametrize("path", PIXEL_FILES, ids=IDS)
def test_read_frames_returns_every_frame(path: Path):
    ds = pydicom.dcmread(path, force=True)
    count = _frames(ds)
    ts = UID(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
    with path.open("rb") as fp:
        try:
            frames = read_frames(fp, range(1, count + 1))
        except PixelDataError:
            # Only broken native data may fail here: say so per file.
            assert _name(path) in {"malformed/MR_truncated.dcm", "malformed/oob-monochrome-46341.dcm"} | {
                "malformed/oob-monochrome-65535.dcm"
            }
            return
    assert len(frames) == count
    if ts.is_compressed:
        expected = list(generate_frames(ds.PixelData, number_of_frames=count))
        assert frames == expected
    else:
        length = math.ceil(ds.Rows * ds.Columns * ds.get("SamplesPerPixel", 1) * ds.BitsAllocated / 8)
        assert all(len(frame) == length for frame in frames)
        if ds.Rows * ds.Columns * ds.get("SamplesPerPixel", 1) * ds.BitsAllocated % 8 == 0:
            assert b"".join(frames) == ds.PixelData[: length * count]


@pytest.mark.parametrize("path", DECODABLE, ids=DECODABLE_IDS)
def test_decode_frames_match_pydicom(path: Path):
    ds = pydicom.dcmread(path)
    count = _frames(ds)
    numbers = sorted({1, count})
    with path.open("rb") as fp:
        decoded = decode_frames(fp, numbers)
    assert [len(d) for d in decoded] == [len(_expected_native_bytes(ds, n)) for n in numbers]
    for number, data in zip(numbers, decoded, strict=True):
        assert data == _expected_native_bytes(ds, number)


@pytest.mark.parametrize("path", DECODABLE, ids=DECODABLE_IDS)
def test_render_jpeg_and_png(path: Path):
    ds = pydicom.dcmread(path)
    count = _frames(ds)
    color = ds.get("SamplesPerPixel", 1) == 3 or ds.PhotometricInterpretation == "PALETTE COLOR"
    with path.open("rb") as fp:
        jpeg = _open_image(render(fp, count), "JPEG")
        png = _open_image(render(fp, 1, media_type="image/png", viewport=(64, 48)), "PNG")
    assert jpeg.size == (ds.Columns, ds.Rows)
    assert jpeg.mode == ("RGB" if color else "L")
    assert png.mode == jpeg.mode
    assert png.width <= 64
    assert png.height <= 48
    assert 64 in png.size or 48 in png.size
    assert abs(png.width / png.height - ds.Columns / ds.Rows) < 2 / min(png.size)


@pytest.mark.parametrize("path", DECODABLE, ids=DECODABLE_IDS)
def test_transcode_to_explicit_vr_little_endian(path: Path):
    source = pydicom.dcmread(path)
    data = path.read_bytes()
    with path.open("rb") as fp:
        out = transcode_to_explicit_vr_little_endian(fp)
    result = pydicom.dcmread(io.BytesIO(out))
    assert result.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not result["PixelData"].is_undefined_length
    assert result.SOPInstanceUID == source.SOPInstanceUID
    source_ts = source.file_meta.TransferSyntaxUID
    if source_ts == ExplicitVRLittleEndian and source.original_encoding == (False, True):
        assert out == data
    expected = source.pixel_array
    if source_ts not in LOSSY:
        assert np.array_equal(result.pixel_array, expected)
    else:
        assert result.pixel_array.shape == expected.shape
    sink = io.BytesIO()
    with path.open("rb") as fp:
        assert transcode_to_explicit_vr_little_endian(fp, sink) is None
    assert sink.getvalue() == out


@pytest.mark.parametrize("path", DECODABLE, ids=DECODABLE_IDS)
def test_frame_out_of_range_is_not_found(path: Path):
    ds = pydicom.dcmread(path, force=True)
    count = _frames(ds)
    with path.open("rb") as fp:
        for call in (read_frames, decode_frames):
            for numbers in ([count + 1], [0], [1, count + 1], [-1]):
                with pytest.raises(NotFound):
                    call(fp, numbers)
        with pytest.raises(NotFound):
            render(fp, count + 1)


@pytest.mark.parametrize("path", ALL_FILES, ids=[_name(p) for p in ALL_FILES])
def test_every_file_works_or_raises_pixel_data_error(path: Path):
    """Malformed, pixel-less or odd: each call succeeds or raises PixelDataError, nothing else."""
    outcomes = []
    with path.open("rb") as fp:
        for call in (
            lambda: read_frames(fp, [1]),
            lambda: decode_frames(fp, [1]),
            lambda: render(fp),
            lambda: thumbnail(fp, 32, "image/png"),
            lambda: transcode_to_explicit_vr_little_endian(fp),
        ):
            try:
                result = call()
            except PixelDataError as exc:
                error = str(exc)
                outcomes.append("error")
            else:
                error = ""
                outcomes.append("ok" if result else "empty")
            assert error or outcomes[-1] == "ok"
    ds = _read_fully(path)
    has_pixels = ds is not None and any(tag in ds for tag in PIXEL_TAGS)
    if path in DECODABLE:
        assert outcomes == ["ok"] * 5
    elif not has_pixels and _name(path) != "malformed/emri_small_jpeg_2k_lossless_too_short.dcm":
        assert outcomes[:4] == ["error"] * 4


@pytest.mark.parametrize(
    "name",
    [
        "malformed/oob-monochrome-46341.dcm",
        "malformed/oob-monochrome-65535.dcm",
        "malformed/MR_truncated.dcm",
        "malformed/badVR.dcm",
        "malformed/deeply_nested_sequence.dcm",
        "malformed/JPEG2000-embedded-sequence-delimiter.dcm",
        "modality/mr/emr_Issue22-NoPixelData.dcm",
        "modality/doc/encapsulated_pdf.dcm",
    ],
)
def test_broken_or_missing_pixels_raise_pixel_data_error(name: str):
    with (CORPUS / name).open("rb") as fp:
        with pytest.raises(PixelDataError):
            render(fp)
        with pytest.raises(PixelDataError):
            decode_frames(fp, [1])


def test_encapsulated_frames_without_sequence_delimiter_are_read():
    short = CORPUS / "malformed/emri_small_jpeg_2k_lossless_too_short.dcm"
    good = CORPUS / "transfer-syntax/emri_small_jpeg_2k_lossless.dcm"
    with short.open("rb") as a, good.open("rb") as b:
        assert read_frames(a, range(1, 11)) == read_frames(b, range(1, 11))
        result = pydicom.dcmread(io.BytesIO(transcode_to_explicit_vr_little_endian(a)))
    reference = pydicom.dcmread(CORPUS / "modality/mr/emri_small.dcm")
    assert np.array_equal(result.pixel_array, reference.pixel_array)


def test_jpeg_frames_split_over_fragments_are_joined():
    path = CORPUS / "malformed/LenaTwiceWithFragments.dcm"
    with path.open("rb") as fp:
        frames = read_frames(fp, [1, 2])
    for frame in frames:
        assert frame.startswith(b"\xff\xd8")
        assert frame.rstrip(b"\x00").endswith(b"\xff\xd9")


def _write(ds: Dataset) -> io.BytesIO:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer


def _synthetic(rows: int, columns: int, frames: int, bits: int, ts: UID = ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    return ds


def test_one_bit_frames_not_on_byte_boundaries_are_repacked():
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2, size=(3, 3, 3), dtype=np.uint8)
    ds = _synthetic(3, 3, 3, 1)
    ds.PixelData = np.packbits(bits.ravel(), bitorder="little").tobytes()
    fp = _write(ds)
    frames = read_frames(fp, [1, 2, 3])
    assert [len(f) for f in frames] == [2, 2, 2]
    for frame, expected in zip(frames, bits, strict=True):
        unpacked = np.unpackbits(np.frombuffer(frame, np.uint8), bitorder="little")
        assert np.array_equal(unpacked[:9], expected.ravel())
        assert not unpacked[9:].any()
    assert decode_frames(fp, [2]) == [frames[1]]
    assert _open_image(render(fp, 2, media_type="image/png"), "PNG").size == (3, 3)


def _rle_frames() -> tuple[Dataset, list[bytes]]:
    ds = pydicom.dcmread(CORPUS / "transfer-syntax/rle_SC_rgb_2frame.dcm")
    return ds, list(generate_frames(ds.PixelData, number_of_frames=2))


def test_extended_offset_table_is_used():
    ds, frames = _rle_frames()
    data, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
    # A stray trailing fragment: without the table the frames could not be told apart.
    ds.PixelData = data + itemize_fragment(b"stray fragment")
    fp = _write(ds)
    assert read_frames(fp, [2, 1]) == [frames[1], frames[0]]
    assert decode_frames(fp, [2]) == [_expected_native_bytes(ds, 2)]


def test_basic_offset_table_groups_several_fragments_per_frame():
    ds, frames = _rle_frames()
    # Two fragments per frame with a Basic Offset Table: each frame must be joined back.
    ds.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=True)
    ds["PixelData"].is_undefined_length = True
    fp = _write(ds)
    assert read_frames(fp, [1, 2]) == frames
    original = pydicom.dcmread(CORPUS / "transfer-syntax/rle_SC_rgb_2frame.dcm")
    assert decode_frames(fp, [1, 2]) == [_expected_native_bytes(original, n) for n in (1, 2)]


def test_big_endian_frames_are_swapped_when_decoded():
    path = CORPUS / "transfer-syntax/bigendian_MR_small_bigendian.dcm"
    with path.open("rb") as fp:
        stored = read_frames(fp, [1])[0]
        decoded = decode_frames(fp, [1])[0]
    assert stored != decoded
    assert np.array_equal(np.frombuffer(stored, ">i2"), np.frombuffer(decoded, "<i2"))


def test_big_endian_palette_transcodes_with_swapped_lookup_tables():
    path = CORPUS / "transfer-syntax/bigendian_OBXXXX1A_expb_2frame.dcm"
    source = pydicom.dcmread(path)
    with path.open("rb") as fp:
        result = pydicom.dcmread(io.BytesIO(transcode_to_explicit_vr_little_endian(fp)))
    red_source = np.frombuffer(source.RedPaletteColorLookupTableData, ">u2")
    red_result = np.frombuffer(result.RedPaletteColorLookupTableData, "<u2")
    assert np.array_equal(red_source, red_result)
    with path.open("rb") as a, (CORPUS / "modality/us/OBXXXX1A_rle_2frame.dcm").open("rb") as b:
        assert render(a, 2, media_type="image/png") == render(b, 2, media_type="image/png")


def _png_array(data: bytes) -> np.ndarray:
    return np.asarray(_open_image(data, "PNG"))


def _relabelled(path: Path, photometric: str) -> io.BytesIO:
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = photometric
    if "PresentationLUTShape" in ds:
        ds.PresentationLUTShape = "IDENTITY"  # DX pairs MONOCHROME1 with INVERSE: one inversion only
    return _write(ds)


@pytest.mark.parametrize("name", ["modality/cr-dx/dx_image.dcm", "media/pydicom-dicomdirtests/77654033/CR1/6154"])
def test_monochrome1_is_inverted(name: str):
    path = CORPUS / name
    with path.open("rb") as fp:
        mono1 = _png_array(render(fp, media_type="image/png"))
    mono2 = _png_array(render(_relabelled(path, "MONOCHROME2"), media_type="image/png"))
    assert mono1.std() > 0
    assert np.array_equal(mono1.astype(int) + mono2.astype(int), np.full(mono1.shape, 255))


def test_monochrome1_jpeg_source_is_inverted():
    path = CORPUS / "modality/cr-dx/cr_Monochrome1-Jpeg.dcm"
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array
    low, high = int(raw.min()), int(raw.max())
    with path.open("rb") as fp:
        image = _png_array(render(fp, media_type="image/png", window=((low + high) / 2, high - low)))
    # The darkest stored pixels are shown brightest.
    assert image[raw == raw.min()].min() >= 250
    assert image[raw == raw.max()].max() <= 5


def test_window_from_request_changes_output_and_clips():
    path = CORPUS / "modality/ct/CT_small.dcm"
    with path.open("rb") as fp:
        soft = _png_array(render(fp, media_type="image/png", window=(40, 400)))
        bone = _png_array(render(fp, media_type="image/png", window=(500, 2000)))
        default = _png_array(render(fp, media_type="image/png"))
        black = _png_array(render(fp, media_type="image/png", window=(100_000, 10)))
        white = _png_array(render(fp, media_type="image/png", window=(-100_000, 10)))
    assert not np.array_equal(soft, bone)
    assert not np.array_equal(soft, default)
    assert black.max() == 0
    assert white.min() == 255
    # Without a window in the data set, the frame's minimum and maximum span black to white.
    assert default.min() == 0
    assert default.max() == 255


def test_window_from_data_set_is_the_default():
    path = CORPUS / "modality/mr/MR_small.dcm"
    with path.open("rb") as fp:
        default = render(fp, media_type="image/png")
        explicit = render(fp, media_type="image/png", window=(600, 1600))
        other = render(fp, media_type="image/png", window=(600, 400))
    assert default == explicit
    assert default != other


def test_rescale_is_applied_before_the_window():
    # CT_small stores raw values; Rescale Intercept -1024 makes them Hounsfield units.
    path = CORPUS / "modality/ct/CT_small.dcm"
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    with path.open("rb") as fp:
        image = _png_array(render(fp, media_type="image/png", window=(0.5, 1)))
    assert np.array_equal(image == 255, hu >= 1)
    assert np.array_equal(image == 0, hu <= 0)


def test_enhanced_multi_frame_uses_functional_group_rescale():
    path = CORPUS / "modality/ct/eCT_Supplemental.dcm"
    ds = pydicom.dcmread(path)
    item = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    hu = ds.pixel_array[1].astype(float) * float(item.RescaleSlope) + float(item.RescaleIntercept)
    with path.open("rb") as fp:
        image = _png_array(render(fp, 2, media_type="image/png", window=(0.5, 1)))
    assert np.array_equal(image == 255, hu >= 1)


def test_palette_and_ybr_become_rgb():
    for name in ("modality/us/examples_palette.dcm", "modality/us/examples_ybr_color.dcm"):
        with (CORPUS / name).open("rb") as fp:
            image = _png_array(render(fp, media_type="image/png"))
        assert image.ndim == 3
        assert (image[..., 0] != image[..., 1]).any()


def test_signed_sixteen_bit_renders_with_contrast():
    with (CORPUS / "modality/ct/ct_SignedCT.dcm").open("rb") as fp:
        image = _png_array(render(fp, media_type="image/png"))
    assert image.std() > 10
    assert image.min() == 0
    assert image.max() == 255


def test_thumbnail_is_the_middle_frame_in_a_square():
    path = CORPUS / "transfer-syntax/emri_small_RLE.dcm"
    with path.open("rb") as fp:
        thumb = thumbnail(fp, 32, "image/png")
        assert thumb == render(fp, 6, media_type="image/png", viewport=(32, 32))
        assert thumb != render(fp, 1, media_type="image/png", viewport=(32, 32))
    with (CORPUS / "modality/nm/NM1_UNC.dcm").open("rb") as fp:
        assert _open_image(thumbnail(fp), "JPEG").size == (32, 128)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"media_type": "image/gif"}, "media type"),
        ({"window": (40.0, 0.0)}, "window"),
        ({"window": (float("nan"), 10.0)}, "window"),
        ({"viewport": (0, 10)}, "viewport"),
        ({"quality": 0}, "quality"),
    ],
)
def test_bad_render_options_are_bad_queries(kwargs, message):
    with (CORPUS / "modality/mr/MR_small.dcm").open("rb") as fp, pytest.raises(BadQuery, match=message):
        render(fp, **kwargs)


def test_jpeg_quality_changes_the_size():
    with (CORPUS / "modality/ct/ct_VedranZdesic.dcm").open("rb") as fp:
        assert len(render(fp, quality=30)) < len(render(fp, quality=95))


def test_rle_transcode_keeps_meta_consistent():
    path = CORPUS / "modality/us/OBXXXX1A_rle_2frame.dcm"
    with path.open("rb") as fp:
        result = pydicom.dcmread(io.BytesIO(transcode_to_explicit_vr_little_endian(fp)))
    assert result.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID
    assert result.PhotometricInterpretation == "PALETTE COLOR"
    assert result.NumberOfFrames == 2
    assert len(result.PixelData) == 2 * 600 * 800
