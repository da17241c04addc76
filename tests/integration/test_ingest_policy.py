"""Ingest transfer-syntax policy (docs/operations.md): keep as received, or re-encode
losslessly on arrival, every instance verified against its pixel digest.

What came in: by STOW-RS to an archive with ``ingest_transfer_syntax = "htj2k"`` (and
"jpeg-ls"): a native CT, a J2K lossless MR, a 10-frame RLE MR, an RGB 2-frame RLE, a
1-bit SEG (cannot be HTJ2K: kept), a lossy JPEG baseline image (never re-encoded).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydantic import ValidationError

from conftest import SAMPLES, LiveServer, make_settings
from dicomhub.codecs import transcode
from dicomhub.config import Settings
from dicomhub.context import build_context
from dicomhub.core import syntaxes as ts
from integration.helpers import split_multipart, stow_body

WG04 = SAMPLES / "nema-wg04"
LJ = SAMPLES / "pylibjpeg-data" / "ljdata_ds"
FILES = {
    "ct": (WG04 / "REF" / "CT1_UNC", True),
    "mr_j2k": (WG04 / "J2KR" / "MR1_J2KR", True),
    "mr_rle_10f": (LJ / "RLELossless" / "emri_small_RLE.dcm", True),
    "rgb_rle_2f": (LJ / "RLELossless" / "SC_rgb_rle_2frame.dcm", True),
    "seg_1bit": (SAMPLES / "dcmqi-seg-paramaps" / "segmentations" / "liver.dcm", False),
    "jpeg_lossy": (LJ / "JPEGBaseline" / "SC_rgb_dcmtk_+eb+cy+np.dcm", False),
}


def _meta(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True)


@pytest.fixture(params=["htj2k", "jpeg-ls"])
def archive(
    request: pytest.FixtureRequest, tmp_path: Path, database: tuple[str, str | None]
) -> Iterator[tuple[LiveServer, str]]:
    url, schema = database
    ctx = build_context(
        make_settings(tmp_path / "data", url, schema, ingest_transfer_syntax=request.param)
    )
    target = ts.HTJ2K_LOSSLESS if request.param == "htj2k" else ts.JPEG_LS_LOSSLESS
    try:
        with LiveServer(ctx) as live:
            yield live, target
    finally:
        ctx.close()


def test_ingest_reencodes_lossless_and_keeps_the_rest(archive: tuple[LiveServer, str]) -> None:
    """Every lossless-encoded image is stored in the policy's syntax with the received
    syntax recorded as original and the received pixel digest; the SEG and the lossy JPEG
    are stored as received.  As-stored retrieval returns the re-encoded file; asking
    Explicit VR Little Endian returns the original pixels."""
    server, target = archive
    body, ctype = stow_body([p for p, _ in FILES.values()])
    r = requests.post(
        f"{server.url}/studies",
        data=body,
        headers={**server.headers, "Content-Type": ctype},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    for _name, (path, reencoded) in FILES.items():
        ds = _meta(path)
        received = str(ds.file_meta.TransferSyntaxUID)
        digest = transcode.pixel_digest(path)
        study = str(ds.StudyInstanceUID)
        records = requests.get(
            f"{server.url}/studies/{study}/pixel-digests", headers=server.headers, timeout=60
        ).json()
        (record,) = [x for x in records if x["SOPInstanceUID"] == ds.SOPInstanceUID]
        assert record["OriginalTransferSyntaxUID"] == received
        assert record["PixelDigest"] == digest
        assert record["TransferSyntaxUID"] == (target if reencoded else received), path
        base = f"{server.url}/studies/{study}/series/{ds.SeriesInstanceUID}"
        url = f"{base}/instances/{ds.SOPInstanceUID}"
        r = requests.get(url, headers=server.headers, timeout=60)
        ((headers, data),) = split_multipart(r.content, r.headers["content-type"])
        assert headers["content-type"].endswith(record["TransferSyntaxUID"])
        assert transcode.pixel_digest_of_bytes(data) == digest
        if reencoded and received in (ts.ELE, ts.ILE):
            accept = f'multipart/related; type="application/dicom"; transfer-syntax={received}'
            r = requests.get(url, headers={**server.headers, "Accept": accept}, timeout=60)
            ((_h, data),) = split_multipart(r.content, r.headers["content-type"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                original = pydicom.dcmread(path)
                back = pydicom.dcmread(io.BytesIO(data))
            assert back.PixelData == original.PixelData


def test_ingest_policy_setting_is_validated(tmp_path: Path) -> None:
    """In: ingest_transfer_syntax 'jpeg-baseline' (lossy) and a made-up UID: refused at
    start-up with the list of accepted values; names and UIDs both work."""
    for bad in ("jpeg-baseline", "1.2.3", ts.JPEG_BASELINE):
        with pytest.raises(ValidationError, match="ingest_transfer_syntax"):
            Settings(data_dir=tmp_path, ingest_transfer_syntax=bad)
    assert Settings(data_dir=tmp_path, ingest_transfer_syntax="htj2k").ingest_target == (
        ts.HTJ2K_LOSSLESS
    )
    assert Settings(data_dir=tmp_path, ingest_transfer_syntax=ts.RLE).ingest_target == ts.RLE
    assert Settings(data_dir=tmp_path).ingest_target is None
