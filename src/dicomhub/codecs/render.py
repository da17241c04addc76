"""Rendered and thumbnail images for WADO-RS.

Implements the pixel side of Retrieve Rendered (PS3.18 §10.4.1.1.5, rendered
media types §8.7.4) and Retrieve Thumbnail (PS3.18 §10.4, thumbnail resources) with the
rendering query parameters of PS3.18 §8.3.5: ``quality`` (§8.3.5.1.2),
``viewport`` (§8.3.5.1.3) and ``window`` (§8.3.5.1.4).

One frame is decoded (only that frame), then taken through the grayscale or
colour pipeline of PS3.4 §N.2:

* Grayscale (MONOCHROME1/2): Modality LUT (Rescale Slope/Intercept or Modality
  LUT Sequence, PS3.3 C.11.1), then VOI (PS3.3 C.11.2): the ``window``
  parameter if given, else the data set's first Window Center/Width with its
  VOI LUT Function, else the first VOI LUT Sequence item, else the minimum and
  maximum of the frame.  Values from the Enhanced multi-frame functional groups
  (Pixel Value Transformation, Frame VOI LUT; PS3.3 C.7.6.16.2.9/.10) override
  the top-level ones for their frame.  MONOCHROME1 is inverted so that it
  displays correctly.  The output is 8-bit.
* Colour: PALETTE COLOR through its palette (PS3.3 C.7.6.3.1.5, pydicom
  ``apply_color_lut``); RGB as stored; YBR_FULL/YBR_FULL_422 converted to RGB
  by pydicom while decoding; YBR_ICT/YBR_RCT converted by the JPEG 2000
  decoder.  Samples deeper than 8 bits are scaled to 8 bits by Bits Stored.
  The ``window`` parameter applies to grayscale only and is ignored for colour.

Then the optional source region and viewport are applied (with Pillow) and the
image is encoded as JPEG, PNG or GIF.  Nothing stored is modified.

Errors: bad parameters raise :class:`InvalidRequest`, an unsupported media type
:class:`NotAcceptable`, an instance without pixel data :class:`NoPixelData`, a
frame number out of range :class:`FrameOutOfRange` and a frame that cannot be
decoded :class:`UndecodablePixelData`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    convert_color_space,
)
from pydicom.pixels.utils import pixel_array, pixel_dtype, unpack_bits
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomhub.codecs.frames import (
    DEFLATED_IMAGE_FRAME_COMPRESSION,
    PixelDataInfo,
    frame_index,
    inspect_pixel_data,
    native_frames,
)
from dicomhub.core.errors import (
    DicomhubError,
    InvalidRequest,
    NotAcceptable,
    UndecodablePixelData,
)

__all__ = [
    "DEFAULT_JPEG_QUALITY",
    "MAX_VIEWPORT_SIZE",
    "PNG_COMPRESS_LEVEL",
    "RENDERED_MEDIA_TYPES",
    "THUMBNAIL_SIZE",
    "VOI_LUT_FUNCTIONS",
    "RenderParams",
    "Viewport",
    "Window",
    "parse_quality",
    "parse_viewport",
    "parse_window",
    "render",
    "thumbnail",
]

#: Rendered media types produced for single images (PS3.18 Table 8.7.4-1).
RENDERED_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif")
#: JPEG quality used when the request has no ``quality`` parameter.
DEFAULT_JPEG_QUALITY = 90
#: zlib level for PNG: 3 is ~3x faster than Pillow's default 6 for ~10% more bytes.
PNG_COMPRESS_LEVEL = 3
#: Thumbnails fit in a square of this many pixels unless a viewport is given.
THUMBNAIL_SIZE = 128
#: Largest accepted viewport width or height, in pixels.
MAX_VIEWPORT_SIZE = 8192
#: VOI LUT Functions (PS3.3 C.11.2.1.3), spelled as in :class:`Window`.
VOI_LUT_FUNCTIONS = ("linear", "linear_exact", "sigmoid")

_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.18 §8.3.5.1.4, PS3.3 C.11.2.1.2).

    ``function`` is ``linear`` (width >= 1), ``linear_exact`` or ``sigmoid``
    (width > 0).
    """

    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class Viewport:
    """Output size and optional source region (PS3.18 §8.3.5.1.3).

    ``width`` x ``height`` (vw, vh) bound the output.  ``sx``/``sy`` are the
    top-left corner of the source region (default 0) and ``sw``/``sh`` its
    size (default: to the right/bottom edge), in source pixels; a negative
    ``sw`` or ``sh`` selects the region to the left of ``sx`` / above ``sy``
    and flips it horizontally / vertically.
    """

    width: int
    height: int
    sx: float | None = None
    sy: float | None = None
    sw: float | None = None
    sh: float | None = None


@dataclass(frozen=True)
class RenderParams:
    """Rendering parameters of one request (PS3.18 §8.3.5.1).

    ``media_type`` is one of :data:`RENDERED_MEDIA_TYPES`; ``quality`` (1-100)
    applies to JPEG only and is ignored for lossless media types.
    """

    media_type: str = "image/jpeg"
    quality: int | None = None
    window: Window | None = None
    viewport: Viewport | None = None


# -- query parameters -------------------------------------------------------------------


def parse_window(value: str) -> Window:
    """Parse ``window=center,width[,function]`` (PS3.18 §8.3.5.1.4).

    The function may be written ``linear``, ``linear-exact``/``linear_exact`` or
    ``sigmoid`` in any case; it defaults to ``linear``.  Raises
    :class:`InvalidRequest` for anything else or for a width the function does
    not allow (PS3.3 C.11.2.1.2).
    """
    parts = [part.strip() for part in str(value).split(",")]
    if len(parts) not in (2, 3):
        raise InvalidRequest(f"window must be 'center,width[,function]', got {value!r}")
    center = _parse_float(parts[0], "window center")
    width = _parse_float(parts[1], "window width")
    function = _normalise_function(parts[2]) if len(parts) == 3 and parts[2] else "linear"
    window = Window(center=center, width=width, function=function)
    _check_window(window)
    return window


def parse_viewport(value: str) -> Viewport:
    """Parse ``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 §8.3.5.1.3).

    vw and vh are positive integers (at most :data:`MAX_VIEWPORT_SIZE`); sx
    and sy are non-negative numbers, sw and sh non-zero numbers.  Any of the
    last four may be left empty (``256,256,,,100,100``) to take its default.
    Raises :class:`InvalidRequest` on anything else.
    """
    parts = [part.strip() for part in str(value).split(",")]
    if len(parts) not in (2, 6):
        raise InvalidRequest(f"viewport must be 'vw,vh[,sx,sy,sw,sh]', got {value!r}")
    width = _parse_size(parts[0], "viewport width")
    height = _parse_size(parts[1], "viewport height")
    region: list[float | None] = [None, None, None, None]
    if len(parts) == 6:
        for i, name in enumerate(("sx", "sy", "sw", "sh")):
            text = parts[2 + i]
            region[i] = _parse_float(text, f"viewport {name}") if text else None
    viewport = Viewport(width, height, *region)
    _check_viewport(viewport)
    return viewport


def parse_quality(value: str) -> int:
    """Parse ``quality=`` (PS3.18 §8.3.5.1.2): an integer from 1 to 100."""
    quality = _parse_int(str(value).strip())
    if quality is None:
        raise InvalidRequest(f"quality must be an integer from 1 to 100, got {value!r}")
    if not 1 <= quality <= 100:
        raise InvalidRequest(f"quality must be from 1 to 100, got {quality}")
    return quality


# -- rendering --------------------------------------------------------------------------


def render(path: Path, frame_number: int, params: RenderParams) -> bytes:
    """Render frame ``frame_number`` (1-based) of a stored instance (PS3.18 §10.4.1.1.5).

    Without a viewport the image keeps its native size (Columns x Rows, or the
    size of the source region).  With a viewport, the (region of the) image is
    scaled, up or down, to the largest size that fits inside vw x vh while
    keeping its aspect ratio; the result is not padded, so one side equals vw
    or vh and the other may be smaller.  Pixels are treated as square.

    Returns the encoded image in ``params.media_type``.  Raises the domain
    errors listed in the module docstring.
    """
    media_type = _check_params(params)
    info = inspect_pixel_data(path)
    index = frame_index(frame_number, info.number_of_frames)
    frame = _decode_frame(info, index)
    try:
        pixels = _to_display(frame, info, index, params.window)
    except DicomhubError:
        raise
    except Exception as exc:
        raise UndecodablePixelData(
            f"cannot render frame {frame_number} of {info.path.name}: {exc}"
        ) from exc
    image = Image.fromarray(pixels, "RGB" if pixels.ndim == 3 else "L")
    if params.viewport is not None:
        image = _apply_viewport(image, params.viewport)
    return _encode(image, media_type, params.quality)


def thumbnail(path: Path, frame_number: int, params: RenderParams) -> bytes:
    """Render a thumbnail of one frame (PS3.18 §10.4, thumbnail resources; §8.3.5).

    As :func:`render`, but without a viewport the image is scaled to fit in
    :data:`THUMBNAIL_SIZE` x :data:`THUMBNAIL_SIZE`, keeping its aspect ratio.
    """
    if params.viewport is None:
        params = replace(params, viewport=Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return render(path, frame_number, params)


# -- parameter checks -------------------------------------------------------------------


def _parse_float(text: str, name: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(number):
        raise InvalidRequest(f"{name} must be finite, got {text!r}")
    return number


def _parse_int(text: str) -> int | None:
    """A non-negative decimal integer of ASCII digits, else None."""
    if not (0 < len(text) <= 9 and text.isascii() and text.isdigit()):
        return None
    return int(text)


def _parse_size(text: str, name: str) -> int:
    size = _parse_int(text)
    if size is None:
        raise InvalidRequest(f"{name} must be a positive integer, got {text!r}")
    return size


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _normalise_function(text: str) -> str:
    function = text.strip().lower().replace("-", "_")
    if function not in VOI_LUT_FUNCTIONS:
        raise InvalidRequest(
            f"window function must be linear, linear-exact or sigmoid, got {text!r}"
        )
    return function


def _check_window(window: Window) -> None:
    if window.function not in VOI_LUT_FUNCTIONS:
        raise InvalidRequest(f"unknown window function {window.function!r}")
    for name, number in (("center", window.center), ("width", window.width)):
        if not _is_number(number) or not math.isfinite(number):
            raise InvalidRequest(f"window {name} must be a finite number, got {number!r}")
    if window.function == "linear" and window.width < 1:
        raise InvalidRequest(f"a linear window needs a width >= 1, got {window.width:g}")
    if window.width <= 0:
        raise InvalidRequest(f"window width must be > 0, got {window.width:g}")


def _check_viewport(viewport: Viewport) -> None:
    for name, size in (("width", viewport.width), ("height", viewport.height)):
        if not isinstance(size, int) or isinstance(size, bool):
            raise InvalidRequest(f"viewport {name} must be an integer, got {size!r}")
        if not 1 <= size <= MAX_VIEWPORT_SIZE:
            raise InvalidRequest(
                f"viewport {name} must be from 1 to {MAX_VIEWPORT_SIZE}, got {size}"
            )
    for name, value in (("sx", viewport.sx), ("sy", viewport.sy)):
        if value is not None and not (_is_number(value) and math.isfinite(value) and value >= 0):
            raise InvalidRequest(f"viewport {name} must be a number >= 0, got {value!r}")
    for name, value in (("sw", viewport.sw), ("sh", viewport.sh)):
        if value is not None and not (_is_number(value) and math.isfinite(value) and value != 0):
            raise InvalidRequest(f"viewport {name} must be a non-zero number, got {value!r}")


def _check_params(params: RenderParams) -> str:
    media_type = params.media_type.split(";")[0].strip().lower()
    if media_type not in _PIL_FORMATS:
        raise NotAcceptable(
            f"cannot render as {params.media_type!r}; supported: {', '.join(RENDERED_MEDIA_TYPES)}"
        )
    quality = params.quality
    if quality is not None and not (
        isinstance(quality, int) and not isinstance(quality, bool) and 1 <= quality <= 100
    ):
        raise InvalidRequest(f"quality must be from 1 to 100, got {params.quality!r}")
    if params.window is not None:
        _check_window(params.window)
    if params.viewport is not None:
        _check_viewport(params.viewport)
    return media_type


# -- decoding ---------------------------------------------------------------------------


def _decode_frame(info: PixelDataInfo, index: int) -> npt.NDArray[Any]:
    """Decode the one frame ``index`` (0-based) with pydicom's default processing."""
    try:
        if info.transfer_syntax == DEFLATED_IMAGE_FRAME_COMPRESSION:
            data = next(native_frames(info.path, [index + 1]))
            return _native_to_array(data, info)
        if info.transfer_syntax == DeflatedExplicitVRLittleEndian:
            # pydicom cannot read deflated files frame by frame; the data set is inflated.
            return pixel_array(info.dataset, index=index)
        return pixel_array(info.path, index=index)
    except DicomhubError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:500]
        raise UndecodablePixelData(
            f"cannot decode frame {index + 1} of {info.path.name} "
            f"({info.transfer_syntax.name}): {type(exc).__name__}: {text}"
        ) from exc


def _native_to_array(data: bytes, info: PixelDataInfo) -> npt.NDArray[Any]:
    """Interpret one native frame (PS3.5 §8.1.1) as pydicom would return it."""
    rows, columns, samples = info.rows, info.columns, info.samples_per_pixel
    if info.bits_allocated == 1:
        bits = np.asarray(unpack_bits(data))[: rows * columns * samples]
        flat: npt.NDArray[Any] = bits
    else:
        dtype = pixel_dtype(info.dataset, as_float=info.keyword != "PixelData")
        flat = np.frombuffer(data, dtype=dtype.newbyteorder("<"))
    if samples == 1:
        return flat.reshape(rows, columns)
    if info.planar_configuration == 1:
        arr = flat.reshape(samples, rows, columns).transpose(1, 2, 0)
    else:
        arr = flat.reshape(rows, columns, samples)
    if info.photometric_interpretation == "YBR_FULL":
        arr = convert_color_space(arr, "YBR_FULL", "RGB")
    return arr


# -- display pipeline (PS3.4 §N.2) ------------------------------------------------------


def _to_display(
    frame: npt.NDArray[Any], info: PixelDataInfo, index: int, window: Window | None
) -> npt.NDArray[np.uint8]:
    photometric = info.photometric_interpretation
    if photometric == "PALETTE COLOR":
        return _palette_to_rgb(frame, info.dataset)
    if frame.ndim == 3:
        bits_stored = int(info.dataset.get("BitsStored") or info.bits_allocated)
        return _scale_to_uint8(frame[..., :3], bits_stored)
    attributes = _frame_attributes(info.dataset, index)
    values = _modality_lut(frame, attributes)
    grey = np.rint(_voi(values, attributes, window) * 255.0).astype(np.uint8)
    if photometric == "MONOCHROME1":
        # Minimum values display white (PS3.3 C.7.6.3.1.2).
        grey = 255 - grey
    return grey


def _palette_to_rgb(frame: npt.NDArray[Any], ds: Dataset) -> npt.NDArray[np.uint8]:
    """PALETTE COLOR through the palette LUTs (PS3.3 C.7.6.3.1.5, C.7.9)."""
    rgb = apply_color_lut(frame, ds)[..., :3]
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    # 16-bit entries; some writers put 8-bit values in a 16-bit LUT.
    if int(rgb.max(initial=0)) <= 255:
        return rgb.astype(np.uint8)
    return (rgb >> 8).astype(np.uint8)


def _scale_to_uint8(rgb: npt.NDArray[Any], bits_stored: int) -> npt.NDArray[np.uint8]:
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    top = float(2 ** min(bits_stored, 64) - 1)
    scaled = np.clip(rgb.astype(np.float64) * (255.0 / top), 0, 255)
    return np.rint(scaled).astype(np.uint8)


_FRAME_KEYWORDS = (
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "BitsStored",
    "PixelRepresentation",
)


def _frame_attributes(ds: Dataset, index: int) -> Dataset:
    """Modality LUT and VOI attributes in force for frame ``index``.

    Starts from the top-level Modality LUT and VOI LUT modules (PS3.3 C.11.1,
    C.11.2) and lets the Shared, then the Per-frame Functional Groups
    (PS3.3 C.7.6.16) override them.
    """
    view = Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    for keyword in _FRAME_KEYWORDS:
        if keyword in ds and ds[keyword].value not in (None, "", b""):
            view[keyword] = ds[keyword]
    groups: list[Dataset] = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for macro in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            items = group.get(macro)
            if not items:
                continue
            for element in items[0]:
                if element.value not in (None, "", b""):
                    view[element.tag] = element
    return view


def _modality_lut(frame: npt.NDArray[Any], attributes: Dataset) -> npt.NDArray[np.float64]:
    """Modality LUT or rescale (PS3.3 C.11.1) to float64.

    A Modality LUT Sequence item without a usable LUT Descriptor and LUT Data is
    ignored (then Rescale Slope/Intercept apply, if present).
    """
    if frame.dtype.kind == "f":
        return np.asarray(frame, dtype=np.float64)
    items = attributes.get("ModalityLUTSequence")
    if items is not None and not _usable_lut(items):
        del attributes.ModalityLUTSequence
    if "RescaleSlope" in attributes and "RescaleIntercept" in attributes:
        slope = _first(attributes.RescaleSlope)
        intercept = _first(attributes.RescaleIntercept)
        if slope is None or intercept is None:
            del attributes.RescaleSlope, attributes.RescaleIntercept
    return np.asarray(apply_modality_lut(frame, attributes), dtype=np.float64)


def _usable_lut(items: Any) -> bool:
    """Whether the first item of a LUT sequence has a 3-valued descriptor and data (C.11.1.1)."""
    try:
        item = items[0]
        descriptor = item.get("LUTDescriptor")
        return descriptor is not None and len(descriptor) == 3 and bool(item.get("LUTData"))
    except (IndexError, TypeError, AttributeError):
        return False


def _first(value: Any) -> float | None:
    """First value of a possibly multi-valued DS (Window Center/Width may have several)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _dataset_window(attributes: Dataset) -> Window | None:
    """The first Window Center/Width of the data set (PS3.3 C.11.2.1.2), if usable."""
    center = _first(attributes.get("WindowCenter"))
    width = _first(attributes.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(attributes.get("VOILUTFunction") or "LINEAR").strip().lower()
    if function not in VOI_LUT_FUNCTIONS:
        function = "linear"
    window = Window(center, width, function)
    try:
        _check_window(window)
    except InvalidRequest:
        return None
    return window


def _voi(
    values: npt.NDArray[np.float64], attributes: Dataset, window: Window | None
) -> npt.NDArray[np.float64]:
    """VOI transformation (PS3.3 C.11.2) to display values in [0, 1]."""
    chosen = window or _dataset_window(attributes)
    if chosen is not None:
        return _apply_window(values, chosen)
    if attributes.get("VOILUTSequence") and _usable_lut(attributes.VOILUTSequence):
        return _apply_voi_lut(values, attributes)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float64)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    scaled = (np.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0)


def _apply_window(values: npt.NDArray[np.float64], window: Window) -> npt.NDArray[np.float64]:
    """Window Center/Width with a VOI LUT Function (PS3.3 C.11.2.1.2, C.11.2.1.3)."""
    center, width = window.center, window.width
    values = np.nan_to_num(values, nan=center)
    if window.function == "linear_exact":
        out = (values - center) / width + 0.5
    elif window.function == "sigmoid":
        exponent = np.clip(-4.0 * (values - center) / width, -700.0, 700.0)
        out = 1.0 / (1.0 + np.exp(exponent))
    elif width > 1:
        out = (values - (center - 0.5)) / (width - 1) + 0.5
    else:
        out = (values > center - 0.5).astype(np.float64)
    return np.clip(out, 0.0, 1.0)


def _apply_voi_lut(values: npt.NDArray[np.float64], attributes: Dataset) -> npt.NDArray[np.float64]:
    """First item of the VOI LUT Sequence (PS3.3 C.11.2.1.1), scaled by the LUT's range."""
    descriptor = attributes.VOILUTSequence[0].LUTDescriptor
    entries = int(descriptor[0]) or 65536
    first = int(descriptor[1])
    table = apply_voi(np.arange(first, first + entries, dtype=np.int64), attributes)
    table = np.asarray(table, dtype=np.float64)
    low, high = float(table.min()), float(table.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    positions = np.clip(np.rint(np.nan_to_num(values, nan=first)) - first, 0, entries - 1)
    result: npt.NDArray[np.float64] = (table[positions.astype(np.int64)] - low) / (high - low)
    return result


# -- geometry and encoding --------------------------------------------------------------


def _apply_viewport(image: Image.Image, viewport: Viewport) -> Image.Image:
    """Source region, then scale to fit the viewport (PS3.18 §8.3.5.1.3)."""
    columns, rows = image.size
    sx = viewport.sx or 0.0
    sy = viewport.sy or 0.0
    sw = viewport.sw if viewport.sw is not None else columns - sx
    sh = viewport.sh if viewport.sh is not None else rows - sy
    x0, x1 = (sx + sw, sx) if sw < 0 else (sx, sx + sw)
    y0, y1 = (sy + sh, sy) if sh < 0 else (sy, sy + sh)
    if not (0 <= x0 < x1 <= columns and 0 <= y0 < y1 <= rows):
        raise InvalidRequest(
            f"viewport region ({sx:g},{sy:g},{sw:g},{sh:g}) is not inside the "
            f"{columns}x{rows} image"
        )
    region_width, region_height = x1 - x0, y1 - y0
    scale = min(viewport.width / region_width, viewport.height / region_height)
    size = (
        max(1, min(viewport.width, round(region_width * scale))),
        max(1, min(viewport.height, round(region_height * scale))),
    )
    box = (x0, y0, x1, y1)
    whole = box == (0, 0, columns, rows)
    if size == (region_width, region_height) and all(float(v).is_integer() for v in box):
        if not whole:
            image = image.crop((int(x0), int(y0), int(x1), int(y1)))
    else:
        image = image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    if sw < 0:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if sh < 0:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return image


def _encode(image: Image.Image, media_type: str, quality: int | None) -> bytes:
    buffer = io.BytesIO()
    pil_format = _PIL_FORMATS[media_type]
    if pil_format == "JPEG":
        image.save(buffer, pil_format, quality=quality or DEFAULT_JPEG_QUALITY)
    elif pil_format == "GIF" and image.mode == "RGB":
        image.convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, pil_format)
    elif pil_format == "PNG":
        image.save(buffer, pil_format, compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(buffer, pil_format)
    return buffer.getvalue()
