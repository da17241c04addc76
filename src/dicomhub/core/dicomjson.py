"""DICOM JSON model helpers (PS3.18 Annex F) for query results."""

from __future__ import annotations

from typing import Any

from dicomhub.core.attributes import BY_PATH, DEFAULT_RETURN, Attribute, Level
from dicomhub.core.model import QueryRow
from dicomhub.core.query import Query

_NUMERIC_INT = {"IS", "US", "SS", "UL", "SL", "UV", "SV"}


def element(vr: str, value: Any) -> dict[str, Any]:
    """One JSON element; empty/None values give an element without ``Value`` (F.2.5)."""
    if value is None or value == "":
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": v} for v in str(value).split("\\")]}
    if vr in _NUMERIC_INT:
        if isinstance(value, int):
            return {"vr": vr, "Value": [value]}
        return {"vr": vr, "Value": [int(float(v)) for v in str(value).split("\\") if v]}
    if vr == "DS":
        return {"vr": vr, "Value": [float(v) for v in str(value).split("\\") if v]}
    if isinstance(value, str):
        return {"vr": vr, "Value": value.split("\\")}
    return {"vr": vr, "Value": [value]}


def _put(doc: dict[str, Any], attr: Attribute, value: Any) -> None:
    if "." in attr.path:  # RequestAttributesSequence.Key
        seq_tag, key_tag = attr.tag.split(".")
        seq = doc.setdefault(seq_tag, {"vr": "SQ", "Value": [{}]})
        if value is not None:
            seq["Value"][0][key_tag] = element(attr.vr, value)
        return
    doc[attr.tag] = element(attr.vr, value)


def row_to_json(row: QueryRow, query: Query, base_url: str) -> dict[str, Any]:
    """A QIDO-RS result object with the default, matched and included attributes.

    Always adds RetrieveURL (0008,1190) for the result's level (PS3.18 §10.6.3.3).
    """
    level = query.level
    paths: list[str] = list(DEFAULT_RETURN[level])
    if level in (Level.SERIES, Level.IMAGE):
        paths.append("StudyInstanceUID")
    if level == Level.IMAGE:
        paths.append("SeriesInstanceUID")
    paths += [c.attribute.path for c in query.constraints]
    paths += [a.path for a in query.includes]
    if query.include_all:
        levels = {Level.STUDY, level}
        if level == Level.IMAGE:
            levels.add(Level.SERIES)
        paths += [p for lv in levels for p in DEFAULT_RETURN[lv]]
    doc: dict[str, Any] = {}
    values = row.values
    for path in paths:
        attr = BY_PATH[path]
        if path in values:
            _put(doc, attr, values[path])
    for tag, el in row.extra.items():
        doc.setdefault(tag, el)
    if level == Level.PATIENT:
        return dict(sorted(doc.items()))
    study = values.get("StudyInstanceUID")
    url = f"{base_url}/studies/{study}"
    if level in (Level.SERIES, Level.IMAGE):
        url += f"/series/{values.get('SeriesInstanceUID')}"
    if level == Level.IMAGE:
        url += f"/instances/{values.get('SOPInstanceUID')}"
    doc["00081190"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(doc.items()))
