"""One pass over a Part 10 object's bytes: DICOM JSON, Pixel Data offset and completeness.

The ingest reader's general path reads a received object with pydicom (``dcmread``),
walks it a second time to prove no element runs past the end, and converts pydicom's raw
elements to DICOM JSON.  For the encodings almost every object arrives in (Explicit VR
Little Endian, PS3.5 §A.2, and the encapsulated syntaxes built on it, §A.4) this module
does the three in a single walk of the bytes with ``struct``, producing exactly the same
JSON (PS3.18 Annex F).

Anything it is not sure to convert exactly as the general path does raises
:class:`Fallback`, and the caller reads the object the general way, which also gives the
error message for a broken one.  That covers: other transfer syntaxes (Implicit VR, Big
Endian, Deflated), UN values, values that ``dicomjson_fast`` leaves to pydicom, nested
character sets, undefined-length binary values inside the data set, repeated tags,
unknown VRs, and any length that does not fit.  tests/codecs/test_walker.py checks that
every sample walks to the same result as the general path.

File Meta Information: PS3.10 §7.1; element encoding: PS3.5 §7.1; sequences and items:
PS3.5 §7.5; pixel data: PS3.5 §8.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.uid import UID

from dicomhub.codecs.dicomjson_fast import fast_value

PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
UNDEFINED_LENGTH = 0xFFFFFFFF
_ELEMENT = struct.Struct("<HH2sH")
_U32 = struct.Struct("<I")
_ITEM = struct.Struct("<HHI")
#: explicit VRs with a 4-byte value length after two reserved bytes (PS3.5 §7.1.2)
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
#: explicit VRs this walker converts itself (UN goes to the general path)
_VR_NAMES = "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI"
_VRS = {vr.encode(): vr for vr in (_VR_NAMES + " UL UR US UT UV").split(" ")}
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_DEFAULT_ENCODINGS = ["iso8859"]
_KEYS: dict[int, str] = {}
_TS_WALKABLE: dict[str, bool] = {}


class Fallback(Exception):
    """The object needs the general (pydicom) path; the message says why."""


class Short(Fallback):
    """The walk needs bytes past the end of the first bytes it was given (:func:`walk`
    with ``size``): the whole object must be walked instead."""


#: fewer first bytes than this are not walked on their own
_MIN_HEAD = 1024


@dataclass
class Walked:
    """What one walk found.  ``metadata`` holds BulkDataURIs relative to the instance's
    bulk data base until :meth:`resolve` is called."""

    transfer_syntax_uid: str
    media_storage_sop_instance_uid: str
    metadata: dict[str, Any]
    pixel: tuple[int, int] | None
    bulk: list[tuple[dict[str, Any], str]]

    def resolve(self, base: str) -> None:
        """Prefix every BulkDataURI with ``base`` (PS3.18 §8.6.2)."""
        for element, rel in self.bulk:
            element["BulkDataURI"] = base + rel
        self.bulk = []


def _key(tag: int) -> str:
    key = _KEYS.get(tag)
    if key is None:
        key = f"{tag:08X}"
        if len(_KEYS) < 20000:
            _KEYS[tag] = key
    return key


def _walkable(tsuid: str) -> bool:
    """Explicit VR Little Endian without deflate: the native syntax and the encapsulated
    ones (PS3.5 §10)."""
    known = _TS_WALKABLE.get(tsuid)
    if known is None:
        ts = UID(tsuid)
        known = bool(
            ts.is_transfer_syntax
            and not ts.is_implicit_VR
            and ts.is_little_endian
            and not ts.is_deflated
        )
        if len(_TS_WALKABLE) < 1000:
            _TS_WALKABLE[tsuid] = known
    return known


def walk(buf: Any, threshold: int, size: int | None = None) -> Walked:
    """Walk the Part 10 object in ``buf`` (bytes or an mmap of the file).

    Binary values longer than ``threshold`` bytes become BulkDataURIs (relative until
    :meth:`Walked.resolve`).  Raises :class:`Fallback` when the general path must read it.

    ``size``: ``buf`` holds only the first bytes of an object of ``size`` bytes (as a
    STOW-RS part's first chunk).  The walk is then the same as on the whole object as
    long as every byte it reads is in ``buf``; a bulk value (over ``threshold``) is not
    read, only its length checked, so Pixel Data that ends the object is never needed.
    It raises :class:`Short` as soon as it would read past ``buf``.
    """
    end = len(buf) if size is None else size
    if end > len(buf):
        try:
            return _walk(buf, threshold, end)
        except struct.error:  # an element header past the first bytes
            raise Short("element header past the first bytes") from None
    return _walk(buf, threshold, end)


def _walk(buf: Any, threshold: int, end: int) -> Walked:
    if len(buf) < min(end, _MIN_HEAD):
        raise Short("too few first bytes")
    if end < 144 or buf[128:132] != b"DICM":
        raise Fallback("no DICM prefix")
    # File Meta Information (PS3.10 §7.1): group 0002, Explicit VR Little Endian, and the
    # group length first, telling where the data set starts
    group, elem, vr, length = _ELEMENT.unpack_from(buf, 132)
    if (group, elem, vr, length) != (2, 0, b"UL", 4):
        raise Fallback("File Meta Information does not start with its group length")
    start = 144 + _U32.unpack_from(buf, 140)[0]
    if start > end:
        raise Fallback("File Meta Information group length runs past the end")
    if start > len(buf):
        raise Short("File Meta Information past the first bytes")
    pos = 144
    tsuid = media_sop = ""
    while pos < start:
        if pos + 8 > start:
            raise Fallback("File Meta Information element cut")
        group, elem, vr, length, pos = _header(buf, pos, start)
        if group != 2 or vr not in _VRS or vr == b"SQ":
            raise Fallback("unexpected element in File Meta Information")
        if length == UNDEFINED_LENGTH or pos + length > start:
            raise Fallback("File Meta Information element runs past its group")
        if elem == 0x0010:
            tsuid = buf[pos : pos + length].decode("ascii").strip("\x00 ")
        elif elem == 0x0003:
            media_sop = buf[pos : pos + length].decode("latin-1").strip("\x00 ")
        pos += length
    if pos != start:
        raise Fallback("File Meta Information group length does not match its elements")
    if start + 8 <= end and _ELEMENT.unpack_from(buf, start)[0] == 2:
        raise Fallback("group 0002 continues past its group length")
    if not tsuid or not _walkable(tsuid):
        raise Fallback(f"transfer syntax {tsuid!r} is read by the general path")
    bulk: list[tuple[dict[str, Any], str]] = []
    metadata, _, pixel = _dataset(buf, start, end, _DEFAULT_ENCODINGS, threshold, "", bulk, 0)
    return Walked(tsuid, media_sop, metadata, pixel, bulk)


def _header(buf: Any, pos: int, end: int) -> tuple[int, int, bytes, int, int]:
    """The Explicit VR Little Endian element header at ``pos`` (at least 8 bytes before
    ``end``): group, element, VR bytes, value length and value offset (PS3.5 §7.1.2)."""
    group, elem, vr, length = _ELEMENT.unpack_from(buf, pos)
    if vr not in LONG_VRS:
        return group, elem, vr, length, pos + 8
    if pos + 12 > end:
        raise Fallback(f"element header cut at byte {pos}")
    return group, elem, vr, _U32.unpack_from(buf, pos + 8)[0], pos + 12


def _dataset(
    buf: Any,
    pos: int,
    end: int,
    encodings: list[str],
    threshold: int,
    uri: str,
    bulk: list[tuple[dict[str, Any], str]],
    depth: int,
    delimited: bool = False,
) -> tuple[dict[str, Any], int, tuple[int, int] | None]:
    """Convert the elements from ``pos`` to ``end`` (or to an Item Delimitation Item when
    ``delimited``); returns the JSON, the position after, and the top-level pixel data."""
    out: dict[str, Any] = {}
    available = len(buf)
    vr_names, keys = _VRS, _KEYS  # the loop runs once per element: looked up once
    while pos < end:
        if pos + 8 > end:
            if end > available:
                raise Short("trailing bytes past the first bytes")
            if depth == 0 and not buf[pos:end].strip(b"\x00"):
                break  # trailing NUL padding, as the general path allows
            raise Fallback(f"element header cut at byte {pos}")
        group, elem, vr_bytes, length, value_pos = _header(buf, pos, end)
        if group == 0xFFFE:
            if delimited and elem == 0xE00D and length == 0:
                return out, value_pos, None
            raise Fallback(f"unexpected item tag at byte {pos}")
        tag = group << 16 | elem
        if depth == 0 and tag in PIXEL_TAGS:
            # pydicom stops before pixel data: nothing after it is converted; the rest of
            # the file is only checked, exactly as the general path does
            return out, end, _walk_rest(buf, pos, end)
        vr = vr_names.get(vr_bytes)
        if vr is None or group < 8:
            raise Fallback(f"element ({group:04X},{elem:04X}) needs the general path")
        pos = value_pos
        key = keys.get(tag) or _key(tag)
        if key in out:
            raise Fallback(f"repeated element {key}")
        if vr == "SQ":
            sub = f"{uri}/{key}"
            items, pos = _items(buf, pos, end, length, encodings, threshold, sub, bulk, depth)
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        if length == UNDEFINED_LENGTH:
            raise Fallback(f"undefined length {vr} value {key}")
        stop = pos + length
        if stop > end:
            raise Fallback(f"element {key} runs past the end")
        if stop > available and (length <= threshold or vr not in _BINARY):
            raise Short(f"element {key} past the first bytes")
        if vr in _BINARY:
            if length > threshold:
                element: dict[str, Any] = {"vr": vr, "BulkDataURI": ""}
                bulk.append((element, f"{uri}/{key}"))
            elif length == 0:
                element = {"vr": vr}
            else:
                element = {
                    "vr": vr,
                    "InlineBinary": base64.b64encode(buf[pos:stop]).decode("ascii"),
                }
        elif vr == "AT":
            element = _at(buf[pos:stop])
        else:
            result = fast_value(buf[pos:stop], vr, encodings)
            if result is None:
                raise Fallback(f"element {key} is converted by pydicom")
            element = result
            if tag == 0x00080005:
                if depth or any(k not in ("00080000", "00080001") for k in out):
                    # pydicom applies a character set to the whole data set it is in
                    raise Fallback("Specific Character Set inside an item or out of order")
                values = element.get("Value")
                if values:
                    encodings = list(convert_encodings(values[0] if len(values) == 1 else values))
        out[key] = element
        pos = stop
    if delimited:
        raise Fallback("item without delimiter")
    return out, pos, None


def _at(value: bytes) -> dict[str, Any]:
    """Attribute Tag values as DICOM JSON: 8 hex digits each (PS3.18 §F.2.3)."""
    if not value:
        return {"vr": "AT"}
    if len(value) % 4:
        raise Fallback("AT value is not a multiple of 4 bytes")
    pairs = struct.unpack(f"<{len(value) // 2}H", value)
    return {
        "vr": "AT",
        "Value": [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)],
    }


def _items(
    buf: Any,
    pos: int,
    end: int,
    length: int,
    encodings: list[str],
    threshold: int,
    uri: str,
    bulk: list[tuple[dict[str, Any], str]],
    depth: int,
) -> tuple[list[dict[str, Any]], int]:
    """The items of a sequence value starting at ``pos`` (PS3.5 §7.5)."""
    items: list[dict[str, Any]] = []
    if length != UNDEFINED_LENGTH:
        stop = pos + length
        if stop > end:
            raise Fallback("sequence runs past the end")
    else:
        stop = end
    while True:
        if length != UNDEFINED_LENGTH and pos == stop:
            return items, pos
        if pos + 8 > stop:
            raise Fallback("item header cut")
        group, elem, item_length = _ITEM.unpack_from(buf, pos)
        pos += 8
        if group != 0xFFFE:
            raise Fallback("sequence value holds something other than items")
        if elem == 0xE0DD:
            if length != UNDEFINED_LENGTH or item_length != 0:
                raise Fallback("unexpected sequence delimiter")
            return items, pos
        if elem != 0xE000:
            raise Fallback("unexpected item delimiter")
        sub = f"{uri}/{len(items)}"
        if item_length == UNDEFINED_LENGTH:
            item, pos, _ = _dataset(
                buf, pos, stop, encodings, threshold, sub, bulk, depth + 1, delimited=True
            )
        else:
            if pos + item_length > stop:
                raise Fallback("item runs past its sequence")
            item, after, _ = _dataset(
                buf, pos, pos + item_length, encodings, threshold, sub, bulk, depth + 1
            )
            pos = after
        items.append(item)


def _walk_rest(buf: Any, pos: int, end: int) -> tuple[int, int] | None:
    """Check the elements from the first top-level pixel data to the end, as
    ``reader._walk`` does on a file; returns the last top-level pixel data's
    ``(tag, value offset)``."""
    pixel: tuple[int, int] | None = None
    while True:
        if pos == end:
            return pixel
        if pos + 8 > end:
            if end > len(buf):
                raise Short("trailing bytes past the first bytes")
            if not buf[pos:end].strip(b"\x00"):
                return pixel
            raise Fallback(f"element header cut at byte {pos}")
        group, elem, vr, length, pos = _header(buf, pos, end)
        tag = group << 16 | elem
        if group == 0xFFFE or vr not in _VRS:
            raise Fallback(f"unexpected element at byte {pos}")
        if tag in PIXEL_TAGS:
            pixel = (tag, pos)
        if length == UNDEFINED_LENGTH:
            pos = _skip_items(buf, pos, end)
            continue
        if pos + length > end:
            raise Fallback(f"element at byte {pos} runs past the end")
        pos += length


def _skip_items(buf: Any, pos: int, end: int) -> int:
    """Skip items up to a Sequence Delimitation Item (encapsulated pixel data, or a
    sequence after it); undefined-length items go to the general path."""
    while True:
        if pos + 8 > end:
            raise Fallback("item header cut")
        group, elem, length = _ITEM.unpack_from(buf, pos)
        pos += 8
        if group != 0xFFFE:
            raise Fallback("unexpected element among items")
        if elem == 0xE0DD:
            return pos
        if elem != 0xE000 or length == UNDEFINED_LENGTH or pos + length > end:
            raise Fallback("item the general path checks")
        pos += length
