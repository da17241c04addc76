"""The transfer syntax registry (codecs/registry.py) on synthetic frames.

Every test builds its frames with numpy (no sample files): encode/decode round trips of
each encodable syntax at 8, 12 and 16 bits, signed and unsigned, greyscale and RGB; the
codestream headers (precision and sign of JPEG-LS, JPEG 2000, HTJ2K and JPEG lossless,
which PS3.5 §8.2 ties to Bits Stored and Pixel Representation); pydicom's own decoders
reading our fragments back (so the streams are standard, not only self-consistent); the
refusals of samples wider than Bits Stored; and the messages of :func:`encode_problem`.
"""

from __future__ import annotations

import struct
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from dicomhub.codecs import registry
from dicomhub.codecs.registry import (
    LOSSLESS_PREFERENCE,
    REGISTRY,
    CodecError,
    PixelFormat,
    decode_frame,
    encode_frame,
    encode_problem,
    encoded_photometric,
)
from dicomhub.core import syntaxes as ts
from dicomhub.core.errors import CannotTranscode

Array = npt.NDArray[Any]

#: Encapsulated syntaxes written losslessly (J2K .91 is written reversibly too).
LOSSLESS_ENCODED = [
    ts.HTJ2K_LOSSLESS,
    ts.HTJ2K_RPCL,
    ts.HTJ2K,
    ts.JPEG_LS_LOSSLESS,
    ts.J2K_LOSSLESS,
    ts.J2K,
    ts.JPEG_LOSSLESS,
    ts.JPEG_LOSSLESS_SV1,
    ts.RLE,
]

#: The formats of the round trips: (rows, columns, samples, allocated, stored, signed, PI).
FORMATS = {
    "u8": PixelFormat(48, 37, 1, 8, 8, 0, "MONOCHROME2"),
    "u12": PixelFormat(48, 37, 1, 16, 12, 0, "MONOCHROME2"),
    "s12": PixelFormat(48, 37, 1, 16, 12, 1, "MONOCHROME2"),
    "u16": PixelFormat(48, 37, 1, 16, 16, 0, "MONOCHROME1"),
    "s16": PixelFormat(48, 37, 1, 16, 16, 1, "MONOCHROME2"),
    "rgb8": PixelFormat(48, 37, 3, 8, 8, 0, "RGB"),
    "rgb16": PixelFormat(48, 37, 3, 16, 16, 0, "RGB"),
    "palette8": PixelFormat(48, 37, 1, 8, 8, 0, "PALETTE COLOR"),
}


def sample_frame(fmt: PixelFormat, seed: int = 0) -> Array:
    """A frame that uses the whole Bits Stored range: a ramp, noise, and both extremes.

    Signed samples are sign-extended to Bits Allocated, as PS3.5 §8.1.1 stores them."""
    rng = np.random.default_rng(seed)
    if fmt.pixel_representation:
        lo, hi = -(1 << (fmt.bits_stored - 1)), (1 << (fmt.bits_stored - 1)) - 1
    else:
        lo, hi = 0, (1 << fmt.bits_stored) - 1
    ramp = np.linspace(lo, hi, fmt.rows * fmt.columns * fmt.samples_per_pixel)
    noise = rng.integers(-(hi - lo) // 16, (hi - lo) // 16 + 1, size=ramp.size)
    flat = np.clip(ramp + noise, lo, hi).astype(np.int64)
    flat[0], flat[-1], flat[len(flat) // 2] = lo, hi, 0 if fmt.pixel_representation else hi
    return flat.astype(fmt.dtype).reshape(fmt.shape)


def pydicom_decode(uid: str, frames: list[bytes], fmt: PixelFormat) -> tuple[Array, list[str]]:
    """pydicom's ``pixel_array`` of a minimal data set holding our fragments, and the
    warnings pydicom raised while decoding (a mismatch of codestream and data set)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(uid)
    ds.Rows, ds.Columns = fmt.rows, fmt.columns
    ds.SamplesPerPixel = fmt.samples_per_pixel
    ds.BitsAllocated, ds.BitsStored = fmt.bits_allocated, fmt.bits_stored
    ds.HighBit = fmt.bits_stored - 1
    ds.PixelRepresentation = fmt.pixel_representation
    ds.PhotometricInterpretation = fmt.photometric_interpretation
    if fmt.samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arr = ds.pixel_array
    return arr, [str(w.message) for w in caught]


def j2k_siz(codestream: bytes) -> list[tuple[int, bool]]:
    """(precision, signed) of each component in the SIZ marker segment (ISO 15444-1 A.5.1)."""
    at = codestream.index(b"\xff\x51")
    (components,) = struct.unpack(">H", codestream[at + 38 : at + 40])
    ssiz = codestream[at + 40 : at + 40 + 3 * components : 3]
    return [((s & 0x7F) + 1, bool(s & 0x80)) for s in ssiz]


def jpeg_precision(codestream: bytes, sof: bytes) -> int:
    """Sample precision P of a JPEG (SOF3, ISO 10918-1 B.2.2) or JPEG-LS (SOF55, ISO
    14495-1 C.2.2) frame header."""
    at = codestream.index(sof)
    return codestream[at + 4]


# -- the table ---------------------------------------------------------------------------


def test_registry_table_is_consistent() -> None:
    """In: the registry table.  Lossless preferences are lossless and encodable, lossy
    entries name their LossyImageCompressionMethod, native syntaxes need no codec, and
    :func:`registry.get` answers ``None`` for an unknown UID."""
    for uid in LOSSLESS_PREFERENCE:
        entry = REGISTRY[uid]
        assert entry.lossless and entry.can_encode and entry.encapsulated, uid
    for entry in REGISTRY.values():
        assert entry.uid and entry.name
        if entry.encapsulated and not entry.lossless and entry.can_encode:
            assert entry.method, entry.uid
        if not entry.encapsulated:
            assert entry.encoder is None and entry.can_encode, entry.uid
    assert REGISTRY[ts.JPEG_BASELINE].method == "ISO_10918_1"
    assert REGISTRY[ts.JPEG_LS_NEAR].method == "ISO_14495_1"
    assert registry.get("1.2.3.4") is None
    assert registry.get(ts.RLE) is REGISTRY[ts.RLE]
    assert not REGISTRY[ts.JPEG_EXTENDED].can_encode


def test_pixel_format_canonical_form() -> None:
    """In: Image Pixel modules of 1-bit, 8-bit, 16-bit signed and 8-bit RGB images.  dtype,
    shape, frame length (bit-packed for 1 bit) and the array view follow the canonical form."""
    seg = PixelFormat(5, 3, 1, 1, 1, 0, "MONOCHROME2")
    assert seg.dtype == np.dtype("u1") and seg.frame_length == 2 and seg.shape == (5, 3)
    ct = PixelFormat(2, 3, 1, 16, 12, 1, "MONOCHROME2")
    assert ct.dtype == np.dtype("<i2") and ct.frame_length == 12
    values = np.array([[-2048, -1, 0], [1, 2047, 5]], dtype="<i2")
    assert np.array_equal(ct.array(values.tobytes()), values)
    rgb = PixelFormat(2, 2, 3, 8, 8, 0, "RGB")
    assert rgb.shape == (2, 2, 3) and rgb.frame_length == 12
    assert rgb.array(bytes(range(12)))[1, 0].tolist() == [6, 7, 8]


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("uid", LOSSLESS_ENCODED)
def test_lossless_round_trip(uid: str, name: str) -> None:
    """In: a synthetic frame (ramp + noise + the extremes of Bits Stored) of each format.
    Every lossless encoder's fragment decodes, with our decoder, to exactly that frame, in
    the canonical dtype and shape."""
    fmt = FORMATS[name]
    arr = sample_frame(fmt)
    assert encode_problem(uid, fmt) is None
    fragment = encode_frame(uid, arr, fmt)
    assert isinstance(fragment, bytes) and fragment
    back = decode_frame(uid, fragment, fmt)
    assert back.dtype == fmt.dtype.newbyteorder("=")
    assert back.shape == fmt.shape
    assert np.array_equal(back, arr)


#: What pydicom must read back exactly: JPEG-LS, JPEG 2000, HTJ2K, RLE and JPEG lossless.
PYDICOM_CHECKED = [
    ts.HTJ2K_LOSSLESS,
    ts.HTJ2K_RPCL,
    ts.JPEG_LS_LOSSLESS,
    ts.J2K_LOSSLESS,
    ts.RLE,
    ts.JPEG_LOSSLESS_SV1,
]


@pytest.mark.parametrize("name", ["u8", "u12", "s12", "u16", "s16", "rgb8", "rgb16"])
@pytest.mark.parametrize("uid", PYDICOM_CHECKED)
def test_pydicom_decodes_our_fragments(uid: str, name: str) -> None:
    """In: two synthetic frames per format, encoded by us and wrapped in a minimal data set.
    pydicom's ``pixel_array`` (its own plugins, with its sign and unused-bit handling)
    returns exactly our frames and raises no warning about the codestream disagreeing with
    Bits Stored, Pixel Representation or Photometric Interpretation."""
    fmt = FORMATS[name]
    frames = [sample_frame(fmt, 1), sample_frame(fmt, 2)[::-1].copy()]
    fragments = [encode_frame(uid, f, fmt) for f in frames]
    arr, caught = pydicom_decode(uid, fragments, fmt)
    assert not caught, caught
    assert arr.shape == (2, *fmt.shape)
    assert arr.dtype == fmt.dtype.newbyteorder("=")
    assert np.array_equal(arr[0], frames[0]) and np.array_equal(arr[1], frames[1])


# -- codestream headers --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["u8", "u12", "s12", "u16", "s16", "rgb8"])
def test_codestream_precision_and_sign(name: str) -> None:
    """In: a synthetic frame per format.  JPEG-LS and JPEG lossless frame headers carry
    P = Bits Stored (PS3.5 §8.2.3, §8.2.1); the JPEG 2000 SIZ carries precision Bits Stored
    and the sign of Pixel Representation; HTJ2K carries the sign of Pixel Representation
    and a precision between Bits Stored and Bits Allocated, plus the CAP marker of Part 15."""
    fmt = FORMATS[name]
    arr = sample_frame(fmt)
    signed = bool(fmt.pixel_representation)
    jls = encode_frame(ts.JPEG_LS_LOSSLESS, arr, fmt)
    assert jpeg_precision(jls, b"\xff\xf7") == fmt.bits_stored
    jpll = encode_frame(ts.JPEG_LOSSLESS_SV1, arr, fmt)
    assert jpeg_precision(jpll, b"\xff\xc3") == fmt.bits_stored
    j2k = encode_frame(ts.J2K_LOSSLESS, arr, fmt)
    assert j2k_siz(j2k) == [(fmt.bits_stored, signed)] * fmt.samples_per_pixel
    for uid in (ts.HTJ2K_LOSSLESS, ts.HTJ2K_RPCL):
        ht = encode_frame(uid, arr, fmt)
        assert b"\xff\x50" in ht[:200], "no CAP marker segment (ISO 15444-15)"
        for precision, sign in j2k_siz(ht):
            assert sign == signed
            assert fmt.bits_stored <= precision <= fmt.bits_allocated


def test_htj2k_rpcl_has_rpcl_progression_and_tlm() -> None:
    """In: a 12-bit frame written as HTJ2K with RPCL Options (.4.202).  The COD marker says
    RPCL (progression order 2) and a TLM marker segment is present; plain HTJ2K lossless
    (.4.201) carries no TLM."""
    fmt = FORMATS["u12"]
    arr = sample_frame(fmt)
    rpcl = encode_frame(ts.HTJ2K_RPCL, arr, fmt)
    cod = rpcl.index(b"\xff\x52")
    assert rpcl[cod + 5] == 2, "progression order is not RPCL"
    assert b"\xff\x55" in rpcl
    plain = encode_frame(ts.HTJ2K_LOSSLESS, arr, fmt)
    assert b"\xff\x55" not in plain[: plain.index(b"\xff\x90")]


@pytest.mark.parametrize("uid", [ts.JPEG_LS_LOSSLESS, ts.JPEG_LOSSLESS_SV1, ts.JPEG_LOSSLESS])
def test_signed_12_bit_is_coded_as_its_two_complement_pattern(uid: str) -> None:
    """In: a signed 12-bit frame (PixelRepresentation 1, BitsStored 12) sign-extended to 16
    bits, with -2048, -1, 0 and 2047.  JPEG-LS and JPEG lossless code P = 12 and the 12-bit
    two's complement pattern (a plain decoder returns ``value & 0xFFF``); our decoder and
    pydicom sign-extend it back to the original values."""
    import imagecodecs

    fmt = FORMATS["s12"]
    arr = sample_frame(fmt)
    arr[0, :4] = [-2048, -1, 0, 2047]
    fragment = encode_frame(uid, arr, fmt)
    sof = b"\xff\xf7" if uid == ts.JPEG_LS_LOSSLESS else b"\xff\xc3"
    assert jpeg_precision(fragment, sof) == 12
    plain = (
        imagecodecs.jpegls_decode(fragment)
        if uid == ts.JPEG_LS_LOSSLESS
        else imagecodecs.ljpeg_decode(fragment)
    )
    assert np.array_equal(plain.astype(np.uint16), arr.view(np.uint16) & 0x0FFF)
    assert np.array_equal(decode_frame(uid, fragment, fmt), arr)
    decoded, caught = pydicom_decode(uid, [fragment], fmt)
    assert not caught, caught
    assert np.array_equal(decoded, arr)


def test_rgb_colour_transform_is_reversible_and_labelled() -> None:
    """In: an 8-bit RGB frame with pure red, green and blue pixels.  JPEG 2000 and HTJ2K
    apply the reversible colour transform (MCT on in the COD marker) and the registry labels
    them YBR_RCT (PS3.5 §8.2.4); JPEG-LS and JPEG lossless apply none.  Every decoder returns
    the same RGB samples."""
    fmt = FORMATS["rgb8"]
    arr = sample_frame(fmt)
    arr[0, 0], arr[0, 1], arr[0, 2] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    for uid in (ts.J2K_LOSSLESS, ts.HTJ2K_LOSSLESS, ts.JPEG_LS_LOSSLESS, ts.JPEG_LOSSLESS_SV1):
        back = decode_frame(uid, encode_frame(uid, arr, fmt), fmt)
        assert back[0, :3].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]], uid
    for uid in (ts.J2K_LOSSLESS, ts.HTJ2K_LOSSLESS):
        stream = encode_frame(uid, arr, fmt)
        cod = stream.index(b"\xff\x52")
        assert stream[cod + 8] == 1, f"{uid}: no multiple component transform"
        assert encoded_photometric(uid, fmt) == "YBR_RCT"
    for uid in (ts.JPEG_LS_LOSSLESS, ts.JPEG_LOSSLESS_SV1, ts.RLE):
        assert encoded_photometric(uid, fmt) == "RGB"


# -- lossy syntaxes (only on request) -------------------------------------------------------


def test_lossy_encoders_stay_within_their_bounds() -> None:
    """In: 8-bit greyscale and RGB frames and a 12-bit frame.  JPEG-LS near-lossless keeps
    every sample within NEAR = 2; JPEG baseline (quality 90) decodes close to the input;
    neither is listed as lossless."""
    for name in ("u8", "u12", "rgb8"):
        fmt = FORMATS[name]
        arr = sample_frame(fmt)
        back = decode_frame(ts.JPEG_LS_NEAR, encode_frame(ts.JPEG_LS_NEAR, arr, fmt), fmt)
        assert np.abs(back.astype(np.int64) - arr).max() <= 2, name
    for name in ("u8", "rgb8"):
        fmt = FORMATS[name]
        smooth = np.clip(sample_frame(fmt).astype(np.int64), 0, 255).astype(np.uint8)
        smooth = np.sort(smooth, axis=1)  # photographic, not noise
        fragment = encode_frame(ts.JPEG_BASELINE, smooth, fmt)
        assert fragment[:2] == b"\xff\xd8"
        photometric = encoded_photometric(ts.JPEG_BASELINE, fmt)
        out_fmt = PixelFormat(fmt.rows, fmt.columns, fmt.samples_per_pixel, 8, 8, 0, photometric)
        decoded, caught = pydicom_decode(ts.JPEG_BASELINE, [fragment], out_fmt)
        assert not caught, caught
        assert np.abs(decoded.astype(np.int64) - smooth).mean() < 4, name
    assert not REGISTRY[ts.JPEG_BASELINE].lossless and not REGISTRY[ts.JPEG_LS_NEAR].lossless


def test_encoded_photometric() -> None:
    """In: RGB and greyscale formats.  Colour JPEG baseline, written YCbCr-transformed
    without subsampling, is relabelled YBR_FULL; colour JPEG 2000 / HTJ2K, written with the
    reversible colour transform, YBR_RCT; everything else keeps its Photometric
    Interpretation."""
    assert encoded_photometric(ts.JPEG_BASELINE, FORMATS["rgb8"]) == "YBR_FULL"
    assert encoded_photometric(ts.JPEG_BASELINE, FORMATS["u8"]) == "MONOCHROME2"
    rct = {ts.J2K_LOSSLESS, ts.J2K, ts.HTJ2K_LOSSLESS, ts.HTJ2K_RPCL, ts.HTJ2K}
    for uid in LOSSLESS_ENCODED:
        want = "YBR_RCT" if uid in rct else "RGB"
        assert encoded_photometric(uid, FORMATS["rgb8"]) == want, uid
        assert encoded_photometric(uid, FORMATS["u16"]) == "MONOCHROME1"


# -- refusals --------------------------------------------------------------------------------


WIDE = {
    "u12 with 4096": (FORMATS["u12"], 4096),
    "u12 with 0xF000 (overlay bits)": (FORMATS["u12"], 0xF123),
    "s12 with 2048": (FORMATS["s12"], 2048),
    "s12 with -2049": (FORMATS["s12"], -2049),
    "u8 at 7 bits with 128": (PixelFormat(48, 37, 1, 8, 7, 0, "MONOCHROME2"), 128),
}


@pytest.mark.parametrize("case", list(WIDE))
def test_samples_wider_than_bits_stored(case: str) -> None:
    """In: frames whose Bits Stored is exceeded by one sample.  JPEG-LS (lossless and
    near-lossless), JPEG lossless and RLE, whose decoders keep only Bits Stored bits, refuse
    with a CodecError naming Bits Stored; JPEG 2000 and HTJ2K code the full width and
    round-trip exactly."""
    fmt, value = WIDE[case]
    arr = sample_frame(fmt)
    arr.flat[17] = np.array(value).astype(fmt.dtype)
    for uid in (ts.JPEG_LS_LOSSLESS, ts.JPEG_LS_NEAR, ts.JPEG_LOSSLESS_SV1, ts.RLE):
        with pytest.raises(CodecError, match=rf"BitsStored \({fmt.bits_stored}\)"):
            encode_frame(uid, arr, fmt)
    for uid in (ts.J2K_LOSSLESS, ts.HTJ2K_LOSSLESS, ts.HTJ2K_RPCL):
        assert np.array_equal(decode_frame(uid, encode_frame(uid, arr, fmt), fmt), arr), uid


def _fmt(**kw: Any) -> PixelFormat:
    base: dict[str, Any] = {
        "rows": 8,
        "columns": 8,
        "samples_per_pixel": 1,
        "bits_allocated": 16,
        "bits_stored": 16,
        "pixel_representation": 0,
        "photometric_interpretation": "MONOCHROME2",
    }
    base.update(kw)
    return PixelFormat(**base)


PROBLEMS = [
    ("1.2.3.4", _fmt(), "not supported"),
    (ts.EBE, _fmt(), "retired"),
    (ts.JPEG_EXTENDED, _fmt(), "no encoder"),
    (ts.HTJ2K_LOSSLESS, _fmt(bits_allocated=1, bits_stored=1), "Bits Allocated 1"),
    (ts.RLE, _fmt(bits_allocated=1, bits_stored=1), "Bits Allocated 1"),
    (ts.JPEG_LS_LOSSLESS, _fmt(bits_allocated=32, bits_stored=32), "Bits Allocated 32"),
    (ts.J2K_LOSSLESS, _fmt(bits_allocated=32, bits_stored=32), "Bits Allocated 32"),
    (ts.RLE, _fmt(samples_per_pixel=4, photometric_interpretation="ARGB"), "4 samples"),
    (ts.J2K_LOSSLESS, _fmt(samples_per_pixel=3, photometric_interpretation="YBR_FULL"), "YBR_FULL"),
    (ts.HTJ2K_RPCL, _fmt(samples_per_pixel=3, photometric_interpretation="YBR_FULL"), "YBR_FULL"),
    (
        ts.JPEG_LOSSLESS_SV1,
        _fmt(
            samples_per_pixel=3,
            bits_allocated=8,
            bits_stored=8,
            photometric_interpretation="YBR_FULL",
        ),
        "YBR_FULL",
    ),
    (
        ts.RLE,
        _fmt(
            samples_per_pixel=3,
            bits_allocated=8,
            bits_stored=8,
            photometric_interpretation="YBR_FULL_422",
        ),
        "YBR_FULL_422",
    ),
    (
        ts.JPEG_LS_LOSSLESS,
        _fmt(
            samples_per_pixel=3,
            bits_allocated=8,
            bits_stored=8,
            photometric_interpretation="YBR_FULL_422",
        ),
        "YBR_FULL_422",
    ),
    (ts.J2K_LOSSLESS, _fmt(photometric_interpretation=""), "no photometric"),
    (ts.JPEG_LS_LOSSLESS, _fmt(bits_allocated=8, bits_stored=1), "Bits Stored 1"),
    (ts.JPEG_LOSSLESS_SV1, _fmt(bits_allocated=8, bits_stored=1), "Bits Stored 1"),
    (ts.JPEG_BASELINE, _fmt(), "Bits Stored 8 only"),
    (ts.JPEG_BASELINE, _fmt(bits_allocated=8, bits_stored=7), "Bits Stored 7"),
    (ts.JPEG_BASELINE, _fmt(bits_allocated=8, bits_stored=8, pixel_representation=1), "signed"),
    (
        ts.JPEG_BASELINE,
        _fmt(bits_allocated=8, bits_stored=8, photometric_interpretation="PALETTE COLOR"),
        "PALETTE COLOR",
    ),
]


@pytest.mark.parametrize(("uid", "fmt", "words"), PROBLEMS, ids=[w for _, _, w in PROBLEMS])
def test_encode_problem_messages(uid: str, fmt: PixelFormat, words: str) -> None:
    """In: (syntax, Image Pixel module) combinations the registry cannot write.
    :func:`encode_problem` says why, and :func:`encode_frame` raises a CodecError (a
    CannotTranscode) with that message before encoding anything."""
    problem = encode_problem(uid, fmt)
    assert problem is not None and words in problem, problem
    if uid in REGISTRY:
        with pytest.raises(CodecError) as info:
            encode_frame(uid, np.zeros(fmt.shape, dtype=fmt.dtype), fmt)
        assert isinstance(info.value, CannotTranscode)
        assert str(info.value) == problem


ACCEPTED = [
    (ts.HTJ2K_LOSSLESS, _fmt(pixel_representation=1)),
    (
        ts.J2K_LOSSLESS,
        _fmt(
            samples_per_pixel=3, bits_allocated=8, bits_stored=8, photometric_interpretation="RGB"
        ),
    ),
    (
        ts.JPEG_LS_LOSSLESS,
        _fmt(
            samples_per_pixel=3,
            bits_allocated=8,
            bits_stored=8,
            photometric_interpretation="YBR_FULL",
        ),
    ),
    (
        ts.RLE,
        _fmt(
            samples_per_pixel=3,
            bits_allocated=8,
            bits_stored=8,
            photometric_interpretation="YBR_FULL",
        ),
    ),
    (ts.JPEG_LOSSLESS_SV1, _fmt(bits_stored=12, photometric_interpretation="MONOCHROME1")),
    (ts.RLE, _fmt(bits_allocated=8, bits_stored=8, photometric_interpretation="PALETTE COLOR")),
    (
        ts.JPEG_BASELINE,
        _fmt(
            samples_per_pixel=3, bits_allocated=8, bits_stored=8, photometric_interpretation="RGB"
        ),
    ),
    (ts.ELE, _fmt(bits_allocated=1, bits_stored=1)),
    (ts.ILE, _fmt(bits_allocated=32, bits_stored=32, photometric_interpretation="YBR_FULL_422")),
    (ts.DEFLATED_ELE, _fmt(samples_per_pixel=4, photometric_interpretation="")),
]


@pytest.mark.parametrize(("uid", "fmt"), ACCEPTED)
def test_encode_problem_accepts(uid: str, fmt: PixelFormat) -> None:
    """In: combinations the registry writes (native syntaxes take anything).
    :func:`encode_problem` answers ``None``."""
    assert encode_problem(uid, fmt) is None


def test_decode_errors_are_codec_errors() -> None:
    """In: bytes that are no codestream, and a native syntax (which has no frame decoder).
    :func:`decode_frame` raises CodecError with a message, never a library exception."""
    fmt = FORMATS["u12"]
    for uid in (ts.HTJ2K_LOSSLESS, ts.J2K_LOSSLESS, ts.JPEG_LS_LOSSLESS, ts.JPEG_LOSSLESS_SV1):
        with pytest.raises(CodecError, match="decoder failed"):
            decode_frame(uid, b"\x00\x01not a codestream" * 4, fmt)
    with pytest.raises(CodecError, match="no frame decoder"):
        decode_frame(ts.ELE, b"\x00" * fmt.frame_length, fmt)
    with pytest.raises(CodecError, match="no frame decoder"):
        decode_frame("1.2.3.4", b"", fmt)


def test_pydicom_is_what_we_check_against() -> None:
    """In: nothing but the environment.  The pydicom plugins the decoding checks above
    rely on are installed (HTJ2K and J2K via pylibjpeg-openjpeg, JPEG-LS, JPEG lossless,
    RLE), so those tests cannot pass by skipping."""
    from pydicom.pixels.decoders.base import get_decoder

    for uid in PYDICOM_CHECKED:
        assert get_decoder(UID(uid)).is_available, uid
