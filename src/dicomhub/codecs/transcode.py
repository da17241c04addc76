"""Lossless transcoding of whole instances and single frames, and the pixel digest.

Every form of an instance that dicomhub writes — an ingest transcode (docs/operations.md
"Ingest transfer syntax"), a WADO-RS response in another ``transfer-syntax``
(PS3.18 §8.7.3), a C-GET/C-MOVE sub-operation in the syntax the peer accepted
(PS3.4 C.4.2/C.4.3), a file the subscriber client restored — must decode to exactly the
same pixels as the instance that was received.  The proof is the *pixel digest*:

    pixel digest (v1) = SHA-256 over the canonical form of every frame, in frame order

where the canonical form (see :mod:`dicomhub.codecs.registry`) is the decoded samples,
pixel-interleaved, little endian, ``BitsAllocated`` wide (bit-packed when 1), exactly as
stored for native syntaxes (PS3.5 §8.1.1) and as decoded without colour conversion for
encapsulated ones (PS3.5 §8.2, pydicom ``raw=True``).  The digest of every instance is
recorded at ingest; any later form can be checked against it.

Only the Pixel Data (7FE0,0010) element, the transfer syntax in the File Meta
Information and, where the standard demands it, Planar Configuration (0028,0006) = 0 and
Photometric Interpretation change (PS3.5 §8.2.4 for JPEG 2000 / HTJ2K; YBR_FULL for
colour JPEG baseline, see :func:`registry.encoded_photometric`); retired Group Length
elements (gggg,0000) are not written (PS3.5 §7.2, as pydicom writes); every other
element is written back as read.  Instances whose pixel data cannot be re-encoded without
loss or mislabelling (float pixel data, pixel data nested in sequences such as Icon Image
Sequence, YBR_FULL_422 into JPEG 2000, ...) raise :class:`~registry.CodecError` and are
kept or sent as they are by the callers.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from dicomhub.codecs import frames as frame_io
from dicomhub.codecs import registry
from dicomhub.codecs.registry import CodecError, PixelFormat
from dicomhub.core import syntaxes

__all__ = [
    "CanonicalPixels",
    "TranscodeResult",
    "canonical_pixels",
    "encoded_frames",
    "pixel_digest",
    "transcode",
    "transcode_bytes",
]

_NATIVE = frozenset({syntaxes.ILE, syntaxes.ELE, syntaxes.DEFLATED_ELE, syntaxes.EBE})
_MAX_BOT = 0xFFFFFFFF  # Basic Offset Table offsets are 32-bit (PS3.5 §A.4)


@dataclass
class CanonicalPixels:
    """The decoded frames of an instance in canonical form (see module docstring)."""

    format: PixelFormat
    transfer_syntax_uid: str
    planar_configuration: int  # as stored
    frames: Iterator[bytes]


@dataclass(frozen=True)
class TranscodeResult:
    """What :func:`transcode` wrote."""

    transfer_syntax_uid: str
    pixel_digest: str | None
    size: int


def _read(path: Path | str | BinaryIO, *, pixels: bool = True) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True, defer_size=None if pixels else 1 << 16)


def pixel_format(ds: Dataset, photometric: str | None = None) -> PixelFormat:
    """The :class:`PixelFormat` of a data set's Image Pixel module (PS3.3 C.7.6.3)."""
    try:
        bits_allocated = int(ds.BitsAllocated)
        fmt = PixelFormat(
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            samples_per_pixel=int(ds.get("SamplesPerPixel") or 1),
            bits_allocated=bits_allocated,
            bits_stored=int(ds.get("BitsStored") or bits_allocated),
            pixel_representation=int(ds.get("PixelRepresentation") or 0),
            photometric_interpretation=photometric
            or str(ds.get("PhotometricInterpretation") or "").strip(),
            number_of_frames=max(int(ds.get("NumberOfFrames") or 1), 1),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise CodecError(f"incomplete Image Pixel module: {exc}") from None
    return fmt


def _nested_pixel_data(ds: Dataset) -> bool:
    """Whether pixel data sits inside a sequence (e.g. Icon Image Sequence, PS3.3 C.7.6.1)."""
    for elem in ds:
        if elem.VR == "SQ" and elem.value:
            for item in elem.value:
                if 0x7FE00010 in item or _nested_pixel_data(item):
                    return True
    return False


def canonical_pixels(path: Path, indices: Sequence[int] | None = None) -> CanonicalPixels:
    """Decode frames (0-based ``indices``, all if ``None``) of a stored file to canonical form.

    Raises :class:`~dicomhub.core.errors.NoPixelData` for objects without Pixel Data and
    :class:`CodecError` when the pixel data cannot be decoded.
    """
    info = frame_io.inspect_pixel_data(path)
    if info.keyword != "PixelData":
        raise CodecError(f"{info.keyword} is not re-encoded (float samples)")
    fmt = pixel_format(info.dataset)
    wanted = list(range(fmt.number_of_frames)) if indices is None else list(indices)
    syntax = str(info.transfer_syntax)
    if syntax in _NATIVE:
        native = frame_io.native_frames(path, [i + 1 for i in wanted])

        def _native() -> Iterator[bytes]:
            for data in native:
                if info.planar_configuration == 1 and fmt.samples_per_pixel > 1:
                    planes = np.frombuffer(data, dtype=fmt.dtype).reshape(
                        fmt.samples_per_pixel, fmt.rows, fmt.columns
                    )
                    data = np.ascontiguousarray(planes.transpose(1, 2, 0)).tobytes()
                yield data

        return CanonicalPixels(fmt, syntax, info.planar_configuration, _native())
    try:
        decoder = get_decoder(UID(syntax))
    except Exception as exc:
        raise CodecError(f"no decoder for transfer syntax {syntax}: {exc}") from None
    if not decoder.is_available:
        raise CodecError(f"no decoding plugin installed for {UID(syntax).name}")
    ds = _read(path)
    first_meta: dict[str, Any] = {}
    try:
        it = decoder.iter_array(ds, indices=wanted, raw=True)
        first = next(it, None)
    except Exception as exc:
        raise CodecError(f"cannot decode {UID(syntax).name}: {exc}") from None
    if first is not None:
        first_meta = dict(first[1])
    photometric = str(
        first_meta.get("photometric_interpretation") or fmt.photometric_interpretation
    )
    if photometric == "YBR_FULL_422":  # decoders return every chroma sample (PS3.3 C.7.6.3.1.2)
        photometric = "YBR_FULL"
    if photometric in ("YBR_RCT", "YBR_ICT"):  # J2K decoders invert the transform
        photometric = "RGB"
    out_fmt = pixel_format(ds, photometric)

    def _decoded() -> Iterator[bytes]:
        if first is None:
            return
        yield _canonical_bytes(first[0], out_fmt)
        for arr, _meta in it:
            yield _canonical_bytes(arr, out_fmt)

    return CanonicalPixels(out_fmt, syntax, info.planar_configuration, _decoded())


def _canonical_bytes(arr: Any, fmt: PixelFormat) -> bytes:
    if fmt.bits_allocated == 1:
        from pydicom.pixels.utils import pack_bits

        return bytes(pack_bits(np.asarray(arr, dtype=np.uint8).ravel(), pad=False))
    target = fmt.dtype
    if arr.dtype != target:
        arr = arr.astype(target)
    return bytes(np.ascontiguousarray(arr).tobytes())


def pixel_digest(path: Path) -> str | None:
    """The pixel digest (v1) of a stored file; ``None`` when it has no decodable pixels."""
    return pixel_digest_and_planar(path)[0]


def pixel_digest_and_planar(path: Path) -> tuple[str | None, int | None]:
    """(pixel digest, stored Planar Configuration); (None, None) without decodable pixels.

    Native little-endian pixel data that is already in canonical form (byte-aligned
    samples, interleaved or single-sample) is hashed straight from the file, in one
    sequential read, without splitting it into frames.
    """
    from dicomhub.core.errors import DicomhubError

    try:
        info = frame_io.inspect_pixel_data(path)
        fast = _native_digest(info)
        if fast is not None:
            return fast, info.planar_configuration
        pixels = canonical_pixels(path)
        return digest_of_frames(pixels.frames), pixels.planar_configuration
    except (CodecError, DicomhubError):
        return None, None


def native_layout_from_parsed(
    path: Path,
    parsed: Any,
    content: bytes | None = None,
    head: tuple[bytes, int] | None = None,
) -> tuple[int, int, int] | None:
    """(value offset, length, Planar Configuration) of native little-endian Pixel Data
    whose pixel digest is the SHA-256 of those bytes as stored (frames back to back in
    canonical form), from what the ingest reader found (its DICOM JSON and the value
    offset) and the value length in the file (``content``: the file's bytes, if at
    hand, or ``head``: its first bytes and its size); ``None`` when that shortcut does
    not apply (the general path then decides)."""
    meta = parsed.metadata
    offset = parsed.pixel_data_offset
    if (
        offset is None
        or offset < 4
        or parsed.transfer_syntax_uid not in (syntaxes.ELE, syntaxes.ILE)
        or "7FE00010" not in meta
    ):
        return None

    def number(tag: str, default: int | None = None) -> int | None:
        values = meta.get(tag, {}).get("Value")
        try:
            return int(values[0]) if values else default
        except (TypeError, ValueError):
            return None

    rows, columns = number("00280010"), number("00280011")
    samples, bits = number("00280002", 1), number("00280100")
    planar, frames = number("00280006", 0), number("00280008", 1)
    if None in (rows, columns, samples, bits, planar, frames):
        return None
    assert rows and columns and samples and bits is not None and planar is not None
    if bits % 8 or bits == 0 or (samples > 1 and planar != 0) or not frames or frames < 1:
        return None
    if str(meta.get("00280004", {}).get("Value", [""])[0]).strip() == "YBR_FULL_422":
        return None
    total = rows * columns * samples * (bits // 8) * frames
    if content is not None:
        length = int.from_bytes(content[offset - 4 : offset], "little")
        size = len(content)
    elif head is not None and offset <= len(head[0]):
        length = int.from_bytes(head[0][offset - 4 : offset], "little")
        size = head[1]
    else:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            length = int.from_bytes(os.pread(fd, 4, offset - 4), "little")
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
    if length == 0xFFFFFFFF or total > length or offset + total > size:
        return None
    return offset, total, planar


def native_digest_from_parsed(
    path: Path, parsed: Any, content: bytes | None = None
) -> tuple[str, int] | None:
    """(digest, planar) of native little-endian Pixel Data by
    :func:`native_layout_from_parsed`, hashed from ``content`` when given."""
    layout = native_layout_from_parsed(path, parsed, content)
    if layout is None:
        return None
    offset, total, planar = layout
    if content is not None:
        return hashlib.sha256(memoryview(content)[offset : offset + total]).hexdigest(), planar
    with path.open("rb") as fh:
        digest = _sha256_range(fh, offset, total)
    return (digest, planar) if digest is not None else None


def _native_digest(info: frame_io.PixelDataInfo) -> str | None:
    """SHA-256 of the pixel data value when it equals the canonical frames back to back."""
    if (
        str(info.transfer_syntax) not in (syntaxes.ELE, syntaxes.ILE)
        or info.keyword != "PixelData"
        or info.is_encapsulated
        or info.bits_allocated % 8
        or (info.samples_per_pixel > 1 and info.planar_configuration != 0)
    ):
        return None
    total = (info.frame_bits // 8) * info.number_of_frames
    if total > info.value_length:
        return None  # truncated: let the frame reader report it
    with info.path.open("rb") as fh:
        return _sha256_range(fh, info.value_offset, total)


def _sha256_range(fh: BinaryIO, offset: int, length: int) -> str | None:
    """SHA-256 of ``length`` bytes at ``offset`` read in 1 MiB pieces; ``None`` if the file
    ends first."""
    h = hashlib.sha256()
    fh.seek(offset)
    left = length
    while left:
        chunk = fh.read(min(left, 1 << 20))
        if not chunk:
            return None
        h.update(chunk)
        left -= len(chunk)
    return h.hexdigest()


def digest_of_frames(frames: Iterator[bytes]) -> str:
    """SHA-256 of canonical frames (the client computes the same)."""
    h = hashlib.sha256()
    for frame in frames:
        h.update(frame)
    return h.hexdigest()


def encoded_frames(path: Path, numbers: Sequence[int], target_uid: str) -> Iterator[bytes]:
    """Frames (1-based) of a stored instance as fragments of ``target_uid`` (PS3.18 §10.4.1.1.4).

    A frame stored in the target syntax is sent as stored, without re-encoding.  Raises
    :class:`CodecError` before the first frame when the target cannot carry the image.
    """
    info = frame_io.inspect_pixel_data(path)
    indices = [frame_io.frame_index(n, info.number_of_frames) for n in numbers]
    if str(info.transfer_syntax) == target_uid and info.is_encapsulated:
        return _stored_fragments(info, indices)
    pixels = canonical_pixels(path, indices)
    problem = registry.encode_problem(target_uid, pixels.format)
    if problem:
        raise CodecError(problem)
    fmt = pixels.format

    def _gen() -> Iterator[bytes]:
        for data in pixels.frames:
            yield registry.encode_frame(target_uid, fmt.array(data), fmt)

    return _gen()


def _stored_fragments(info: frame_io.PixelDataInfo, indices: list[int]) -> Iterator[bytes]:
    from pydicom.encaps import get_frame

    ds = info.dataset
    extended: tuple[bytes, bytes] | None = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (bytes(ds.ExtendedOffsetTable), bytes(ds.ExtendedOffsetTableLengths))
    with info.path.open("rb") as fp:
        for index in indices:
            fp.seek(info.value_offset)
            yield bytes(
                get_frame(
                    fp, index, extended_offsets=extended, number_of_frames=info.number_of_frames
                )
            )


def transcode(
    src: Path,
    target_uid: str,
    dst: Path | BinaryIO,
    *,
    planar_configuration: int | None = None,
    verify: bool = False,
    expected_digest: str | None = None,
) -> TranscodeResult:
    """Write the instance at ``src`` in ``target_uid`` to ``dst`` (a path or a binary file).

    ``planar_configuration`` applies to native targets (to restore an original that was
    stored colour-by-plane).  With ``verify`` the written pixel data is decoded again and
    its digest compared with the source's (or ``expected_digest``); a mismatch raises
    :class:`CodecError` and nothing is reported as written.
    """
    target = registry.get(target_uid)
    if target is None:
        raise CodecError(f"transfer syntax {target_uid} is not supported")
    ds = _read(src)
    meta = getattr(ds, "file_meta", None)
    source_uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not source_uid:
        raise CodecError("the file has no Transfer Syntax UID")
    has_pixels = "PixelData" in ds and ds["PixelData"].value is not None
    if target_uid == syntaxes.EBE:
        raise CodecError("Explicit VR Big Endian is retired and not written")
    if source_uid == syntaxes.EBE and _has_other_binary(ds):
        raise CodecError("big endian binary values other than pixel data are not converted")
    if has_pixels and _nested_pixel_data(ds) and (target.encapsulated or source_uid not in _NATIVE):
        raise CodecError("pixel data nested in a sequence (icon image) is not re-encoded")
    if any(k in ds for k in ("FloatPixelData", "DoubleFloatPixelData")) and target.encapsulated:
        raise CodecError("float pixel data has no encapsulated transfer syntax")
    digest: str | None = None
    if has_pixels and (source_uid != target_uid or planar_configuration is not None):
        pixels = canonical_pixels(src)
        fmt = pixels.format
        h = hashlib.sha256()
        if target.encapsulated:
            problem = registry.encode_problem(target_uid, fmt)
            if problem:
                raise CodecError(problem)
            fragments: list[bytes] = []
            raw_total = 0
            for data in pixels.frames:
                h.update(data)
                raw_total += len(data)
                fragments.append(registry.encode_frame(target_uid, fmt.array(data), fmt))
            _set_encapsulated(ds, fragments)
            if fmt.samples_per_pixel > 1:
                ds.PlanarConfiguration = 0
            ds.PhotometricInterpretation = registry.encoded_photometric(target_uid, fmt)
            if not target.lossless:
                _mark_lossy(ds, target, raw_total, sum(len(f) for f in fragments))
        else:
            planar = planar_configuration if planar_configuration is not None else 0
            chunks: list[bytes] = []
            for data in pixels.frames:
                h.update(data)
                if planar == 1 and fmt.samples_per_pixel > 1:
                    arr = fmt.array(data)
                    data = np.ascontiguousarray(arr.transpose(2, 0, 1)).tobytes()
                chunks.append(data)
            value = _join_native(chunks, fmt)
            if len(value) % 2:
                value += b"\x00"
            _set_native(ds, value, fmt)
            if fmt.samples_per_pixel > 1:
                ds.PlanarConfiguration = planar
            ds.PhotometricInterpretation = fmt.photometric_interpretation
        digest = h.hexdigest()
    ds.file_meta.TransferSyntaxUID = UID(target_uid)
    data_out = _write_part10(ds, target_uid)
    if verify and has_pixels and digest is not None:
        check = pixel_digest_of_bytes(data_out)
        want = expected_digest or digest
        if check != want:
            raise CodecError(
                f"verification failed: {target.name} output decodes to pixel digest "
                f"{check}, expected {want}"
            )
    if isinstance(dst, Path):
        dst.write_bytes(data_out)
    else:
        dst.write(data_out)
    return TranscodeResult(target_uid, digest, len(data_out))


def _write_part10(ds: Dataset, target_uid: str) -> bytes:
    """Encode a Part 10 file (PS3.10 §7.1): preamble, File Meta Information, data set.

    The data set is written element by element as read (``write_dataset``), so nothing
    of it is dropped; Deflated Explicit VR Little Endian is deflated (PS3.5 §A.5).
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    meta = ds.file_meta
    meta.TransferSyntaxUID = UID(target_uid)
    for meta_key, ds_key in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        if not meta.get(meta_key) and ds.get(ds_key):
            setattr(meta, meta_key, ds.get(ds_key))
    body = DicomBytesIO()
    body.is_little_endian = True
    body.is_implicit_VR = target_uid == syntaxes.ILE
    write_dataset(body, ds)
    payload = body.getvalue()
    if target_uid == syntaxes.DEFLATED_ELE:
        import zlib

        deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        payload = deflater.compress(payload) + deflater.flush()
        if len(payload) % 2:
            payload += b"\x00"
    head = DicomBytesIO()
    head.write(bytes(ds.preamble or b"\x00" * 128) if hasattr(ds, "preamble") else b"\x00" * 128)
    head.write(b"DICM")
    complete = all(meta.get(k) for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"))
    write_file_meta_info(head, meta, enforce_standard=complete)
    return bytes(head.getvalue()) + bytes(payload)


def _join_native(chunks: list[bytes], fmt: PixelFormat) -> bytes:
    """Concatenate canonical frames into one native value; 1-bit frames are packed
    continuously across frame boundaries (PS3.5 §8.1.1)."""
    frame_bits = fmt.rows * fmt.columns * fmt.samples_per_pixel
    if fmt.bits_allocated != 1 or frame_bits % 8 == 0:
        return b"".join(chunks)
    from pydicom.pixels.utils import pack_bits, unpack_bits

    bits = np.concatenate([np.asarray(unpack_bits(c))[:frame_bits] for c in chunks])
    return bytes(pack_bits(bits, pad=False))


def _has_other_binary(ds: Dataset) -> bool:
    for elem in ds.iterall():
        if elem.tag != 0x7FE00010 and elem.VR in ("OW", "OL", "OF", "OD", "OV", "US or OW"):
            return True
    return False


def transcode_bytes(src: Path, target_uid: str, **kwargs: Any) -> bytes:
    """:func:`transcode` into memory (one instance; studies are streamed instance by instance)."""
    buf = io.BytesIO()
    transcode(src, target_uid, buf, **kwargs)
    return buf.getvalue()


def pixel_digest_of_bytes(data: bytes) -> str | None:
    """The pixel digest of a Part 10 file held in memory."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".dcm") as tmp:
        tmp.write(data)
        tmp.flush()
        return pixel_digest(Path(tmp.name))


def _set_encapsulated(ds: Dataset, fragments: list[bytes]) -> None:
    total = sum(len(f) + 8 for f in fragments)
    for key in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if key in ds:
            del ds[key]
    if total > _MAX_BOT:
        value, offsets, lengths = encapsulate_extended(fragments)
        ds.PixelData = value
        ds.ExtendedOffsetTable = offsets
        ds.ExtendedOffsetTableLengths = lengths
    else:
        ds.PixelData = encapsulate(fragments, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _set_native(ds: Dataset, value: bytes, fmt: PixelFormat) -> None:
    for key in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if key in ds:
            del ds[key]
    ds.PixelData = value
    ds["PixelData"].VR = "OW" if fmt.bits_allocated > 8 else "OB"
    ds["PixelData"].is_undefined_length = False


def _mark_lossy(
    ds: Dataset, target: registry.TransferSyntax, raw_bytes: int, coded_bytes: int
) -> None:
    """Lossy Image Compression attributes (PS3.3 C.7.6.1.1.5): marked, ratio, method."""
    ratio = raw_bytes / max(coded_bytes, 1)
    previous_ratio = [str(v) for v in _as_list(ds.get("LossyImageCompressionRatio"))]
    previous_method = [str(v) for v in _as_list(ds.get("LossyImageCompressionMethod"))]
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*previous_ratio, f"{ratio:.4g}"[:16]]
    ds.LossyImageCompressionMethod = [*previous_method, target.method]


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or (
        hasattr(value, "__iter__") and not isinstance(value, str)
    ):
        return list(value)
    return [value]
