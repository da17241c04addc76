"""Test helpers: an independent multipart decoder and STOW body builder."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.pixels import pack_bits, pixel_array


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Decode multipart/related by splitting on the boundary (independent of the server)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    assert m, f"no boundary in {content_type}"
    delim = b"--" + m.group(1).encode()
    pieces = body.split(delim)
    assert pieces[-1].startswith(b"--"), "missing closing boundary"
    parts = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n")
        head, _, data = piece[2:].partition(b"\r\n\r\n")
        assert data.endswith(b"\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data[:-2]))
    return parts


def stow_body(files: Iterable[Path | bytes], boundary: str | None = None) -> tuple[bytes, str]:
    """A STOW-RS request body and its Content-Type."""
    boundary = boundary or uuid.uuid4().hex
    out = b""
    for f in files:
        data = f if isinstance(f, bytes) else Path(f).read_bytes()
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f'multipart/related; type="application/dicom"; boundary={boundary}'


DEFLATED_ELE = "1.2.840.10008.1.2.1.99"


def frame_array(path: Path, index: int) -> np.ndarray:
    """pydicom's decoded pixels of frame ``index`` (0-based) of a Part 10 file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if ds.file_meta.TransferSyntaxUID == DEFLATED_ELE:  # pixel_array(path) reads no zlib
        whole = pydicom.dcmread(path).pixel_array
        return whole[index] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else whole
    return pixel_array(path, index=index)


def expected_frame(path: Path, number: int) -> bytes:
    """pydicom's decoded pixels of frame ``number`` (1-based) as native little-endian bytes."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    arr = frame_array(path, number - 1)
    if int(ds.get("BitsAllocated", 8)) == 1:
        return bytes(pack_bits(arr, pad=False))  # a frame is ceil(bits / 8) bytes
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def uid(value: dict[str, object], tag: str) -> str:
    """The first value of a DICOM JSON element."""
    el = value[tag]
    assert isinstance(el, dict) and "Value" in el, f"{tag} has no value in {value}"
    return str(el["Value"][0])


def served_pixel_digest(ctx: Any, stored: Any) -> str | None:
    """The pixel digest the archive gives for ``stored`` (a StoredInstance): what the
    pixel-digests endpoint answers (RetrieveService.pixel_records, which computes a
    native object's digest the first time it is asked and records it); afterwards the
    index row must hold that same digest."""
    from dicomhub.core.access import SYSTEM

    records = ctx.retrieve.pixel_records(
        SYSTEM, stored.study_instance_uid, stored.series_instance_uid
    )
    (record,) = [r for r in records if r["SOPInstanceUID"] == stored.sop_instance_uid]
    digest = record["PixelDigest"]
    again = ctx.index.find_instance(stored.sop_instance_uid, stored.owner_pk)
    assert again is not None and again.pixel_digest == digest, (again, digest)
    return digest  # type: ignore[no-any-return]


def worker_processes(pid: int, kind: str) -> list[int]:
    """The worker processes of ``kind`` ("http", "dimse") under server process ``pid``:
    its descendants named ``dicomhub-<kind>`` (forked by its zygote, dicomhub.zygote),
    sorted."""
    import subprocess

    found: list[int] = []
    todo = [pid]
    while todo:
        out = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True)
        for child in (int(x) for x in out.stdout.split()):
            todo.append(child)
            if comm(child) == f"dicomhub-{kind}":
                found.append(child)
    return sorted(found)


def comm(pid: int) -> str:
    """The name of process ``pid`` (/proc/<pid>/comm; '' once it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    """The command line of process ``pid`` ('' once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def held_connections(pid: int, port: int) -> int:
    """Established TCP connections of local port ``port`` that process ``pid`` holds
    (from /proc: the sockets of the port, and the process's descriptors)."""
    import os

    served = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                f = line.split()
                if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":
                    served.add(f[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        held += target.startswith("socket:[") and target[8:-1] in served
    return held
