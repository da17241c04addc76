"""Parsing QIDO-RS parameters into the shared query model (PS3.18 §8.3.4, PS3.4 C.2.2.2)."""

from __future__ import annotations

import pytest

from dicomhub.core.attributes import Level
from dicomhub.core.errors import InvalidRequest
from dicomhub.core.query import Match, like_pattern, parse_qido


def q(level: Level, *params: tuple[str, str]):  # type: ignore[no-untyped-def]
    return parse_qido(level, params, default_limit=100, max_limit=1000)


def test_single_list_wildcard_range_fuzzy() -> None:
    query = q(
        Level.STUDY,
        ("PatientID", "ABC"),
        ("StudyInstanceUID", "1.2.3\\1.2.4"),
        ("PatientName", "doe*"),
        ("StudyDate", "20200101-20201231"),
        ("00080050", "A?1"),
    )
    kinds = {c.attribute.path: (c.kind, c.values) for c in query.constraints}
    assert kinds["PatientID"] == (Match.SINGLE, ("ABC",))
    assert kinds["StudyInstanceUID"] == (Match.LIST, ("1.2.3", "1.2.4"))
    assert kinds["PatientName"] == (Match.WILDCARD, ("DOE*",))  # PN: case-insensitive
    assert kinds["StudyDate"] == (Match.RANGE, ("20200101", "20201231"))
    assert kinds["AccessionNumber"] == (Match.WILDCARD, ("A?1",))


def test_fuzzy_and_open_ranges() -> None:
    query = q(
        Level.STUDY,
        ("fuzzymatching", "true"),
        ("PatientName", "jo"),
        ("StudyDate", "-20200101"),
        ("StudyTime", "10:00-"),
    )
    kinds = {c.attribute.path: (c.kind, c.values) for c in query.constraints}
    assert kinds["PatientName"] == (Match.FUZZY, ("JO",))
    assert kinds["StudyDate"] == (Match.RANGE, ("", "20200101"))
    assert kinds["StudyTime"] == (Match.RANGE, ("1000", ""))


def test_paging_and_includes() -> None:
    query = q(
        Level.SERIES,
        ("limit", "5"),
        ("offset", "10"),
        ("includefield", "SeriesDescription,00080070"),
        ("includefield", "all"),
        ("PatientName", ""),
    )
    assert (query.limit, query.offset, query.include_all) == (5, 10, True)
    assert [a.path for a in query.includes] == ["SeriesDescription", "PatientName"]
    assert query.extra_includes == ["00080070"]
    assert q(Level.STUDY, ("limit", "999999")).limit == 1000  # capped at max_limit


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (("StudyDate", "2020-13"), "not a DICOM date"),
        (("StudyDate", "20201231-20200101"), "range start after end"),
        (("StudyInstanceUID", "1.2.abc"), "not a UID"),
        (("limit", "-1"), "limit"),
        (("offset", "x"), "offset"),
        (("fuzzymatching", "maybe"), "fuzzymatching"),
        (("NoSuchKeyword", "1"), "unknown query parameter"),
        (("PatientWeight", "1"), "not supported"),
        (("NumberOfStudyRelatedSeries", "3"), "return key only"),
        (("SOPInstanceUID", "1.2"), "cannot be matched at STUDY level"),
        (("includefield", "Bogus"), "unknown attribute"),
        (("InstanceNumber", "x"), "not an integer"),
    ],
)
def test_bad_parameters_are_400(params: tuple[str, str], message: str) -> None:
    level = Level.IMAGE if params[0] == "InstanceNumber" else Level.STUDY
    with pytest.raises(InvalidRequest, match=message):
        q(level, params)


def test_like_pattern_escapes_sql_wildcards() -> None:
    assert like_pattern("a_b%c*d?") == "a\\_b\\%c%d_"
