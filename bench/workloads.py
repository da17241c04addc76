"""The timed workloads: STOW-RS, C-STORE, QIDO-RS, WADO-RS (series, metadata, frames).

Every HTTP function talks plain HTTP to a DICOMweb root URL and C-STORE goes through
DCMTK's ``storescu``, so the same code measures every server.  Times are wall-clock
(``time.perf_counter``) from the client's side and include receiving the whole response
body (HTTP) or the last C-STORE response and the association release (DIMSE).
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
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
#: The bench's C-STORE SCU: calling AE title and the options, the same for every server.
STORESCU_AET = "BENCHSTORESCU"
#: Propose Explicit VR Little Endian first (the files' syntax: sent as stored, no
#: conversion), CT Image Storage only (-R), one association per process; storescu's
#: default PDU receive size (16 KiB; it only bounds the small C-STORE responses, the
#: data PDUs are bounded by the size each server announces).
STORESCU_OPTIONS = ("-xe", "-R")


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


def cstore_each(host: str, port: int, called_aet: str, paths: Sequence[Path]) -> float:
    """One ``storescu`` process, hence one association, per file, one after the other
    (as a modality that opens an association per image); seconds for all of them."""
    start = time.perf_counter()
    for path in paths:
        cstore(host, port, called_aet, [[path]])
    return time.perf_counter() - start


def storescu_version() -> str:
    """DCMTK's version from ``storescu --version`` ('?' if it is not installed)."""
    exe = shutil.which("storescu")
    if exe is None:
        return "?"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    for word in out.split():
        if word.startswith("v") and word[1:2].isdigit():
            return word[1:]
    return "?"


def storescu_command(host: str, port: int, called_aet: str, paths: Sequence[Path]) -> list[str]:
    """The ``storescu`` command line sending ``paths`` on one association."""
    exe = shutil.which("storescu")
    if exe is None:
        raise RuntimeError("storescu not found (install DCMTK: apt-get install dcmtk)")
    return [
        exe,
        *STORESCU_OPTIONS,
        "-aet",
        STORESCU_AET,
        "-aec",
        called_aet,
        host,
        str(port),
        *(str(p) for p in paths),
    ]


def cstore(host: str, port: int, called_aet: str, groups: Sequence[Sequence[Path]]) -> float:
    """Send each group of files with its own ``storescu`` process (one association each),
    all at once; seconds until the last one has finished.

    ``TCP_NODELAY=1`` in storescu's environment: DCMTK then disables Nagle's algorithm
    (without it every C-STORE waits ~40-50 ms for the peer's delayed ACK).  A non-zero
    exit status, or an error or failure status in storescu's output, raises.
    """
    env = {**os.environ, "TCP_NODELAY": "1"}
    commands = [storescu_command(host, port, called_aet, g) for g in groups if g]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        for cmd in commands
    ]
    outputs: list[tuple[int, str]] = []
    try:
        for proc in procs:
            raw, _ = proc.communicate(timeout=900)
            outputs.append((proc.returncode, raw.decode(errors="replace")))
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"storescu still running after {exc.timeout:.0f} s") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    elapsed = time.perf_counter() - start
    for code, out in outputs:
        problems = [
            line for line in out.splitlines() if line.startswith(("E:", "F:")) or "Failed" in line
        ]
        if code != 0 or problems:
            detail = " | ".join((problems or out.strip().splitlines())[-3:])
            raise RuntimeError(f"storescu exit status {code}: {detail[:300]}")
    return elapsed


def study_instance_count(s: requests.Session, base: str, study: str) -> int:
    """NumberOfStudyRelatedInstances of a study from QIDO-RS (0 when it is absent)."""
    r = s.get(
        f"{base}/studies?StudyInstanceUID={study}&includefield=00201208",
        headers={"Accept": DICOM_JSON},
        timeout=120,
    )
    if r.status_code == 204 or not r.content:
        return 0
    if r.status_code != 200:
        raise RuntimeError(f"QIDO-RS study -> HTTP {r.status_code}: {r.text[:200]}")
    found = r.json()
    if not found:
        return 0
    return int(found[0].get("00201208", {}).get("Value", [0])[0])


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


def stow_files_streamed(base: str, paths: Sequence[Path]) -> float:
    """STOW-RS each file as its own request, the body streamed from disk in 1 MiB chunks
    (chunked upload, nothing held whole in the client); seconds for all."""
    start = time.perf_counter()
    with session() as s:
        for path in paths:
            boundary = f"bench-{uuid.uuid4().hex}"

            def body(path: Path = path, boundary: str = boundary) -> Iterator[bytes]:
                yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                with open(path, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        yield chunk
                yield f"\r\n--{boundary}--\r\n".encode()

            ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
            headers = {"Content-Type": ctype, "Accept": DICOM_JSON}
            r = s.post(f"{base}/studies", data=body(), headers=headers, timeout=900)
            _check_stow(r, 1)
    return time.perf_counter() - start
