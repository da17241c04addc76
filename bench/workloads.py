"""The timed workloads: STOW-RS, QIDO-RS, WADO-RS (series, metadata, frames).

Every function talks plain HTTP to a DICOMweb root URL, so the same code measures
every server.  Times are wall-clock (``time.perf_counter``) from the client's side and
include receiving the whole response body.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bench.servers import session

DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
FRAMES_ACCEPT = (
    'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
)
CHUNK = 1 << 20


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation), NaN for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return percentile(values, 50)


@dataclass
class StowBody:
    """One multipart/related request body and how many instances it carries."""

    data: bytes
    content_type: str
    count: int


def stow_bodies(paths: Sequence[Path], per_request: int) -> list[StowBody]:
    """Pack files into multipart/related bodies of ``per_request`` instances (PS3.18 §10.5)."""
    bodies = []
    for i in range(0, len(paths), per_request):
        boundary = f"bench-{uuid.uuid4().hex}"
        chunks: list[bytes] = []
        group = paths[i : i + per_request]
        for p in group:
            chunks += [
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                p.read_bytes(),
                b"\r\n",
            ]
        chunks.append(f"--{boundary}--\r\n".encode())
        ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
        bodies.append(StowBody(b"".join(chunks), ctype, len(group)))
    return bodies


def _check_stow(r: requests.Response, expected: int) -> None:
    if r.status_code != 200:
        raise RuntimeError(f"STOW-RS -> HTTP {r.status_code}: {r.text[:300]}")
    doc: dict[str, Any] = r.json()
    stored = len(doc.get("00081199", {}).get("Value", []))
    failed = len(doc.get("00081198", {}).get("Value", []))
    if stored != expected or failed:
        raise RuntimeError(f"STOW-RS stored {stored}/{expected}, {failed} failed")


def stow(base: str, bodies: Sequence[StowBody | Sequence[Path]], clients: int) -> float:
    """POST the bodies to ``{base}/studies`` with ``clients`` parallel clients; seconds.

    A body may also be a group of files, packed by the client thread that sends it (so
    a large load need not sit in memory at once).
    """
    work: queue.SimpleQueue[StowBody | Sequence[Path]] = queue.SimpleQueue()
    for b in bodies:
        work.put(b)
    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def client() -> None:
        with session() as s:
            barrier.wait()
            try:
                while True:
                    try:
                        item = work.get_nowait()
                    except queue.Empty:
                        return
                    body = item if isinstance(item, StowBody) else stow_bodies(item, len(item))[0]
                    r = s.post(
                        f"{base}/studies",
                        data=body.data,
                        headers={"Content-Type": body.content_type, "Accept": DICOM_JSON},
                        timeout=600,
                    )
                    _check_stow(r, body.count)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def qido(s: requests.Session, urls: Sequence[str]) -> tuple[list[float], list[int]]:
    """GET each search URL in turn: latencies (ms) and result counts."""
    latencies: list[float] = []
    counts: list[int] = []
    for url in urls:
        start = time.perf_counter()
        r = s.get(url, headers={"Accept": DICOM_JSON}, timeout=120)
        body = r.content
        latencies.append((time.perf_counter() - start) * 1000)
        if r.status_code == 204 or not body:
            counts.append(0)
        elif r.status_code == 200:
            counts.append(len(r.json()))
        else:
            raise RuntimeError(f"QIDO-RS {url} -> HTTP {r.status_code}: {r.text[:200]}")
    return latencies, counts


def retrieve_stream(s: requests.Session, url: str, accept: str) -> tuple[int, float]:
    """Stream a (multipart) body in 1 MiB chunks: bytes received and seconds."""
    start = time.perf_counter()
    with s.get(url, headers={"Accept": accept}, stream=True, timeout=600) as r:
        if r.status_code != 200:
            raise RuntimeError(f"GET {url} -> HTTP {r.status_code}: {r.text[:200]}")
        received = 0
        for chunk in r.iter_content(CHUNK):
            received += len(chunk)
    return received, time.perf_counter() - start


def timed_get(s: requests.Session, url: str, accept: str) -> tuple[requests.Response, float]:
    """GET the whole body: the response and seconds."""
    start = time.perf_counter()
    r = s.get(url, headers={"Accept": accept}, timeout=600)
    _ = r.content
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"GET {url} -> HTTP {r.status_code}: {r.text[:200]}")
    return r, elapsed


def multipart_payloads(r: requests.Response) -> list[bytes]:
    """The part bodies of a multipart response (small bodies only)."""
    ctype = r.headers.get("content-type", "")
    boundary = ""
    for param in ctype.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise RuntimeError(f"no boundary in Content-Type {ctype!r}")
    delimiter = b"--" + boundary.encode()
    payloads = []
    for part in r.content.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        _headers, _, payload = part.partition(b"\r\n\r\n")
        payloads.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return payloads
