"""Native pixel data frames for WADO-RS Retrieve Frames.

Implements the server side of the frame resource (PS3.18 §10.4.1.1.4) for the
uncompressed ``application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1``
representation (PS3.18 §8.7.3): every frame is returned as the bytes it
would have in an Explicit VR Little Endian encoding of the instance — little
endian samples, each ``BitsAllocated`` wide (PS3.5 §8.1.1, §8.2).

How each stored transfer syntax is served:

* Native little endian (PS3.5 §A.1, §A.2): the frame's bytes are read straight
  from the file at their offset in the Pixel Data value; nothing else of the
  pixel data is read or decoded, and the bytes are returned exactly as stored
  (including ``PlanarConfiguration``).  Bit-packed data (``BitsAllocated`` 1,
  PS3.5 §8.1.1, e.g. SEG) need not start frames on a byte boundary; each frame
  is returned packed on its own, starting at bit 0 of its first byte, with the
  unused bits of its last byte zero.  Float Pixel Data (7FE0,0008) and Double
  Float Pixel Data (7FE0,0009) are handled like Pixel Data.
* Deflated Explicit VR Little Endian (PS3.5 §A.5): the data set is inflated and
  the frame sliced from the inflated value, so the bytes are again exactly the
  stored samples.
* Explicit VR Big Endian (retired, PS3.5 §A.3): the frame is decoded with
  pydicom and byte-swapped to little endian; ``PlanarConfiguration`` is kept as
  stored.
* Deflated Image Frame Compression (PS3.5 §A.4.13, not yet in pydicom 3.0): the
  one fragment of the frame is located through the offset tables and inflated.
* Every other encapsulated syntax (JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE, ...;
  PS3.5 §A.4): only the requested frames are decoded, with pydicom's default
  processing.  The result is always pixel-interleaved (``PlanarConfiguration``
  0) and YCbCr JPEG (``YBR_FULL``/``YBR_FULL_422``) comes back as RGB, exactly
  as pydicom returns it; callers describing these frames must say so.

Errors are the domain errors of :mod:`dicomhub.core.errors`: an instance with
no pixel data raises :class:`NoPixelData`, a frame number outside
``1..NumberOfFrames`` raises :class:`FrameOutOfRange` and anything that cannot
be read or decoded raises :class:`UndecodablePixelData`.  No other exception
escapes.  Request-level problems (no pixel data, bad frame numbers, a transfer
syntax without a decoder) are raised when :func:`native_frames` is called, so
an HTTP edge can answer with an error status before it starts streaming;
failures while decoding a frame are raised during iteration.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import iter_pixels, pack_bits, unpack_bits
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomhub.core.errors import (
    DicomhubError,
    FrameOutOfRange,
    NoPixelData,
    UndecodablePixelData,
)

__all__ = [
    "DEFLATED_IMAGE_FRAME_COMPRESSION",
    "PixelDataInfo",
    "frame_index",
    "inspect_pixel_data",
    "native_frames",
    "number_of_frames",
]

#: Deflated Image Frame Compression (PS3.5 §A.4.13); pydicom 3.0 has no decoder for it.
DEFLATED_IMAGE_FRAME_COMPRESSION = UID("1.2.840.10008.1.2.8.1")

_NATIVE_LITTLE_ENDIAN = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian})
_NATIVE_OTHER = frozenset({DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian})

#: The three top-level pixel data elements (PS3.3 C.7.6.3, C.7.6.24).
_PIXEL_DATA_KEYWORDS = {
    0x7FE00010: "PixelData",
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
}
_UNDEFINED_LENGTH = 0xFFFFFFFF

#: Non-pixel values larger than this are not loaded when only the header is read.
_DEFER_SIZE = 1 << 20


@dataclass(frozen=True)
class PixelDataInfo:
    """Where and how the pixel data of one stored instance is encoded.

    Built by :func:`inspect_pixel_data` from the Image Pixel module
    (PS3.3 C.7.6.3) and the File Meta Information (PS3.10 §7.1).

    ``dataset`` holds every element that precedes the pixel data (the whole data
    set for Deflated Explicit VR Little Endian files, which must be inflated to
    be read).  ``value_offset`` is the file offset of the first byte of the
    pixel data value (``-1`` for deflated files, whose offsets are not file
    offsets) and ``value_length`` its length (``0xFFFFFFFF`` when encapsulated).
    """

    path: Path
    dataset: Dataset
    transfer_syntax: UID
    keyword: str
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    number_of_frames: int
    value_offset: int
    value_length: int

    @property
    def is_encapsulated(self) -> bool:
        """True when the pixel data is encapsulated (PS3.5 §A.4)."""
        return self.value_length == _UNDEFINED_LENGTH

    @property
    def frame_bits(self) -> int:
        """Bits of one native frame (PS3.5 §8.1.1); YBR_FULL_422 stores 2 samples a pixel."""
        samples = self.samples_per_pixel
        if self.photometric_interpretation == "YBR_FULL_422" and samples == 3:
            samples = 2
        return self.rows * self.columns * samples * self.bits_allocated


def inspect_pixel_data(path: Path) -> PixelDataInfo:
    """Read the header of a Part 10 file (PS3.10 §7) and locate its pixel data.

    Only the elements before the pixel data are parsed (the whole data set for
    deflated files).  Raises :class:`NoPixelData` when there is no Pixel Data,
    Float Pixel Data or Double Float Pixel Data at the top level and
    :class:`UndecodablePixelData` when the file or its Image Pixel module
    cannot be read.
    """
    try:
        return _inspect(Path(path))
    except DicomhubError:
        raise
    except Exception as exc:
        raise UndecodablePixelData(
            f"cannot read the pixel data of {Path(path).name}: {_reason(exc)}"
        ) from exc


def number_of_frames(path: Path) -> int:
    """Number of frames of the instance (PS3.3 C.7.6.6 Number of Frames, 1 if absent).

    Raises :class:`NoPixelData` for an instance without pixel data.
    """
    return inspect_pixel_data(path).number_of_frames


def native_frames(path: Path, frame_numbers: Sequence[int]) -> Iterator[bytes]:
    """Yield the requested frames in native Explicit VR Little Endian form (PS3.18 §10.4.1.1.4).

    ``frame_numbers`` are 1-based, in the order requested (repeats allowed);
    one ``bytes`` object is yielded per number, in that order.  See the module
    docstring for the form of the bytes per stored transfer syntax.

    Raises, before the first frame is produced, :class:`NoPixelData`,
    :class:`FrameOutOfRange` (a number < 1 or > NumberOfFrames) or
    :class:`UndecodablePixelData` (unreadable file or no decoder for the
    transfer syntax); decoding failures raise :class:`UndecodablePixelData`
    while iterating.
    """
    info = _cached_info(Path(path))
    indices = [frame_index(number, info.number_of_frames) for number in frame_numbers]
    if not indices:
        return iter(())

    syntax = info.transfer_syntax
    native = syntax in _NATIVE_LITTLE_ENDIAN or syntax in _NATIVE_OTHER
    if info.is_encapsulated == native:
        form = "encapsulated" if native else "native"
        raise UndecodablePixelData(f"{syntax.name} pixel data must not be {form}")
    if syntax in _NATIVE_LITTLE_ENDIAN:
        return _guarded(info, _native_file_frames(info, indices))
    if syntax == DeflatedExplicitVRLittleEndian:
        return _guarded(info, _deflated_dataset_frames(info, indices))
    if syntax == DEFLATED_IMAGE_FRAME_COMPRESSION:
        return _guarded(info, _deflated_image_frames(info, indices))
    if syntax == ExplicitVRBigEndian:
        return _guarded(info, _decoded_frames(info, indices, raw=True))
    _require_decoder(info)
    return _guarded(info, _decoded_frames(info, indices, raw=False))


# -- header -----------------------------------------------------------------------------
_INFO_CACHE: OrderedDict[tuple[str, int, int], PixelDataInfo] = OrderedDict()
_INFO_CACHE_SIZE = 256
_INFO_LOCK = threading.Lock()


def _cached_info(path: Path) -> PixelDataInfo:
    """:func:`inspect_pixel_data`, remembered for native little-endian files.

    Stored objects never change in place (a new version gets a new storage key), so the
    header of a file identified by path, size and modification time can be reused: a
    viewer asking frame after frame of an instance does not parse its header each time.
    Only native little-endian headers are kept (their frames are read by offset and the
    cached data set is not touched again).
    """
    try:
        st = path.stat()
    except OSError:
        return inspect_pixel_data(path)
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _INFO_LOCK:
        hit = _INFO_CACHE.get(key)
        if hit is not None:
            _INFO_CACHE.move_to_end(key)
            return hit
    info = inspect_pixel_data(path)
    if info.transfer_syntax in _NATIVE_LITTLE_ENDIAN:
        with _INFO_LOCK:
            _INFO_CACHE[key] = info
            while len(_INFO_CACHE) > _INFO_CACHE_SIZE:
                _INFO_CACHE.popitem(last=False)
    return info


def _inspect(path: Path) -> PixelDataInfo:
    with path.open("rb") as fp:
        ds = dcmread(fp, stop_before_pixels=True, force=True, defer_size=_DEFER_SIZE)
        file_meta = getattr(ds, "file_meta", None)
        syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
        if not syntax:
            raise UndecodablePixelData(f"{path.name} has no (0002,0010) Transfer Syntax UID")
        syntax = UID(str(syntax))
        if syntax == DeflatedExplicitVRLittleEndian:
            return _inspect_deflated(path, syntax)
        offset, keyword, length = _read_pixel_header(fp, syntax)
    return _build_info(path, ds, syntax, keyword, offset, length)


def _read_pixel_header(fp: BinaryIO, syntax: UID) -> tuple[int, str, int]:
    """Parse the pixel data element header at the file position (PS3.5 §7.1.1, §7.1.2)."""
    start = fp.tell()
    head = fp.read(8)
    if len(head) < 8:
        raise NoPixelData("the instance has no pixel data")
    implicit_vr, little_endian = _encoding(syntax)
    endian = "<" if little_endian else ">"
    if implicit_vr:
        group, element, length = struct.unpack(f"{endian}HHL", head)
        header_length = 8
    else:
        group, element = struct.unpack(f"{endian}HH", head[:4])
        # OB, OW, OF, OD: 2 reserved bytes then a 32-bit length (PS3.5 Table 7.1-1)
        extra = fp.read(4)
        if len(extra) < 4:
            raise UndecodablePixelData("the pixel data element header is truncated")
        (length,) = struct.unpack(f"{endian}L", extra)
        header_length = 12
    keyword = _PIXEL_DATA_KEYWORDS.get((group << 16) | element)
    if keyword is None:
        raise NoPixelData("the instance has no pixel data")
    return start + header_length, keyword, int(length)


def _encoding(syntax: UID) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a transfer syntax.

    Syntaxes pydicom does not know yet (such as Deflated Image Frame
    Compression) use Explicit VR Little Endian, as every transfer syntax but
    the three of PS3.5 §A.1-A.3 does (PS3.5 §10).
    """
    if syntax.is_transfer_syntax:
        return bool(syntax.is_implicit_VR), bool(syntax.is_little_endian)
    return False, True


def _inspect_deflated(path: Path, syntax: UID) -> PixelDataInfo:
    ds = dcmread(path, force=True)
    for keyword in _PIXEL_DATA_KEYWORDS.values():
        if keyword in ds:
            value = ds[keyword].value
            if value is None:
                break
            return _build_info(path, ds, syntax, keyword, -1, len(value))
    raise NoPixelData("the instance has no pixel data")


def _build_info(
    path: Path, ds: Dataset, syntax: UID, keyword: str, offset: int, length: int
) -> PixelDataInfo:
    try:
        rows = int(ds.Rows)
        columns = int(ds.Columns)
        bits_allocated = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UndecodablePixelData(
            f"the Image Pixel module of {path.name} is incomplete: {_reason(exc)}"
        ) from exc
    samples = int(ds.get("SamplesPerPixel") or 1)
    if rows < 1 or columns < 1 or samples < 1 or bits_allocated < 1:
        raise UndecodablePixelData(
            f"{path.name} has an empty image ({rows}x{columns}, {samples} samples, "
            f"{bits_allocated} bits allocated)"
        )
    if bits_allocated != 1 and bits_allocated % 8:
        raise UndecodablePixelData(f"Bits Allocated {bits_allocated} is not supported")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    return PixelDataInfo(
        path=path,
        dataset=ds,
        transfer_syntax=syntax,
        keyword=keyword,
        rows=rows,
        columns=columns,
        samples_per_pixel=samples,
        bits_allocated=bits_allocated,
        pixel_representation=int(ds.get("PixelRepresentation") or 0),
        photometric_interpretation=str(ds.get("PhotometricInterpretation") or "").strip(),
        planar_configuration=int(ds.get("PlanarConfiguration") or 0),
        number_of_frames=max(frames, 1),
        value_offset=offset,
        value_length=length,
    )


def frame_index(number: int, frames: int) -> int:
    """0-based index of 1-based frame ``number`` of ``frames`` (PS3.18 §10.4.1.1.4).

    Raises :class:`FrameOutOfRange`, saying which frame and how many exist,
    unless ``1 <= number <= frames``.
    """
    if isinstance(number, bool) or not isinstance(number, int | np.integer):
        raise FrameOutOfRange(f"frame number {number!r} is not an integer")
    if not 1 <= number <= frames:
        plural = "frame" if frames == 1 else "frames"
        raise FrameOutOfRange(
            f"frame {int(number)} does not exist: the instance has {frames} {plural} "
            f"(numbered 1 to {frames})"
        )
    return int(number) - 1


def _require_decoder(info: PixelDataInfo) -> None:
    try:
        decoder = get_decoder(info.transfer_syntax)
    except Exception as exc:
        raise UndecodablePixelData(
            f"no decoder for transfer syntax {info.transfer_syntax} "
            f"({info.transfer_syntax.name}): {_reason(exc)}"
        ) from exc
    if not decoder.is_available:
        raise UndecodablePixelData(
            f"no decoding plugin is installed for {info.transfer_syntax.name}"
        )


# -- readers ----------------------------------------------------------------------------


def _guarded(info: PixelDataInfo, frames: Iterator[bytes]) -> Iterator[bytes]:
    """Turn every failure while producing frames into :class:`UndecodablePixelData`."""
    try:
        yield from frames
    except DicomhubError:
        raise
    except Exception as exc:
        raise UndecodablePixelData(
            f"cannot decode the pixel data of {info.path.name} "
            f"({info.transfer_syntax.name}): {_reason(exc)}"
        ) from exc


def _native_file_frames(info: PixelDataInfo, indices: list[int]) -> Iterator[bytes]:
    with info.path.open("rb") as fp:

        def read(start: int, size: int) -> bytes:
            fp.seek(info.value_offset + start)
            return fp.read(size)

        for index in indices:
            yield _slice_native_frame(info, read, index)


def _deflated_dataset_frames(info: PixelDataInfo, indices: list[int]) -> Iterator[bytes]:
    value = bytes(info.dataset[info.keyword].value)

    def read(start: int, size: int) -> bytes:
        return value[start : start + size]

    for index in indices:
        yield _slice_native_frame(info, read, index)


def _slice_native_frame(
    info: PixelDataInfo, read: Callable[[int, int], bytes], index: int
) -> bytes:
    """Cut frame ``index`` out of a native pixel data value (PS3.5 §8.1.1, §8.2)."""
    frame_bits = info.frame_bits
    start_bit = index * frame_bits
    first_byte = start_bit // 8
    size = (start_bit + frame_bits + 7) // 8 - first_byte
    if first_byte + size > info.value_length:
        raise UndecodablePixelData(
            f"the pixel data is truncated: frame {index + 1} needs bytes "
            f"{first_byte}..{first_byte + size} but the value has {info.value_length}"
        )
    data = read(first_byte, size)
    if len(data) != size:
        raise UndecodablePixelData(f"the file is truncated: it ends inside frame {index + 1}")
    if info.bits_allocated != 1 or (start_bit % 8 == 0 and frame_bits % 8 == 0):
        return data
    shift = start_bit % 8
    bits = unpack_bits(data)
    return pack_bits(np.asarray(bits)[shift : shift + frame_bits], pad=False)


def _deflated_image_frames(info: PixelDataInfo, indices: list[int]) -> Iterator[bytes]:
    """Inflate frames of Deflated Image Frame Compression (PS3.5 §A.4.13)."""
    ds = info.dataset
    extended: tuple[bytes, bytes] | None = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (bytes(ds.ExtendedOffsetTable), bytes(ds.ExtendedOffsetTableLengths))
    frame_bits = info.frame_bits
    frame_bytes = (frame_bits + 7) // 8
    with info.path.open("rb") as fp:
        for index in indices:
            fp.seek(info.value_offset)
            fragment = get_frame(
                fp,
                index,
                extended_offsets=extended,
                number_of_frames=info.number_of_frames,
            )
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(fragment, frame_bytes)
            if len(data) < frame_bytes:
                raise UndecodablePixelData(
                    f"frame {index + 1} inflates to {len(data)} bytes, {frame_bytes} expected"
                )
            if info.bits_allocated == 1 and frame_bits % 8:
                bits = np.asarray(unpack_bits(data))[:frame_bits]
                data = pack_bits(bits, pad=False)
            yield data


def _decoded_frames(info: PixelDataInfo, indices: list[int], *, raw: bool) -> Iterator[bytes]:
    """Decode frames with pydicom and return them in native little-endian form."""
    for arr in iter_pixels(info.path, indices=indices, raw=raw):
        yield _array_to_native(arr, info, keep_planar=raw)


def _array_to_native(arr: npt.NDArray[Any], info: PixelDataInfo, *, keep_planar: bool) -> bytes:
    if info.bits_allocated == 1:
        return pack_bits(np.asarray(arr, dtype=np.uint8).ravel(), pad=False)
    if keep_planar and arr.ndim == 3 and info.planar_configuration == 1:
        arr = arr.transpose(2, 0, 1)
    itemsize = info.bits_allocated // 8
    if arr.dtype.itemsize != itemsize:
        kind = arr.dtype.kind if arr.dtype.kind in "iuf" else "u"
        arr = arr.astype(f"{kind}{itemsize}")
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _reason(exc: BaseException) -> str:
    """One line naming the exception and its message (pydicom spreads causes over lines)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if len(text) > 500:
        text = text[:497] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
