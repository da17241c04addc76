"""Transfer syntax negotiation matrix: WADO-RS Accept (PS3.18 §8.7.3) and DIMSE presentation
contexts (PS3.4 C.4.3, PS3.8 §9.3.2.2) against what is stored, with lossless transcoding.

What came in: NEMA WG04 CT (native, 16-bit signed) and MR in JPEG 2000 lossless, JPEG-LS
lossless, JPEG lossless and RLE; a 10-frame MR in RLE; a 2-frame RGB in RLE; an HTJ2K
file; a 1-bit SEG; an 8-bit JPEG baseline (lossy) image — stored by STOW-RS as received.
Every response is checked for the syntax it claims (part Content-Type = file meta) and
for pixels identical to the server's record (pixel digest).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests

from conftest import SAMPLES, LiveNode
from dicomhub.codecs import registry, transcode
from dicomhub.codecs.registry import PixelFormat
from dicomhub.core import syntaxes as ts
from integration.dimse_helpers import (
    auth,
    describe,
    getscu,
    live_node,
    peer,
    read,
    run,
    statuses,
    stow,
)
from integration.helpers import split_multipart

WG04 = SAMPLES / "nema-wg04"
LJ = SAMPLES / "pylibjpeg-data" / "ljdata_ds"


@dataclass(frozen=True)
class Stored:
    name: str
    path: Path
    study: str
    series: str
    sop: str
    syntax: str
    digest: str | None
    frames: int


def _stored(name: str, path: Path) -> Stored:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Stored(
        name,
        path,
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
        str(ds.file_meta.TransferSyntaxUID),
        transcode.pixel_digest(path),
        int(ds.get("NumberOfFrames") or 1),
    )


def htj2k_copy(out: Path) -> Path:
    """pydicom-data's HTJ2K lossless RGB image has no Study/Series/SOP Instance UIDs: a copy
    with UIDs added (pixel data untouched), so that it can be stored."""
    from pydicom.uid import generate_uid

    dest = out / "HTJ2KLossless_08_RGB_uids.dcm"
    if dest.exists():
        return dest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(SAMPLES / "pydicom-data-htj2k" / "HTJ2KLossless_08_RGB.dcm")
    prefix = "1.2.826.0.1.3680043.8.498."
    ds.StudyInstanceUID = generate_uid(prefix, ["htj2k-study"])
    ds.SeriesInstanceUID = generate_uid(prefix, ["htj2k-series"])
    ds.SOPInstanceUID = generate_uid(prefix, ["htj2k-sop"])
    if not ds.get("SOPClassUID"):
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dest, enforce_file_format=True)
    return dest


SOURCES = {
    "ct": WG04 / "REF" / "CT1_UNC",
    "mr_j2k": WG04 / "J2KR" / "MR1_J2KR",
    "mr_jls": WG04 / "JLSL" / "MR2_JLSL",
    "mr_jpll": WG04 / "JPLL" / "MR3_JPLL",
    "mr_rle_10f": LJ / "RLELossless" / "emri_small_RLE.dcm",
    "rgb_rle_2f": LJ / "RLELossless" / "SC_rgb_rle_2frame.dcm",
    "seg_1bit": SAMPLES / "dcmqi-seg-paramaps" / "segmentations" / "liver.dcm",
    "jpeg_lossy": LJ / "JPEGBaseline" / "SC_rgb_dcmtk_+eb+cy+np.dcm",
}


@pytest.fixture(scope="module")
def htj2k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return htj2k_copy(tmp_path_factory.mktemp("htj2k"))


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, database_module: object, htj2k: Path
) -> Iterator[LiveNode]:
    tmp = tmp_path_factory.mktemp("negotiation")
    url, schema = database_module("sqlite", tmp)  # type: ignore[operator]
    with live_node(tmp, url, schema) as live:
        stow(live, [*SOURCES.values(), htj2k])
        yield live


@pytest.fixture(scope="module")
def items(htj2k: Path) -> dict[str, Stored]:
    out = {name: _stored(name, path) for name, path in SOURCES.items()}
    out["htj2k"] = _stored("htj2k", htj2k)
    return out


def _instance_url(node: LiveNode, s: Stored) -> str:
    return f"{node.url}/studies/{s.study}/series/{s.series}/instances/{s.sop}"


LOSSLESS_TARGETS = [
    ts.ELE,
    ts.ILE,
    ts.DEFLATED_ELE,
    ts.HTJ2K_LOSSLESS,
    ts.HTJ2K_RPCL,
    ts.JPEG_LS_LOSSLESS,
    ts.J2K_LOSSLESS,
    ts.JPEG_LOSSLESS_SV1,
    ts.RLE,
]
#: (stored item, target) pairs that must succeed: greyscale 8/16-bit and RGB into every
#: lossless syntax; JPEG 2000 / HTJ2K take no YBR_FULL and nothing takes 1-bit compressed.
MUST = {
    (name, target)
    for name in ("ct", "mr_j2k", "mr_jls", "mr_jpll", "mr_rle_10f", "rgb_rle_2f", "htj2k")
    for target in LOSSLESS_TARGETS
} | {("seg_1bit", t) for t in (ts.ELE, ts.ILE, ts.DEFLATED_ELE)}


@pytest.mark.parametrize("target", [*LOSSLESS_TARGETS, "*"])
def test_wado_instances_in_every_syntax(
    node: LiveNode, items: dict[str, Stored], target: str
) -> None:
    """GET each instance with Accept multipart/related; type="application/dicom";
    transfer-syntax=<target>: 200 with bytes really in that syntax and the recorded
    pixels, or — only where the syntax cannot carry the image — a 406 that says why."""
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={target}'
    for name, s in items.items():
        r = requests.get(
            _instance_url(node, s), headers=auth(node, {"Accept": accept}), timeout=120
        )
        if r.status_code == 406:
            assert (name, target) not in MUST, (name, target, r.text)
            assert r.json()["error"], r.text
            continue
        assert r.status_code == 200, (name, target, r.status_code, r.text[:300])
        ((headers, body),) = split_multipart(r.content, r.headers["content-type"])
        want = s.syntax if target == "*" else target
        assert headers["content-type"] == f"application/dicom; transfer-syntax={want}"
        ds = read(body)
        assert str(ds.file_meta.TransferSyntaxUID) == want, (name, target)
        assert str(ds.SOPInstanceUID) == s.sop
        if target == "*":
            assert body == s.path.read_bytes()
        got = transcode.pixel_digest_of_bytes(body)
        assert got == s.digest, (name, target)


def test_wado_lossy_stored_is_sent_as_stored_when_star_is_acceptable(
    node: LiveNode, items: dict[str, Stored]
) -> None:
    """In: the lossy JPEG baseline image asked HTJ2K first, * second (what the client
    sends): it comes as stored — lossy data is not inflated into a lossless codec."""
    s = items["jpeg_lossy"]
    accept = (
        f'multipart/related; type="application/dicom"; transfer-syntax={ts.HTJ2K_LOSSLESS}, '
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5'
    )
    r = requests.get(_instance_url(node, s), headers=auth(node, {"Accept": accept}), timeout=60)
    assert r.status_code == 200
    ((headers, body),) = split_multipart(r.content, r.headers["content-type"])
    assert headers["content-type"] == f"application/dicom; transfer-syntax={s.syntax}"
    assert body == s.path.read_bytes()


def test_wado_study_mixing_syntaxes_labels_each_part(
    node: LiveNode, items: dict[str, Stored]
) -> None:
    """A study retrieve asking JPEG-LS then *, for a study whose instances cannot all be
    JPEG-LS: each part carries its own transfer-syntax, and the multipart Content-Type names
    one only when all parts share it."""
    s = items["seg_1bit"]
    accept = (
        f'multipart/related; type="application/dicom"; transfer-syntax={ts.JPEG_LS_LOSSLESS}, '
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.1'
    )
    r = requests.get(
        f"{node.url}/studies/{s.study}", headers=auth(node, {"Accept": accept}), timeout=120
    )
    assert r.status_code == 200
    for headers, body in split_multipart(r.content, r.headers["content-type"]):
        syntax = headers["content-type"].split("transfer-syntax=")[1]
        assert str(read(body).file_meta.TransferSyntaxUID) == syntax


def _native(s: Stored, number: int) -> bytes:
    return next(transcode.canonical_pixels(s.path, [number - 1]).frames)


def _fmt(s: Stored) -> PixelFormat:
    pixels = transcode.canonical_pixels(s.path, [0])
    return pixels.format


FRAME_ACCEPTS = {
    "native": ('multipart/related; type="application/octet-stream"', ts.ELE),
    "jls": ('multipart/related; type="image/jls"', ts.JPEG_LS_LOSSLESS),
    "jp2": ('multipart/related; type="image/jp2"', ts.J2K_LOSSLESS),
    "jphc": ('multipart/related; type="image/jphc"', ts.HTJ2K_LOSSLESS),
    "rle": ('multipart/related; type="image/dicom-rle"', ts.RLE),
    "jpeg-ll": (
        f'multipart/related; type="image/jpeg"; transfer-syntax={ts.JPEG_LOSSLESS_SV1}',
        ts.JPEG_LOSSLESS_SV1,
    ),
}


@pytest.mark.parametrize("kind", sorted(FRAME_ACCEPTS))
@pytest.mark.parametrize("name", ["ct", "mr_j2k", "mr_jls", "mr_rle_10f", "rgb_rle_2f", "htj2k"])
def test_wado_frames_in_every_media_type(
    node: LiveNode, items: dict[str, Stored], name: str, kind: str
) -> None:
    """Frames (1 and, for multi-frame, the last) in octet-stream, image/jls, image/jp2,
    image/jphc, image/dicom-rle and image/jpeg (lossless SV1): each part says its
    transfer-syntax and decodes to exactly the stored frame."""
    s = items[name]
    accept, want = FRAME_ACCEPTS[kind]
    numbers = [1] if s.frames == 1 else [1, s.frames]
    r = requests.get(
        _instance_url(node, s) + "/frames/" + ",".join(map(str, numbers)),
        headers=auth(node, {"Accept": accept}),
        timeout=120,
    )
    assert r.status_code == 200, (name, kind, r.text[:300])
    parts = split_multipart(r.content, r.headers["content-type"])
    assert len(parts) == len(numbers)
    fmt = _fmt(s)
    for number, (headers, body) in zip(numbers, parts, strict=True):
        assert headers["content-type"].endswith(f"transfer-syntax={want}"), headers
        decoded = body if want == ts.ELE else registry.decode_frame(want, body, fmt).tobytes()
        assert decoded == _native(s, number), (name, kind, number)


def test_wado_frames_pass_through_when_stored_in_the_asked_syntax(
    node: LiveNode, items: dict[str, Stored]
) -> None:
    """J2K frames asked as image/jp2 and HTJ2K frames asked as image/jphc (or with
    transfer-syntax=*) are the stored fragments, byte for byte — no re-encoding."""
    from pydicom.encaps import generate_frames

    for name, accept in (
        ("mr_j2k", 'multipart/related; type="image/jp2"'),
        ("htj2k", 'multipart/related; type="image/jphc"'),
        ("mr_j2k", 'multipart/related; type="application/octet-stream"; transfer-syntax=*'),
    ):
        s = items[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(s.path)
        stored = next(generate_frames(ds.PixelData, number_of_frames=s.frames))
        r = requests.get(
            _instance_url(node, s) + "/frames/1", headers=auth(node, {"Accept": accept}), timeout=60
        )
        assert r.status_code == 200, (name, accept, r.text)
        ((headers, body),) = split_multipart(r.content, r.headers["content-type"])
        assert body == stored, (name, accept)
        assert headers["content-type"].endswith(f"transfer-syntax={s.syntax}")


def test_wado_single_frame_media_type_is_single_part(
    node: LiveNode, items: dict[str, Stored]
) -> None:
    """Accept: image/jphc for one frame: a single-part image/jphc body (PS3.18 §8.7.3.3.2)."""
    s = items["ct"]
    r = requests.get(
        _instance_url(node, s) + "/frames/1",
        headers=auth(node, {"Accept": "image/jphc"}),
        timeout=60,
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == f"image/jphc; transfer-syntax={ts.HTJ2K_LOSSLESS}"
    assert registry.decode_frame(ts.HTJ2K_LOSSLESS, r.content, _fmt(s)).tobytes() == _native(s, 1)


def test_wado_frames_refusals(node: LiveNode, items: dict[str, Stored]) -> None:
    """In: image/jphc for the 1-bit SEG, image/jpeg (baseline, 8-bit) for the 16-bit CT,
    image/jls with a JPEG 2000 syntax: 406 with a reason each."""
    for name, accept in (
        ("seg_1bit", 'multipart/related; type="image/jphc"'),
        ("ct", 'multipart/related; type="image/jpeg"'),
        ("ct", f'multipart/related; type="image/jls"; transfer-syntax={ts.J2K_LOSSLESS}'),
    ):
        s = items[name]
        r = requests.get(
            _instance_url(node, s) + "/frames/1", headers=auth(node, {"Accept": accept}), timeout=60
        )
        assert r.status_code == 406, (name, accept, r.status_code)
        assert r.json()["error"]


# -- DIMSE -------------------------------------------------------------------------------------
GETSCU_FLAGS = {
    "+xe": ts.ELE,
    "+xi": ts.ILE,
    "+xd": ts.DEFLATED_ELE,
    "+xs": ts.JPEG_LOSSLESS_SV1,
    "+xt": ts.JPEG_LS_LOSSLESS,
    "+xv": ts.J2K_LOSSLESS,
    "+xr": ts.RLE,
}


@pytest.mark.parametrize("flag", sorted(GETSCU_FLAGS))
@pytest.mark.parametrize("name", ["ct", "mr_j2k", "mr_rle_10f"])
def test_getscu_preferred_syntax_matrix(
    node: LiveNode, items: dict[str, Stored], tmp_path: Path, name: str, flag: str
) -> None:
    """getscu <flag> (preferring one syntax, uncompressed ones after it, in one context per
    SOP class) of a native CT, a J2K MR and a 10-frame RLE MR: the instance arrives in the
    preferred syntax — as stored when it already is, re-encoded losslessly otherwise —
    with the recorded pixels, final status 0x0000."""
    s = items[name]
    keys = {
        "QueryRetrieveLevel": "IMAGE",
        "StudyInstanceUID": s.study,
        "SeriesInstanceUID": s.series,
        "SOPInstanceUID": s.sop,
    }
    proc, got = getscu(node, tmp_path / "get", "-S", keys, extra=[flag])
    assert proc.returncode == 0, describe(proc)
    assert statuses(proc)[-1] == 0x0000, describe(proc)
    assert len(got) == 1
    on_disk = str(got[0].file_meta.TransferSyntaxUID)
    if flag == "+xi":  # getscu writes what arrived in Implicit VR as Explicit VR LE
        assert on_disk in (ts.ILE, ts.ELE), describe(proc)
    else:
        assert on_disk == GETSCU_FLAGS[flag], describe(proc)
    path = next((tmp_path / "get").iterdir())
    assert transcode.pixel_digest(path) == s.digest


STORESCU = {
    "-xs": WG04 / "JPLL" / "CT1_JPLL",
    "-xt": WG04 / "JLSL" / "CT2_JLSL",
    "-xv": WG04 / "J2KR" / "NM1_J2KR",
    "-xr": WG04 / "RLE" / "SC1_RLE",
}


@pytest.mark.parametrize("flag", sorted(STORESCU))
def test_storescu_proposing_compressed_syntaxes(
    tmp_path_factory: pytest.TempPathFactory, database_module: object, flag: str
) -> None:
    """storescu -xs/-xt/-xv/-xr sending the WG04 file in that syntax to an archive that keeps
    what it receives (default) and to one that transcodes every ingest to HTJ2K: both
    store it with the pixels of the uncompressed REF image (pixel digest), the first in the
    syntax received, the second in HTJ2K with the received syntax recorded as original."""
    source = STORESCU[flag]
    ref = WG04 / "REF" / (source.name.split("_")[0] + "_UNC")
    for policy, want in (("keep", None), ("htj2k", ts.HTJ2K_LOSSLESS)):
        tmp = tmp_path_factory.mktemp(f"storescu{flag}{policy}")
        url, schema = database_module("sqlite", tmp)  # type: ignore[operator]
        with live_node(tmp, url, schema, ingest_transfer_syntax=policy) as live:
            proc = run(["storescu", flag, *peer(live), source])
            assert proc.returncode == 0, describe(proc)
            s = _stored("in", source)
            r = requests.get(
                f"{live.url}/studies/{s.study}/pixel-digests", headers=auth(live), timeout=60
            )
            assert r.status_code == 200, r.text
            (record,) = r.json()
            assert record["PixelDigest"] == transcode.pixel_digest(ref)
            assert record["OriginalTransferSyntaxUID"] == s.syntax
            assert record["TransferSyntaxUID"] == (want or s.syntax)


def test_move_to_a_destination_that_takes_only_jpeg_ls(
    node: LiveNode, items: dict[str, Stored]
) -> None:
    """movescu (IMAGE level) of the native CT and the J2K MR to a pynetdicom Storage SCP
    (AE JLSONLY, registered node) that accepts CT and MR Image Storage in JPEG-LS lossless
    only: both arrive in JPEG-LS — re-encoded losslessly, since neither is stored so — with
    the recorded pixels; final status 0x0000 for each move."""
    from pynetdicom import AE, evt
    from pynetdicom.events import Event

    from conftest import free_port
    from integration.dimse_helpers import register

    received: dict[str, bytes] = {}

    def on_store(event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        received[str(ds.SOPInstanceUID)] = buf.getvalue()
        return 0x0000

    ae = AE(ae_title="JLSONLY")
    for sop_class in ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"):
        ae.add_supported_context(sop_class, [ts.JPEG_LS_LOSSLESS])
    port = free_port()
    scp = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        register(node, f"jlsonly-{port}", "JLSONLY", port)
        for name in ("ct", "mr_j2k"):
            s = items[name]
            keys = [
                "-k", "QueryRetrieveLevel=IMAGE",
                "-k", f"StudyInstanceUID={s.study}",
                "-k", f"SeriesInstanceUID={s.series}",
                "-k", f"SOPInstanceUID={s.sop}",
            ]  # fmt: skip
            proc = run(["movescu", "-d", "-S", "-aem", "JLSONLY", *keys, *peer(node)])
            assert proc.returncode == 0, describe(proc)
            assert statuses(proc)[-1] == 0x0000, describe(proc)
            data = received[s.sop]
            assert str(read(data).file_meta.TransferSyntaxUID) == ts.JPEG_LS_LOSSLESS
            assert transcode.pixel_digest_of_bytes(data) == s.digest, name
    finally:
        scp.shutdown()
