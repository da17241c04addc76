"""Storage Commitment, concurrent associations and bad input on the DIMSE edge.

What came in: pynetdicom 3.0.4 peers — a Storage Commitment SCU that also listens for the
N-EVENT-REPORT (registered as a node under its AE title), eight Storage SCUs storing at
once, a peer streaming a truncated file as a C-STORE data set, a peer proposing a private
SOP class, a peer that aborts in the middle of a C-STORE — and DCMTK's storescu killed
with SIGKILL while it sends a 200 MB file.  Data sets are copies of the real CT sample
pylibjpeg-data/ljdata_ds/LittleEndianExplicit/CT_small.dcm with new UIDs, or generated.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from sqlalchemy import text

from conftest import SAMPLES, LiveNode, free_port
from integration.dimse_helpers import (
    CT_LE,
    DCMTK_ENV,
    dataset_problems,
    describe,
    echo,
    peer,
    qido_studies,
    read,
    register,
    staging_files,
    stored_files,
    wado_instance,
)

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SC_MULTIFRAME_WORD = "1.2.840.10008.5.1.4.1.1.7.3"
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.10.1040.99.1"


def _ct_copy(study: str, series: str) -> Dataset:
    """The real CT sample with a new SOP Instance UID in the given study and series."""
    ds = read(SAMPLES / CT_LE)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _store(node: LiveNode, datasets: list[Dataset], ae_title: str = "STORESCU") -> list[int]:
    """C-STORE the data sets on one pynetdicom association; their statuses."""
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).get("Status", -1)) for ds in datasets]
    finally:
        assoc.release()


def _wait_until(condition: Callable[[], bool], timeout: float = 15) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` passes (a wait, not a check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# -- Storage Commitment Push Model -------------------------------------------------------------
@dataclass
class Report:
    """One N-EVENT-REPORT the Storage Commitment SCU received."""

    on_listener: bool  # received on the SCU's listening server (not on its N-ACTION assoc)
    calling_ae: str
    event_type: int
    sop_class: str
    sop_instance: str
    info: Dataset


@contextmanager
def _commitment_scu(node: LiveNode, ae_title: str) -> Iterator[queue.Queue[Report]]:
    """A pynetdicom AE listening for N-EVENT-REPORT on a free port, registered as a node
    under ``ae_title``; yields the queue of reports it receives (on any association)."""
    reports: queue.Queue[Report] = queue.Queue()

    def on_report(event: Event) -> tuple[int, None]:
        req = event.request
        reports.put(
            Report(
                event.assoc.is_acceptor,
                str(event.assoc.requestor.ae_title).strip(),
                int(event.event_type),
                str(req.AffectedSOPClassUID),
                str(req.AffectedSOPInstanceUID),
                event.event_information,
            )
        )
        return 0x0000, None

    ae = AE(ae_title=ae_title)
    ae.add_supported_context(STORAGE_COMMITMENT, scu_role=True, scp_role=True)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        register(node, ae_title.lower(), ae_title, port)
        yield reports
    finally:
        server.shutdown()


def _commit(
    node: LiveNode, ae_title: str, refs: list[tuple[str, str]], reports: queue.Queue[Report]
) -> tuple[int, str, Report]:
    """N-ACTION (Action Type ID 1) for ``refs`` (SOP class, instance) from a new association
    of ``ae_title``; waits up to 10 s for the N-EVENT-REPORT, which must come to the
    registered node (the listener).  (N-ACTION status, TransactionUID, report)."""
    info = Dataset()
    info.TransactionUID = generate_uid()
    items = []
    for sop_class, sop in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop
        items.append(item)
    info.ReferencedSOPSequence = items
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(STORAGE_COMMITMENT)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        status, _reply = assoc.send_n_action(
            info, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
        )
        code = int(status.get("Status", -1)) if status else -1
        report = reports.get(timeout=10)
    finally:
        assoc.release()
    assert report.on_listener, "the report came on the N-ACTION association"
    assert report.calling_ae == node.ae_title
    assert (report.sop_class, report.sop_instance) == (
        STORAGE_COMMITMENT,
        STORAGE_COMMITMENT_INSTANCE,
    )
    return code, str(info.TransactionUID), report


def _refs(seq: object) -> dict[str, Dataset]:
    return {str(i.ReferencedSOPInstanceUID): i for i in (seq or [])}  # type: ignore[attr-defined]


def test_storage_commitment_push_model(node: LiveNode) -> None:
    """A pynetdicom Storage Commitment SCU (AE COMMITSCU, registered as a node, listening)
    asks for commitment of instances stored over C-STORE:

    1. two stored instances → N-ACTION 0x0000, then an N-EVENT-REPORT to the registered
       node with the same TransactionUID, Event Type ID 1, both in ReferencedSOPSequence;
    2. the two plus one never stored → Event Type ID 2, the two in ReferencedSOPSequence,
       the unknown one in FailedSOPSequence with FailureReason 0x0112 (No such object);
    3. after one byte of one stored blob is flipped on disk, the two again → Event Type
       ID 2: the corrupted one fails with 0x0110 (Processing failure: checksum mismatch),
       the other succeeds.
    """
    study, series = generate_uid(), generate_uid()
    first, second = _ct_copy(study, series), _ct_copy(study, series)
    assert _store(node, [first, second]) == [0x0000, 0x0000]
    stored = [
        (CT_IMAGE_STORAGE, str(first.SOPInstanceUID)),
        (CT_IMAGE_STORAGE, str(second.SOPInstanceUID)),
    ]
    unknown = (CT_IMAGE_STORAGE, generate_uid())
    with _commitment_scu(node, "COMMITSCU") as reports:
        # 1. all stored
        code, transaction, report = _commit(node, "COMMITSCU", stored, reports)
        assert code == 0x0000
        info = report.info
        assert report.event_type == 1
        assert str(info.TransactionUID) == transaction
        assert set(_refs(info.get("ReferencedSOPSequence"))) == {s for _, s in stored}
        assert not info.get("FailedSOPSequence")
        # 2. one unknown
        code, transaction, report = _commit(node, "COMMITSCU", [*stored, unknown], reports)
        assert code == 0x0000
        info = report.info
        assert report.event_type == 2
        assert str(info.TransactionUID) == transaction
        assert set(_refs(info.get("ReferencedSOPSequence"))) == {s for _, s in stored}
        failed = _refs(info.get("FailedSOPSequence"))
        assert set(failed) == {unknown[1]}
        assert failed[unknown[1]].FailureReason == 0x0112
        assert failed[unknown[1]].ReferencedSOPClassUID == CT_IMAGE_STORAGE
        # 3. one blob corrupted on disk
        blobs = [
            p for p in stored_files(node) if p.name.startswith(str(first.SOPInstanceUID) + ".")
        ]
        assert len(blobs) == 1
        data = bytearray(blobs[0].read_bytes())
        data[len(data) // 2] ^= 0xFF
        blobs[0].write_bytes(bytes(data))
        code, transaction, report = _commit(node, "COMMITSCU", stored, reports)
        assert code == 0x0000
        info = report.info
        assert report.event_type == 2
        assert str(info.TransactionUID) == transaction
        assert set(_refs(info.get("ReferencedSOPSequence"))) == {str(second.SOPInstanceUID)}
        failed = _refs(info.get("FailedSOPSequence"))
        assert set(failed) == {str(first.SOPInstanceUID)}
        assert failed[str(first.SOPInstanceUID)].FailureReason == 0x0110
    assert reports.empty()


# -- concurrency -------------------------------------------------------------------------------
def test_concurrent_associations_store_into_one_study(node: LiveNode) -> None:
    """Eight pynetdicom Storage SCUs at once (one thread and one association each, released
    only after all have started storing), each storing five copies of the CT sample with
    new SOP Instance UIDs into the same new study and series: every status is 0x0000, QIDO
    reports 40 instances and 1 series for the study, and 40 files are on disk."""
    study, series = generate_uid(), generate_uid()
    batches = [[_ct_copy(study, series) for _ in range(5)] for _ in range(8)]
    started = threading.Barrier(8, timeout=60)

    def send(batch: list[Dataset]) -> list[int]:
        ae = AE(ae_title="CONCURRENT")
        ae.add_requested_context(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert assoc.is_established
        try:
            started.wait()  # all eight associations are open at the same time
            return [int(assoc.send_c_store(ds).get("Status", -1)) for ds in batch]
        finally:
            assoc.release()

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, batches))
    assert statuses == [[0x0000] * 5] * 8
    found = qido_studies(node, StudyInstanceUID=study)
    assert len(found) == 1
    assert found[0]["00201208"]["Value"] == [40]  # NumberOfStudyRelatedInstances
    assert found[0]["00201206"]["Value"] == [1]  # NumberOfStudyRelatedSeries
    assert len(stored_files(node)) == 40
    assert node.ctx.index.count_instances() == 40
    assert staging_files(node) == []
    sop = str(batches[3][2].SOPInstanceUID)
    assert dataset_problems(wado_instance(node, study, series, sop), batches[3][2]) == []


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.6, 0.1], ids=["in-pixel-data", "in-attributes"])
def test_truncated_data_set_is_refused(node: LiveNode, tmp_path: Path, keep: float) -> None:
    """A copy of the CT sample cut to 60 % (inside the pixel data) or 10 % (inside the
    attributes) of its size, streamed as the C-STORE data set without decoding
    (pynetdicom STORE_SEND_CHUNKED_DATASET): failure status 0xC000 or 0xA900, nothing
    indexed, no file under storage/objects, nothing left in storage/staging."""
    source = SAMPLES / CT_LE
    data = source.read_bytes()
    path = tmp_path / "truncated.dcm"
    path.write_bytes(data[: int(len(data) * keep)])
    ae = AE(ae_title="TRUNCATED")
    ae.add_requested_context(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    assert int(status.get("Status", -1)) in (0xC000, 0xA900), status
    assert node.ctx.index.count_instances() == 0
    assert stored_files(node) == []
    assert staging_files(node) == []
    echo(node)


def _store_ct(node: LiveNode, calling: str) -> int:
    """C-STORE of the real CT sample (explicit VR little endian) by pynetdicom; status."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(SAMPLES / CT_LE)
    finally:
        assoc.release()
    return int(status.get("Status", -1))


def test_storage_failure_during_c_store_leaves_nothing(node: LiveNode) -> None:
    """In: the CT sample by C-STORE while its storage directory cannot be created (the
    objects directory has been replaced by a plain file): 0xA700 (Out of Resources),
    nothing indexed, no file, nothing left in staging; the next C-STORE, with storage
    back, succeeds."""
    objects = node.ctx.settings.data_dir / "storage" / "objects"
    aside = objects.with_name("objects.aside")
    objects.rename(aside)
    objects.write_bytes(b"not a directory")
    try:
        assert _store_ct(node, "PYNETSCU") == 0xA700
    finally:
        objects.unlink()
        aside.rename(objects)
    assert node.ctx.index.count_instances() == 0
    assert stored_files(node) == []
    assert staging_files(node) == []
    assert _store_ct(node, "PYNETSCU") == 0x0000
    assert node.ctx.index.count_instances() == 1


def test_index_failure_during_c_store_removes_the_blob(node: LiveNode) -> None:
    """In: the CT sample by C-STORE while the index cannot take it (its instances table
    renamed away): 0x0110 (Processing Failure); the blob, made durable meanwhile, is
    removed again and nothing is left in staging."""
    with node.ctx.index.write_engine.begin() as conn:
        conn.execute(text("ALTER TABLE instances RENAME TO instances_away"))
    try:
        assert _store_ct(node, "PYNETSCU") == 0x0110
    finally:
        with node.ctx.index.write_engine.begin() as conn:
            conn.execute(text("ALTER TABLE instances_away RENAME TO instances"))
    assert node.ctx.index.count_instances() == 0
    assert stored_files(node) == []
    assert staging_files(node) == []


def test_unknown_sop_class_context_is_rejected(node: LiveNode) -> None:
    """A peer proposes a private SOP class (1.2.826.0.1.3680043.10.1040.99.1) next to CT
    Image Storage: the association is accepted, the private context rejected (result 3,
    abstract syntax not supported), the CT context accepted."""
    ae = AE(ae_title="PRIVATE")
    ae.add_requested_context(PRIVATE_SOP_CLASS, [ExplicitVRLittleEndian])
    ae.add_requested_context(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        rejected = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
    finally:
        assoc.release()
    assert accepted == {CT_IMAGE_STORAGE}
    assert rejected == {PRIVATE_SOP_CLASS: 0x03}
    echo(node)


def _large_dataset(frames: int) -> Dataset:
    """A generated Multi-frame Grayscale Word SC instance of ``frames`` 512×512 frames."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SC_MULTIFRAME_WORD
    ds.SOPClassUID = SC_MULTIFRAME_WORD
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "ABORT", "ABORT^TEST", "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    pixels = (np.arange(frames * 512 * 512, dtype=np.uint32) % 65521).astype("<u2")
    ds.PixelData = pixels.tobytes()
    return ds


def _assert_nothing_half_stored(node: LiveNode, ds: Dataset) -> str:
    """Either nothing of ``ds`` is stored, or all of it (identical); staging ends up empty
    and the server keeps serving. Returns "not stored" or "stored completely"."""
    assert _wait_until(lambda: staging_files(node) == []), staging_files(node)
    count = node.ctx.index.count_instances()
    files = stored_files(node)
    if count == 0:
        assert files == []
        outcome = "not stored"
    else:
        assert count == 1 and len(files) == 1
        got = wado_instance(node, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert got.PixelData == ds.PixelData
        outcome = "stored completely"
    echo(node)
    return outcome


def test_association_aborted_in_the_middle_of_a_c_store(node: LiveNode) -> None:
    """A pynetdicom peer opens an association, sends the C-STORE command and half of the
    P-DATA fragments of a generated 32 MB data set, then sends an A-ABORT: the archive
    never completes the message, so nothing is stored (index, objects), staging is empty
    and the server keeps serving (echoscu)."""
    ds = _large_dataset(64)
    ae = AE(ae_title="ABORTER")
    ae.add_requested_context(SC_MULTIFRAME_WORD, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    context_id = assoc.accepted_contexts[0].context_id
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = SC_MULTIFRAME_WORD
    req.AffectedSOPInstanceUID = ds.SOPInstanceUID
    req.Priority = 2
    req.DataSet = BytesIO(encode(ds, False, True))
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    fragments = list(msg.encode_msg(context_id, assoc.dimse.maximum_pdu_size))
    assert len(fragments) > 20
    for pdata in fragments[: len(fragments) // 2]:
        assoc.dul.send_pdu(pdata)
    assoc.abort()
    assert _assert_nothing_half_stored(node, ds) == "not stored"


def test_storescu_killed_while_sending(
    node: LiveNode, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """storescu sending a generated 200 MB file (400 frames of 512×512×16 bit), killed
    with SIGKILL once the archive has accepted its association: the TCP connection drops
    in the middle of the C-STORE (or, if the transfer completed first, after it).  Nothing
    is half-stored — either not stored at all or stored completely and identical (both
    accepted, the kill races the transfer) — staging is empty and the server keeps
    serving."""
    ds = _large_dataset(400)
    path = tmp_path / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    log = tmp_path / "storescu.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            ["storescu", "-v", *peer(node), str(path)],
            env=DCMTK_ENV,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        # kill once the association is up (storescu logs it), i.e. while data flows
        _wait_until(lambda: "Association Accepted" in log.read_text() or proc.poll() is not None)
        assert "Association Accepted" in log.read_text(), log.read_text()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, describe(
        subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")
    )
    record_property("outcome", _assert_nothing_half_stored(node, ds))
