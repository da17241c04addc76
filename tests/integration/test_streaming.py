"""Large bodies stream: server memory does not grow with the size of a STOW-RS request or
a WADO-RS response (PS3.18 §10.4, §10.5).

What came in: a generated ~450 MB load — a 300-frame 512×512 16-bit multi-frame
instance (~157 MB) sent three times in one chunked STOW-RS body with different SOP
Instance UIDs (~472 MB), then retrieved as a study.  The server runs as its own process
(`dicomhub serve`) so its peak RSS (VmHWM) is measured by itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import free_port, http

FRAMES, SIZE = 300, 512
MB = 1024 * 1024


def make_multiframe(path: Path, study: str, series: str) -> str:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC
    sop = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality = "BIG^BODY", "BIG1", "OT"
    ds.Rows = ds.Columns = SIZE
    ds.NumberOfFrames = FRAMES
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(1)
    ds.PixelData = rng.integers(0, 4096, (FRAMES, SIZE, SIZE), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return sop


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = dict(os.environ, DICOMHUB_FSYNC="false")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dicomhub.cli",
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--http-port",
            str(port),
            "--dimse-port",
            "0",
            "--workers",  # one process: its VmHWM is the server's peak (not a balancer's)
            "1",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if http.get(base + "/health", timeout=2).ok:
                break
        except requests.ConnectionError:
            pass
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.2)
    # the first start created 'admin' and left its password for the operator (0600 file)
    password = (tmp_path / "data" / "initial-admin-password").read_text().strip()
    r = requests.post(
        base + "/auth/token",
        timeout=30,
        data={"grant_type": "password", "username": "admin", "password": password},
    )
    assert r.status_code == 200, r.text
    http.tokens[base] = r.json()["access_token"]
    yield base + "/dicom-web", proc.pid
    http.tokens.pop(base, None)
    proc.terminate()
    proc.wait(timeout=30)


def test_memory_does_not_grow_with_body_size(
    server_process: tuple[str, int], tmp_path: Path
) -> None:
    url, pid = server_process
    study, series = generate_uid(), generate_uid()
    # warm up: one small request so imports and pools are loaded before measuring
    http.get(url + "/studies", timeout=30)
    base_rss = vm_hwm_mb(pid)
    files = []
    for i in range(3):
        f = tmp_path / f"big{i}.dcm"
        make_multiframe(f, study, series)
        files.append(f)
    boundary = "bigboundary"
    total = sum(f.stat().st_size for f in files)
    assert total > 450 * MB

    def body() -> Iterator[bytes]:
        for f in files:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            with open(f, "rb") as fh:
                while chunk := fh.read(MB):
                    yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    r = http.post(
        url + "/studies",
        data=body(),
        timeout=600,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
    )
    assert r.status_code == 200, r.text
    after_stow = vm_hwm_mb(pid)
    # stream the study back and count bytes without keeping them
    received = 0
    with http.get(f"{url}/studies/{study}", stream=True, timeout=600) as resp:
        assert resp.status_code == 200
        for chunk in resp.iter_content(MB):
            received += len(chunk)
    assert received > total
    after_wado = vm_hwm_mb(pid)
    # a frame from the middle of the 157 MB instance
    sop = pydicom.dcmread(files[1], stop_before_pixels=True).SOPInstanceUID
    fr = http.get(f"{url}/studies/{study}/series/{series}/instances/{sop}/frames/150", timeout=60)
    assert fr.status_code == 200 and len(fr.content) > SIZE * SIZE * 2
    growth_stow, growth_wado = after_stow - base_rss, after_wado - base_rss
    print(
        f"peak RSS: base {base_rss:.0f} MB, +{growth_stow:.0f} MB after a {total / MB:.0f} MB "
        f"STOW, +{growth_wado:.0f} MB after streaming it back"
    )
    # the body is ~470 MB; buffering even one instance would add ~157 MB
    assert growth_stow < 100, (base_rss, after_stow)
    assert growth_wado < 100, (base_rss, after_wado)
