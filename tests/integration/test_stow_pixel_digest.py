"""STOW-RS stores every part byte for byte and records the digests the file gives: its
SHA-256, computed by the writer threads as the body streams in, and its pixel digest
(for a native object stored as received, computed when first asked, from the stored
file checked against that SHA-256).

What came in: every native sample of at least 64 KiB (CT, MR, US, RGB, multi-frame, 8 and
16 bits, Explicit and Implicit VR Little Endian) plus compressed ones, in bodies of
several parts sent in 40 kB HTTP chunks, so part boundaries fall anywhere in the chunks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from conftest import MANIFEST, SAMPLES, LiveServer, http
from dicomhub.codecs import transcode
from integration.helpers import served_pixel_digest, stow_body

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
    checked = deferred = 0
    for uid, path in by_uid.items():
        stored = server.ctx.index.find_instance(uid, owner)
        assert stored is not None, path
        placed = server.ctx.blobs.local_path(stored.storage_key).read_bytes()
        if placed != path.read_bytes():
            continue  # another sample with the same SOP Instance UID was stored first
        assert stored.sha256 == hashlib.sha256(placed).hexdigest()
        expected = transcode.pixel_digest(path)
        # a native object stored as received is indexed without its pixel digest (it is
        # computed when first asked, from the stored file): nothing else is left empty
        if stored.pixel_digest is None and expected is not None:
            deferred += stored.transfer_syntax_uid in NATIVE
            assert stored.transfer_syntax_uid in NATIVE, path
        else:
            assert stored.pixel_digest == expected, path
        assert served_pixel_digest(server.ctx, stored) == expected, path
        checked += 1
    assert checked >= 20
    assert deferred >= 10


def test_a_deferred_pixel_digest_is_only_given_for_the_bytes_received(
    server: LiveServer, tmp_path: Path
) -> None:
    """What came in: a native MR (Explicit VR Little Endian) and a native CT (Implicit)
    by STOW-RS, then one byte of the MR's stored pixel data flipped on disk (a damaged
    disk, a hand edit).  The pixel-digests endpoint gives the CT's digest and records
    it; for the MR it gives none and records none (its file no longer has the SHA-256
    recorded at ingest); once the byte is restored, the MR's digest is given."""
    study = generate_uid()
    sources = {}
    for name in ("MR1_UNC", "CT1_UNC"):
        ds = pydicom.dcmread(SAMPLES / "nema-wg04" / "REF" / name)
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = tmp_path / name
        ds.save_as(out, enforce_file_format=True)
        sources[str(ds.SOPInstanceUID)] = out
    body, ctype = stow_body(list(sources.values()))
    r = http.post(server.url + "/studies", data=body, headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text
    owner = server.ctx.index.default_owner()
    stored = {uid: server.ctx.index.find_instance(uid, owner) for uid in sources}
    assert all(s is not None and s.pixel_digest is None for s in stored.values()), stored
    mr_uid = next(u for u, p in sources.items() if p.name == "MR1_UNC")
    mr = stored[mr_uid]
    assert mr is not None and mr.pixel_data_offset is not None
    blob = server.ctx.blobs.local_path(mr.storage_key)
    original = blob.read_bytes()
    damaged = bytearray(original)
    damaged[mr.pixel_data_offset + 100] ^= 0xFF
    blob.write_bytes(bytes(damaged))

    def digests() -> dict[str, str | None]:
        r = http.get(f"{server.url}/studies/{study}/pixel-digests")
        assert r.status_code == 200, r.text
        return {rec["SOPInstanceUID"]: rec["PixelDigest"] for rec in r.json()}

    got = digests()
    assert got[mr_uid] is None
    for uid, path in sources.items():
        if uid != mr_uid:
            assert got[uid] == transcode.pixel_digest(path)
            again = server.ctx.index.find_instance(uid, owner)
            assert again is not None and again.pixel_digest == got[uid]
    again = server.ctx.index.find_instance(mr_uid, owner)
    assert again is not None and again.pixel_digest is None
    blob.write_bytes(original)
    assert digests()[mr_uid] == transcode.pixel_digest(sources[mr_uid])
