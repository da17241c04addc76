"""Content coding of DICOMweb JSON responses on a live server (RFC 9110 §12.5.3, §8.4;
PS3.18 §8.4.1, §8.4.2), on SQLite and PostgreSQL.

What came in: seven real sample files of six modalities (CT, MR, US, NM, SEG, OT; native,
RLE and JPEG 2000) stored by STOW-RS, then QIDO-RS and WADO-RS metadata requests sent
with raw ``http.client`` so the Accept-Encoding field is exactly the test's (nothing
added, nothing decoded on the way), plus ordinary clients (requests, dicomweb-client)
that decode transparently.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from email.message import Message
from http.client import HTTPConnection
from pathlib import Path

import imagecodecs
import pydicom
import pytest

from conftest import SAMPLES, LiveServer, http, make_settings
from dicomhub.context import build_context
from integration.helpers import split_multipart, stow_body

FILES = [
    SAMPLES / "dcmqi-seg-paramaps/segmentations/23x38x3/image/IMG0002.dcm",  # CT, implicit
    SAMPLES / "dcmqi-seg-paramaps/segmentations/24x38x3/seg/label.seg",  # SEG
    SAMPLES / "dicom2nifti/generic/anatomical/002_non_isotropic/001.dcm",  # MR, explicit
    SAMPLES / "pylibjpeg-data/ljdata_ds/RLELossless/OBXXXX1A_rle.dcm",  # US, RLE
    SAMPLES / "pylibjpeg-data/ljdata_ds/RLELossless/SC_rgb_rle.dcm",  # OT, RLE
    SAMPLES / "nema-wg04/J2KI/NM1_J2KI",  # NM, JPEG 2000
    SAMPLES / "nema-wg04/REF/CT1_UNC",  # CT, native
]
DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


def ident(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    db = request.getfixturevalue("database_module")
    tmp = tmp_path_factory.mktemp("encoding")
    url, schema = db(request.param, tmp)
    ctx = build_context(make_settings(tmp / "data", url, schema))
    with LiveServer(ctx) as live:
        body, ctype = stow_body(FILES)
        r = http.post(
            live.url + "/studies", data=body, headers={"Content-Type": ctype}, timeout=120
        )
        assert r.status_code == 200, r.text
        yield live
    ctx.close()


def fetch(
    srv: LiveServer,
    path: str,
    accept_encoding: str | None,
    accept: str = DICOM_JSON,
) -> tuple[int, Message, bytes]:
    """GET ``path`` (under the DICOMweb base) as the admin with exactly the given
    Accept-Encoding (none at all for None); the body is returned as received."""
    conn = HTTPConnection("127.0.0.1", srv.port, timeout=60)
    try:
        # skip_accept_encoding: http.client would otherwise add "Accept-Encoding: identity"
        conn.putrequest("GET", "/dicom-web" + path, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {srv.token}")
        conn.putheader("Accept", accept)
        if accept_encoding is not None:
            conn.putheader("Accept-Encoding", accept_encoding)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def json_paths() -> list[str]:
    """QIDO-RS and WADO-RS metadata resources whose JSON is above the 1 KiB threshold."""
    ct_st, ct_se, ct_sop = ident(FILES[-1])
    seg_st, seg_se, _ = ident(FILES[1])
    return [
        "/studies",
        "/studies?includefield=all",
        "/series",
        "/instances",
        f"/studies/{seg_st}/series?includefield=all",
        f"/studies/{seg_st}/instances?includefield=all",
        f"/studies/{seg_st}/metadata",
        f"/studies/{seg_st}/series/{seg_se}/metadata",
        f"/studies/{ct_st}/series/{ct_se}/metadata",
        f"/studies/{ct_st}/series/{ct_se}/instances/{ct_sop}/metadata",
    ]


def identity_body(srv: LiveServer, path: str) -> bytes:
    status, headers, body = fetch(srv, path, "identity")
    assert status == 200, body[:500]
    assert headers["Content-Type"] == DICOM_JSON
    assert headers.get("Content-Encoding") is None
    assert headers["Vary"] == "Accept-Encoding"
    assert int(headers["Content-Length"]) == len(body) >= 1024, (path, len(body))
    return body


def test_the_samples_are_all_found(srv: LiveServer) -> None:
    body = identity_body(srv, "/instances")
    assert len(json.loads(body)) == len(FILES)
    modalities = {x["00080060"]["Value"][0] for x in json.loads(identity_body(srv, "/series"))}
    assert modalities == {"CT", "MR", "US", "NM", "SEG", "OT"}


@pytest.mark.parametrize(
    ("offer", "coding"),
    [
        ("gzip", "gzip"),
        ("gzip, deflate", "gzip"),  # what python-requests sends
        ("zstd", "zstd"),
        ("gzip, deflate, br, zstd", "zstd"),  # what current browsers send
        ("zstd;q=0.5, gzip", "gzip"),
        ("gzip;q=0.5, zstd;q=0.9, identity;q=0.1", "zstd"),
        ("*", "zstd"),
        ("zstd;q=0, *", "gzip"),
    ],
)
def test_json_responses_are_encoded_as_negotiated(srv: LiveServer, offer: str, coding: str) -> None:
    decode = gzip.decompress if coding == "gzip" else imagecodecs.zstd_decode
    for path in json_paths():
        plain = identity_body(srv, path)
        status, headers, body = fetch(srv, path, offer)
        assert status == 200
        assert headers["Content-Encoding"] == coding, (path, offer)
        assert headers["Content-Type"] == DICOM_JSON
        assert headers["Vary"] == "Accept-Encoding"
        assert int(headers["Content-Length"]) == len(body) < len(plain)
        decoded = decode(body)
        assert decoded == plain
        assert json.loads(decoded) == json.loads(plain)


@pytest.mark.parametrize(
    "offer", [None, "", "identity", "br, compress", "gzip;q=0, zstd;q=0", "*;q=0"]
)
def test_no_acceptable_coding_sends_identity(srv: LiveServer, offer: str | None) -> None:
    for path in json_paths()[:1] + json_paths()[-2:]:
        plain = identity_body(srv, path)
        status, headers, body = fetch(srv, path, offer)
        assert status == 200
        assert headers.get("Content-Encoding") is None
        assert headers["Vary"] == "Accept-Encoding"
        assert body == plain


def test_small_json_is_not_encoded(srv: LiveServer) -> None:
    status, headers, body = fetch(srv, "/studies?PatientID=nobody", "gzip, zstd")
    assert (status, body) == (200, b"[]")
    assert headers.get("Content-Encoding") is None
    assert headers["Vary"] == "Accept-Encoding"


def test_error_responses_are_not_encoded(srv: LiveServer) -> None:
    status, headers, body = fetch(srv, "/studies/1.2.3.999/metadata", "gzip")
    assert status == 404
    assert headers.get("Content-Encoding") is None
    assert json.loads(body)["status"] == 404


def test_retrieved_instances_are_streamed_unencoded(srv: LiveServer) -> None:
    for path in (FILES[-1], FILES[3]):
        st, se, sop = ident(path)
        for resource in (f"/studies/{st}/series/{se}/instances/{sop}", f"/studies/{st}"):
            status, headers, body = fetch(srv, resource, "gzip, zstd", accept=MULTIPART_DICOM)
            assert status == 200
            assert headers["Content-Type"].startswith(MULTIPART_DICOM)
            assert headers.get("Content-Encoding") is None
            assert headers.get("Vary") is None
            parts = split_multipart(body, headers["Content-Type"])
            assert path.read_bytes() in [p[1] for p in parts]


def test_frames_and_rendered_images_are_not_encoded(srv: LiveServer) -> None:
    st, se, sop = ident(FILES[-1])
    base = f"/studies/{st}/series/{se}/instances/{sop}"
    for resource, accept in (
        (base + "/frames/1", 'multipart/related; type="application/octet-stream"'),
        (base + "/rendered", "image/png"),
    ):
        status, headers, _ = fetch(srv, resource, "gzip", accept=accept)
        assert status == 200, resource
        assert headers.get("Content-Encoding") is None
        assert headers.get("Vary") is None


def test_ordinary_clients_decode_transparently(srv: LiveServer) -> None:
    """requests sends ``gzip, deflate`` by itself and decodes; so does dicomweb-client."""
    plain = json.loads(identity_body(srv, "/instances"))
    r = http.get(srv.url + "/instances", headers={"Accept": DICOM_JSON}, timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Encoding"] == "gzip"
    assert r.json() == plain
    client = srv.client()
    assert client.search_for_instances() == plain
    st, _, _ = ident(FILES[1])
    assert client.retrieve_study_metadata(st) == json.loads(
        identity_body(srv, f"/studies/{st}/metadata")
    )


def test_encoded_requests_are_audited_with_their_status(srv: LiveServer) -> None:
    status, headers, _ = fetch(srv, "/studies?includefield=all", "zstd")
    assert (status, headers["Content-Encoding"]) == (200, "zstd")
    status, _, _ = fetch(srv, "/studies/1.2.3.998/metadata", "zstd")
    assert status == 404
    events = srv.ctx.auth.store.audit_query(principal="admin", limit=50)
    details = [e["detail"] for e in events]
    details = [json.loads(d) if isinstance(d, str) else d for d in details]
    assert {"path": "/dicom-web/studies", "query": "includefield=all", "status": 200}.items() <= (
        next(d for d in details if d["query"] == "includefield=all").items()
    )
    assert any(
        d["path"] == "/dicom-web/studies/1.2.3.998/metadata" and d["status"] == 404 for d in details
    )
