"""Whole-instance transcoding, the pixel digest and frames in another syntax
(codecs/transcode.py) against the real sample files of ../shared/dicom-samples and
pydicom-data.

What is checked: every lossless NEMA WG04 file decodes to exactly the pixels of its
uncompressed reference; the same image stored in several lossless syntaxes has one pixel
digest; HTJ2K samples decode and re-encode; a representative set of instances (8/12/16
bit, signed and unsigned, MONOCHROME1/2, RGB, YBR, PALETTE COLOR, single and
multi-frame, 1-bit SEG, 32-bit dose, float, icon image) goes into every lossless target
with verification, keeping the pixel digest, the UIDs and every attribute the module
docstring does not allow to change — or is refused with a CodecError for the documented
reasons; lossy JPEG baseline only on request and marked as lossy; :func:`encoded_frames`
passes stored fragments through.  Sample files are only read; outputs stay in memory or
``tmp_path``.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.pixels.utils import pixel_array

from conftest import MANIFEST, SAMPLES, Sample
from dicomhub.codecs import registry
from dicomhub.codecs.registry import CodecError, PixelFormat
from dicomhub.codecs.transcode import (
    canonical_pixels,
    encoded_frames,
    pixel_digest,
    pixel_digest_of_bytes,
    transcode,
    transcode_bytes,
)
from dicomhub.core import syntaxes as ts
from dicomhub.core.errors import CannotTranscode, FrameOutOfRange

Array = npt.NDArray[Any]

WG04 = SAMPLES / "nema-wg04"
LJ = SAMPLES / "pylibjpeg-data" / "ljdata_ds"
HT = SAMPLES / "pydicom-data-htj2k"

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.skipif(
        not (SAMPLES / "MANIFEST.tsv").exists(), reason="shared DICOM samples are not present"
    ),
]

#: The lossless targets of the issue: HTJ2K .201/.202, JPEG-LS, J2K, JPEG LL SV1, RLE and
#: the three native syntaxes.
TARGETS = {
    "htj2k": ts.HTJ2K_LOSSLESS,
    "htj2k-rpcl": ts.HTJ2K_RPCL,
    "jpeg-ls": ts.JPEG_LS_LOSSLESS,
    "j2k": ts.J2K_LOSSLESS,
    "jpeg-ll": ts.JPEG_LOSSLESS_SV1,
    "rle": ts.RLE,
    "ele": ts.ELE,
    "ile": ts.ILE,
    "deflated": ts.DEFLATED_ELE,
}
ALL = frozenset(TARGETS.values())
NATIVE = frozenset({ts.ELE, ts.ILE, ts.DEFLATED_ELE})
ENCAPSULATED = ALL - NATIVE
J2K_FAMILY = frozenset({ts.HTJ2K_LOSSLESS, ts.HTJ2K_RPCL, ts.J2K_LOSSLESS})

#: What a lossless transcode may change besides the File Meta Transfer Syntax UID (module
#: docstring of codecs/transcode.py): Pixel Data and its offset tables, Planar
#: Configuration, Photometric Interpretation.  Retired group lengths (gggg,0000) are
#: not written either.
MAY_CHANGE = frozenset({0x7FE00010, 0x7FE00001, 0x7FE00002, 0x00280006, 0x00280004})


def pydicom_data(name: str) -> Path:
    """A file of the pydicom-data package."""
    found = get_testdata_file(name)
    assert found is not None, name
    return Path(str(found))


def read(src: Path | bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(src, bytes):
            return pydicom.dcmread(io.BytesIO(src), force=True)
        return pydicom.dcmread(src, force=True)


def as_list(value: Any) -> list[Any]:
    """A multi-valued element's values, a single value as a one-item list."""
    return list(value) if isinstance(value, MultiValue) else [value]


def encoded_elements(ds: Dataset) -> dict[int, bytes]:
    """Each top-level element but those that may change, encoded as Implicit VR Little
    Endian: equal bytes whatever syntax (and so VRs) the file was read with."""
    out: dict[int, bytes] = {}
    for elem in ds:
        if int(elem.tag) in MAY_CHANGE or elem.tag.element == 0:
            continue
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = True
        single = Dataset()
        single.add(elem)
        write_dataset(fp, single)
        out[int(elem.tag)] = fp.getvalue()
    return out


def stored_frames(ds: Dataset) -> list[bytes]:
    """The fragments of each frame of an encapsulated data set (PS3.5 §A.4)."""
    count = int(ds.get("NumberOfFrames") or 1)
    return [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=count)]


def canonical_arrays(path: Path) -> tuple[PixelFormat, list[Array]]:
    pixels = canonical_pixels(path)
    return pixels.format, [pixels.format.array(f).copy() for f in pixels.frames]


# -- 1. lossless samples against their references -------------------------------------------

LOSSLESS_FOLDERS = ("J2KR", "JLSL", "JPLL", "RLE")
WG04_LOSSLESS = [
    s for s in MANIFEST if s.id.startswith(tuple(f"nema-wg04/{d}/" for d in LOSSLESS_FOLDERS))
]


def wg04_reference(sample: Sample) -> Path:
    """CT1_J2KR, CT1_JLSL, CT1_JPLL, CT1_RLE ↔ REF/CT1_UNC."""
    return WG04 / "REF" / f"{sample.path.name.split('_')[0]}_UNC"


def test_wg04_lossless_set_is_complete() -> None:
    """In: the MANIFEST rows of nema-wg04.  Every lossless folder has files and every file
    has its REF counterpart, so the parametrised comparison below covers them all."""
    for folder in LOSSLESS_FOLDERS:
        assert any(s.id.startswith(f"nema-wg04/{folder}/") for s in WG04_LOSSLESS), folder
    assert len(WG04_LOSSLESS) == sum(
        1 for d in LOSSLESS_FOLDERS for f in (WG04 / d).iterdir() if f.is_file()
    )
    for sample in WG04_LOSSLESS:
        assert wg04_reference(sample).is_file(), sample.id


@pytest.mark.parametrize("sample", WG04_LOSSLESS, ids=lambda s: s.id)
def test_wg04_lossless_decodes_to_reference(sample: Sample) -> None:
    """In: one NEMA WG04 file in JPEG 2000 lossless, JPEG-LS lossless, JPEG lossless
    (12- and 16-bit included) or RLE, and its uncompressed REF file.  The canonical frames
    equal, sample for sample, pydicom's raw decoding of the REF file; the REF file's
    canonical form is its stored Pixel Data; both pixel digests are equal."""
    ref = wg04_reference(sample)
    fmt, (frame,) = canonical_arrays(sample.path)
    ref_fmt, (ref_frame,) = canonical_arrays(ref)
    assert fmt == ref_fmt
    ref_ds = read(ref)
    assert ref_frame.tobytes() == bytes(ref_ds.PixelData)[: ref_fmt.frame_length]
    ref_pixels = pixel_array(str(ref), raw=True)
    assert np.array_equal(frame, ref_pixels), "decoded pixels differ from REF"
    assert frame.dtype == ref_pixels.dtype
    digest = pixel_digest(sample.path)
    assert digest is not None
    assert digest == pixel_digest(ref)
    assert digest == hashlib.sha256(ref_frame.tobytes()).hexdigest()


#: One image in several lossless encodings each: one pixel digest per family.
FAMILIES = {
    "MR 12-bit in 9 syntaxes (dcm-qa)": [
        SAMPLES / "dcm-qa-transfer-syntaxes" / f"{i}.dcm" for i in range(1, 10)
    ],
    "MR 12-bit 10 frames": [
        LJ / "LittleEndianExplicit/emri_small.dcm",
        LJ / "JPEG2000Lossless/emri_small_jpeg_2k_lossless.dcm",
        LJ / "JPEGLSLossless/emri_small_jpeg_ls_lossless.dcm",
        LJ / "RLELossless/emri_small_RLE.dcm",
    ],
    "RGB 2 frames": [
        LJ / "LittleEndianExplicit/SC_rgb_2frame.dcm",
        LJ / "RLELossless/SC_rgb_rle_2frame.dcm",
    ],
    "palette 2 frames": [
        LJ / "LittleEndianExplicit/OBXXXX1A_2frame.dcm",
        LJ / "RLELossless/OBXXXX1A_rle_2frame.dcm",
    ],
    "JPEG-LS RGB interleave 0/1/2": [HT / f"JLSL_RGB_ILV{i}.dcm" for i in range(3)],
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_image_in_lossless_syntaxes_has_one_digest(family: str) -> None:
    """In: the same image stored in several lossless syntaxes (native little/big endian,
    RLE, JPEG lossless, JPEG-LS with every interleave mode, JPEG 2000).  All have one and
    the same, non-empty, pixel digest."""
    digests = {path.name: pixel_digest(path) for path in FAMILIES[family]}
    assert None not in digests.values(), digests
    assert len(set(digests.values())) == 1, digests


# -- 2. HTJ2K samples ----------------------------------------------------------------------

HTJ2K_UIDS = (ts.HTJ2K_LOSSLESS, ts.HTJ2K_RPCL, ts.HTJ2K)
HTJ2K_SAMPLES = [s for s in MANIFEST if s.transfer_syntax_uid in HTJ2K_UIDS]


def test_htj2k_samples_present() -> None:
    """In: the MANIFEST.  There are HTJ2K lossless (.201) and HTJ2K (.203) samples (no
    .202 sample exists; .202 is produced and read back in the re-encode test)."""
    syntaxes = {s.transfer_syntax_uid for s in HTJ2K_SAMPLES}
    assert {ts.HTJ2K_LOSSLESS, ts.HTJ2K} <= syntaxes


@pytest.mark.parametrize("sample", HTJ2K_SAMPLES, ids=lambda s: s.id)
def test_htj2k_sample_decodes(sample: Sample) -> None:
    """In: an HTJ2K sample (8-bit RGB, .201 lossless or .203).  Its canonical frames have
    the MANIFEST's frame count and the Image Pixel module's size and equal pydicom's raw
    pixel_array; for the lossless sample they also equal OpenJPH's decoding of the stored
    fragment (imagecodecs, our registry's decoder).  Irreversible .203 streams are not
    bit-exact across decoders: OpenJPH differs from OpenJPEG by ±1 and wraps one
    overflowing sample of HTJ2K_08_RGB.dcm to 0 where OpenJPEG clamps to 255."""
    import imagecodecs

    fmt, frames = canonical_arrays(sample.path)
    assert len(frames) == sample.frames
    assert fmt.photometric_interpretation == sample.photometric
    assert all(frame.nbytes == fmt.frame_length for frame in frames)
    decoded = pixel_array(str(sample.path), raw=True)
    assert np.array_equal(np.asarray(frames).reshape(decoded.shape), decoded)
    assert pixel_digest(sample.path) is not None
    if sample.transfer_syntax_uid in (ts.HTJ2K_LOSSLESS, ts.HTJ2K_RPCL):
        fragments = stored_frames(read(sample.path))
        for frame, fragment in zip(frames, fragments, strict=True):
            openjph = imagecodecs.htj2k_decode(fragment).reshape(fmt.shape)
            assert np.array_equal(frame, openjph)
            assert np.array_equal(frame, registry.decode_frame(ts.HTJ2K_LOSSLESS, fragment, fmt))


@pytest.mark.parametrize("target", [*HTJ2K_UIDS, ts.J2K_LOSSLESS, ts.ELE])
@pytest.mark.parametrize("sample", HTJ2K_SAMPLES, ids=lambda s: s.id)
def test_htj2k_sample_reencodes(sample: Sample, target: str) -> None:
    """In: an HTJ2K sample, re-encoded in HTJ2K lossless, HTJ2K RPCL, HTJ2K, JPEG 2000 and
    Explicit VR Little Endian with verification.  The output is in the target syntax, has
    the source's pixel digest, and pydicom decodes it to the source's decoded pixels; the
    .202 fragments are RPCL with a TLM marker segment."""
    data = transcode_bytes(sample.path, target, verify=True)
    out = read(data)
    assert str(out.file_meta.TransferSyntaxUID) == target
    assert pixel_digest_of_bytes(data) == pixel_digest(sample.path) is not None
    src_pixels = pixel_array(str(sample.path), raw=True)
    assert np.array_equal(pixel_array(io.BytesIO(data), raw=True), src_pixels)
    if target == ts.HTJ2K_RPCL:
        for fragment in stored_frames(out):
            assert fragment[fragment.index(b"\xff\x52") + 5] == 2  # RPCL
            assert b"\xff\x55" in fragment  # TLM


# -- 3. every lossless target for a representative set -------------------------------------


@dataclass(frozen=True)
class Case:
    """One input of the matrix: which targets must succeed and which must be refused (with
    words the CodecError message must contain); any other target may do either."""

    what: str
    path: Path
    must: frozenset[str]
    refuse: Mapping[str, str] = field(default_factory=dict)
    photometric: str | None = None  # Photometric Interpretation of the output, if it changes
    digest: bool = True  # False: no decodable Pixel Data (float), both digests are None


def _refuse(targets: frozenset[str], words: str) -> dict[str, str]:
    return dict.fromkeys(targets, words)


CASES: dict[str, Case] = {
    "ct-16s": Case("CT 16-bit signed (CT_small)", LJ / "LittleEndianExplicit/CT_small.dcm", ALL),
    "ct-14s": Case("CT 16/14 signed (693_UNCR)", pydicom_data("693_UNCR.dcm"), ALL),
    "mr-12u-10f": Case(
        "MR 16/12 unsigned, 10 frames (emri_small)", LJ / "LittleEndianExplicit/emri_small.dcm", ALL
    ),
    "mr-12u-jpll": Case("MR 16/12 in JPEG lossless (MR4_JPLL)", WG04 / "JPLL/MR4_JPLL", ALL),
    "cr-mono1": Case("CR MONOCHROME1 16/10 (RG3_UNC)", WG04 / "REF/RG3_UNC", ALL),
    "mono-8-7": Case("8/7 in JPEG-LS (JLSL_08_07)", HT / "JLSL_08_07_0_1F.dcm", ALL),
    "mono-16-15s": Case("16/15 signed in JPEG-LS (JLSL_16_15_1)", HT / "JLSL_16_15_1_1F.dcm", ALL),
    "us-mono-8": Case(
        "US 8-bit greyscale in JPEG lossless",
        LJ / "JPEGLosslessSV1/JPEGLosslessP14SV1_1s_1f_u_08_08.dcm",
        ALL,
    ),
    "rgb-8": Case("RGB 8-bit (SC_rgb)", LJ / "LittleEndianExplicit/SC_rgb.dcm", ALL),
    "rgb-8-rle-2f": Case(
        "RGB 8-bit, 2 frames, RLE (SC_rgb_rle_2frame)",
        LJ / "RLELossless/SC_rgb_rle_2frame.dcm",
        ALL,
    ),
    "rgb-16-2f": Case(
        "RGB 16-bit, 2 frames", LJ / "LittleEndianExplicit/SC_rgb_16bit_2frame.dcm", ALL
    ),
    "rgb-planar-1": Case(
        "US RGB stored colour-by-plane (color-pl)", pydicom_data("color-pl.dcm"), ALL
    ),
    "us-rgb-2f": Case(
        "US RGB multi-frame in JPEG lossless",
        LJ / "JPEGLosslessSV1/JPEGLosslessP14SV1_3s_2f_u_08_08.dcm",
        ALL,
    ),
    "us-ybr-rct-j2k": Case(
        "US YBR_RCT JPEG 2000 lossless (US1_J2KR)", WG04 / "J2KR/US1_J2KR", ALL, photometric="RGB"
    ),
    "ybr-full": Case(
        "native YBR_FULL (SC_ybr_full_uncompressed)",
        pydicom_data("SC_ybr_full_uncompressed.dcm"),
        NATIVE | {ts.JPEG_LS_LOSSLESS, ts.RLE},
        _refuse(J2K_FAMILY | {ts.JPEG_LOSSLESS_SV1}, "does not carry YBR_FULL photometric"),
    ),
    "ybr-full-422": Case(
        "native YBR_FULL_422 (SC_ybr_full_422_uncompressed)",
        pydicom_data("SC_ybr_full_422_uncompressed.dcm"),
        NATIVE,
        _refuse(ENCAPSULATED, "YBR_FULL_422"),
    ),
    "jpeg-ybr-422": Case(
        "JPEG baseline YBR_FULL_422 (lossy source, decoded as YBR_FULL)",
        LJ / "JPEGBaseline/SC_rgb_dcmtk_+eb+cy+np.dcm",
        NATIVE | {ts.JPEG_LS_LOSSLESS, ts.RLE},
        _refuse(J2K_FAMILY | {ts.JPEG_LOSSLESS_SV1}, "does not carry YBR_FULL photometric"),
        photometric="YBR_FULL",
    ),
    "palette-2f": Case(
        "US PALETTE COLOR 8-bit, 2 frames", LJ / "LittleEndianExplicit/OBXXXX1A_2frame.dcm", ALL
    ),
    "palette-16": Case("US PALETTE COLOR 16-bit", pydicom_data("gdcm-US-ALOKA-16.dcm"), ALL),
    "seg-1bit": Case(
        "SEG 1-bit, 3 frames (liver)",
        SAMPLES / "dcmqi-seg-paramaps/segmentations/liver.dcm",
        NATIVE,
        _refuse(ENCAPSULATED, "Bits Allocated 1"),
    ),
    "seg-1bit-unaligned": Case(
        "SEG 1-bit, frames not byte-aligned (liver_nonbyte_aligned)",
        HT / "liver_nonbyte_aligned.dcm",
        NATIVE,
        _refuse(ENCAPSULATED, "Bits Allocated 1"),
    ),
    "dose-32": Case(
        "RT dose 32-bit, 15 frames",
        LJ / "LittleEndianImplicit/rtdose.dcm",
        NATIVE,
        _refuse(ENCAPSULATED, "Bits Allocated 32"),
    ),
    "float": Case(
        "parametric map, Float Pixel Data",
        HT / "parametric_map_float.dcm",
        NATIVE,
        _refuse(ENCAPSULATED, "float"),
        digest=False,
    ),
    "icon": Case(
        "MR with an Icon Image Sequence",
        pydicom_data("MR-SIEMENS-DICOM-WithOverlays.dcm"),
        NATIVE,
        _refuse(ENCAPSULATED, "nested in a sequence"),
    ),
    "wide-s12": Case(
        "16/12 signed with samples beyond 12 bits (mlut_18)",
        pydicom_data("mlut_18.dcm"),
        NATIVE,
        _refuse(frozenset({ts.JPEG_LS_LOSSLESS, ts.JPEG_LOSSLESS_SV1, ts.RLE}), "BitsStored (12)"),
    ),
    "big-endian": Case("MR in Explicit VR Big Endian", pydicom_data("MR_small_bigendian.dcm"), ALL),
    "deflated": Case("8-bit in Deflated Explicit VR LE", pydicom_data("image_dfl.dcm"), ALL),
}


@pytest.fixture(scope="module")
def source_digests() -> dict[str, str | None]:
    return {name: pixel_digest(case.path) for name, case in CASES.items()}


@pytest.mark.parametrize("target", list(TARGETS.values()), ids=list(TARGETS))
@pytest.mark.parametrize("name", list(CASES))
def test_transcode_to_every_lossless_target(
    name: str, target: str, source_digests: dict[str, str | None]
) -> None:
    """In: one instance of the representative set (see CASES: its ``what``) and one lossless
    target, through ``transcode_bytes(path, target, verify=True)``.  Either the output is in
    the target syntax, has the input's pixel digest, one fragment per frame when
    encapsulated, the same SOP Instance UID and File Meta Information, and every other
    attribute byte for byte, only Pixel Data, Planar Configuration (0) and, where
    decoding changes it, Photometric Interpretation differing; or — never for the
    targets the case must reach — a CodecError (a CannotTranscode) says why."""
    case = CASES[name]
    src = read(case.path)
    try:
        data = transcode_bytes(case.path, target, verify=True)
    except CodecError as exc:
        assert isinstance(exc, CannotTranscode)
        assert target not in case.must, f"{case.what} → {target}: {exc}"
        assert str(exc)
        if target in case.refuse:
            assert case.refuse[target] in str(exc), str(exc)
        return
    assert target not in case.refuse, f"{case.what} → {target} must be refused"
    out = read(data)
    assert str(out.file_meta.TransferSyntaxUID) == target
    digest = pixel_digest_of_bytes(data)
    assert digest == source_digests[name]
    assert (digest is not None) == case.digest
    assert out.get("SOPInstanceUID") == src.get("SOPInstanceUID")
    for elem in src.file_meta:
        if elem.tag not in (0x00020000, 0x00020010):
            assert out.file_meta.get(elem.tag) == elem, elem
    added = set(out.file_meta.keys()) - set(src.file_meta.keys())
    assert added <= {0x00020000, 0x00020013}, added  # pydicom adds a missing version name
    before, after = encoded_elements(src), encoded_elements(out)
    assert sorted(before) == sorted(after), set(before) ^ set(after)
    changed = [hex(tag) for tag in before if before[tag] != after[tag]]
    assert not changed, changed
    if str(src.file_meta.TransferSyntaxUID) == target:  # nothing to re-encode: as stored
        assert out.get("PixelData") == src.get("PixelData")
        assert out.get("PhotometricInterpretation") == src.get("PhotometricInterpretation")
        assert out.get("PlanarConfiguration") == src.get("PlanarConfiguration")
    elif "PixelData" in src:
        want = case.photometric or str(src.PhotometricInterpretation)
        colour_transformed = (ts.J2K_LOSSLESS, ts.J2K, ts.HTJ2K_LOSSLESS, ts.HTJ2K_RPCL, ts.HTJ2K)
        if target in colour_transformed and want == "RGB":
            want = "YBR_RCT"  # reversible colour transform, PS3.5 §8.2.4
        assert out.PhotometricInterpretation == want
        if int(src.get("SamplesPerPixel") or 1) > 1:
            assert out.PlanarConfiguration == 0
        if target in ENCAPSULATED:
            assert len(stored_frames(out)) == int(src.get("NumberOfFrames") or 1)
    else:
        assert out["FloatPixelData"].value == src["FloatPixelData"].value


def test_matrix_cannot_pass_by_refusing() -> None:
    """In: the CASES table.  The 16-bit signed CT, 12-bit MR, MONOCHROME1, RGB (8/16 bit,
    multi-frame, planar), palette and big endian inputs must reach every lossless target;
    every refused combination is one the module docstring documents."""
    for name in (
        "ct-16s",
        "ct-14s",
        "mr-12u-10f",
        "cr-mono1",
        "rgb-8",
        "rgb-16-2f",
        "rgb-planar-1",
        "palette-2f",
        "big-endian",
    ):
        assert CASES[name].must == ALL, name
    for case in CASES.values():
        assert case.must >= NATIVE, case.what
        assert not set(case.must) & set(case.refuse), case.what


def test_planar_configuration_restored_on_request(tmp_path: Path) -> None:
    """In: an RGB image stored colour-by-plane (color-pl.dcm) re-encoded in HTJ2K and back
    to Explicit VR Little Endian with ``planar_configuration=1`` into a file under tmp_path.
    The restored Pixel Data is byte for byte the original, Planar Configuration 1."""
    src = pydicom_data("color-pl.dcm")
    htj2k = tmp_path / "color-pl.htj2k.dcm"
    result = transcode(src, ts.HTJ2K_LOSSLESS, htj2k, verify=True)
    assert result.pixel_digest == pixel_digest(src) == pixel_digest(htj2k)
    assert result.size == htj2k.stat().st_size
    restored = tmp_path / "color-pl.restored.dcm"
    transcode(htj2k, ts.ELE, restored, planar_configuration=1, verify=True)
    original, back = read(src), read(restored)
    assert back.PlanarConfiguration == 1
    assert bytes(back.PixelData) == bytes(original.PixelData)


def test_refusals_that_need_no_decoding() -> None:
    """In: an unknown target UID, Explicit VR Big Endian as target, and a big endian
    palette image whose LUT data (OW) would need byte swapping.  Each raises CodecError."""
    mr = pydicom_data("MR_small.dcm")
    with pytest.raises(CodecError, match="not supported"):
        transcode_bytes(mr, "1.2.3.4")
    with pytest.raises(CodecError, match="retired"):
        transcode_bytes(mr, ts.EBE)
    with pytest.raises(CodecError, match="big endian"):
        transcode_bytes(pydicom_data("OBXXXX1A_expb_2frame.dcm"), ts.ELE)


# -- 5. lossy only on request ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "photometric"),
    [
        (LJ / "JPEGLosslessSV1/JPEGLosslessP14SV1_1s_1f_u_08_08.dcm", "MONOCHROME2"),
        (LJ / "LittleEndianExplicit/SC_rgb.dcm", "YBR_FULL"),
        (WG04 / "REF/US1_UNC", "YBR_FULL"),
    ],
    ids=["us-mono-8", "rgb-8", "us-rgb-8"],
)
def test_jpeg_baseline_on_request_is_marked_lossy(path: Path, photometric: str) -> None:
    """In: an 8-bit greyscale or RGB instance asked in JPEG baseline (.4.50).  The output
    says LossyImageCompression "01", a compression ratio above 1 and method ISO_10918_1;
    colour is labelled YBR_FULL (the stream is YCbCr, 4:4:4) and pydicom decodes it close
    to the original without complaining about the label."""
    data = transcode_bytes(path, ts.JPEG_BASELINE)
    out, src = read(data), read(path)
    assert str(out.file_meta.TransferSyntaxUID) == ts.JPEG_BASELINE
    assert out.LossyImageCompression == "01"
    assert float(as_list(out.LossyImageCompressionRatio)[-1]) > 1
    assert as_list(out.LossyImageCompressionMethod)[-1] == "ISO_10918_1"
    assert out.PhotometricInterpretation == photometric
    assert out.SOPInstanceUID == src.SOPInstanceUID
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = out.pixel_array
    assert not [w for w in caught if "Photometric" in str(w.message)]
    error = np.abs(decoded.astype(np.int64) - src.pixel_array.astype(np.int64))
    assert error.mean() < 3


def test_jpeg_baseline_of_lossy_source_appends_ratio_and_method(tmp_path: Path) -> None:
    """In: a JPEG baseline image already marked lossy (ratio 17.401, ISO_10918_1), written
    to Explicit VR Little Endian under tmp_path (still marked lossy), then asked in JPEG
    baseline.  The new ratio and method are appended to the old values (PS3.3
    C.7.6.1.1.5).  Asking a file in the syntax it is stored in changes nothing."""
    src = LJ / "JPEGBaseline/JPEGBaseline_1s_1f_u_08_08.dcm"
    assert str(read(src).LossyImageCompressionRatio) == "17.401"
    assert read(transcode_bytes(src, ts.JPEG_BASELINE)).PixelData == read(src).PixelData
    native = tmp_path / "decoded.dcm"
    transcode(src, ts.ELE, native)
    assert read(native).LossyImageCompression == "01"
    out = read(transcode_bytes(native, ts.JPEG_BASELINE))
    assert out.LossyImageCompression == "01"
    assert [str(v) for v in out.LossyImageCompressionRatio][:1] == ["17.401"]
    assert len(out.LossyImageCompressionRatio) == 2
    assert float(out.LossyImageCompressionRatio[1]) > 1
    assert list(out.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_10918_1"]


@pytest.mark.parametrize(
    ("path", "words"),
    [
        (LJ / "LittleEndianExplicit/CT_small.dcm", r"(8-bit samples|Bits Stored 8) only"),
        (LJ / "LittleEndianExplicit/emri_small.dcm", r"(8-bit samples|Bits Stored 8) only"),
        (HT / "JLSL_08_07_0_1F.dcm", "Bits Stored 7"),
        (LJ / "LittleEndianExplicit/OBXXXX1A.dcm", "PALETTE COLOR"),
    ],
    ids=["ct-16s", "mr-16-12", "mono-8-7", "palette"],
)
def test_jpeg_baseline_refusals(path: Path, words: str) -> None:
    """In: 16-bit CT and MR, 8-bit data of Bits Stored 7, and a palette image, asked in JPEG
    baseline.  Each is refused with a CodecError that says why (PS3.5 Table 8.2.1-1)."""
    with pytest.raises(CodecError, match=words):
        transcode_bytes(path, ts.JPEG_BASELINE)


# -- 6. frames in a target syntax -----------------------------------------------------------

EMRI_J2K = LJ / "JPEG2000Lossless/emri_small_jpeg_2k_lossless.dcm"
EMRI_NATIVE = LJ / "LittleEndianExplicit/emri_small.dcm"


def test_encoded_frames_pass_stored_fragments_through() -> None:
    """In: the 10-frame MR stored in JPEG 2000 lossless, frames 1, 5, 10 and 5 again asked
    in JPEG 2000 lossless.  The fragments are byte for byte the stored ones, in request
    order."""
    stored = stored_frames(read(EMRI_J2K))
    assert len(stored) == 10
    got = list(encoded_frames(EMRI_J2K, [1, 5, 10, 5], ts.J2K_LOSSLESS))
    assert got == [stored[0], stored[4], stored[9], stored[4]]


def test_encoded_frames_reencode_to_htj2k() -> None:
    """In: the same 10-frame MR asked frame by frame in HTJ2K lossless.  Every fragment is
    an HTJ2K codestream (CAP marker) that OpenJPH and our registry decode to the native
    frame of the uncompressed copy of the image (emri_small.dcm)."""
    import imagecodecs

    fmt, native = canonical_arrays(EMRI_NATIVE)
    got = list(encoded_frames(EMRI_J2K, list(range(1, 11)), ts.HTJ2K_LOSSLESS))
    assert len(got) == 10
    for number, fragment in enumerate(got, start=1):
        assert fragment[:2] == b"\xff\x4f" and b"\xff\x50" in fragment[:200]
        assert fragment not in stored_frames(read(EMRI_J2K))
        want = native[number - 1]
        assert np.array_equal(imagecodecs.htj2k_decode(fragment).reshape(fmt.shape), want)
        assert np.array_equal(registry.decode_frame(ts.HTJ2K_LOSSLESS, fragment, fmt), want)


def test_encoded_frames_of_native_and_rle() -> None:
    """In: a native 2-frame RGB image asked in RLE, and its RLE copy asked in RLE.  The
    native frames are encoded; the RLE copy's fragments pass through and decode to the
    same pixels."""
    native = LJ / "LittleEndianExplicit/SC_rgb_2frame.dcm"
    rle = LJ / "RLELossless/SC_rgb_rle_2frame.dcm"
    fmt, frames = canonical_arrays(native)
    encoded = list(encoded_frames(native, [2, 1], ts.RLE))
    assert [registry.decode_frame(ts.RLE, f, fmt).tobytes() for f in encoded] == [
        frames[1].tobytes(),
        frames[0].tobytes(),
    ]
    passed = list(encoded_frames(rle, [1, 2], ts.RLE))
    assert passed == stored_frames(read(rle))
    assert [registry.decode_frame(ts.RLE, f, fmt).tobytes() for f in passed] == [
        f.tobytes() for f in frames
    ]


@pytest.mark.parametrize("numbers", [[0], [11], [1, 11], [-1]], ids=str)
@pytest.mark.parametrize("target", [ts.J2K_LOSSLESS, ts.HTJ2K_LOSSLESS])
def test_encoded_frames_out_of_range(target: str, numbers: list[int]) -> None:
    """In: frame numbers outside 1..10 of the 10-frame J2K MR, asked in J2K (pass-through)
    and in HTJ2K (re-encode).  FrameOutOfRange is raised when asking, before any frame."""
    with pytest.raises(FrameOutOfRange):
        encoded_frames(EMRI_J2K, numbers, target)


def test_encoded_frames_refuses_before_the_first_frame() -> None:
    """In: a 1-bit SEG asked in HTJ2K, and a YBR_FULL image asked in JPEG 2000.  The
    CodecError comes from the call itself, before iteration (so an HTTP edge can still
    answer with an error status)."""
    with pytest.raises(CodecError, match="Bits Allocated 1"):
        encoded_frames(CASES["seg-1bit"].path, [1], ts.HTJ2K_LOSSLESS)
    with pytest.raises(CodecError, match="YBR_FULL"):
        encoded_frames(CASES["ybr-full"].path, [1], ts.J2K_LOSSLESS)
