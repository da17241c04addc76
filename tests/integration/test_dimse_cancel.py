"""C-CANCEL of a C-FIND in progress (PS3.4 C.4.1.2.3, PS3.7 §9.3.2.3).

What came in: 300 copies of an MR sample in one study (PatientID CANCELME), stored by
STOW-RS; a pynetdicom C-FIND SCU (calling AE FINDSCU) asks for every IMAGE of that patient
and sends C-CANCEL as soon as the first pending response arrives.  The archive stops
with a final Cancel status (0xFE00) well before the 300th match, which shows the
association's DUL thread still reads the socket while the query is being answered.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from conftest import SAMPLES, LiveNode
from integration.dimse_helpers import MR_LE, make_copy, stow

COPIES = 300


def test_c_cancel_stops_a_c_find(node: LiveNode, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    files = [
        make_copy(
            SAMPLES / MR_LE,
            tmp_path / f"{i}.dcm",
            PatientID="CANCELME",
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
        ).path
        for i in range(COPIES)
    ]
    for i in range(0, COPIES, 100):
        stow(node, files[i : i + 100])

    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.PatientID = "CANCELME"
    query.StudyInstanceUID = study
    query.SeriesInstanceUID = series
    query.SOPInstanceUID = ""
    pending, final = 0, None
    try:
        responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind, msg_id=7)
        for status, _identifier in responses:
            assert status is not None, "no response (association aborted?)"
            if status.Status in (0xFF00, 0xFF01):
                pending += 1
                if pending == 1:
                    (context,) = assoc.accepted_contexts
                    assoc.send_c_cancel(7, context.context_id)
            else:
                final = status.Status
    finally:
        assoc.release()
    assert final == 0xFE00, f"final status {final}, after {pending} pending responses"
    assert 1 <= pending < COPIES  # 14-45 of 300 here, while another test suite ran
