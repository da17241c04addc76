"""Fast DICOM JSON (PS3.18 Annex F) straight from pydicom's raw elements.

pydicom converts every element to a ``DataElement`` before ``to_json_dict``; for a CT
header of a few hundred elements that is most of the cost of ingest. Here the raw value
bytes are converted directly for the common VRs; sequences recurse over their items and
anything unusual falls back to pydicom (``convert`` below), so the result is the same
JSON pydicom produces (tests/codecs/test_dicomjson_fast.py checks every sample).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from math import isfinite
from typing import Any

from pydicom.charset import decode_bytes
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
_TEXT_MULTI = frozenset({"LO", "SH", "UC"})
_TEXT_SINGLE = frozenset({"LT", "ST", "UT"})
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_SIZES = {"H": 2, "h": 2, "L": 4, "l": 4, "f": 4, "d": 8, "Q": 8, "q": 8}


def _text(value: bytes, encodings: list[str], vr: str) -> str:
    if value.isascii() and b"\x1b" not in value:  # ISO 2022 escapes are 7-bit too
        return value.decode("ascii")
    delimiters = {0x5C, 0x3D, 0x5E} if vr == "PN" else {0x5C}
    return decode_bytes(value, encodings, delimiters)


def _ascii_values(value: bytes) -> list[str] | None:
    text = value.decode("latin-1").rstrip(" \x00")
    if not text:
        return None
    return text.split("\\")


def _fast_value(raw: RawDataElement, vr: str, encodings: list[str]) -> dict[str, Any] | None:
    """The JSON element of a raw element for the common VRs, or None to let pydicom do it."""
    if raw.value is None:
        return None
    return fast_value(raw.value, vr, encodings, raw.is_little_endian)


def fast_value(
    value: bytes, vr: str, encodings: list[str], little: bool = True
) -> dict[str, Any] | None:
    """The JSON element of the value bytes ``value`` for the common VRs (PS3.18 §F.2),
    or None when pydicom must convert it (unusual forms: empty components, NaN, …)."""
    if len(value) == 0:
        return {"vr": vr}
    code = _NUMBERS.get(vr)
    if code is not None:  # the binary numbers first: no text to decode
        size = _SIZES[code]
        if len(value) % size:
            return None
        if size == len(value):
            number = struct.unpack(("<" if little else ">") + code, value)[0]
            return {"vr": vr, "Value": [number]}
        order = "<" if little else ">"
        numbers = list(struct.unpack(f"{order}{len(value) // size}{code}", value))
        return {"vr": vr, "Value": numbers}
    if vr in _ASCII_VRS:
        values = _ascii_values(value)
        if values is None:
            return {"vr": vr}
        if "" in values:
            return None  # empty components: let pydicom decide their JSON form
        return {"vr": vr, "Value": values}
    if vr in _TEXT_MULTI:
        text = _text(value, encodings, vr).rstrip(" \x00")
        if not text:
            return {"vr": vr}
        values = text.split("\\")
        if "" in values:
            return None
        return {"vr": vr, "Value": values}
    if vr in _TEXT_SINGLE:
        text = _text(value, encodings, vr).rstrip(" \x00")
        return {"vr": vr, "Value": [text]} if text else {"vr": vr}
    if vr in ("IS", "DS"):
        values = _ascii_values(value)
        if values is None:
            return {"vr": vr}
        stripped = [v.strip(" ") for v in values]
        if "" in stripped:
            return None
        if vr == "IS":
            return {"vr": vr, "Value": [int(v) for v in stripped]}
        floats = [float(v) for v in stripped]
        if not all(map(isfinite, floats)):
            return None
        return {"vr": vr, "Value": floats}
    if vr == "PN":
        text = _text(value, encodings, vr).rstrip(" \x00")
        if not text:
            return {"vr": vr}
        names = []
        for person in text.split("\\"):
            groups = person.split("=")
            doc = {
                key: group
                for key, group in zip(
                    ("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False
                )
                if group
            }
            if not doc:
                return None
            names.append(doc)
        return {"vr": vr, "Value": names}
    return None


def convert(
    ds: Dataset,
    uri: str,
    threshold: int,
    element_fallback: Callable[[DataElement, str, int], dict[str, Any]],
) -> dict[str, Any]:
    """DICOM JSON of ``ds`` with binary values over ``threshold`` as BulkDataURIs under
    ``uri`` (``uri/GGGGEEEE``, items as ``uri/GGGGEEEE/i``)."""
    out: dict[str, Any] = {}
    try:
        encodings = list(ds._character_set)
    except Exception:
        encodings = ["iso8859"]
    for tag, elem in ds._dict.items():
        if tag >> 16 == 0x0002:
            continue
        key = f"{tag:08X}"
        sub_uri = f"{uri}/{key}"
        result: dict[str, Any] | None = None
        if isinstance(elem, RawDataElement):
            vr = elem.VR
            # implicit VR, UN and group lengths: pydicom resolves the VR (private
            # dictionaries, known tags), so it converts those
            if vr is None or vr == "UN" or (tag & 0xFFFF) == 0:
                vr = "?"
            if vr in _BINARY and elem.value is not None and elem.length != 0xFFFFFFFF:
                if len(elem.value) > threshold:
                    result = {"vr": vr, "BulkDataURI": sub_uri}
                elif len(elem.value) == 0:
                    result = {"vr": vr}
                else:
                    result = {
                        "vr": vr,
                        "InlineBinary": base64.b64encode(elem.value).decode("ascii"),
                    }
            elif vr not in ("?", "SQ", "AT") and "or" not in vr:
                try:
                    result = _fast_value(elem, vr, encodings)
                except Exception:
                    result = None
        if result is None:
            converted = ds[tag]
            if converted.VR == "SQ":
                items = converted.value or []
                result = (
                    {
                        "vr": "SQ",
                        "Value": [
                            convert(item, f"{sub_uri}/{i}", threshold, element_fallback)
                            for i, item in enumerate(items)
                        ],
                    }
                    if items
                    else {"vr": "SQ"}
                )
            else:
                result = element_fallback(converted, sub_uri, threshold)
        out[key] = result
    return out
