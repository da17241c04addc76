"""The Part 10 header written in front of a received C-STORE data set (PS3.10 §7.1).

What came in: SOP Class/Instance UIDs of odd and even length (the longest is 64
characters), native and compressed transfer syntaxes, calling AE titles of odd length
and with trailing spaces.  Reference: pydicom's ``write_file_meta_info`` of pynetdicom's
``create_file_meta`` (what the handler wrote before).
"""

from __future__ import annotations

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom.dsutils import create_file_meta

from dicomhub.dimse.handlers import part10_header

CASES = [
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", "STORESCU"),
    ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", "1.2.840.10008.1.2", "MRI"),
    (
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.826.0.1.3680043.8.498." + "1" * 38,
        "1.2.840.10008.1.2.4.201",
        "X",
    ),
    ("1.2.840.10008.5.1.4.1.1.6.1", "2.25.1", "1.2.840.10008.1.2.5", "US  "),
]


@pytest.mark.parametrize(("sop_class", "sop", "ts", "ae"), CASES)
def test_header_matches_pydicom(sop_class: str, sop: str, ts: str, ae: str) -> None:
    meta = create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop, transfer_syntax=ts)
    meta.SourceApplicationEntityTitle = ae.strip()
    expected = DicomBytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)
    assert part10_header(sop_class, sop, ts, ae) == expected.getvalue()


@pytest.mark.parametrize(("sop_class", "sop", "ts", "ae"), CASES)
def test_header_reads_back(sop_class: str, sop: str, ts: str, ae: str) -> None:
    data = part10_header(sop_class, sop, ts, ae)
    fm = pydicom.dcmread(DicomBytesIO(data)).file_meta
    assert fm.MediaStorageSOPClassUID == sop_class
    assert fm.MediaStorageSOPInstanceUID == sop
    assert fm.TransferSyntaxUID == ts
    assert fm.SourceApplicationEntityTitle == ae.strip()
    assert fm.FileMetaInformationGroupLength == len(data) - 132 - 12
