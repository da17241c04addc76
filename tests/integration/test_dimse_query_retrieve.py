"""C-FIND, C-GET and C-MOVE with DCMTK's findscu, getscu, movescu and storescp.

What came in (one archive per backend for the module): copies of four real samples —
CT_small and MR_small (Explicit VR Little Endian), MR_small in RLE Lossless and in JPEG 2000
Lossless — with new SOP Instance UIDs, arranged into four patients, seven studies and eight
series (tables below; the patient attributes are consistent across a patient's studies
except PatientSex of patient P3, which differs between its two studies; all in ISO_IR 100,
one patient name with non-ASCII letters), stored with storescu
(-xr and -xv, so the compressed ones are stored compressed).  Queries and retrieves then
come from DCMTK 3.6.7 tools, findscu with ``-X`` (responses written as rsp*.dcm files),
getscu with ``-od`` and movescu into a storescp the test starts and registers as a node.

As in the storage tests, the archive's File Meta Information is its own; data sets are
compared without it and without what DCMTK normalises while sending (group lengths,
trailing padding, the OB/OW label of encapsulated pixel data).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.events import Event

from conftest import SAMPLES, LiveNode
from integration.dimse_helpers import (
    CT_LE,
    MR_J2K,
    MR_LE,
    MR_RLE,
    Item,
    dataset_problems,
    describe,
    echo,
    findscu,
    getscu,
    live_node,
    make_copy,
    movescu,
    peer,
    pixels_equal,
    read,
    received,
    register,
    run,
    statuses,
    storescp,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"

# PatientID, PatientName, PatientBirthDate, PatientSex
PATIENTS = {
    "P1": ("DIMSE-P1", "DOE^JANE", "19700101", "F"),
    "P2": ("DIMSE-P2", "DOE^JOHN", "19800202", "M"),
    "P3": ("DIMSE-P3", "ROE^ANN", "19900303", "O"),
    "P4": ("DIMSE-P4", "MÜLLER^JÖRG", "19500505", "M"),  # stored in ISO_IR 100 (Latin-1)
}
# patient, StudyDate, AccessionNumber, StudyDescription
STUDIES = {
    "S1": ("P1", "20200115", "ACC-1", "HEAD"),
    "S2": ("P1", "20210620", "ACC-2", "SPINE"),
    "S3": ("P2", "20200301", "ACC-3", "KNEE"),
    "S4": ("P2", "20221111", "ACC-4", "MIXED"),
    "S5": ("P3", "20190101", "ACC-5", "CHEST"),
    "S6": ("P3", "20190202", "ACC-6", "CHEST"),
    "S7": ("P4", "20180808", "ACC-7", "HAND"),
}
# P3's second study says PatientSex F where the first says O (same PatientID and name)
PATIENT_SEX_IN_STUDY = {"S6": "F"}
# study, SeriesNumber
SERIES = {
    "A": ("S1", 1),
    "B": ("S1", 2),
    "C": ("S2", 1),
    "D": ("S3", 1),
    "E": ("S4", 1),
    "F": ("S5", 1),
    "G": ("S6", 1),
    "H": ("S7", 1),
}
# name, series, source sample, InstanceNumber
INSTANCES = [
    ("a1", "A", CT_LE, 1),
    ("a2", "A", CT_LE, 2),
    ("b1", "B", MR_LE, 1),
    ("c1", "C", MR_RLE, 1),
    ("d1", "D", MR_J2K, 1),
    ("e1", "E", MR_J2K, 1),  # one SOP class in two compressed syntaxes in one series
    ("e2", "E", MR_RLE, 2),
    ("e3", "E", MR_RLE, 3),
    ("f1", "F", CT_LE, 1),
    ("g1", "G", CT_LE, 1),
    ("h1", "H", CT_LE, 1),
]


@dataclass
class Content:
    """The archive and what was stored in it."""

    node: LiveNode
    items: dict[str, Item]
    study_uid: dict[str, str]
    series_uid: dict[str, str]

    def in_study(self, study: str) -> list[Item]:
        return [i for i in self.items.values() if i.study == self.study_uid[study]]

    def in_series(self, series: str) -> list[Item]:
        return [i for i in self.items.values() if i.series == self.series_uid[series]]


def _build(out: Path) -> tuple[dict[str, Item], dict[str, str], dict[str, str]]:
    study_uid = {k: generate_uid() for k in STUDIES}
    series_uid = {k: generate_uid() for k in SERIES}
    items = {}
    for name, series, source, number in INSTANCES:
        study = SERIES[series][0]
        patient, date, accession, description = STUDIES[study]
        pid, pname, birth, sex = PATIENTS[patient]
        items[name] = make_copy(
            SAMPLES / source,
            out / f"{name}.dcm",
            SpecificCharacterSet="ISO_IR 100",
            PatientID=pid,
            PatientName=pname,
            PatientBirthDate=birth,
            PatientSex=PATIENT_SEX_IN_STUDY.get(study, sex),
            StudyInstanceUID=study_uid[study],
            StudyDate=date,
            StudyTime="101010",
            AccessionNumber=accession,
            StudyDescription=description,
            StudyID=study,
            SeriesInstanceUID=series_uid[series],
            SeriesNumber=SERIES[series][1],
            InstanceNumber=number,
        )
    return items, study_uid, series_uid


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def content(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Content]:
    """One archive per backend for the module, filled over C-STORE by storescu."""
    db = request.getfixturevalue("database_module")
    tmp = tmp_path_factory.mktemp("qr")
    url, schema = db(request.param, tmp)
    items, study_uid, series_uid = _build(tmp / "in")
    with live_node(tmp, url, schema) as node:
        by_flag = {
            "-xr": [i.path for i in items.values() if i.syntax != J2K_LOSSLESS],
            "-xv": [i.path for i in items.values() if i.syntax == J2K_LOSSLESS],
        }
        for flag, paths in by_flag.items():
            proc = run(["storescu", "-R", flag, *peer(node), *paths])
            assert proc.returncode == 0, describe(proc)
        assert node.ctx.index.count_instances() == len(items)
        yield Content(node, items, study_uid, series_uid)


def _values(ds: Dataset, keyword: str) -> list[str]:
    """The values of a possibly multi-valued element, as strings."""
    elem = ds[keyword]
    return [str(v) for v in elem.value] if elem.VM > 1 else [str(elem.value)]


def _only(result: list[Dataset], keys: set[str]) -> None:
    """Each response holds exactly the requested keys (plus the attributes PS3.4 C.4.1.1.3.2
    lets an SCP add: Query/Retrieve Level, Specific Character Set, Retrieve AE Title)."""
    allowed = keys | {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}
    for ds in result:
        assert {e.keyword for e in ds} <= allowed, {e.keyword for e in ds} - allowed
        assert keys <= {e.keyword for e in ds}, keys - {e.keyword for e in ds}


def _find(content: Content, tmp_path: Path, model: str, keys: dict[str, str]) -> list[Dataset]:
    proc, result = findscu(content.node, tmp_path, model, keys)
    assert proc.returncode == 0, describe(proc)
    codes = statuses(proc)
    assert codes == [0xFF00] * len(result) + [0x0000], (codes, describe(proc))
    _only(result, set(keys))
    return result


# -- C-FIND ------------------------------------------------------------------------------------
def test_find_patient_level_by_patient_id(content: Content, tmp_path: Path) -> None:
    """findscu -P, PATIENT level, PatientID=DIMSE-P1 and empty return keys for the patient
    attributes and counts: exactly one response, with the stored values and the patient's
    2 studies, 3 series and 4 instances."""
    keys = {
        "QueryRetrieveLevel": "PATIENT",
        "PatientID": "DIMSE-P1",
        "PatientName": "",
        "PatientBirthDate": "",
        "PatientSex": "",
        "NumberOfPatientRelatedStudies": "",
        "NumberOfPatientRelatedSeries": "",
        "NumberOfPatientRelatedInstances": "",
    }
    result = _find(content, tmp_path, "-P", keys)
    assert len(result) == 1
    ds = result[0]
    assert (ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex) == PATIENTS["P1"]
    assert ds.NumberOfPatientRelatedStudies == 2
    assert ds.NumberOfPatientRelatedSeries == 3
    assert ds.NumberOfPatientRelatedInstances == 4
    assert ds.RetrieveAETitle == content.node.ae_title


def test_find_patient_level_one_response_per_patient_id(content: Content, tmp_path: Path) -> None:
    """findscu -P, PATIENT level, PatientID=DIMSE-P3 — a patient whose two studies disagree
    on PatientSex (O in one, F in the other; same PatientID and PatientName): PatientID is
    the unique key of the patient level (PS3.4 C.6.1.1.2), so exactly one response, with
    NumberOfPatientRelatedStudies 2."""
    keys = {
        "QueryRetrieveLevel": "PATIENT",
        "PatientID": "DIMSE-P3",
        "PatientName": "",
        "NumberOfPatientRelatedStudies": "",
    }
    result = _find(content, tmp_path, "-P", keys)
    assert [(str(ds.PatientID), ds.NumberOfPatientRelatedStudies) for ds in result] == [
        ("DIMSE-P3", 2)
    ]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("DOE^J*", ["DIMSE-P1", "DIMSE-P2"]),
        ("DOE^JA*", ["DIMSE-P1"]),
        ("*^JOH?", ["DIMSE-P2"]),
        ("doe^ja*", ["DIMSE-P1"]),  # person names match case-insensitively (conformance §4)
    ],
)
def test_find_patient_level_by_name_wildcard(
    content: Content, tmp_path: Path, pattern: str, expected: list[str]
) -> None:
    """findscu -P, PATIENT level, PatientName with * and ? wildcards: one response per
    matching patient."""
    keys = {"QueryRetrieveLevel": "PATIENT", "PatientName": pattern, "PatientID": ""}
    result = _find(content, tmp_path, "-P", keys)
    assert sorted(str(ds.PatientID) for ds in result) == expected


@pytest.mark.parametrize(
    ("charset", "pattern"),
    [("ISO_IR 192", "MÜLLER*".encode()), ("ISO_IR 100", "MÜLLER*".encode("latin-1"))],
    ids=["utf-8", "latin-1"],
)
def test_find_non_ascii_patient_name(
    content: Content, tmp_path: Path, charset: str, pattern: bytes
) -> None:
    """findscu -P, PATIENT level, PatientName=MÜLLER* sent in UTF-8 (Specific Character
    Set ISO_IR 192) or in Latin-1 (ISO_IR 100), the stored name being Latin-1: the patient
    is found and its name comes back as MÜLLER^JÖRG in the response's character set."""
    keys = {
        "QueryRetrieveLevel": "PATIENT",
        "SpecificCharacterSet": charset,
        "PatientName": os.fsdecode(pattern),  # the raw bytes on findscu's command line
        "PatientID": "",
    }
    result = _find(content, tmp_path, "-P", keys)
    assert [(str(ds.PatientID), str(ds.PatientName)) for ds in result] == [
        ("DIMSE-P4", "MÜLLER^JÖRG")
    ]


def test_find_study_level_by_date_range(content: Content, tmp_path: Path) -> None:
    """findscu -S, STUDY level, StudyDate=20200101-20201231 with empty return keys: the two
    studies of 2020 (S1 of P1, S3 of P2) with their stored attributes and computed
    NumberOfStudyRelatedSeries/Instances, ModalitiesInStudy and RetrieveAETitle."""
    keys = {
        "QueryRetrieveLevel": "STUDY",
        "StudyDate": "20200101-20201231",
        "StudyInstanceUID": "",
        "PatientID": "",
        "PatientName": "",
        "AccessionNumber": "",
        "StudyDescription": "",
        "StudyID": "",
        "ModalitiesInStudy": "",
        "NumberOfStudyRelatedSeries": "",
        "NumberOfStudyRelatedInstances": "",
        "RetrieveAETitle": "",
    }
    result = _find(content, tmp_path, "-S", keys)
    got = {str(ds.StudyInstanceUID): ds for ds in result}
    assert set(got) == {content.study_uid["S1"], content.study_uid["S3"]}
    for study, series_count, modalities in (("S1", 2, ["CT", "MR"]), ("S3", 1, ["MR"])):
        ds = got[content.study_uid[study]]
        patient, date, accession, description = STUDIES[study]
        assert ds.StudyDate == date
        assert ds.PatientID == PATIENTS[patient][0]
        assert ds.PatientName == PATIENTS[patient][1]
        assert ds.AccessionNumber == accession
        assert ds.StudyDescription == description
        assert ds.StudyID == study
        assert sorted(_values(ds, "ModalitiesInStudy")) == modalities
        assert ds.NumberOfStudyRelatedSeries == series_count
        assert ds.NumberOfStudyRelatedInstances == len(content.in_study(study))
        assert ds.RetrieveAETitle == content.node.ae_title


def test_find_study_level_by_patient_id(content: Content, tmp_path: Path) -> None:
    """findscu -S, STUDY level, PatientID=DIMSE-P2, StudyDate open range 2021-: S4 only."""
    keys = {
        "QueryRetrieveLevel": "STUDY",
        "PatientID": "DIMSE-P2",
        "StudyDate": "20210101-",
        "StudyInstanceUID": "",
        "NumberOfStudyRelatedInstances": "",
    }
    result = _find(content, tmp_path, "-S", keys)
    assert [str(ds.StudyInstanceUID) for ds in result] == [content.study_uid["S4"]]
    assert result[0].NumberOfStudyRelatedInstances == 3


def test_find_series_level_by_modality(content: Content, tmp_path: Path) -> None:
    """findscu -S, SERIES level in study S1: Modality=MR → series B only; no Modality → A
    and B, with SeriesNumber and NumberOfSeriesRelatedInstances."""
    base = {
        "QueryRetrieveLevel": "SERIES",
        "StudyInstanceUID": content.study_uid["S1"],
        "SeriesInstanceUID": "",
        "SeriesNumber": "",
        "NumberOfSeriesRelatedInstances": "",
    }
    result = _find(content, tmp_path, "-S", {**base, "Modality": "MR"})
    assert [str(ds.SeriesInstanceUID) for ds in result] == [content.series_uid["B"]]
    assert result[0].Modality == "MR"
    assert result[0].NumberOfSeriesRelatedInstances == 1
    result = _find(content, tmp_path, "-S", {**base, "Modality": ""})
    got = {str(ds.SeriesInstanceUID): ds for ds in result}
    assert set(got) == {content.series_uid["A"], content.series_uid["B"]}
    a = got[content.series_uid["A"]]
    assert (a.Modality, a.SeriesNumber, a.NumberOfSeriesRelatedInstances) == ("CT", 1, 2)


def test_find_image_level(content: Content, tmp_path: Path) -> None:
    """findscu -S, IMAGE level: by SOPInstanceUID → that instance with SOPClassUID and
    InstanceNumber; by series A → its two instances."""
    item = content.items["a2"]
    keys = {
        "QueryRetrieveLevel": "IMAGE",
        "StudyInstanceUID": item.study,
        "SeriesInstanceUID": item.series,
        "SOPInstanceUID": item.sop,
        "SOPClassUID": "",
        "InstanceNumber": "",
    }
    result = _find(content, tmp_path, "-S", keys)
    assert [(str(ds.SOPInstanceUID), str(ds.SOPClassUID)) for ds in result] == [
        (item.sop, item.sop_class)
    ]
    assert result[0].InstanceNumber == 2
    result = _find(content, tmp_path, "-S", {**keys, "SOPInstanceUID": ""})
    assert sorted((ds.InstanceNumber, str(ds.SOPInstanceUID)) for ds in result) == [
        (1, content.items["a1"].sop),
        (2, content.items["a2"].sop),
    ]


def test_find_malformed_date_fails_cleanly(content: Content, tmp_path: Path) -> None:
    """findscu -S, STUDY level, StudyDate=2020-13-45 (no such date): a failure status
    0xA900 (Identifier does not match SOP Class), no results, and the server keeps
    serving (C-ECHO, and the same query with a valid date)."""
    keys = {"QueryRetrieveLevel": "STUDY", "StudyDate": "2020-13-45", "StudyInstanceUID": ""}
    proc, result = findscu(content.node, tmp_path, "-S", keys)
    assert proc.returncode == 0, describe(proc)
    assert statuses(proc) == [0xA900], describe(proc)
    assert result == []
    echo(content.node)
    result = _find(content, tmp_path, "-S", {**keys, "StudyDate": "20200115"})
    assert [str(ds.StudyInstanceUID) for ds in result] == [content.study_uid["S1"]]


# -- C-GET -------------------------------------------------------------------------------------
def _by_sop(datasets: list[Dataset]) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in datasets}


def _assert_identical(got: list[Dataset], items: list[Item]) -> None:
    by_sop = _by_sop(got)
    assert set(by_sop) == {i.sop for i in items}
    problems = {i.sop: p for i in items if (p := dataset_problems(by_sop[i.sop], read(i.path)))}
    assert not problems, problems
    for i in items:
        assert str(by_sop[i.sop].file_meta.TransferSyntaxUID) == i.syntax


def _get_keys(content: Content, level: str, name: str) -> dict[str, str]:
    if level == "STUDY":
        return {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": content.study_uid[name]}
    if level == "SERIES":
        return {
            "QueryRetrieveLevel": "SERIES",
            "StudyInstanceUID": content.study_uid[SERIES[name][0]],
            "SeriesInstanceUID": content.series_uid[name],
        }
    item = content.items[name]
    return {
        "QueryRetrieveLevel": "IMAGE",
        "StudyInstanceUID": item.study,
        "SeriesInstanceUID": item.series,
        "SOPInstanceUID": item.sop,
    }


@pytest.mark.parametrize(
    ("level", "name", "expected"),
    [("STUDY", "S1", ["a1", "a2", "b1"]), ("SERIES", "A", ["a1", "a2"]), ("IMAGE", "b1", ["b1"])],
)
def test_getscu_levels(
    content: Content, tmp_path: Path, level: str, name: str, expected: list[str]
) -> None:
    """getscu -S at STUDY (S1), SERIES (A) and IMAGE (b1) level, uncompressed instances:
    exactly those files arrive, each with a data set equal to the stored one, and the
    final C-GET response is 0x0000."""
    proc, got = getscu(content.node, tmp_path / "get", "-S", _get_keys(content, level, name))
    assert proc.returncode == 0, describe(proc)
    assert statuses(proc)[-1] == 0x0000, describe(proc)
    _assert_identical(got, [content.items[n] for n in expected])


def test_getscu_image_level_uid_list(content: Content, tmp_path: Path) -> None:
    """getscu -S, IMAGE level, SOPInstanceUID with a list of two UIDs (a1\\a2) in series
    A: both files arrive, equal to the stored ones."""
    keys = {
        **_get_keys(content, "IMAGE", "a1"),
        "SOPInstanceUID": "\\".join([content.items["a1"].sop, content.items["a2"].sop]),
    }
    proc, got = getscu(content.node, tmp_path / "get", "-S", keys)
    assert proc.returncode == 0, describe(proc)
    assert statuses(proc)[-1] == 0x0000, describe(proc)
    _assert_identical(got, [content.items["a1"], content.items["a2"]])


def test_getscu_patient_root_patient_level(content: Content, tmp_path: Path) -> None:
    """getscu -P, PATIENT level, PatientID=DIMSE-P1: all four instances of the patient
    arrive (the compressed one decompressed, as getscu proposes uncompressed only)."""
    keys = {"QueryRetrieveLevel": "PATIENT", "PatientID": "DIMSE-P1"}
    proc, got = getscu(content.node, tmp_path / "get", "-P", keys)
    assert proc.returncode == 0, describe(proc)
    assert statuses(proc)[-1] == 0x0000, describe(proc)
    assert set(_by_sop(got)) == {i.sop for i in content.in_study("S1") + content.in_study("S2")}


@pytest.mark.parametrize("name", ["c1", "d1"])
def test_getscu_uncompressed_only_gets_decompressed(
    content: Content, tmp_path: Path, name: str
) -> None:
    """getscu (default: proposes uncompressed syntaxes only) of an instance stored in RLE
    (c1) or JPEG 2000 Lossless (d1): it arrives in an uncompressed syntax, with the same
    SOP Instance UID, the same attributes and identical decoded pixels."""
    item = content.items[name]
    proc, got = getscu(content.node, tmp_path / "get", "-S", _get_keys(content, "IMAGE", name))
    assert proc.returncode == 0, describe(proc)
    assert statuses(proc)[-1] == 0x0000, describe(proc)
    assert len(got) == 1
    assert got[0].SOPInstanceUID == item.sop
    assert got[0].file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert dataset_problems(got[0], read(item.path)) == []


@pytest.mark.parametrize(("name", "flag"), [("c1", "+xr"), ("d1", "+xv")])
def test_getscu_proposing_the_stored_syntax_arrives(
    content: Content, tmp_path: Path, name: str, flag: str
) -> None:
    """getscu +xr (RLE first) / +xv (J2K lossless first, then the uncompressed syntaxes, in
    one presentation context per storage SOP class) of an instance stored in that syntax:
    it arrives, same SOP Instance UID, same attributes, identical decoded pixels."""
    item = content.items[name]
    keys = _get_keys(content, "IMAGE", name)
    proc, got = getscu(content.node, tmp_path / "get", "-S", keys, extra=[flag])
    assert proc.returncode == 0, describe(proc)
    assert statuses(proc)[-1] == 0x0000, describe(proc)
    assert len(got) == 1
    assert got[0].SOPInstanceUID == item.sop
    assert dataset_problems(got[0], read(item.path)) == []


@pytest.mark.parametrize(("name", "flag"), [("c1", "+xr"), ("d1", "+xv")])
def test_getscu_proposing_the_stored_syntax_gets_it_unchanged(
    content: Content, tmp_path: Path, name: str, flag: str
) -> None:
    """getscu +xr / +xv as above: the peer proposes the stored syntax first, so the
    instance should arrive in it, as stored (C-MOVE does this), not decompressed."""
    item = content.items[name]
    keys = _get_keys(content, "IMAGE", name)
    proc, got = getscu(content.node, tmp_path / "get", "-S", keys, extra=[flag])
    assert proc.returncode == 0, describe(proc)
    assert len(got) == 1
    assert str(got[0].file_meta.TransferSyntaxUID) == item.syntax, (
        "arrived in Explicit VR Little Endian: the archive accepted it for the C-STORE "
        f"sub-operations although getscu proposed the stored {item.syntax} first"
    )
    assert dataset_problems(got[0], read(item.path)) == []


def _get_s4(content: Content, syntax: str) -> tuple[dict[str, Dataset], Dataset, Dataset | None]:
    """A pynetdicom C-GET SCU (AE GETSCU) accepting MR Image Storage in ``syntax`` only
    (SCP role) gets study S4; returns what arrived by SOP Instance UID and the final
    response with its identifier."""
    received: dict[str, Dataset] = {}

    def on_store(event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received[str(event.request.AffectedSOPInstanceUID)] = ds
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(STUDY_ROOT_GET)
    ae.add_requested_context(MR_IMAGE_STORAGE, [syntax])
    assoc = ae.associate(
        "127.0.0.1",
        content.node.port,
        ae_title=content.node.ae_title,
        ext_neg=[build_role(MR_IMAGE_STORAGE, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = content.study_uid["S4"]
    try:
        responses = list(assoc.send_c_get(identifier, STUDY_ROOT_GET))
    finally:
        assoc.release()
    final, failed = responses[-1]
    return received, final, failed


def test_get_transcodes_to_the_only_accepted_syntax(content: Content) -> None:
    """GETSCU accepts MR in RLE Lossless only; S4 holds e1 in J2K Lossless and e2, e3 in
    RLE.  All three arrive in RLE: e2, e3 as stored, e1 re-encoded losslessly (PS3.4
    C.4.3.3) — same SOP Instance UID, same attributes, identical decoded pixels; 0x0000."""
    received, final, _failed = _get_s4(content, RLELossless)
    assert int(final.Status) == 0x0000, final
    assert sorted(received) == sorted(content.items[n].sop for n in ("e1", "e2", "e3"))
    for name in ("e1", "e2", "e3"):
        item = content.items[name]
        got = received[item.sop]
        assert got.file_meta.TransferSyntaxUID == RLELossless
        assert dataset_problems(got, read(item.path)) == []


def test_get_continues_after_instances_it_cannot_send(content: Content) -> None:
    """GETSCU accepts MR in JPEG Baseline (lossy, 8-bit) only: the 16-bit MR instances of S4
    cannot be sent (a lossy re-encoding is never made for a peer).  Every sub-operation is
    attempted (PS3.4 C.4.3.3.1), none arrives, the final response counts 3 failures and
    lists all three in FailedSOPInstanceUIDList — no abort, no half-sent data."""
    received, final, failed = _get_s4(content, "1.2.840.10008.1.2.4.50")
    assert received == {}
    assert int(final.Status) in (0xA702, 0xB000), final
    assert final.NumberOfFailedSuboperations == 3
    assert final.get("NumberOfCompletedSuboperations", 0) == 0
    assert sorted(_values(failed, "FailedSOPInstanceUIDList")) == sorted(
        content.items[n].sop for n in ("e1", "e2", "e3")
    )


# -- C-MOVE ------------------------------------------------------------------------------------
def _move(content: Content, tmp_path: Path, ae: str, keys: dict[str, str], extra: list[str]):
    """Start a storescp (AE ``ae``), register it, move ``keys`` there; (proc, received)."""
    out = tmp_path / "dest"
    with storescp(out, ae, extra) as port:
        register(content.node, f"{ae.lower()}-{port}", ae, port)
        proc = movescu(content.node, ae, "-S", keys)
    return proc, received(out)


@pytest.mark.parametrize(
    ("level", "name", "expected"), [("STUDY", "S1", ["a1", "a2", "b1"]), ("IMAGE", "a2", ["a2"])]
)
def test_movescu_to_storescp(
    content: Content, tmp_path: Path, level: str, name: str, expected: list[str]
) -> None:
    """movescu -S at STUDY (S1) and IMAGE (a2) level to a storescp (-aet MOVEDEST…) that
    is registered as a node: the final C-MOVE response is 0x0000 and exactly those files
    arrive, with data sets equal to the stored ones."""
    ae = f"MOVE{level}"
    proc, got = _move(content, tmp_path, ae, _get_keys(content, level, name), [])
    assert proc.returncode == 0, describe(proc)
    assert statuses(proc)[-1] == 0x0000, describe(proc)
    _assert_identical(got, [content.items[n] for n in expected])


def test_movescu_compressed_to_uncompressed_storescp(content: Content, tmp_path: Path) -> None:
    """movescu of study S2 (one MR instance stored in RLE) to a default storescp, which
    accepts uncompressed syntaxes only: it arrives decompressed, same SOP Instance UID,
    same attributes and identical decoded pixels."""
    item = content.items["c1"]
    proc, got = _move(content, tmp_path, "MOVEPLAIN", _get_keys(content, "STUDY", "S2"), [])
    assert proc.returncode == 0, describe(proc)
    assert statuses(proc)[-1] == 0x0000, describe(proc)
    assert len(got) == 1
    assert got[0].SOPInstanceUID == item.sop
    assert got[0].file_meta.TransferSyntaxUID in (EXPLICIT_LE, "1.2.840.10008.1.2")
    assert dataset_problems(got[0], read(item.path)) == []


def test_movescu_compressed_to_rle_storescp(content: Content, tmp_path: Path) -> None:
    """movescu of study S2 (RLE) to a storescp +xr (prefers RLE): it arrives as stored,
    in RLE Lossless, with an equal data set."""
    proc, got = _move(content, tmp_path, "MOVERLE", _get_keys(content, "STUDY", "S2"), ["+xr"])
    assert proc.returncode == 0, describe(proc)
    assert statuses(proc)[-1] == 0x0000, describe(proc)
    assert len(got) == 1
    assert got[0].file_meta.TransferSyntaxUID == RLELossless
    _assert_identical(got, [content.items["c1"]])


def test_movescu_one_sop_class_in_two_compressed_syntaxes(content: Content, tmp_path: Path) -> None:
    """movescu of study S4 — one MR series with instance 1 in JPEG 2000 Lossless and
    instances 2 and 3 in RLE — to a storescp +xr, which accepts RLE and the uncompressed
    syntaxes (not J2K): all three arrive (the RLE ones as RLE, the J2K one decompressed)
    and the final status is 0x0000 with no failed sub-operations."""
    items = content.in_study("S4")
    proc, got = _move(content, tmp_path, "MOVEMIX", _get_keys(content, "STUDY", "S4"), ["+xr"])
    by_sop = _by_sop(got)
    assert set(by_sop) == {i.sop for i in items}, (
        f"arrived {sorted(by_sop)} of {sorted(i.sop for i in items)}; statuses "
        f"{[hex(s) for s in statuses(proc)]}"
    )
    assert statuses(proc)[-1] == 0x0000, describe(proc)
    assert proc.returncode == 0, describe(proc)
    for i in items:
        assert pixels_equal(by_sop[i.sop], read(i.path))


def test_movescu_unknown_destination(content: Content, tmp_path: Path) -> None:
    """movescu to an AE title that is not a registered node → 0xA801 (Move Destination
    Unknown), nothing is sent, and the server keeps serving."""
    proc = movescu(content.node, "NOSUCHNODE", "-S", _get_keys(content, "STUDY", "S1"))
    assert statuses(proc) == [0xA801], describe(proc)
    echo(content.node)


# -- identifiers without their unique key ---------------------------------------------------------
def test_getscu_without_unique_key(content: Content, tmp_path: Path) -> None:
    """getscu -S at STUDY level with an identifier that has no StudyInstanceUID (only
    PatientID): a failure status (0xA900 or 0xC000), no file arrives, and the server keeps
    serving."""
    keys = {"QueryRetrieveLevel": "STUDY", "PatientID": "DIMSE-P1"}
    proc, got = getscu(content.node, tmp_path / "get", "-S", keys)
    assert statuses(proc)[-1] in (0xA900, 0xC000), describe(proc)
    assert got == []
    echo(content.node)


def test_movescu_without_unique_key(content: Content, tmp_path: Path) -> None:
    """movescu -S at SERIES level with a StudyInstanceUID but no SeriesInstanceUID to a
    registered storescp: a failure status (0xA900 or 0xC000), nothing arrives, and the
    server keeps serving."""
    keys = {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": content.study_uid["S1"]}
    proc, got = _move(content, tmp_path, "MOVENOKEY", keys, [])
    assert statuses(proc)[-1] in (0xA900, 0xC000), describe(proc)
    assert got == []
    echo(content.node)
