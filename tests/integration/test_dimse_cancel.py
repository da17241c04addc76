"""C-CANCEL of a C-FIND in progress (PS3.4 C.4.1.2.3, PS3.7 §9.3.2.3).

What came in: 3000 tiny Secondary Capture instances (2×2 pixels) of one patient
(PatientID CANCELME) in one series, stored by STOW-RS; a pynetdicom C-FIND SCU (calling
AE FINDSCU) asks for every IMAGE of that patient and sends C-CANCEL as soon as the first
pending response arrives.  The archive ends with a final Cancel status (0xFE00) before
the 3000th match, and the association goes on: a C-ECHO on it afterwards succeeds.

This shows the cancel end to end; it does not by itself tell the handler's flow control
(dimse/handlers.py ``_cancelled``) from pynetdicom's own reading, which on a quiet machine
also catches the cancel (after 111 responses here, against 33 with the flow control).
tests/test_dimse_cancel_pacing.py tests the flow control itself.
"""

from __future__ import annotations

import io

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from conftest import LiveNode
from integration.dimse_helpers import stow

COPIES = 3000
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _tiny(study: str, series: str, number: int) -> bytes:
    """A 2×2 8-bit Secondary Capture instance as a Part 10 file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID = "CANCELME"
    ds.PatientName = "CANCEL^ME"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "OT"
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes([number % 256, 1, 2, 3])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.timeout(300)
def test_c_cancel_stops_a_c_find(node: LiveNode) -> None:
    study, series = generate_uid(), generate_uid()
    for start in range(0, COPIES, 500):
        stow(node, [_tiny(study, series, i) for i in range(start, start + 500)])
    assert node.ctx.index.count_instances() == COPIES

    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification)
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
                    context = next(
                        cx
                        for cx in assoc.accepted_contexts
                        if cx.abstract_syntax == StudyRootQueryRetrieveInformationModelFind
                    )
                    assoc.send_c_cancel(7, context.context_id)
            else:
                final = status.Status
        echoed = assoc.send_c_echo()
    finally:
        assoc.release()
    assert final == 0xFE00, f"final status {final}, after {pending} pending responses"
    assert 1 <= pending < COPIES
    assert echoed.Status == 0x0000
