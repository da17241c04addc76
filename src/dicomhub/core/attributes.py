"""Attribute tables for the query levels.

The matching and return keys of QIDO-RS (PS3.18 §10.6.1.2.1, Tables 10.6.1-5/-6/-7 and
PS3.18 §10.6.3.3) and of C-FIND (PS3.4 C.6.1.1 / C.6.2.1) are one table: every attribute
here has an index column, so queries are answered from the index.

``column`` names the index column; ``computed`` attributes (NumberOfStudyRelatedSeries …)
are maintained by the index on every store and delete.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Level(StrEnum):
    """Query/retrieve level (PS3.4 C.3)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


@dataclass(frozen=True)
class Attribute:
    """One queryable attribute.

    ``path`` is the keyword, or ``Sequence.Keyword`` for the two Request Attributes
    Sequence keys of the series level.
    """

    path: str
    tag: str  # "GGGGEEEE", for a nested key "GGGGEEEE.GGGGEEEE"
    vr: str
    level: Level
    column: str
    matching: bool = True
    computed: bool = False


def _a(path: str, tag: str, vr: str, level: Level, column: str, **kw: bool) -> Attribute:
    return Attribute(path, tag, vr, level, column, **kw)


S, SE, IM = Level.STUDY, Level.SERIES, Level.IMAGE

ATTRIBUTES: tuple[Attribute, ...] = (
    # Patient level of Patient Root C-FIND (PS3.4 C.6.1.1.2): computed per patient.
    _a(
        "NumberOfPatientRelatedStudies",
        "00201200",
        "IS",
        Level.PATIENT,
        "num_patient_studies",
        matching=False,
        computed=True,
    ),
    _a(
        "NumberOfPatientRelatedSeries",
        "00201202",
        "IS",
        Level.PATIENT,
        "num_patient_series",
        matching=False,
        computed=True,
    ),
    _a(
        "NumberOfPatientRelatedInstances",
        "00201204",
        "IS",
        Level.PATIENT,
        "num_patient_instances",
        matching=False,
        computed=True,
    ),
    # Patient module, kept on the study row (study-root and patient-root both read it).
    _a("PatientName", "00100010", "PN", S, "patient_name"),
    _a("PatientID", "00100020", "LO", S, "patient_id"),
    _a("IssuerOfPatientID", "00100021", "LO", S, "issuer_of_patient_id"),
    _a("PatientBirthDate", "00100030", "DA", S, "patient_birth_date"),
    _a("PatientSex", "00100040", "CS", S, "patient_sex"),
    # General Study module
    _a("StudyInstanceUID", "0020000D", "UI", S, "study_instance_uid"),
    _a("StudyDate", "00080020", "DA", S, "study_date"),
    _a("StudyTime", "00080030", "TM", S, "study_time"),
    _a("AccessionNumber", "00080050", "SH", S, "accession_number"),
    _a("ReferringPhysicianName", "00080090", "PN", S, "referring_physician_name"),
    _a("StudyID", "00200010", "SH", S, "study_id"),
    _a("StudyDescription", "00081030", "LO", S, "study_description"),
    _a("TimezoneOffsetFromUTC", "00080201", "SH", S, "timezone_offset_from_utc", matching=False),
    _a("ModalitiesInStudy", "00080061", "CS", S, "modalities_in_study", computed=True),
    _a(
        "NumberOfStudyRelatedSeries",
        "00201206",
        "IS",
        S,
        "num_series",
        matching=False,
        computed=True,
    ),
    _a(
        "NumberOfStudyRelatedInstances",
        "00201208",
        "IS",
        S,
        "num_instances",
        matching=False,
        computed=True,
    ),
    # General Series module
    _a("SeriesInstanceUID", "0020000E", "UI", SE, "series_instance_uid"),
    _a("Modality", "00080060", "CS", SE, "modality"),
    _a("SeriesNumber", "00200011", "IS", SE, "series_number"),
    _a("SeriesDescription", "0008103E", "LO", SE, "series_description"),
    _a("SeriesDate", "00080021", "DA", SE, "series_date"),
    _a("SeriesTime", "00080031", "TM", SE, "series_time"),
    _a("BodyPartExamined", "00180015", "CS", SE, "body_part_examined"),
    _a(
        "PerformedProcedureStepStartDate",
        "00400244",
        "DA",
        SE,
        "performed_procedure_step_start_date",
    ),
    _a(
        "PerformedProcedureStepStartTime",
        "00400245",
        "TM",
        SE,
        "performed_procedure_step_start_time",
    ),
    _a(
        "RequestAttributesSequence.ScheduledProcedureStepID",
        "00400275.00400009",
        "SH",
        SE,
        "scheduled_procedure_step_id",
    ),
    _a(
        "RequestAttributesSequence.RequestedProcedureID",
        "00400275.00401001",
        "SH",
        SE,
        "requested_procedure_id",
    ),
    _a(
        "NumberOfSeriesRelatedInstances",
        "00201209",
        "IS",
        SE,
        "num_instances",
        matching=False,
        computed=True,
    ),
    # SOP Common / General Image / Image Pixel
    _a("SOPInstanceUID", "00080018", "UI", IM, "sop_instance_uid"),
    _a("SOPClassUID", "00080016", "UI", IM, "sop_class_uid"),
    _a("InstanceNumber", "00200013", "IS", IM, "instance_number"),
    _a("ContentDate", "00080023", "DA", IM, "content_date"),
    _a("ContentTime", "00080033", "TM", IM, "content_time"),
    _a("Rows", "00280010", "US", IM, "rows", matching=False),
    _a("Columns", "00280011", "US", IM, "columns", matching=False),
    _a("BitsAllocated", "00280100", "US", IM, "bits_allocated", matching=False),
    _a("NumberOfFrames", "00280008", "IS", IM, "number_of_frames", matching=False),
    _a("AvailableTransferSyntaxUID", "00083002", "UI", IM, "transfer_syntax_uid", matching=False),
)

BY_PATH: dict[str, Attribute] = {a.path: a for a in ATTRIBUTES}
BY_TAG: dict[str, Attribute] = {a.tag: a for a in ATTRIBUTES}

# PS3.18 Table 10.6.3-3..5: attributes returned by default at each level.
DEFAULT_RETURN: dict[Level, tuple[str, ...]] = {
    Level.STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "TimezoneOffsetFromUTC",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "Modality",
        "TimezoneOffsetFromUTC",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "SeriesDate",
        "SeriesTime",
        "BodyPartExamined",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "RequestAttributesSequence.ScheduledProcedureStepID",
        "RequestAttributesSequence.RequestedProcedureID",
        "NumberOfSeriesRelatedInstances",
    ),
    Level.IMAGE: (
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
        "AvailableTransferSyntaxUID",
    ),
}

LEVEL_ORDER = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
PATIENT_KEYS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
)
DEFAULT_RETURN[Level.PATIENT] = (
    *PATIENT_KEYS,
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
)


def attributes_at_or_above(level: Level) -> tuple[Attribute, ...]:
    """Attributes a query at ``level`` may match on: its own and those of the levels above.

    Patient attributes live on the study row, so they are available from the study level
    down; at the patient level only the patient attributes are (PS3.4 C.6.1.1.2).
    """
    if level == Level.PATIENT:
        return tuple(a for a in ATTRIBUTES if a.path in PATIENT_KEYS or a.level == Level.PATIENT)
    allowed = LEVEL_ORDER[1 : LEVEL_ORDER.index(level) + 1]
    return tuple(a for a in ATTRIBUTES if a.level in allowed)


def lookup(key: str) -> Attribute | None:
    """Find an attribute by keyword, ``Seq.Keyword`` path or hex tag (``00100010``)."""
    if key in BY_PATH:
        return BY_PATH[key]
    normalized = key.upper().replace(",", "").replace("(", "").replace(")", "")
    return BY_TAG.get(normalized)
