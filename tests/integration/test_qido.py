"""QIDO-RS matching (PS3.18 §8.3.4, §10.6; PS3.4 C.2.2.2) on SQLite and PostgreSQL.

What came in: 12 instances made from real pydicom test files (CT_small, MR_small and
US1_UNCR from pydicom-data) with their patient, study and series attributes rewritten
to a known table, so every matching rule has a known answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from sqlalchemy import text

from conftest import LiveServer, http, make_settings
from dicomhub.context import build_context
from integration.helpers import stow_body, uid

ROOT = "1.2.826.0.1.3680043.10.1040"

# (study, patient name, patient id, date, time, accession, referring, [(series, modality,
#  series number, n instances)])
STUDIES = [
    (
        1,
        "DOE^JOHN",
        "P1",
        "20200105",
        "083000",
        "ACC_1",
        "WHO^DOCTOR",
        [(1, "CT", 1, 3), (2, "MR", 2, 1)],
    ),
    (2, "Doe^Jane", "P2", "20200610", "141500.25", "ACC%2", "", [(3, "MR", 1, 2)]),
    (3, "SMITH^JOHN^A", "P3", "20210101", "235959", "B-77", "HOUSE^GREGORY", [(4, "US", 1, 1)]),
    (4, "Müller^Hans", "P4", "20211231", "000000", "", "", [(5, "CT", 7, 2)]),
    (
        5,
        "JOHNSON^MARY",
        "P1",
        "19991231",
        "120000",
        "X1",
        "",
        [(6, "CT", 1, 1), (7, "US", 2, 1), (8, "MR", 3, 1)],
    ),
]
SOURCES = {"CT": "CT_small.dcm", "MR": "MR_small.dcm", "US": "US1_UNCR.dcm"}


def make_instances(tmp: Path) -> list[Path]:
    files = []
    n = 0
    for study, name, pid, date, time, acc, ref, series_list in STUDIES:
        for series, modality, number, count in series_list:
            for i in range(count):
                n += 1
                ds = pydicom.dcmread(get_testdata_file(SOURCES[modality]))
                ds.SpecificCharacterSet = "ISO_IR 192"
                ds.PatientName = name
                ds.PatientID = pid
                ds.StudyDate, ds.StudyTime = date, time
                ds.AccessionNumber = acc
                ds.ReferringPhysicianName = ref
                ds.StudyInstanceUID = f"{ROOT}.{study}"
                ds.SeriesInstanceUID = f"{ROOT}.{study}.{series}"
                ds.SOPInstanceUID = f"{ROOT}.{study}.{series}.{i + 1}"
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.Modality = modality
                ds.SeriesNumber = number
                ds.InstanceNumber = i + 1
                ds.StudyID = f"S{study}"
                ds.StudyDescription = f"study {study}"
                ds.SeriesDescription = f"{modality} series {series}"
                if series == 1:
                    item = Dataset()
                    item.ScheduledProcedureStepID = "SPS-1"
                    item.RequestedProcedureID = "RP-9"
                    ds.RequestAttributesSequence = [item]
                    ds.PerformedProcedureStepStartDate = "20200105"
                    ds.PerformedProcedureStepStartTime = "0815"
                out = tmp / f"{n}.dcm"
                ds.save_as(out, enforce_file_format=True)
                files.append(out)
    return files


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    db = request.getfixturevalue("database_module")
    tmp = tmp_path_factory.mktemp("qido")
    url, schema = db(request.param, tmp)
    ctx = build_context(make_settings(tmp / "data", url, schema))
    with LiveServer(ctx) as live:
        body, ctype = stow_body(make_instances(tmp))
        r = http.post(
            live.url + "/studies", data=body, headers={"Content-Type": ctype}, timeout=120
        )
        assert r.status_code == 200, r.text
        yield live
    ctx.close()


def studies(srv: LiveServer, **params: str) -> list[int]:
    r = http.get(srv.url + "/studies", params=params, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    return sorted(int(uid(x, "0020000D").rsplit(".", 1)[1]) for x in r.json())


def test_single_value_and_universal(srv: LiveServer) -> None:
    assert studies(srv) == [1, 2, 3, 4, 5]
    assert studies(srv, PatientID="P1") == [1, 5]
    assert studies(srv, PatientID="p1") == []  # LO: case-sensitive
    assert studies(srv, AccessionNumber="B-77") == [3]
    assert studies(srv, StudyID="S4") == [4]
    assert studies(srv, PatientID="") == [1, 2, 3, 4, 5]  # empty: universal matching


def test_person_names_case_insensitive_and_wildcards(srv: LiveServer) -> None:
    assert studies(srv, PatientName="doe^john") == [1]
    assert studies(srv, PatientName="DOE*") == [1, 2]
    assert studies(srv, PatientName="*JOHN*") == [1, 3, 5]
    assert studies(srv, PatientName="D?E^J*") == [1, 2]
    assert studies(srv, PatientName="müller*") == [4]
    assert studies(srv, ReferringPhysicianName="house*") == [3]


def test_wildcard_sent_percent_encoded(srv: LiveServer) -> None:
    r = http.get(srv.url + "/studies?PatientName=DOE%2A", timeout=30)
    assert sorted(uid(x, "0020000D")[-1] for x in r.json()) == ["1", "2"]


def test_sql_wildcards_in_values_are_literal(srv: LiveServer) -> None:
    assert studies(srv, AccessionNumber="ACC%2") == [2]
    assert studies(srv, AccessionNumber="ACC_*") == [1]
    assert studies(srv, AccessionNumber="ACC?2") == [2]
    assert studies(srv, AccessionNumber="A%") == []


def test_fuzzy_matching(srv: LiveServer) -> None:
    assert studies(srv, PatientName="joh", fuzzymatching="true") == [1, 3, 5]
    assert studies(srv, PatientName="jan", fuzzymatching="true") == [2]
    assert studies(srv, PatientName="smi joh", fuzzymatching="true") == [3]
    assert studies(srv, PatientName="joh", fuzzymatching="false") == []


def test_date_and_time_ranges(srv: LiveServer) -> None:
    assert studies(srv, StudyDate="20200101-20201231") == [1, 2]
    assert studies(srv, StudyDate="-20200105") == [1, 5]
    assert studies(srv, StudyDate="20211231-") == [4]
    assert studies(srv, StudyDate="20200610") == [2]
    assert studies(srv, StudyTime="1400-1500") == [2]
    assert studies(srv, StudyTime="-0830") == [1, 4]
    assert studies(srv, StudyDate="20200101-20211231", StudyTime="2359-") == [3]


def test_uid_lists(srv: LiveServer) -> None:
    assert studies(srv, StudyInstanceUID=f"{ROOT}.1\\{ROOT}.4\\1.2.3") == [1, 4]


def test_modalities_in_study(srv: LiveServer) -> None:
    assert studies(srv, ModalitiesInStudy="MR") == [1, 2, 5]
    assert studies(srv, ModalitiesInStudy="US") == [3, 5]
    assert studies(srv, ModalitiesInStudy="CT\\US") == [1, 3, 4, 5]
    r = http.get(srv.url + "/studies", params={"StudyInstanceUID": f"{ROOT}.5"}, timeout=30)
    assert r.json()[0]["00080061"]["Value"] == ["CT", "MR", "US"]


def test_computed_counts(srv: LiveServer) -> None:
    r = http.get(srv.url + "/studies", params={"StudyInstanceUID": f"{ROOT}.1"}, timeout=30)
    doc = r.json()[0]
    assert doc["00201206"]["Value"] == [2]  # NumberOfStudyRelatedSeries
    assert doc["00201208"]["Value"] == [4]  # NumberOfStudyRelatedInstances
    assert doc["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{ROOT}.1")
    series = http.get(f"{srv.url}/studies/{ROOT}.1/series", timeout=30).json()
    counts = {uid(s, "0020000E"): s["00201209"]["Value"][0] for s in series}
    assert counts == {f"{ROOT}.1.1": 3, f"{ROOT}.1.2": 1}


def test_series_level(srv: LiveServer) -> None:
    client = srv.client()
    found = client.search_for_series(search_filters={"Modality": "CT"})
    assert sorted(uid(s, "0020000E") for s in found) == [
        f"{ROOT}.1.1",
        f"{ROOT}.4.5",
        f"{ROOT}.5.6",
    ]
    found = client.search_for_series(search_filters={"SeriesNumber": "7"})
    assert [uid(s, "0020000E") for s in found] == [f"{ROOT}.4.5"]
    # study attributes may be matched in a series query (PS3.18 §10.6.1.2.2)
    found = client.search_for_series(search_filters={"PatientID": "P1", "Modality": "MR"})
    assert sorted(uid(s, "0020000E") for s in found) == [f"{ROOT}.1.2", f"{ROOT}.5.8"]
    found = client.search_for_series(
        search_filters={"RequestAttributesSequence.ScheduledProcedureStepID": "SPS-1"}
    )
    assert [uid(s, "0020000E") for s in found] == [f"{ROOT}.1.1"]
    found = client.search_for_series(
        search_filters={"PerformedProcedureStepStartDate": "20200101-20200131"}
    )
    assert [uid(s, "0020000E") for s in found] == [f"{ROOT}.1.1"]
    assert found[0]["00400275"]["Value"][0]["00401001"]["Value"] == ["RP-9"]
    assert client.search_for_series(f"{ROOT}.2") and len(client.search_for_series(f"{ROOT}.2")) == 1


def test_instance_level(srv: LiveServer) -> None:
    client = srv.client()
    found = client.search_for_instances(f"{ROOT}.1", f"{ROOT}.1.1")
    assert [x["00200013"]["Value"][0] for x in found] == [1, 2, 3]
    found = client.search_for_instances(search_filters={"InstanceNumber": "2"})
    assert sorted(uid(x, "00080018") for x in found) == [
        f"{ROOT}.1.1.2",
        f"{ROOT}.2.3.2",
        f"{ROOT}.4.5.2",
    ]
    found = client.search_for_instances(
        f"{ROOT}.3", search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.6.1"}
    )
    assert [uid(x, "00080018") for x in found] == [f"{ROOT}.3.4.1"]
    doc = found[0]
    assert uid(doc, "0020000D") == f"{ROOT}.3" and uid(doc, "0020000E") == f"{ROOT}.3.4"
    assert doc["00280010"]["Value"] == [480] and doc["00083002"]["Value"]
    found = client.search_for_instances(search_filters={"PatientName": "smith*"})
    assert [uid(x, "00080018") for x in found] == [f"{ROOT}.3.4.1"]


def test_limit_and_offset_page_through_everything(srv: LiveServer) -> None:
    seen: list[str] = []
    for offset in range(0, 20, 4):
        r = http.get(srv.url + "/instances", params={"limit": 4, "offset": offset}, timeout=30)
        page = [uid(x, "00080018") for x in r.json()]
        assert len(page) <= 4
        seen += page
    assert len(seen) == 12 and len(set(seen)) == 12
    assert studies(srv, limit="2") == [1, 2]
    assert studies(srv, limit="2", offset="4") == [5]


def test_includefield(srv: LiveServer) -> None:
    r = http.get(
        srv.url + "/studies",
        timeout=30,
        params={"StudyInstanceUID": f"{ROOT}.1", "includefield": "PatientWeight,00080070"},
    )
    doc = r.json()[0]
    assert "00101030" in doc and "00080070" in doc  # from the stored metadata
    r = http.get(
        srv.url + "/studies",
        timeout=30,
        params={"StudyInstanceUID": f"{ROOT}.1", "includefield": "all"},
    )
    assert "00101030" in r.json()[0]  # patient module attributes come with 'all'
    r = http.get(
        f"{srv.url}/studies/{ROOT}.1/series/{ROOT}.1.1/instances",
        timeout=30,
        params={"includefield": "all", "limit": "1"},
    )
    doc = r.json()[0]
    assert "00180050" in doc  # SliceThickness: every non-bulk attribute of the instance
    assert "7FE00010" not in doc


def test_nested_resource_that_does_not_exist_is_404(srv: LiveServer) -> None:
    assert http.get(srv.url + "/studies/1.2.3/series", timeout=30).status_code == 404
    r = http.get(f"{srv.url}/studies/{ROOT}.1/series/1.2.3/instances", timeout=30)
    assert r.status_code == 404


def test_no_match_is_empty_array(srv: LiveServer) -> None:
    r = http.get(srv.url + "/studies", params={"PatientID": "nobody"}, timeout=30)
    assert r.status_code == 200 and r.json() == []


@pytest.mark.parametrize(
    "params",
    [
        {"StudyDate": "2020-13-45"},
        {"StudyDate": "20201231-20200101"},
        {"limit": "ten"},
        {"offset": "-3"},
        {"NoSuchKey": "x"},
        {"PatientWeight": "70"},
        {"StudyInstanceUID": "not-a-uid"},
        {"fuzzymatching": "yes"},
        {"includefield": "NotAKeyword"},
        {"SOPInstanceUID": "1.2.3"},
    ],
)
def test_bad_query_is_400(srv: LiveServer, params: dict[str, str]) -> None:
    """In: a malformed or unsupported parameter."""
    r = http.get(srv.url + "/studies", params=params, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]


def test_accept_that_cannot_be_met_is_406(srv: LiveServer) -> None:
    r = http.get(srv.url + "/studies", headers={"Accept": "application/dicom+xml"}, timeout=30)
    assert r.status_code == 406


def test_queries_use_indexes_not_scans(srv: LiveServer) -> None:
    """The planner answers the common study searches from an index (SQLite and PG)."""
    index = srv.ctx.index
    queries = {
        "patient_id": "SELECT pk FROM studies WHERE patient_id = 'P1'",
        "patient_name_prefix": "SELECT pk FROM studies WHERE patient_name_norm LIKE 'DOE%'",
        "study_date_range": "SELECT pk FROM studies WHERE study_date BETWEEN '2020' AND '2021'",
        "accession": "SELECT pk FROM studies WHERE accession_number = 'X1'",
        "series_of_study": "SELECT pk FROM series WHERE study_pk = 1",
        "sop": "SELECT pk FROM instances WHERE sop_instance_uid = 'x'",
    }
    with index.engine.connect() as conn:
        for name, sql in queries.items():
            if index.dialect == "sqlite":
                plan = " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
                assert "USING" in plan and "INDEX" in plan, (name, plan)
            else:
                conn.execute(text("SET enable_seqscan = off"))
                plan = " ".join(r[0] for r in conn.execute(text("EXPLAIN " + sql)))
                assert "Index" in plan, (name, plan)
