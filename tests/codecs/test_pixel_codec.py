"""The pixel digest recorded at ingest (codecs/pixels.py ``PydicomPixelCodec.pixel_digest``).

What came in: an MR in JPEG 2000 lossless (NEMA WG04 MR1_J2KR), a copy of it whose
codestream header (SIZ) was overwritten, and a copy without Pixel Data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest

from conftest import SAMPLES
from dicomhub.codecs.pixels import PydicomPixelCodec
from dicomhub.codecs.transcode import pixel_digest

MR_J2K = SAMPLES / "nema-wg04" / "J2KR" / "MR1_J2KR"


def test_decodable_pixels_get_their_digest() -> None:
    digest, _planar = PydicomPixelCodec().pixel_digest(MR_J2K)
    assert digest is not None and len(digest) == 64
    assert digest == pixel_digest(SAMPLES / "nema-wg04" / "REF" / "MR1_UNC")


def test_undecodable_pixels_get_none_after_a_second_attempt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = bytearray(MR_J2K.read_bytes())
    soc = data.index(b"\xff\x4f\xff\x51")  # start of codestream, image and tile size
    data[soc + 4 : soc + 40] = b"\xff" * 36  # the SIZ segment destroyed: not decodable
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="dicomhub.codecs.pixels"):
        assert PydicomPixelCodec().pixel_digest(broken) == (None, None)
    assert "not decodable" in caplog.text


def test_no_pixel_data_is_no_digest_and_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = pydicom.dcmread(MR_J2K)
    del ds.PixelData
    plain = tmp_path / "nopixels.dcm"
    ds.save_as(plain)
    with caplog.at_level(logging.WARNING, logger="dicomhub.codecs.pixels"):
        assert PydicomPixelCodec().pixel_digest(plain) == (None, None)
    assert caplog.text == ""
