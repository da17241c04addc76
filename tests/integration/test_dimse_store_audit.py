"""C-STORE audit per study and association (PS3.15 A.5.3.2 "DICOM Instances Transferred").

What came in: one pynetdicom association (calling AE PYNETSCU, a registered device) that
stores three copies of a CT sample into one study, one MR sample copy into another study,
and a changed copy of the first CT instance under its SOP Instance UID (refused: duplicate
with different content, duplicate policy reject).  The archive audits failures one by one,
the first stored instance of each study at once, and, when the association closes, the
number of instances it stored into each study that had more than one.
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from conftest import SAMPLES, LiveNode
from integration.dimse_helpers import CT_LE, MR_LE, make_copy


def _store_events(node: LiveNode, study: str) -> list[dict[str, object]]:
    return node.ctx.auth.store.audit_query(principal="test-tools", event="store", study=study)


def test_one_audit_event_per_study_and_association(node: LiveNode, tmp_path: Path) -> None:
    ct_study, mr_study = generate_uid(), generate_uid()
    cts = [
        make_copy(SAMPLES / CT_LE, tmp_path / f"ct{i}.dcm", StudyInstanceUID=ct_study)
        for i in range(3)
    ]
    mr = make_copy(SAMPLES / MR_LE, tmp_path / "mr.dcm", StudyInstanceUID=mr_study)
    changed = pydicom.dcmread(cts[0].path)
    changed.PatientName = "CHANGED^CONTENT"

    ae = AE(ae_title="PYNETSCU")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        got = [assoc.send_c_store(pydicom.dcmread(c.path)).Status for c in cts]
        got.append(assoc.send_c_store(pydicom.dcmread(mr.path)).Status)
        # the first instance of each study is audited while the association goes on
        assert [e["detail"]["sop"] for e in _store_events(node, ct_study)] == [cts[0].sop]
        assert [e["detail"]["sop"] for e in _store_events(node, mr_study)] == [mr.sop]
        refused = assoc.send_c_store(changed).Status
    finally:
        assoc.release()
    assert got == [0x0000] * 4
    assert refused == 0x0111  # Duplicate SOP Instance

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the closing event is written after the release
        events = _store_events(node, ct_study)
        if any("instances" in e["detail"] for e in events):
            break
        time.sleep(0.05)
    by_kind = {
        ("failed" if e["outcome"] else "count" if "instances" in e["detail"] else "first"): e
        for e in events
    }
    assert len(events) == 3, events
    assert by_kind["first"]["detail"]["sop"] == cts[0].sop
    assert by_kind["count"]["detail"]["instances"] == 3
    assert by_kind["failed"]["outcome"] == 8
    assert by_kind["failed"]["detail"]["sop"] == cts[0].sop
    assert by_kind["failed"]["detail"]["status"] == 0x0111
    for e in events:
        assert e["interface"] == "dimse" and e["action"] == "C"
        assert str(e["source"]).startswith("PYNETSCU@")
    # one instance in the MR study: its first-instance event is the whole record
    assert len(_store_events(node, mr_study)) == 1
