"""Turn one decoded frame into a consumer-quality 8-bit image (PS3.18 rendered resources).

The grayscale pipeline follows PS3.4 N.2: Modality LUT (rescale slope and intercept, or a
Modality LUT Sequence), then VOI (a window, or a VOI LUT), then the polarity (MONOCHROME1 is
shown inverted).  Colour data is converted to RGB: PALETTE COLOR through its lookup tables,
YBR through pydicom's colour conversion.  Enhanced (multi-frame) objects keep rescale and
window per frame in functional group sequences; those of the rendered frame are used.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi, convert_color_space

from pixport.errors import BadQuery, PixelDataError

MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}
GRAYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2", ""})
YBR = frozenset({"YBR_FULL", "YBR_FULL_422"})
FloatArray = npt.NDArray[np.float32]
ByteArray = npt.NDArray[np.uint8]


def check_render_options(
    media_type: str, window: tuple[float, float] | None, viewport: tuple[int, int] | None, quality: int
) -> None:
    """Raise ``BadQuery`` for options that cannot be honoured, before any pixel is read."""
    if media_type not in MEDIA_TYPES:
        msg = f"media type {media_type!r} cannot be rendered; use one of {sorted(MEDIA_TYPES)}"
        raise BadQuery(msg)
    if window is not None:
        center, width = window
        if not (np.isfinite(center) and np.isfinite(width)) or width <= 0:
            msg = "window width must be positive and both values finite"
            raise BadQuery(msg)
    if viewport is not None and (len(viewport) != 2 or min(viewport) < 1):  # noqa: PLR2004
        msg = "viewport must be two positive sizes"
        raise BadQuery(msg)
    if not 1 <= quality <= 100:  # noqa: PLR2004
        msg = "quality must be between 1 and 100"
        raise BadQuery(msg)


def render_array(
    array: npt.NDArray[Any],
    dataset: Dataset,
    photometric_interpretation: str,
    frame_index: int,
    window: tuple[float, float] | None,
) -> ByteArray:
    """The decoded frame ``array`` as 8-bit grayscale (rows, columns) or RGB (rows, columns, 3)."""
    photometric = photometric_interpretation.strip().upper()
    if array.ndim == 2 and photometric == "PALETTE COLOR":  # noqa: PLR2004
        return _render_palette(array, dataset)
    if array.ndim == 2:  # noqa: PLR2004
        # An unknown single-sample interpretation is shown as grayscale rather than refused.
        return _render_grayscale(array, dataset, frame_index, window, invert=_inverted(dataset, photometric))
    if array.ndim == 3 and array.shape[2] == 3:  # noqa: PLR2004
        return _render_color(array, dataset, photometric)
    msg = f"frames of shape {array.shape} with {photometric or 'no'} photometric interpretation cannot be rendered"
    raise PixelDataError(msg)


def encode_image(pixels: ByteArray, media_type: str, viewport: tuple[int, int] | None, quality: int) -> bytes:
    """Encode 8-bit pixels as JPEG or PNG, scaled to fit ``viewport`` (width, height) if given."""
    image = Image.fromarray(np.ascontiguousarray(pixels), mode="L" if pixels.ndim == 2 else "RGB")  # noqa: PLR2004
    if viewport is not None:
        width, height = image.size
        scale = min(viewport[0] / width, viewport[1] / height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    if MEDIA_TYPES[media_type] == "JPEG":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _inverted(dataset: Dataset, photometric: str) -> bool:
    if photometric == "MONOCHROME1":
        return True  # the minimum value is shown white (PS3.3 C.7.6.3.1.2)
    shape = str(dataset.get("PresentationLUTShape", "") or "").strip().upper()
    return photometric in GRAYSCALE and shape == "INVERSE"


def _frame_item(dataset: Dataset, frame_index: int, keyword: str) -> Dataset | None:
    """The functional group item ``keyword`` for one frame: per-frame first, then shared."""
    containers = []
    try:
        per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
        if per_frame and frame_index < len(per_frame):
            containers.append(per_frame[frame_index])
        shared = dataset.get("SharedFunctionalGroupsSequence")
        if shared:
            containers.append(shared[0])
        for container in containers:
            sequence = container.get(keyword)
            if sequence:
                item: Dataset = sequence[0]
                return item
    except (AttributeError, TypeError, ValueError, IndexError, KeyError):
        return None
    return None


def _number(source: Dataset | None, keyword: str) -> float | None:
    """The first value of a numeric attribute, or None when absent or not a finite number."""
    if source is None:
        return None
    try:
        value = source.get(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, list | tuple) or (hasattr(value, "__getitem__") and not isinstance(value, str | bytes)):
            value = value[0]
        number = float(value)
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        return None
    return number if np.isfinite(number) else None


def _text(source: Dataset | None, keyword: str) -> str:
    if source is None:
        return ""
    try:
        return str(source.get(keyword, "") or "").strip().upper()
    except (TypeError, ValueError, UnicodeError):
        return ""


def _modality(array: npt.NDArray[Any], dataset: Dataset, frame_index: int) -> FloatArray:
    """Apply the Modality LUT: rescale slope and intercept, or a Modality LUT Sequence."""
    if "ModalityLUTSequence" in dataset:
        try:
            return np.asarray(apply_modality_lut(array, dataset), dtype=np.float32)
        except (AttributeError, TypeError, ValueError, IndexError, KeyError):
            pass  # a broken LUT: fall back to the stored values
    transformation = _frame_item(dataset, frame_index, "PixelValueTransformationSequence")
    slope = _number(transformation, "RescaleSlope") or _number(dataset, "RescaleSlope") or 1.0
    intercept = _number(transformation, "RescaleIntercept")
    if intercept is None:
        intercept = _number(dataset, "RescaleIntercept") or 0.0
    values = array.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _render_grayscale(
    array: npt.NDArray[Any],
    dataset: Dataset,
    frame_index: int,
    window: tuple[float, float] | None,
    *,
    invert: bool,
) -> ByteArray:
    values = np.nan_to_num(_modality(array, dataset, frame_index), nan=0.0, posinf=0.0, neginf=0.0)
    voi = _frame_item(dataset, frame_index, "FrameVOILUTSequence")
    function = str(_text(voi, "VOILUTFunction") or _text(dataset, "VOILUTFunction") or "LINEAR")
    if window is None:
        center = _number(voi, "WindowCenter")
        width = _number(voi, "WindowWidth")
        if center is None or width is None or width <= 0:
            center, width = _number(dataset, "WindowCenter"), _number(dataset, "WindowWidth")
        if center is not None and width is not None and width > 0:
            window = (center, width)
    if window is not None:
        scaled = _apply_window(values, window[0], window[1], function)
    else:
        from_lut = _voi_lut(values, dataset)
        scaled = _min_max(values) if from_lut is None else from_lut
    out: ByteArray = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    return np.subtract(np.uint8(255), out, dtype=np.uint8) if invert else out


def _apply_window(values: FloatArray, center: float, width: float, function: str) -> FloatArray:
    """Map a window to 0..1 (PS3.3 C.11.2.1.2): LINEAR, LINEAR_EXACT or SIGMOID."""
    if function == "SIGMOID":
        return np.asarray(1.0 / (1.0 + np.exp(-4.0 * (values - center) / width)), dtype=np.float32)
    if function == "LINEAR_EXACT" or width <= 1:
        return np.asarray((values - center) / width + 0.5, dtype=np.float32)
    return np.asarray((values - (center - 0.5)) / (width - 1) + 0.5, dtype=np.float32)


def _voi_lut(values: FloatArray, dataset: Dataset) -> FloatArray | None:
    """Apply the first VOI LUT of the VOI LUT Sequence, scaled by its output bit depth."""
    if "VOILUTSequence" not in dataset:
        return None
    try:
        item = dataset.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        data = apply_voi(np.rint(values).astype(np.int64), dataset, index=0)
    except (AttributeError, TypeError, ValueError, IndexError, KeyError, OverflowError):
        return None
    if not 1 <= bits <= 16:  # noqa: PLR2004
        return None
    return np.asarray(data, dtype=np.float32) / np.float32((1 << bits) - 1)


def _min_max(values: FloatArray) -> FloatArray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return np.asarray((values - low) / (high - low), dtype=np.float32)


def _render_palette(array: npt.NDArray[Any], dataset: Dataset) -> ByteArray:
    try:
        rgb = apply_color_lut(array, dataset)
        bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
    except (AttributeError, TypeError, ValueError, IndexError, KeyError, OverflowError) as exc:
        msg = "the PALETTE COLOR lookup tables cannot be applied"
        raise PixelDataError(msg) from exc
    return _to_8_bits(np.asarray(rgb), bits if bits in {8, 16} else 16)


def _render_color(array: npt.NDArray[Any], dataset: Dataset, photometric: str) -> ByteArray:
    bits = int(dataset.get("BitsStored", 8) or 8) if array.dtype.itemsize > 1 else 8
    if photometric in YBR:
        try:
            array = convert_color_space(array, photometric, "RGB")
        except (NotImplementedError, ValueError, TypeError) as exc:
            msg = f"{photometric} cannot be converted to RGB"
            raise PixelDataError(msg) from exc
    elif photometric not in {"RGB", ""}:
        msg = f"colour data with photometric interpretation {photometric} cannot be rendered"
        raise PixelDataError(msg)
    return _to_8_bits(array, bits)


def _to_8_bits(array: npt.NDArray[Any], bits: int) -> ByteArray:
    if array.dtype == np.uint8 and bits <= 8:  # noqa: PLR2004
        return np.asarray(array, dtype=np.uint8)
    maximum = float((1 << min(max(bits, 1), 32)) - 1)
    scaled = np.clip(array.astype(np.float32) * np.float32(255.0 / maximum), 0, 255)
    out: ByteArray = np.rint(scaled).astype(np.uint8)
    return out
