"""DIMSE Verification and Storage with real peers, checked over DICOMweb.

What came in: DCMTK 3.6.7's echoscu and storescu, and pynetdicom 3.0.4 as Storage SCU,
talking to the archive's AE (DICOMHUB) on loopback; decodable real samples of
../shared/dicom-samples (MANIFEST.tsv, pixel_decode == ok, Part 10 with Study, Series and
SOP Instance UIDs) in every decodable transfer syntax of the MANIFEST, up to three per
syntax, smallest first, with SOP Instance UIDs distinct across the selection (several
samples are the same image in several syntaxes, with one SOP Instance UID).

The archive rebuilds the File Meta Information from the C-STORE command (Affected SOP
Class/Instance UID, accepted transfer syntax, calling AE title), so only the data set is
compared with the original.  DCMTK normalises a data set while it sends it: it drops group
lengths (gggg,0000) and trailing padding (FFFC,FFFC) and labels encapsulated pixel data OB
(some samples say OW); the comparison ignores exactly these.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from pydicom.uid import UID
from pynetdicom import AE

from conftest import SAMPLES, LiveNode
from dicomhub.codecs import transcode
from dicomhub.dimse import handlers
from integration.dimse_helpers import (
    CT_LE,
    PYNETDICOM_ONLY,
    STORESCU_FLAG,
    Candidate,
    completed,
    dataset_problems,
    describe,
    echo,
    findscu,
    peer,
    pick_per_syntax,
    qido_instances,
    read,
    run,
    statuses,
    stow,
    wado_instance,
)
from integration.helpers import served_pixel_digest, uid

PER_SYNTAX = 3
BY_STORESCU = pick_per_syntax(PER_SYNTAX, list(STORESCU_FLAG))
BY_PYNETDICOM = pick_per_syntax(PER_SYNTAX, list(PYNETDICOM_ONLY), complete=False)


def test_selection_covers_the_syntaxes() -> None:
    """The MANIFEST gives decodable samples for every syntax storescu can propose, and
    HTJ2K samples for pynetdicom."""
    assert set(BY_STORESCU) == set(STORESCU_FLAG), set(STORESCU_FLAG) - set(BY_STORESCU)
    assert {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203"} <= set(BY_PYNETDICOM)
    for group in (BY_STORESCU, BY_PYNETDICOM):  # each group goes into one archive
        sops = [c.sop for cs in group.values() for c in cs]
        assert len(sops) == len(set(sops))


def test_echoscu(node: LiveNode) -> None:
    """echoscu (C-ECHO, Verification SOP Class) → success, exit 0."""
    proc = run(["echoscu", "-v", *peer(node)], timeout=60)
    assert proc.returncode == 0, describe(proc)
    assert "Received Echo Response (Success)" in proc.stdout + proc.stderr, describe(proc)


def _check_arrived(node: LiveNode, cand: Candidate, calling_ae: str) -> list[str]:
    """QIDO finds the instance by SOPInstanceUID; WADO-RS returns it in the syntax it was
    sent in, with the File Meta Information of the command, and an equal data set; the
    index holds the SHA-256 of the stored file and the pixel digest of the sent pixels."""
    found = qido_instances(node, SOPInstanceUID=cand.sop)
    if [(uid(f, "0020000D"), uid(f, "0020000E"), uid(f, "00080018")) for f in found] != [
        (cand.study, cand.series, cand.sop)
    ]:
        return [f"QIDO by SOPInstanceUID: {found}"]
    got = wado_instance(node, cand.study, cand.series, cand.sop)
    want = read(cand.path)
    problems = dataset_problems(got, want)
    meta = got.file_meta
    if str(meta.TransferSyntaxUID) != cand.syntax:
        problems.append(f"stored as {meta.TransferSyntaxUID}, sent as {cand.syntax}")
    if str(meta.MediaStorageSOPInstanceUID) != cand.sop:
        problems.append(f"MediaStorageSOPInstanceUID {meta.MediaStorageSOPInstanceUID}")
    if str(meta.MediaStorageSOPClassUID) != cand.sop_class:
        problems.append(f"MediaStorageSOPClassUID {meta.MediaStorageSOPClassUID}")
    if str(meta.get("SourceApplicationEntityTitle", "")).strip() != calling_ae:
        problems.append(f"SourceApplicationEntityTitle {meta.get('SourceApplicationEntityTitle')}")
    stored = node.ctx.index.find_instance(cand.sop, node.ctx.index.default_owner())
    assert stored is not None
    digest = hashlib.sha256(node.ctx.blobs.local_path(stored.storage_key).read_bytes())
    if digest.hexdigest() != stored.sha256:
        problems.append("the SHA-256 of the stored file differs from the index's")
    served = served_pixel_digest(node.ctx, stored)
    if served != transcode.pixel_digest(cand.path):
        problems.append(f"pixel digest {served} is not that of the sent pixels")
    return problems


def test_storescu_across_transfer_syntaxes(node: LiveNode) -> None:
    """storescu -R with the option that proposes each file's syntax (-xi implicit, -xe
    explicit LE, -xb big endian, -xd deflate, -xy/-xx JPEG 8/12 bit, -xs JPEG lossless SV1,
    -xt/-xu JPEG-LS, -xv/-xw J2K, -xr RLE), one association per syntax: exit 0, one
    success response per file; then over DICOMweb each instance is found by QIDO and
    retrieved by WADO-RS stored in the syntax it was sent in (no transcoding on either
    side), with a data set equal to the original."""
    failures: dict[str, list[str]] = {}
    for ts, cands in BY_STORESCU.items():
        args = ["storescu", "-v", "-R", STORESCU_FLAG[ts], *peer(node), *[c.path for c in cands]]
        proc = run(args)
        assert proc.returncode == 0, f"{ts}: {describe(proc)}"
        successes = re.findall(r"Received Store Response \(Success\)", proc.stdout + proc.stderr)
        assert len(successes) == len(cands), f"{ts}: {describe(proc)}"
        for cand in cands:
            problems = _check_arrived(node, cand, "STORESCU")
            if problems:
                failures[f"{ts} {cand.sample.id}"] = problems
    assert not failures, "\n".join(f"{k}: {'; '.join(v)}" for k, v in sorted(failures.items()))
    total = sum(len(c) for c in BY_STORESCU.values())
    assert node.ctx.index.count_instances() == total


def test_storescu_objects_parsed_from_their_staged_file(
    node: LiveNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data sets whose attributes go on past the first bytes kept in memory (here: 64
    bytes kept, so every one) are parsed from their staged file instead: one per storescu
    syntax, each arrives as sent, with the SHA-256 of its stored file in the index."""
    monkeypatch.setattr(handlers, "STAGE_HEAD_BYTES", 64)
    failures: dict[str, list[str]] = {}
    for ts, cands in BY_STORESCU.items():
        cand = cands[0]
        proc = run(["storescu", "-v", "-R", STORESCU_FLAG[ts], *peer(node), cand.path])
        assert proc.returncode == 0, f"{ts}: {describe(proc)}"
        assert "Received Store Response (Success)" in proc.stdout + proc.stderr, describe(proc)
        problems = _check_arrived(node, cand, "STORESCU")
        if problems:
            failures[f"{ts} {cand.sample.id}"] = problems
    assert not failures, "\n".join(f"{k}: {'; '.join(v)}" for k, v in sorted(failures.items()))


def test_pynetdicom_sends_what_dcmtk_cannot(node: LiveNode, tmp_path: Path) -> None:
    """pynetdicom as Storage SCU sends the decodable samples DCMTK 3.6.7's storescu cannot
    propose — HTJ2K (.4.201, .4.203) and JPEG Lossless process 14 (.4.57) — each on a
    context with exactly its syntax: the context is accepted, status 0x0000, and the
    instance is retrieved over WADO-RS in that syntax with an identical data set.  The
    HTJ2K samples have no Study/Series Instance UIDs: copies with generated ones are sent."""
    cands = [completed(c, tmp_path) for cs in BY_PYNETDICOM.values() for c in cs]
    ae = AE(ae_title="PYNETSCU")
    for cand in cands:
        ae.add_requested_context(cand.sop_class, [cand.syntax])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        accepted = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
        }
        assert {(c.sop_class, c.syntax) for c in cands} <= accepted
        results = {c.sop: assoc.send_c_store(read(c.path)) for c in cands}
    finally:
        assoc.release()
    assert {sop: int(r.get("Status", -1)) for sop, r in results.items()} == {
        c.sop: 0x0000 for c in cands
    }
    failures = {c.sample.id: p for c in cands if (p := _check_arrived(node, c, "PYNETSCU"))}
    assert not failures, failures


def test_stow_then_findscu_and_getscu(node: LiveNode, tmp_path: Path) -> None:
    """An instance stored over STOW-RS (a real CT sample) is found by findscu at IMAGE
    level (Study Root, by SOPInstanceUID) with its UIDs and RetrieveAETitle, and retrieved
    by getscu at IMAGE level: the file arrives with an equal data set."""
    path = SAMPLES / CT_LE
    want = read(path)
    stow(node, [path])
    proc, found = findscu(
        node,
        tmp_path,
        "-S",
        {
            "QueryRetrieveLevel": "IMAGE",
            "StudyInstanceUID": want.StudyInstanceUID,
            "SeriesInstanceUID": want.SeriesInstanceUID,
            "SOPInstanceUID": want.SOPInstanceUID,
            "SOPClassUID": "",
            "RetrieveAETitle": "",
        },
    )
    assert proc.returncode == 0, describe(proc)
    assert statuses(proc) == [0xFF00, 0x0000]
    assert len(found) == 1
    assert found[0].SOPInstanceUID == want.SOPInstanceUID
    assert found[0].SOPClassUID == want.SOPClassUID
    assert found[0].RetrieveAETitle == node.ae_title
    out = tmp_path / "get"
    out.mkdir()
    proc = run(
        [
            "getscu",
            "-S",
            "-od",
            out,
            "-k",
            "QueryRetrieveLevel=IMAGE",
            "-k",
            f"StudyInstanceUID={want.StudyInstanceUID}",
            "-k",
            f"SeriesInstanceUID={want.SeriesInstanceUID}",
            "-k",
            f"SOPInstanceUID={want.SOPInstanceUID}",
            *peer(node),
        ]
    )
    assert proc.returncode == 0, describe(proc)
    files = list(out.iterdir())
    assert len(files) == 1, files
    got = read(files[0])
    assert got.file_meta.TransferSyntaxUID == UID(want.file_meta.TransferSyntaxUID)
    assert dataset_problems(got, want) == []
    echo(node)
