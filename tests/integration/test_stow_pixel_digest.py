"""STOW-RS stores every part byte for byte and records the digests the file gives (its
SHA-256, computed by the writer threads as the body streams in, and its pixel digest).

What came in: every native sample of at least 64 KiB (CT, MR, US, RGB, multi-frame, 8 and
16 bits, Explicit and Implicit VR Little Endian) plus compressed ones, in bodies of
several parts sent in 40 kB HTTP chunks, so part boundaries fall anywhere in the chunks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pydicom

from conftest import MANIFEST, LiveServer, http
from dicomhub.codecs import transcode
from integration.helpers import stow_body

NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
HEAD = 64 * 1024


def _samples() -> list:
    big = [s for s in MANIFEST if s.path.stat().st_size >= HEAD and s.pixel_decode == "ok"]
    native = [s for s in big if s.transfer_syntax_uid in NATIVE]
    other = [s for s in big if s.transfer_syntax_uid not in NATIVE][:6]
    return native + other


def test_recorded_pixel_digests_are_the_files(server: LiveServer) -> None:
    samples = _samples()
    assert len(samples) >= 20
    assert {s.modality for s in samples} >= {"CT", "MR", "US"}
    by_uid = {}
    for s in samples:
        ds = pydicom.dcmread(s.path, stop_before_pixels=True)
        by_uid.setdefault(str(ds.SOPInstanceUID), s.path)
    for start in range(0, len(samples), 8):
        body, ctype = stow_body([s.path for s in samples[start : start + 8]])

        def chunks(body: bytes = body) -> Iterator[bytes]:
            for i in range(0, len(body), 40_000):
                yield body[i : i + 40_000]

        r = http.post(server.url + "/studies", data=chunks(), headers={"Content-Type": ctype})
        assert r.status_code in (200, 202), r.text
    owner = server.ctx.index.default_owner()
    checked = 0
    for uid, path in by_uid.items():
        stored = server.ctx.index.find_instance(uid, owner)
        assert stored is not None, path
        placed = server.ctx.blobs.local_path(stored.storage_key).read_bytes()
        if placed != path.read_bytes():
            continue  # another sample with the same SOP Instance UID was stored first
        assert stored.sha256 == hashlib.sha256(placed).hexdigest()
        assert stored.pixel_digest == transcode.pixel_digest(path), path
        checked += 1
    assert checked >= 20
