"""The transfer syntax registry: one table of syntaxes with frame encoders and decoders.

In the spirit of pydicom 3's pixel plugins (``pydicom.pixels.encoders``), each transfer
syntax of PS3.5 §10 / Annex A that dicomhub can produce has an encoder that turns one
frame — a numpy array in the canonical form of :class:`PixelFormat` — into the bytes of
one fragment (PS3.5 §A.4), and a decoder that turns such a fragment back.  An
availability check (:func:`encode_problem`) says, before any work is done, whether a
syntax can carry a given image losslessly and why not.

Plugins (measured in ../shared/DESIGN.md §6, docs/benchmarks.md):

* HTJ2K (PS3.5 §A.4.11, 1.2.840.10008.1.2.4.201/.202/.203): imagecodecs ``htj2k``
  (OpenJPH); .202 is written with RPCL progression and TLM markers.
* JPEG 2000 lossless (§A.4.4, .4.90; also .4.91 written reversibly): imagecodecs
  ``jpeg2k`` (OpenJPEG), no multi-component transform, so RGB stays RGB.
* JPEG-LS lossless (§A.4.3, .4.80) and near-lossless (.4.81): imagecodecs ``jpegls``
  (CharLS).  Signed samples are coded as their BitsStored-bit two's complement pattern,
  as PS3.5 §8.2.3 requires.
* JPEG lossless SV1 (§A.4.1, .4.70) and non-hierarchical lossless (.4.57): imagecodecs
  ``jpeg8`` (libjpeg-turbo, SOF3, predictor 1), which pydicom cannot encode.  Colour
  frames are written with RGB component identifiers and an Adobe marker without
  transform, which decoders (pydicom included) take as RGB, so YBR_FULL is not written.
* JPEG baseline (.4.50, lossy, 8 bit only): imagecodecs ``jpeg8``, on explicit request;
  colour frames are YCbCr-transformed, hence labelled YBR_FULL
  (:func:`encoded_photometric`).
* RLE Lossless (§A.4.2, 1.2.840.10008.1.2.5): pylibjpeg-rle.  Decoders discard the bits
  above BitsStored of RLE (and JPEG lossless) samples, so samples using them are refused.
* Native syntaxes (Implicit/Explicit VR Little Endian, Deflated Explicit VR Little
  Endian, §A.1, §A.2, §A.5) need no frame codec: the canonical bytes are the value.

Canonical frame form (the form every decoder returns and every encoder takes, and over
which the pixel digest is computed, see :mod:`dicomhub.codecs.transcode`): samples
pixel-interleaved (``PlanarConfiguration`` 0), little endian, each ``BitsAllocated``
wide, signed when ``PixelRepresentation`` is 1, shape ``(rows, columns)`` or
``(rows, columns, samples)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dicomhub.core.errors import CannotTranscode
from dicomhub.core.syntaxes import (
    DEFLATED_ELE,
    EBE,
    ELE,
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_RPCL,
    ILE,
    J2K,
    J2K_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR,
    RLE,
)

__all__ = [
    "LOSSLESS_PREFERENCE",
    "REGISTRY",
    "CodecError",
    "PixelFormat",
    "TransferSyntax",
    "decode_frame",
    "encode_frame",
    "encode_problem",
    "encoded_photometric",
    "get",
]

Array = npt.NDArray[Any]

#: The lossless encodings a server or client offers first, best ratio × speed first
#: (DESIGN §6: HTJ2K encodes 2.5 ms, decodes 1.7 ms per CT slice at ratio 2.56).
LOSSLESS_PREFERENCE = (HTJ2K_LOSSLESS, JPEG_LS_LOSSLESS, J2K_LOSSLESS, JPEG_LOSSLESS_SV1, RLE)


class CodecError(CannotTranscode):
    """A frame cannot be encoded or decoded; the message says why."""


@dataclass(frozen=True)
class PixelFormat:
    """The Image Pixel module facts a codec needs (PS3.3 C.7.6.3)."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    number_of_frames: int = 1

    @property
    def dtype(self) -> np.dtype[Any]:
        """The canonical numpy dtype of one sample."""
        if self.bits_allocated == 1:
            return np.dtype("u1")
        kind = "i" if self.pixel_representation == 1 else "u"
        return np.dtype(f"<{kind}{max(self.bits_allocated // 8, 1)}")

    @property
    def shape(self) -> tuple[int, ...]:
        """The canonical shape of one frame."""
        if self.samples_per_pixel == 1:
            return (self.rows, self.columns)
        return (self.rows, self.columns, self.samples_per_pixel)

    @property
    def frame_length(self) -> int:
        """Bytes of one canonical frame (bit-packed for ``BitsAllocated`` 1)."""
        pixels = self.rows * self.columns * self.samples_per_pixel
        if self.bits_allocated == 1:
            return (pixels + 7) // 8
        return pixels * (self.bits_allocated // 8)

    def array(self, data: bytes | bytearray | memoryview) -> Array:
        """View canonical frame bytes as an array of :attr:`shape`."""
        count = self.rows * self.columns * self.samples_per_pixel
        return np.frombuffer(data, dtype=self.dtype, count=count).reshape(self.shape)


Encoder = Callable[[Array, PixelFormat], bytes]
Decoder = Callable[[bytes, PixelFormat], Array]


@dataclass(frozen=True)
class TransferSyntax:
    """One transfer syntax (PS3.5 §10, PS3.6 Annex A) and what dicomhub can do with it.

    ``lossless`` is False for syntaxes whose encoding here is lossy (they are only used
    when a caller asks for them by UID).  ``media_type`` is the single-frame media type
    of PS3.18 Table 8.7.3-5 whose default syntax this is (``None`` for native ones).
    """

    uid: str
    name: str
    encapsulated: bool
    lossless: bool
    media_types: tuple[str, ...] = ()
    encoder: Encoder | None = None
    decoder: Decoder | None = None
    photometrics: frozenset[str] = frozenset()
    method: str = ""  # LossyImageCompressionMethod (PS3.3 C.7.6.1.1.5.1) when lossy

    @property
    def can_encode(self) -> bool:
        """Whether frames can be written in this syntax (always for native syntaxes)."""
        return not self.encapsulated or self.encoder is not None


_MONO = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"})
_J2K_PHOTOMETRICS = _MONO | {"RGB"}  # PS3.5 §8.2.4: no YBR_FULL; RGB without MCT
_JLS_PHOTOMETRICS = _MONO | {"RGB", "YBR_FULL"}  # PS3.5 §8.2.3
# the libjpeg-turbo lossless stream of 3 samples says RGB (component IDs 'R','G','B')
_JPEG_LOSSLESS_PHOTOMETRICS = _MONO | {"RGB"}
_ANY = frozenset(
    {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_RCT", "YBR_ICT"}
)


def _codecs() -> Any:
    import imagecodecs

    return imagecodecs


def _fits(arr: Array, fmt: PixelFormat) -> bool:
    """Whether every sample lies in the range BitsStored can hold (PS3.5 §8.1.1)."""
    bits = fmt.bits_stored
    if arr.size == 0 or bits >= fmt.bits_allocated:
        return True
    lo, hi = int(arr.min()), int(arr.max())
    if fmt.pixel_representation == 1:
        return -(1 << (bits - 1)) <= lo and hi < (1 << (bits - 1))
    return lo >= 0 and hi < (1 << bits)


def _unsigned_pattern(arr: Array, fmt: PixelFormat) -> Array:
    """Signed samples as their BitsStored-bit two's complement pattern (PS3.5 §8.2.1/8.2.3)."""
    if fmt.pixel_representation != 1:
        return arr
    unsigned: Array = arr.view(arr.dtype.newbyteorder("=").str.replace("i", "u"))
    masked: Array = unsigned & np.array((1 << fmt.bits_stored) - 1, dtype=unsigned.dtype)
    return masked


def _sign_extend(arr: Array, fmt: PixelFormat) -> Array:
    """Reverse of :func:`_unsigned_pattern`: decoded unsigned samples to canonical form."""
    out = arr.astype(fmt.dtype.newbyteorder("="), copy=False)
    if fmt.pixel_representation != 1:
        return out
    shift = fmt.bits_allocated - fmt.bits_stored
    if shift:
        out = (out << shift) >> shift
    return out


def _lossless_bits_check(arr: Array, fmt: PixelFormat, name: str) -> None:
    if not _fits(arr, fmt):
        raise CodecError(
            f"{name} codes BitsStored ({fmt.bits_stored}) bits but samples use more: "
            "not encodable losslessly"
        )


# -- HTJ2K ------------------------------------------------------------------------------
def _htj2k_encoder(rpcl: bool) -> Encoder:
    def encode(arr: Array, fmt: PixelFormat) -> bytes:
        ic = _codecs()
        # RGB with the reversible colour transform, labelled YBR_RCT (encoded_photometric)
        kwargs: dict[str, Any] = {"reversible": True, "rgb": fmt.samples_per_pixel == 3}
        if rpcl:
            # .202 (PS3.5 §A.4.11): RPCL progression (OpenJPH's default), TLM marker
            # segments, one tile-part per resolution level for progressive decoding
            kwargs.update(tlm=True, tilepart=ic.HTJ2K.TILEPART.RESOLUTIONS)
        return bytes(ic.htj2k_encode(np.ascontiguousarray(arr), **kwargs))

    return encode


def _htj2k_decode(data: bytes, fmt: PixelFormat) -> Array:
    return _canonical(_codecs().htj2k_decode(data), fmt)


# -- JPEG 2000 --------------------------------------------------------------------------
def _j2k_encode(arr: Array, fmt: PixelFormat) -> bytes:
    ic = _codecs()
    bits = fmt.bits_stored if _fits(arr, fmt) else fmt.bits_allocated
    return bytes(
        ic.jpeg2k_encode(
            np.ascontiguousarray(arr),
            level=0,
            codecformat="J2K",
            reversible=True,
            mct=fmt.samples_per_pixel == 3,  # RCT, labelled YBR_RCT (encoded_photometric)
            bitspersample=bits,
        )
    )


def _j2k_decode(data: bytes, fmt: PixelFormat) -> Array:
    return _canonical(_codecs().jpeg2k_decode(data), fmt)


# -- JPEG-LS ----------------------------------------------------------------------------
def _jls_encoder(near: int) -> Encoder:
    def encode(arr: Array, fmt: PixelFormat) -> bytes:
        import jpeg_ls  # pyjpegls: CharLS with the precision set to BitsStored

        # also near-lossless: CharLS would wrap samples above MAXVAL, far beyond NEAR
        _lossless_bits_check(arr, fmt, "JPEG-LS")
        pattern = np.ascontiguousarray(_unsigned_pattern(arr, fmt))
        if fmt.bits_stored <= 8 and pattern.dtype.itemsize > 1:
            pattern = pattern.astype(np.uint8)
        try:
            return bytes(
                jpeg_ls.encode_buffer(
                    pattern.tobytes(),
                    fmt.rows,
                    fmt.columns,
                    fmt.samples_per_pixel,
                    max(fmt.bits_stored, 2),
                    lossy_error=near,
                    interleave_mode=2 if fmt.samples_per_pixel > 1 else None,
                )
            )
        except RuntimeError:
            # pyjpegls sizes its buffer for compressible data; imagecodecs takes a size,
            # but codes the full sample width, which is right only when BitsStored fills it
            if fmt.bits_stored != pattern.dtype.itemsize * 8:
                raise
            room = pattern.nbytes * 2 + 4096
            return bytes(_codecs().jpegls_encode(pattern, level=near, out=room))

    return encode


def _jls_decode(data: bytes, fmt: PixelFormat) -> Array:
    return _sign_extend(_codecs().jpegls_decode(data), fmt)


# -- JPEG (ISO 10918-1) -----------------------------------------------------------------
def _jpeg_lossless_encode(arr: Array, fmt: PixelFormat) -> bytes:
    ic = _codecs()
    _lossless_bits_check(arr, fmt, "JPEG lossless")
    pattern = np.ascontiguousarray(_unsigned_pattern(arr, fmt))
    if fmt.bits_stored <= 8:
        pattern = pattern.astype(np.uint8)
    kwargs: dict[str, Any] = {}
    if fmt.samples_per_pixel == 3:
        # no colour transform in a lossless stream (PS3.5 §8.2.1)
        kwargs.update(colorspace="RGB", outcolorspace="RGB")
    return bytes(
        ic.jpeg8_encode(
            pattern, lossless=True, predictor=1, bitspersample=fmt.bits_stored, **kwargs
        )
    )


def _jpeg_decode(data: bytes, fmt: PixelFormat) -> Array:
    ic = _codecs()
    kwargs: dict[str, Any] = {}
    if fmt.samples_per_pixel == 3 and fmt.photometric_interpretation != "YBR_FULL_422":
        kwargs.update(colorspace="RGB", outcolorspace="RGB")
    try:
        decoded = ic.jpeg8_decode(data, **kwargs)
    except Exception:
        decoded = ic.ljpeg_decode(data)
    return _sign_extend(decoded, fmt)


def _jpeg_baseline_encode(arr: Array, fmt: PixelFormat) -> bytes:
    ic = _codecs()
    if fmt.bits_allocated != 8:
        raise CodecError("JPEG baseline carries 8-bit samples only")
    kwargs: dict[str, Any] = {}
    if fmt.samples_per_pixel == 3:
        kwargs.update(colorspace="RGB", outcolorspace="YCbCr", subsampling="444")
    return bytes(ic.jpeg8_encode(np.ascontiguousarray(arr), level=90, **kwargs))


# -- RLE --------------------------------------------------------------------------------
def _rle_encode(arr: Array, fmt: PixelFormat) -> bytes:
    from rle.utils import encode_pixel_data

    # RLE keeps every bit, but decoders (pydicom's) clear or sign-extend the bits above
    # BitsStored, so such samples would not decode to what was stored (PS3.5 §8.1.1)
    _lossless_bits_check(arr, fmt, "RLE")
    return bytes(
        encode_pixel_data(
            np.ascontiguousarray(arr).tobytes(),
            rows=fmt.rows,
            columns=fmt.columns,
            samples_per_pixel=fmt.samples_per_pixel,
            bits_allocated=fmt.bits_allocated,
            byteorder="<",
        )
    )


def _rle_decode(data: bytes, fmt: PixelFormat) -> Array:
    from rle.utils import decode_frame  # type: ignore[attr-defined]

    raw = decode_frame(data, fmt.rows * fmt.columns, fmt.bits_allocated, "<")
    planes = np.frombuffer(bytes(raw), dtype=fmt.dtype).reshape(
        fmt.samples_per_pixel, fmt.rows, fmt.columns
    )
    if fmt.samples_per_pixel == 1:
        plane: Array = planes[0]
        return plane
    return np.ascontiguousarray(planes.transpose(1, 2, 0))


def _canonical(arr: Array, fmt: PixelFormat) -> Array:
    if arr.dtype != fmt.dtype.newbyteorder("="):
        arr = arr.astype(fmt.dtype.newbyteorder("="))
    return arr.reshape(fmt.shape)


_REGISTRY_LIST = [
    TransferSyntax(ILE, "Implicit VR Little Endian", False, True, photometrics=_ANY),
    TransferSyntax(ELE, "Explicit VR Little Endian", False, True, photometrics=_ANY),
    TransferSyntax(
        DEFLATED_ELE, "Deflated Explicit VR Little Endian", False, True, photometrics=_ANY
    ),
    TransferSyntax(EBE, "Explicit VR Big Endian (retired)", False, True),
    TransferSyntax(
        JPEG_BASELINE,
        "JPEG Baseline (Process 1)",
        True,
        False,
        ("image/jpeg",),
        _jpeg_baseline_encode,
        _jpeg_decode,
        _MONO - {"PALETTE COLOR"} | {"RGB"},
        "ISO_10918_1",
    ),
    TransferSyntax(JPEG_EXTENDED, "JPEG Extended (Process 2 & 4)", True, False),
    TransferSyntax(
        JPEG_LOSSLESS,
        "JPEG Lossless, Non-Hierarchical (Process 14)",
        True,
        True,
        (),
        _jpeg_lossless_encode,
        _jpeg_decode,
        _JPEG_LOSSLESS_PHOTOMETRICS,
    ),
    TransferSyntax(
        JPEG_LOSSLESS_SV1,
        "JPEG Lossless, First-Order Prediction (Process 14 SV1)",
        True,
        True,
        (),
        _jpeg_lossless_encode,
        _jpeg_decode,
        _JPEG_LOSSLESS_PHOTOMETRICS,
    ),
    TransferSyntax(
        JPEG_LS_LOSSLESS,
        "JPEG-LS Lossless",
        True,
        True,
        ("image/jls",),
        _jls_encoder(0),
        _jls_decode,
        _JLS_PHOTOMETRICS,
    ),
    TransferSyntax(
        JPEG_LS_NEAR,
        "JPEG-LS Near-Lossless",
        True,
        False,
        (),
        _jls_encoder(2),
        _jls_decode,
        _JLS_PHOTOMETRICS,
        "ISO_14495_1",
    ),
    TransferSyntax(
        J2K_LOSSLESS,
        "JPEG 2000 (Lossless Only)",
        True,
        True,
        ("image/jp2",),
        _j2k_encode,
        _j2k_decode,
        _J2K_PHOTOMETRICS,
    ),
    TransferSyntax(
        J2K, "JPEG 2000", True, True, ("image/jpx",), _j2k_encode, _j2k_decode, _J2K_PHOTOMETRICS
    ),
    TransferSyntax(
        HTJ2K_LOSSLESS,
        "High-Throughput JPEG 2000 (Lossless Only)",
        True,
        True,
        ("image/jphc",),
        _htj2k_encoder(False),
        _htj2k_decode,
        _J2K_PHOTOMETRICS,
    ),
    TransferSyntax(
        HTJ2K_RPCL,
        "High-Throughput JPEG 2000 with RPCL Options (Lossless Only)",
        True,
        True,
        (),
        _htj2k_encoder(True),
        _htj2k_decode,
        _J2K_PHOTOMETRICS,
    ),
    TransferSyntax(
        HTJ2K,
        "High-Throughput JPEG 2000",
        True,
        True,
        (),
        _htj2k_encoder(False),
        _htj2k_decode,
        _J2K_PHOTOMETRICS,
    ),
    TransferSyntax(
        RLE,
        "RLE Lossless",
        True,
        True,
        ("image/dicom-rle",),
        _rle_encode,
        _rle_decode,
        _ANY,
    ),
]

REGISTRY: dict[str, TransferSyntax] = {ts.uid: ts for ts in _REGISTRY_LIST}


def get(uid: str) -> TransferSyntax | None:
    """The registry entry of a transfer syntax UID, or ``None``."""
    return REGISTRY.get(uid)


def encode_problem(uid: str, fmt: PixelFormat) -> str | None:
    """Why frames of ``fmt`` cannot be written in syntax ``uid``; ``None`` if they can.

    Data-dependent limits (samples wider than BitsStored for JPEG-LS, JPEG lossless and
    RLE) are only found while encoding and raise :class:`CodecError` then.
    """
    ts = REGISTRY.get(uid)
    if ts is None:
        return f"transfer syntax {uid} is not supported"
    if not ts.encapsulated:
        if uid == EBE:
            return "Explicit VR Big Endian is retired and not written"
        return None
    if ts.encoder is None:
        return f"no encoder for {ts.name}"
    if fmt.bits_allocated not in (8, 16):
        return f"{ts.name}: Bits Allocated {fmt.bits_allocated} is not encodable here"
    if fmt.samples_per_pixel not in (1, 3):
        return f"{ts.name}: {fmt.samples_per_pixel} samples per pixel"
    if fmt.photometric_interpretation not in ts.photometrics:
        return f"{ts.name} does not carry {fmt.photometric_interpretation or 'no'} photometric"
    if uid in (JPEG_LS_LOSSLESS, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1) and fmt.bits_stored < 2:
        return f"{ts.name}: Bits Stored {fmt.bits_stored}"
    if uid == JPEG_BASELINE and (fmt.bits_stored != 8 or fmt.pixel_representation != 0):
        # PS3.5 Table 8.2.1-1: 8 bits stored, unsigned; lossy errors would overflow fewer
        return (
            f"{ts.name} carries unsigned samples of Bits Stored 8 only, "
            f"not {'signed ' if fmt.pixel_representation else ''}Bits Stored {fmt.bits_stored}"
        )
    return None


def encoded_photometric(uid: str, fmt: PixelFormat) -> str:
    """The Photometric Interpretation of frames of ``fmt`` once written in syntax ``uid``.

    JPEG baseline colour frames are written YCbCr-transformed without subsampling (JFIF),
    which is YBR_FULL (PS3.3 C.7.6.3.1.2, PS3.5 §8.2.1); JPEG 2000 and HTJ2K colour frames
    use the reversible multi-component transform, which is YBR_RCT (PS3.5 §8.2.4; the
    decoder inverts it, so they decode to RGB again); every other encoder keeps the
    samples as they are.
    """
    if uid == JPEG_BASELINE and fmt.samples_per_pixel == 3:
        return "YBR_FULL"
    j2k = (J2K_LOSSLESS, J2K, HTJ2K_LOSSLESS, HTJ2K_RPCL, HTJ2K)
    if uid in j2k and fmt.samples_per_pixel == 3 and fmt.photometric_interpretation == "RGB":
        return "YBR_RCT"
    return fmt.photometric_interpretation


def encode_frame(uid: str, arr: Array, fmt: PixelFormat) -> bytes:
    """Encode one canonical frame as one fragment of syntax ``uid`` (PS3.5 §A.4)."""
    ts = REGISTRY[uid]
    problem = encode_problem(uid, fmt)
    if problem is not None or ts.encoder is None:
        raise CodecError(problem or f"no encoder for {ts.name}")
    try:
        return ts.encoder(arr, fmt)
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"{ts.name} encoder failed: {type(exc).__name__}: {exc}") from exc


def decode_frame(uid: str, data: bytes, fmt: PixelFormat) -> Array:
    """Decode one fragment of syntax ``uid`` written by :func:`encode_frame` (or any
    conformant encoder) to the canonical form."""
    ts = REGISTRY.get(uid)
    if ts is None or ts.decoder is None:
        raise CodecError(f"no frame decoder for {uid}")
    try:
        return ts.decoder(data, fmt)
    except Exception as exc:
        raise CodecError(f"{ts.name} decoder failed: {type(exc).__name__}: {exc}") from exc
