"""Query model shared by QIDO-RS and C-FIND.

Matching follows PS3.4 C.2.2.2 (single value, list of UIDs, wildcard, range, universal)
with the QIDO-RS conventions of PS3.18 §8.3.4: ``fuzzymatching``, ``includefield``,
``limit`` and ``offset``.  This module is pure: it turns request parameters into a
:class:`Query`; the index adapter turns a :class:`Query` into SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from dicomhub.core.attributes import (
    Attribute,
    Level,
    attributes_at_or_above,
    lookup,
)
from dicomhub.core.errors import InvalidRequest


class Match(StrEnum):
    """Kinds of matching (PS3.4 C.2.2.2)."""

    SINGLE = "single"  # C.2.2.2.1 single value
    LIST = "list"  # C.2.2.2.2 list of UIDs (and of CS codes)
    WILDCARD = "wildcard"  # C.2.2.2.4 '*' and '?'
    RANGE = "range"  # C.2.2.2.5 date/time ranges
    FUZZY = "fuzzy"  # PS3.18 §8.3.4.1 fuzzymatching of person names


@dataclass(frozen=True)
class Constraint:
    """One matching key with its value(s).

    For RANGE, ``values`` is ``(low, high)`` with ``""`` for an open end.
    Values of PN attributes are upper-cased (PN matching is case-insensitive here).
    """

    attribute: Attribute
    kind: Match
    values: tuple[str, ...]


@dataclass
class Query:
    """A query at one level, scoped by the UIDs of the resource path."""

    level: Level
    constraints: list[Constraint] = field(default_factory=list)
    includes: list[Attribute] = field(default_factory=list)
    extra_includes: list[str] = field(default_factory=list)  # keywords/tags not in the index
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False


_DATE_RE = re.compile(r"^\d{8}$")
_TIME_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_RESERVED = {"limit", "offset", "fuzzymatching", "includefield", "orderby"}


def _normalize_date(value: str, attr: Attribute) -> str:
    v = value.replace("-", "") if len(value) == 10 and value[4] == "-" else value
    v = v.replace(".", "") if len(v) == 10 and v[4] == "." else v
    if not _DATE_RE.match(v):
        raise InvalidRequest(f"{attr.path}: '{value}' is not a DICOM date (YYYYMMDD)")
    try:
        datetime.strptime(v, "%Y%m%d")
    except ValueError:
        raise InvalidRequest(f"{attr.path}: '{value}' is not a valid date") from None
    return v


def _normalize_time(value: str, attr: Attribute) -> str:
    v = value.replace(":", "")
    if not _TIME_RE.match(v):
        raise InvalidRequest(f"{attr.path}: '{value}' is not a DICOM time (HHMMSS.FFFFFF)")
    return v


def _normalize_point(value: str, attr: Attribute) -> str:
    if attr.vr == "DA":
        return _normalize_date(value, attr)
    if attr.vr == "TM":
        return _normalize_time(value, attr)
    return value


def make_constraint(attr: Attribute, raw: str, fuzzy: bool = False) -> Constraint | None:
    """Turn one key's value into a constraint; ``None`` for universal matching (empty value).

    Raises :class:`InvalidRequest` for values the VR does not allow (PS3.5 Table 6.2-1).
    """
    value = raw.strip()
    if value == "" or value == "*":
        return None
    if not attr.matching:
        raise InvalidRequest(f"{attr.path} is a return key only; it cannot be matched")
    if attr.vr == "UI":
        uids = tuple(u.strip() for u in value.split("\\") if u.strip())
        if any(not _UID_RE.match(u) or len(u) > 64 for u in uids):
            raise InvalidRequest(f"{attr.path}: '{value}' is not a UID or list of UIDs")
        if len(uids) == 1:
            return Constraint(attr, Match.SINGLE, uids)
        return Constraint(attr, Match.LIST, uids)
    if attr.vr in ("DA", "TM"):
        if "-" in value and not (attr.vr == "DA" and re.match(r"^\d{4}-\d{2}-\d{2}$", value)):
            low, _, high = value.partition("-")
            low = _normalize_point(low.strip(), attr) if low.strip() else ""
            high = _normalize_point(high.strip(), attr) if high.strip() else ""
            if not low and not high:
                raise InvalidRequest(f"{attr.path}: empty range '{value}'")
            if low and high and low > high:
                raise InvalidRequest(f"{attr.path}: range start after end in '{value}'")
            return Constraint(attr, Match.RANGE, (low, high))
        return Constraint(attr, Match.SINGLE, (_normalize_point(value, attr),))
    if attr.vr == "IS":
        try:
            return Constraint(attr, Match.SINGLE, (str(int(value)),))
        except ValueError:
            raise InvalidRequest(f"{attr.path}: '{value}' is not an integer") from None
    if attr.vr == "PN":
        value = value.upper()
        if fuzzy and "*" not in value and "?" not in value:
            return Constraint(attr, Match.FUZZY, (value,))
    if "*" in value or "?" in value:
        return Constraint(attr, Match.WILDCARD, (value,))
    if attr.vr == "CS" and "\\" in value:
        return Constraint(attr, Match.LIST, tuple(v for v in value.split("\\") if v))
    return Constraint(attr, Match.SINGLE, (value,))


def _parse_int(name: str, value: str, minimum: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest(f"{name}: '{value}' is not an integer") from None
    if n < minimum:
        raise InvalidRequest(f"{name} must be >= {minimum}")
    return n


def parse_qido(
    level: Level,
    params: Iterable[tuple[str, str]],
    *,
    default_limit: int,
    max_limit: int,
) -> Query:
    """Build a :class:`Query` from QIDO-RS query parameters (PS3.18 §8.3.4, §10.6.1.2).

    Unknown attribute keywords are rejected with 400 (PS3.18 §10.6.1.3: a server may
    reject keys it does not support); ``includefield`` of attributes that are not index
    columns is allowed and answered from the stored metadata.
    """
    items = list(params)
    fuzzy = False
    for key, value in items:
        if key == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise InvalidRequest("fuzzymatching must be true or false")
            fuzzy = value.lower() == "true"
    query = Query(level=level, fuzzy=fuzzy, limit=default_limit)
    allowed = {a.path for a in attributes_at_or_above(level)}
    for key, value in items:
        if key == "limit":
            query.limit = min(_parse_int("limit", value, 0), max_limit)
        elif key == "offset":
            query.offset = _parse_int("offset", value, 0)
        elif key == "includefield":
            for name in (v.strip() for v in value.split(",")):
                if not name:
                    continue
                if name == "all":
                    query.include_all = True
                    continue
                attr = lookup(name)
                if attr is not None:
                    query.includes.append(attr)
                elif _is_keyword_or_tag(name):
                    query.extra_includes.append(name)
                else:
                    raise InvalidRequest(f"includefield: unknown attribute '{name}'")
        elif key in _RESERVED:
            continue
        else:
            attr = lookup(key)
            if attr is None:
                if _is_keyword_or_tag(key):
                    raise InvalidRequest(
                        f"matching on '{key}' is not supported; supported keys: "
                        + ", ".join(sorted(allowed))
                    )
                raise InvalidRequest(f"unknown query parameter '{key}'")
            if attr.path not in allowed:
                raise InvalidRequest(f"{attr.path} cannot be matched at {level.value} level")
            constraint = make_constraint(attr, value, fuzzy)
            if constraint is not None:
                query.constraints.append(constraint)
            elif attr not in query.includes:
                query.includes.append(attr)  # empty value: universal match, return it
    return query


def _is_keyword_or_tag(name: str) -> bool:
    from pydicom.datadict import tag_for_keyword

    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return True
    return tag_for_keyword(name) is not None


def like_pattern(value: str) -> str:
    """Translate DICOM wildcards to a SQL LIKE pattern with ``\\`` as the escape."""
    out = []
    for ch in value:
        if ch in "\\%_":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def parse_find(level: Level, keys: Iterable[tuple[str, str]]) -> Query:
    """Build a :class:`Query` from a C-FIND identifier (PS3.4 C.4.1.1.3, C.2.2.1).

    ``keys`` are ``(keyword or Seq.Keyword, value)``.  A key with a value is a matching
    key (if the level allows it); an empty key is a return key.  Keys the index does not
    hold are answered from the stored metadata, or returned empty (C.2.2.1.3).
    """
    query = Query(level=level, limit=None)
    allowed = {a.path for a in attributes_at_or_above(level)}
    for path, value in keys:
        attr = lookup(path)
        if attr is None or attr.path not in allowed:
            if attr is not None and attr.computed:
                continue
            if "." not in path and _is_keyword_or_tag(path):
                query.extra_includes.append(path)
            continue
        if not attr.matching or value.strip() in ("", "*"):
            query.includes.append(attr)
            continue
        constraint = make_constraint(attr, value)
        if constraint is None:
            query.includes.append(attr)
        else:
            query.constraints.append(constraint)
    return query
