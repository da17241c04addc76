"""The QIDO/C-FIND attribute tables hold the required keys (PS3.18 Table 10.6.1-5..7)."""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword

from dicomhub.core.attributes import ATTRIBUTES, BY_PATH, DEFAULT_RETURN, Level

REQUIRED_MATCHING = {
    Level.STUDY: [
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
        "StudyID",
    ],
    Level.SERIES: [
        "Modality",
        "SeriesInstanceUID",
        "SeriesNumber",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "RequestAttributesSequence.ScheduledProcedureStepID",
        "RequestAttributesSequence.RequestedProcedureID",
    ],
    Level.IMAGE: ["SOPClassUID", "SOPInstanceUID", "InstanceNumber"],
}


def test_required_matching_keys_are_indexed() -> None:
    for level, keys in REQUIRED_MATCHING.items():
        for key in keys:
            attr = BY_PATH[key]
            assert attr.matching and attr.level == level, key


def test_tags_agree_with_the_data_dictionary() -> None:
    for attr in ATTRIBUTES:
        for kw, tag in zip(attr.path.split("."), attr.tag.split("."), strict=True):
            assert f"{tag_for_keyword(kw):08X}" == tag, attr.path


def test_default_return_keys_exist() -> None:
    for keys in DEFAULT_RETURN.values():
        for key in keys:
            assert key in BY_PATH
