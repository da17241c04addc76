"""Every readable sample round-trips STOW-RS → QIDO-RS → WADO-RS on SQLite and PostgreSQL.

What came in: every file of ../shared/dicom-samples (MANIFEST.tsv) that is a Part 10 file
with Study, Series and SOP Instance UIDs — all modalities and transfer syntaxes there
(uncompressed LE/BE, deflate, JPEG baseline/extended/lossless, JPEG-LS, J2K, HTJ2K, RLE).

The archive keeps the received bytes: the meta header is *not* rewritten, so a retrieved
instance must equal the uploaded file byte for byte.  Several samples share a SOP
Instance UID with different content (the same image in several syntaxes); they are
sent in waves, and each wave is deleted before the next (which also tests DELETE).
"""

from __future__ import annotations

import io
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from conftest import MANIFEST, LiveServer, Sample, http, make_settings, staged_files
from dicomhub.context import build_context
from integration.helpers import expected_frame, frame_array, split_multipart, stow_body, uid


def _identity(sample: Sample) -> tuple[str, str, str, str] | None:
    """(study, series, sop, sop class) read with pydicom, or None if not storable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(sample.path, stop_before_pixels=True)
    except Exception:
        return None
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        return None
    values = [
        ds.get(k)
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    ]
    if not all(values):
        return None
    return tuple(str(v) for v in values)  # type: ignore[return-value]


STORABLE: list[tuple[Sample, tuple[str, str, str, str]]] = []
NOT_STORABLE: list[Sample] = []
for _s in MANIFEST:
    _ident = _identity(_s)
    if _ident is None:
        NOT_STORABLE.append(_s)
    else:
        STORABLE.append((_s, _ident))


def _waves() -> list[list[tuple[Sample, tuple[str, str, str, str]]]]:
    groups: dict[str, list[tuple[Sample, tuple[str, str, str, str]]]] = defaultdict(list)
    for item in STORABLE:
        groups[item[1][2]].append(item)
    waves: list[list[tuple[Sample, tuple[str, str, str, str]]]] = []
    for members in groups.values():
        for i, member in enumerate(members):
            while len(waves) <= i:
                waves.append([])
            waves[i].append(member)
    return waves


WAVES = _waves()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """One archive per backend for the whole module."""
    db = request.getfixturevalue("database_module")
    tmp = tmp_path_factory.mktemp("archive")
    url, schema = db(request.param, tmp)
    context = build_context(make_settings(tmp / "data", url, schema))
    with LiveServer(context) as live:
        yield live
    context.close()


def test_samples_cover_the_modalities_and_syntaxes() -> None:
    modalities = {s.modality for s, _ in STORABLE}
    syntaxes = {s.transfer_syntax_uid for s, _ in STORABLE}
    assert {"CT", "MR", "US", "CR", "DX", "NM", "SEG", "XA"} <= modalities
    assert len(syntaxes) >= 14, syntaxes
    assert len(STORABLE) > 300


def _check_sample(
    srv: LiveServer, client: DICOMwebClient, sample: Sample, ident: tuple[str, str, str, str]
) -> list[str]:
    """All per-sample checks; returns the problems found (empty = all good)."""
    problems: list[str] = []
    study, series, sop, sop_class = ident
    base = srv.url
    original = sample.path.read_bytes()
    # WADO-RS instance: byte-identical (meta header not rewritten)
    r = http.get(
        f"{base}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
        timeout=60,
    )
    if r.status_code != 200:
        return [f"retrieve: HTTP {r.status_code} {r.text[:200]}"]
    parts = split_multipart(r.content, r.headers["content-type"])
    if len(parts) != 1 or parts[0][1] != original:
        problems.append("retrieved bytes differ from the stored file")
    # dicomweb-client sees the same data set
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = client.retrieve_instance(study, series, sop)
        want = pydicom.dcmread(io.BytesIO(original))
    if got != want:
        problems.append("dicomweb-client data set differs from the original")
    # QIDO at each level, by its keys
    found = client.search_for_studies(search_filters={"StudyInstanceUID": study})
    if [uid(x, "0020000D") for x in found] != [study]:
        problems.append(f"QIDO study by UID: {found}")
    if want.get("PatientID"):
        found = client.search_for_studies(
            search_filters={"PatientID": str(want.PatientID), "StudyInstanceUID": study}
        )
        if len(found) != 1:
            problems.append("QIDO study by PatientID did not find it")
    found = client.search_for_series(study, search_filters={"SeriesInstanceUID": series})
    if [uid(x, "0020000E") for x in found] != [series]:
        problems.append(f"QIDO series: {found}")
    if want.get("Modality"):
        found = client.search_for_series(
            search_filters={"Modality": str(want.Modality), "SeriesInstanceUID": series}
        )
        if len(found) != 1:
            problems.append("QIDO series by Modality did not find it")
    found = client.search_for_instances(
        study, series, search_filters={"SOPInstanceUID": sop, "SOPClassUID": sop_class}
    )
    if [uid(x, "00080018") for x in found] != [sop]:
        problems.append(f"QIDO instance: {found}")
    # metadata without reading the file, with resolvable BulkDataURIs
    meta = client.retrieve_instance_metadata(study, series, sop)
    if uid(meta, "00080018") != sop or uid(meta, "00080016") != sop_class:
        problems.append("metadata UIDs differ")
    pixel_tag = next((t for t in ("7FE00010", "7FE00008", "7FE00009") if t in meta), None)
    if pixel_tag and "BulkDataURI" not in meta[pixel_tag]:
        problems.append("pixel data without BulkDataURI")
    decodable = sample.pixel_decode == "ok" and pixel_tag is not None
    if decodable:
        problems += _check_pixels(srv, client, sample, ident)
    elif pixel_tag is not None and sample.pixel_decode.startswith("FAIL"):
        problems += _check_undecodable(srv, sample, ident)
    return problems


def _check_undecodable(
    srv: LiveServer, sample: Sample, ident: tuple[str, str, str, str]
) -> list[str]:
    """Pixels pydicom cannot decode: a clean 406, or — where dicomhub can decode them
    (Deflated Image Frame Compression, 1.2.840.10008.1.2.8.1) — exactly the frames of
    the uncompressed or lossless J2K copy of the same image that the samples include."""
    study, series, sop, _ = ident
    url = f"{srv.url}/studies/{study}/series/{series}/instances/{sop}"
    r = http.get(f"{url}/frames/1", timeout=60)
    if r.status_code == 406:
        return []
    candidates = [
        sample.path.with_name(sample.path.name.replace("_deflate", suffix))
        for suffix in ("", "_j2k")
    ]
    reference = next((c for c in candidates if c != sample.path and c.exists()), None)
    if r.status_code != 200 or reference is None:
        return [f"undecodable frame: HTTP {r.status_code}, expected 406"]
    frames = split_multipart(r.content, r.headers["content-type"])
    if frames[0][1] != expected_frame(reference, 1):
        return ["inflated frame differs from the uncompressed reference"]
    return []


def _window_hides_everything(path: Path) -> bool:
    """True when the file's own VOI window maps every pixel to one value (PS3.3 C.11.2)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return False
    arr = pydicom.pixels.apply_modality_lut(frame_array(path, 0), ds)
    center = float(ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter)
    width = float(ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    return bool(arr.min() >= high or arr.max() <= low)


def _check_pixels(
    srv: LiveServer, client: DICOMwebClient, sample: Sample, ident: tuple[str, str, str, str]
) -> list[str]:
    problems: list[str] = []
    study, series, sop, _ = ident
    n = sample.frames
    numbers = sorted({1, n})
    frames = client.retrieve_instance_frames(
        study,
        series,
        sop,
        numbers,
        media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),),
    )
    for number, data in zip(numbers, frames, strict=True):
        if data != expected_frame(sample.path, number):
            problems.append(f"frame {number} differs from pydicom's decoded pixels")
    # rendered PNG of the first frame: right size, not blank
    png = client.retrieve_instance_rendered(study, series, sop, media_types=("image/png",))
    img = Image.open(io.BytesIO(png))
    ds = pydicom.dcmread(sample.path, stop_before_pixels=True)
    if img.size != (int(ds.Columns), int(ds.Rows)):
        problems.append(f"rendered size {img.size} != {(ds.Columns, ds.Rows)}")
    arr = np.asarray(img)
    source = np.asarray(frame_array(sample.path, 0))
    if source.std() > 0 and arr.std() == 0 and not _window_hides_everything(sample.path):
        problems.append("rendered image is blank")
    jpeg = http.get(
        f"{srv.url}/studies/{study}/series/{series}/instances/{sop}/frames/{n}/rendered",
        params={"viewport": "64,64"},
        timeout=60,
    )
    if jpeg.status_code != 200 or jpeg.headers["content-type"] != "image/jpeg":
        problems.append(f"rendered frame {n}: HTTP {jpeg.status_code}")
    elif max(Image.open(io.BytesIO(jpeg.content)).size) != 64:
        problems.append("viewport not honoured")
    return problems


@pytest.mark.parametrize("wave", range(len(WAVES)))
def test_roundtrip_wave(archive: LiveServer, wave: int) -> None:
    """STOW a wave of samples, check each one everywhere, then DELETE the wave."""
    srv = archive
    client = srv.client()
    items = WAVES[wave]
    for i in range(0, len(items), 25):
        batch = items[i : i + 25]
        body, ctype = stow_body([s.path for s, _ in batch])
        r = http.post(f"{srv.url}/studies", data=body, headers={"Content-Type": ctype}, timeout=300)
        assert r.status_code == 200, (r.status_code, r.text[:2000], r.headers.get("warning"))
        stored = {uid(x, "00081155") for x in r.json()["00081199"]["Value"]}
        assert stored == {ident[2] for _, ident in batch}
    failures: dict[str, list[str]] = {}
    for sample, ident in items:
        problems = _check_sample(srv, client, sample, ident)
        if problems:
            failures[sample.id] = problems
    if failures:
        pytest.fail("\n".join(f"{k}: {'; '.join(v)}" for k, v in sorted(failures.items())))
    # DELETE the wave's studies; they are gone from QIDO and WADO afterwards
    for study in {ident[0] for _, ident in items}:
        r = http.delete(f"{srv.url}/studies/{study}", timeout=60)
        assert r.status_code in (204, 404)  # a study may span waves only via shared UIDs
        assert http.get(f"{srv.url}/studies/{study}/metadata", timeout=60).status_code == 404
    assert http.get(f"{srv.url}/studies", timeout=60).json() == []
    assert not list((srv.ctx.settings.data_dir / "storage" / "objects").rglob("*.dcm"))


@pytest.mark.parametrize("sample", NOT_STORABLE, ids=lambda s: s.id)
def test_unstorable_samples_fail_cleanly(server: LiveServer, sample: Sample) -> None:
    """Files without File Meta Information or without identifying UIDs: 409, nothing stored."""
    body, ctype = stow_body([sample.path])
    r = http.post(f"{server.url}/studies", data=body, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 409, r.text
    failed = r.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"][0] in (0xC000, 0xA900)
    assert "warning" in r.headers
    assert server.ctx.index.count_instances() == 0
    assert not list((server.ctx.settings.data_dir / "storage").rglob("*.dcm"))
    assert not staged_files(server.ctx.settings.data_dir)
