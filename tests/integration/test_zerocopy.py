"""WADO-RS instances leave by sendfile (dicomweb/zerocopy.py): byte-exact, mixed with
re-encoded parts, safe when the client goes away, and not used where it cannot be.

What came in: copies of the NEMA CT (Explicit VR Little Endian, 525 KB) under new UIDs in
one series, a JPEG-LS lossless MR and an RLE US moved into the same study; requests over
HTTP/1.1 (requests, raw sockets) and HTTP/1.0; a client that closes its connection after
the first 100 KB of a 9 MB response.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import SAMPLES, LiveServer, http
from dicomhub.codecs.transcode import pixel_digest
from integration.helpers import split_multipart, stow_body

CT = SAMPLES / "nema-wg04" / "REF" / "CT1_UNC"
MR_JLS = SAMPLES / "nema-wg04" / "JLSL" / "MR1_JLSL"
US_RLE = SAMPLES / "nema-wg04" / "RLE" / "US1_RLE"
ELE = "1.2.840.10008.1.2.1"
COPIES = 16


def _copy(src: Path, out: Path, study: str, series: str) -> Path:
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out)
    return out


@pytest.fixture
def study(server: LiveServer, tmp_path: Path) -> tuple[str, str, list[Path]]:
    """A study: one series of CT copies, plus the MR (JPEG-LS) and US (RLE) in others."""
    study, series = generate_uid(), generate_uid()
    files = [_copy(CT, tmp_path / f"ct{i}.dcm", study, series) for i in range(COPIES)]
    files.append(_copy(MR_JLS, tmp_path / "mr.dcm", study, generate_uid()))
    files.append(_copy(US_RLE, tmp_path / "us.dcm", study, generate_uid()))
    body, ctype = stow_body(files)
    r = http.post(f"{server.url}/studies", data=body, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 200, r.text
    return study, series, files


def _stored_bytes(server: LiveServer, study: str) -> dict[str, bytes]:
    from dicomhub.core.access import SYSTEM

    items = server.ctx.retrieve.instances(SYSTEM, study, None, None)
    return {i.sop_instance_uid: server.ctx.retrieve.local_path(i).read_bytes() for i in items}


def test_series_as_stored_is_sent_by_sendfile_byte_exact(
    server: LiveServer, study: tuple[str, str, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    """The CT series, as stored: chunked response, every part the stored file byte for
    byte, and the parts went out by sendfile."""
    uid, series, _files = study
    stored = _stored_bytes(server, uid)
    with caplog.at_level(logging.DEBUG, logger="dicomhub.dicomweb.zerocopy"):
        r = http.get(
            f"{server.url}/studies/{uid}/series/{series}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
            timeout=60,
        )
    assert r.status_code == 200
    assert r.headers.get("transfer-encoding") == "chunked"
    parts = split_multipart(r.content, r.headers["content-type"])
    assert len(parts) == COPIES
    for headers, data in parts:
        sop = str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)).SOPInstanceUID)
        assert data == stored[sop]
        assert headers["content-type"] == f"application/dicom; transfer-syntax={ELE}"
    sent = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("sendfile")]
    assert sum(int(m.split()[1]) for m in sent) == COPIES, sent


def test_study_mixing_sendfile_and_reencoded_parts(
    server: LiveServer, study: tuple[str, str, list[Path]]
) -> None:
    """The whole study with Accept transfer-syntax=Explicit VR LE: the CT copies go as
    stored (sendfile), the JPEG-LS MR and RLE US are decoded in between; every part is
    labelled Explicit VR LE and decodes to the pixels of its original."""
    uid, _series, files = study
    by_sop = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    r = http.get(
        f"{server.url}/studies/{uid}",
        headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={ELE}'},
        timeout=60,
    )
    assert r.status_code == 200
    parts = split_multipart(r.content, r.headers["content-type"])
    assert len(parts) == len(files)
    seen = set()
    for i, (headers, data) in enumerate(parts):
        assert headers["content-type"] == f"application/dicom; transfer-syntax={ELE}"
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
        assert str(ds.file_meta.TransferSyntaxUID) == ELE
        sop = str(ds.SOPInstanceUID)
        out = Path(server.ctx.settings.data_dir) / f"part{i}.dcm"
        out.write_bytes(data)
        assert pixel_digest(out) == pixel_digest(by_sop[sop]), sop
        seen.add(sop)
    assert seen == set(by_sop)


def _raw_get(server: LiveServer, path: str, version: str = "HTTP/1.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    request = (
        f"GET /dicom-web{path} {version}\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {server.token}\r\n"
        'Accept: multipart/related; type="application/dicom"\r\n'
        "Connection: close\r\n\r\n"
    )
    sock.sendall(request.encode())
    return sock


def test_client_leaving_mid_response_does_not_hurt_the_server(
    server: LiveServer, study: tuple[str, str, list[Path]]
) -> None:
    """A client reads 100 KB of the 9 MB series and closes the connection: the server
    drops that response and answers the next request in full."""
    uid, series, _files = study
    sock = _raw_get(server, f"/studies/{uid}/series/{series}")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    got = b""
    while len(got) < 100_000:
        chunk = sock.recv(65536)
        assert chunk
        got += chunk
    assert got.startswith(b"HTTP/1.1 200")
    sock.close()
    r = http.get(
        f"{server.url}/studies/{uid}/series/{series}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
        timeout=60,
    )
    assert r.status_code == 200
    assert len(split_multipart(r.content, r.headers["content-type"])) == COPIES


def test_http10_client_gets_the_ordinary_stream(
    server: LiveServer, study: tuple[str, str, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    """Over HTTP/1.0 the sendfile path is not taken (it writes HTTP/1.1 chunks): the
    response is streamed the ordinary way, every part intact."""
    uid, series, _files = study
    stored = _stored_bytes(server, uid)
    with caplog.at_level(logging.DEBUG, logger="dicomhub.dicomweb.zerocopy"):
        sock = _raw_get(server, f"/studies/{uid}/series/{series}", "HTTP/1.0")
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
        sock.close()
    assert not [r for r in caplog.records if r.getMessage().startswith("sendfile")]
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 200")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":  # uvicorn chunks for HTTP/1.0 too
        body = _dechunk(body)
    parts = split_multipart(body, headers["content-type"])
    assert len(parts) == COPIES
    for _, part in parts:
        sop = str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(part)).SOPInstanceUID)
        assert part == stored[sop]


def _dechunk(body: bytes) -> bytes:
    """Undo chunked transfer coding (RFC 9112 §7.1)."""
    out = bytearray()
    pos = 0
    while True:
        line_end = body.index(b"\r\n", pos)
        size = int(body[pos:line_end].split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            return bytes(out)
        out += body[pos : pos + size]
        assert body[pos + size : pos + size + 2] == b"\r\n"
        pos += size + 2


def test_clients_that_stop_reading_do_not_stall_other_requests(
    server: LiveServer, study: tuple[str, str, list[Path]]
) -> None:
    """Forty connections ask for the 9 MB series and never read: their sends block once
    the socket buffers are full.  A QIDO-RS search and a metadata request still answer at
    once (the blocked sends hold only the sendfile threads, not the application's)."""
    uid, series, _files = study
    stalled = [_raw_get(server, f"/studies/{uid}/series/{series}") for _ in range(40)]
    for sock in stalled:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        time.sleep(1.0)
        r = http.get(f"{server.url}/studies?StudyInstanceUID={uid}", timeout=15)
        assert r.status_code == 200 and len(r.json()) == 1
        r = http.get(f"{server.url}/studies/{uid}/series/{series}/metadata", timeout=15)
        assert r.status_code == 200 and len(r.json()) == COPIES
    finally:
        for sock in stalled:
            sock.close()
