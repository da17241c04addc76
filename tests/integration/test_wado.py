"""WADO-RS retrieval and DELETE: content, negotiation and error statuses (PS3.18 §10.4).

What came in: a CT (uncompressed), an MR in JPEG 2000 lossless, a US multi-frame in RLE
(NEMA WG04 samples) and an SR without pixel data (pydicom-data), stored by STOW-RS.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from PIL import Image

from conftest import SAMPLES, LiveServer, http
from dicomhub.core.access import SYSTEM
from integration.helpers import expected_frame, split_multipart, stow_body

CT = SAMPLES / "nema-wg04" / "REF" / "CT1_UNC"
MR_J2K = SAMPLES / "nema-wg04" / "J2KR" / "MR1_J2KR"
US_RLE = SAMPLES / "nema-wg04" / "RLE" / "US1_RLE"


def _sr_file() -> object:
    from pydicom.data import get_testdata_file

    return get_testdata_file("test-SR.dcm")


def ident(path: object) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)  # type: ignore[arg-type]
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


@pytest.fixture
def loaded(server: LiveServer) -> Iterator[LiveServer]:
    body, ctype = stow_body([CT, MR_J2K, US_RLE, _sr_file()])  # type: ignore[list-item]
    r = http.post(server.url + "/studies", data=body, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 200, r.text
    yield server


def url(srv: LiveServer, path: object, suffix: str = "") -> str:
    st, se, sop = ident(path)
    return f"{srv.url}/studies/{st}/series/{se}/instances/{sop}{suffix}"


def test_study_and_series_retrieve_stream_every_instance(loaded: LiveServer) -> None:
    st, se, _ = ident(US_RLE)
    r = http.get(f"{loaded.url}/studies/{st}", timeout=60)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    parts = split_multipart(r.content, r.headers["content-type"])
    assert [p[1] for p in parts] == [US_RLE.read_bytes()]
    assert parts[0][0]["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.5"
    r = http.get(f"{loaded.url}/studies/{st}/series/{se}", timeout=60)
    assert len(split_multipart(r.content, r.headers["content-type"])) == 1


def test_transfer_syntax_star_and_stored_are_as_stored(loaded: LiveServer) -> None:
    for ts in ("*", "1.2.840.10008.1.2.4.90"):
        r = http.get(
            url(loaded, MR_J2K),
            timeout=60,
            headers={
                "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={ts}'
            },
        )
        assert r.status_code == 200
        assert split_multipart(r.content, r.headers["content-type"])[0][1] == MR_J2K.read_bytes()


def test_explicit_vr_little_endian_is_decompressed_losslessly(loaded: LiveServer) -> None:
    """In: Accept transfer-syntax=1.2.840.10008.1.2.1 for a J2K lossless MR and an RLE US."""
    for path in (MR_J2K, US_RLE):
        r = http.get(
            url(loaded, path),
            timeout=60,
            headers={
                "Accept": 'multipart/related; type="application/dicom"; '
                "transfer-syntax=1.2.840.10008.1.2.1"
            },
        )
        assert r.status_code == 200
        headers, data = split_multipart(r.content, r.headers["content-type"])[0]
        assert headers["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2.1")
        got = pydicom.dcmread(io.BytesIO(data))
        assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        original = pydicom.dcmread(path)
        assert np.array_equal(got.pixel_array, original.pixel_array)
        # the same instance, not a new one: UIDs and other attributes are kept
        assert got.SOPInstanceUID == original.SOPInstanceUID
        assert got.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
        assert got.PatientName == original.PatientName


def test_unmeetable_accept_is_406(loaded: LiveServer) -> None:
    """In: Accepts no transfer syntax or media type can meet for the stored objects."""
    dicom = 'multipart/related; type="application/dicom"; transfer-syntax='
    cases = [
        (url(loaded, CT), dicom + "1.2.840.10008.1.2.2"),  # retired big endian: not written
        (url(loaded, CT), dicom + "1.2.3.4"),  # not a transfer syntax
        (url(loaded, CT), "application/pdf"),
        (url(loaded, CT, "/frames/1"), "image/jpeg"),  # baseline JPEG carries 8 bits, CT 16
        (
            url(loaded, CT, "/frames/1"),
            'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.90',
        ),
        (
            url(loaded, CT, "/frames/1"),
            'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.3.4',
        ),
        (url(loaded, CT, "/rendered"), "image/tiff"),
        (url(loaded, CT, "/metadata"), "application/dicom+xml"),
    ]
    for target, accept in cases:
        r = http.get(target, headers={"Accept": accept}, timeout=60)
        assert r.status_code == 406, (target, accept, r.status_code)
        assert r.json()["error"], (accept, r.text)


def test_unknown_uids_are_404(loaded: LiveServer) -> None:
    st, se, sop = ident(CT)
    missing = [
        f"{loaded.url}/studies/1.2.3",
        f"{loaded.url}/studies/1.2.3/metadata",
        f"{loaded.url}/studies/{st}/series/1.2.3",
        f"{loaded.url}/studies/{st}/series/1.2.3/metadata",
        f"{loaded.url}/studies/{st}/series/{se}/instances/1.2.3",
        f"{loaded.url}/studies/{st}/series/{se}/instances/1.2.3/frames/1",
        f"{loaded.url}/studies/{st}/series/{se}/instances/1.2.3/rendered",
        f"{loaded.url}/studies/1.2.3/thumbnail",
        f"{loaded.url}/studies/{st}/series/{se}/instances/1.2.3/bulkdata/7FE00010",
        f"{loaded.url}/studies/{ident(MR_J2K)[0]}/series/{se}/instances/{sop}",  # wrong study
    ]
    for target in missing:
        r = http.get(target, timeout=60)
        assert r.status_code == 404, (target, r.status_code)
    assert http.delete(f"{loaded.url}/studies/1.2.3", timeout=60).status_code == 404


@pytest.mark.parametrize(
    ("suffix", "params"),
    [
        ("/frames/1,x", {}),
        ("/frames/0", {}),
        ("/frames/", {}),
        ("/rendered", {"window": "40"}),
        ("/rendered", {"window": "a,b"}),
        ("/rendered", {"viewport": "0,0"}),
        ("/rendered", {"viewport": "-5,10"}),
        ("/rendered", {"quality": "101"}),
        ("/rendered", {"quality": "0"}),
        ("/rendered", {"bogus": "1"}),
        ("/bulkdata/zz", {}),
    ],
)
def test_bad_parameters_are_400(loaded: LiveServer, suffix: str, params: dict[str, str]) -> None:
    """In: a malformed frame list, rendering parameter or bulk data path."""
    r = http.get(url(loaded, CT, suffix), params=params, timeout=60)
    assert r.status_code in (400, 404) if suffix == "/frames/" else r.status_code == 400, (
        suffix,
        params,
        r.status_code,
        r.text,
    )


def test_bad_uid_in_path_is_400(loaded: LiveServer) -> None:
    r = http.get(f"{loaded.url}/studies/not-a-uid/metadata", timeout=60)
    assert r.status_code == 400


def test_frames_out_of_range_and_without_pixels(loaded: LiveServer) -> None:
    us = pydicom.dcmread(US_RLE, stop_before_pixels=True)
    n = int(us.get("NumberOfFrames", 1))
    r = http.get(url(loaded, US_RLE, f"/frames/{n + 1}"), timeout=60)
    assert r.status_code == 404 and "frame" in r.json()["error"].lower()
    r = http.get(url(loaded, _sr_file(), "/frames/1"), timeout=60)
    assert r.status_code == 404
    r = http.get(url(loaded, _sr_file(), "/rendered"), timeout=60)
    assert r.status_code == 404


def test_multiframe_frames_in_any_order(loaded: LiveServer) -> None:
    us = pydicom.dcmread(US_RLE, stop_before_pixels=True)
    n = int(us.get("NumberOfFrames", 1))
    numbers = [n, 1, n // 2 or 1]
    client = loaded.client()
    st, se, sop = ident(US_RLE)
    frames = client.retrieve_instance_frames(
        st,
        se,
        sop,
        numbers,
        media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),),
    )
    assert frames == [expected_frame(US_RLE, k) for k in numbers]


def test_metadata_levels_and_bulk_data(loaded: LiveServer) -> None:
    client = loaded.client()
    st, se, sop = ident(CT)
    study = client.retrieve_study_metadata(st)
    series = client.retrieve_series_metadata(st, se)
    inst = client.retrieve_instance_metadata(st, se, sop)
    assert len(study) == 1 and series == [inst]
    ds = pydicom.dcmread(CT)
    for tag in ("00100010", "00080060", "00280010", "00200032"):
        assert tag in inst
    assert inst["00280010"]["Value"] == [ds.Rows]
    uri = inst["7FE00010"]["BulkDataURI"]
    assert uri.startswith(loaded.url)
    assert client.retrieve_bulkdata(uri)[0] == ds.PixelData
    # metadata never needs the file: it is served from the index even if the file is gone
    item = loaded.ctx.index.instances(SYSTEM, st, se, sop)[0]
    path = loaded.ctx.blobs.local_path(item.storage_key)
    moved = path.with_suffix(".away")
    path.rename(moved)
    try:
        assert client.retrieve_instance_metadata(st, se, sop) == inst
    finally:
        moved.rename(path)


def test_rendered_and_thumbnails_at_every_level(loaded: LiveServer) -> None:
    st, se, sop = ident(MR_J2K)
    base = f"{loaded.url}/studies/{st}"
    for target in (
        f"{base}/rendered",
        f"{base}/series/{se}/rendered",
        f"{base}/series/{se}/instances/{sop}/rendered",
        f"{base}/series/{se}/instances/{sop}/frames/1/rendered",
    ):
        r = http.get(target, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", target
        assert Image.open(io.BytesIO(r.content)).size == (512, 512)
    for target in (
        f"{base}/thumbnail",
        f"{base}/series/{se}/thumbnail",
        f"{base}/series/{se}/instances/{sop}/thumbnail",
    ):
        r = http.get(target, headers={"Accept": "image/png"}, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert max(Image.open(io.BytesIO(r.content)).size) <= 128
    # window changes the output, quality changes the size
    a = http.get(
        f"{base}/series/{se}/instances/{sop}/rendered", params={"window": "100,200"}, timeout=60
    ).content
    b = http.get(
        f"{base}/series/{se}/instances/{sop}/rendered", params={"window": "1000,2000"}, timeout=60
    ).content
    assert a != b
    small = http.get(
        f"{base}/series/{se}/instances/{sop}/rendered", params={"quality": "5"}, timeout=60
    ).content
    assert len(small) < len(a)


def test_delete_series_and_instance_update_the_index(loaded: LiveServer, tmp_path: object) -> None:
    """In: two more CT instances in the CT's study (copies with new series/SOP UIDs)."""
    from pathlib import Path

    from pydicom.uid import generate_uid

    st, _se, _sop = ident(CT)
    copies = []
    new_series = generate_uid()
    for i in range(2):
        ds = pydicom.dcmread(CT)
        ds.SeriesInstanceUID = new_series
        ds.SOPInstanceUID = generate_uid()
        ds.Modality = "OT"
        out = Path(str(tmp_path)) / f"c{i}.dcm"
        ds.save_as(out)
        copies.append(out)
    body, ctype = stow_body(copies)
    assert (
        http.post(
            loaded.url + "/studies", data=body, headers={"Content-Type": ctype}, timeout=60
        ).status_code
        == 200
    )

    def study_doc() -> dict[str, object]:
        r = http.get(loaded.url + "/studies", params={"StudyInstanceUID": st}, timeout=60)
        return r.json()[0]  # type: ignore[no-any-return]

    doc = study_doc()
    assert doc["00201208"]["Value"] == [3] and doc["00201206"]["Value"] == [2]  # type: ignore[index]
    assert doc["00080061"]["Value"] == ["CT", "OT"]  # type: ignore[index]
    _, _, sop2 = ident(copies[0])
    r = http.delete(f"{loaded.url}/studies/{st}/series/{new_series}/instances/{sop2}", timeout=60)
    assert r.status_code == 204
    assert study_doc()["00201208"]["Value"] == [2]  # type: ignore[index]
    assert (
        http.delete(f"{loaded.url}/studies/{st}/series/{new_series}", timeout=60).status_code == 204
    )
    doc = study_doc()
    assert doc["00201206"]["Value"] == [1] and doc["00080061"]["Value"] == ["CT"]  # type: ignore[index]
    assert http.get(f"{loaded.url}/studies/{st}/series/{new_series}", timeout=60).status_code == 404
    assert http.get(url(loaded, CT), timeout=60).status_code == 200
