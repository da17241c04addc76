"""Reading and validating received DICOM Part 10 files at ingest (PS3.10 §7, PS3.5 §7).

One pass produces everything the index needs: the UIDs, the values of the index columns
(:mod:`dicomhub.core.attributes`), the full DICOM JSON metadata (PS3.18 Annex F) with
bulk data replaced by BulkDataURIs, and the offset of the Pixel Data value.  A file that
is not DICOM, has no File Meta Information, is truncated, or lacks the identifying UIDs
raises :class:`~dicomhub.core.errors.StoreFailure` with the PS3.4 B.2.3 failure reason.
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import struct
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import UID

from dicomhub.codecs import dicomjson_fast, walker
from dicomhub.codecs.walker import LONG_VRS, PIXEL_TAGS, UNDEFINED_LENGTH
from dicomhub.core.attributes import ATTRIBUTES, Attribute
from dicomhub.core.errors import StoreFailure
from dicomhub.core.model import BULK_BASE, ParsedInstance, Status

log = logging.getLogger(__name__)

BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
DEFLATED = ("1.2.840.10008.1.2.1.99",)
#: A file up to this size is read whole for the walk; a larger one is mapped.
READ_WHOLE_MAX = 256 << 10
#: An inflated deflated data set larger than this is walked from a temporary file.
INFLATED_IN_MEMORY_MAX = 16 << 20


class _Truncated(Exception):
    pass


def _walk(
    fp: BinaryIO, end: int, little: bool, explicit: bool, depth: int = 0
) -> tuple[int, int] | None:
    """Walk elements from the current position to ``end`` or a delimiter, checking lengths.

    Returns ``(tag, value offset)`` of top-level Pixel Data (any of the three pixel tags).
    Raises :class:`_Truncated` when a header or value runs past the end of the file.
    PS3.5 §7.1 (element encoding) and §7.5 (nesting of items and sequences).
    """
    order = "<" if little else ">"
    pixel: tuple[int, int] | None = None
    while True:
        pos = fp.tell()
        if pos == end:
            if depth:
                raise _Truncated("sequence or item without delimiter")
            return pixel
        head = fp.read(8)
        if len(head) < 8:
            if depth == 0 and head.strip(b"\x00") == b"":
                return pixel  # trailing NUL padding
            raise _Truncated(f"element header cut at byte {pos}")
        group, elem = struct.unpack(order + "HH", head[:4])
        if group == 0xFFFE:  # item / delimiters
            length = struct.unpack(order + "I", head[4:])[0]
            if elem in (0xE00D, 0xE0DD):
                return pixel
            if length == UNDEFINED_LENGTH:
                _walk(fp, end, little, explicit, depth + 1)
            else:
                if fp.tell() + length > end:
                    raise _Truncated(f"item at byte {pos} runs past the end")
                fp.seek(length, 1)
            continue
        if explicit:
            vr = head[4:6]
            if vr in LONG_VRS:
                more = fp.read(4)
                if len(more) < 4:
                    raise _Truncated(f"element header cut at byte {pos}")
                length = struct.unpack(order + "I", more)[0]
            else:
                length = struct.unpack(order + "H", head[6:])[0]
        else:
            vr = b""
            length = struct.unpack(order + "I", head[4:])[0]
        tag = (group << 16) | elem
        if length == UNDEFINED_LENGTH:
            # SQ, UN with undefined length (implicit little endian inside), or encapsulated
            # pixel data: items follow until a Sequence Delimitation Item.
            if depth == 0 and tag in PIXEL_TAGS:
                pixel = (tag, fp.tell())
            inner_explicit = explicit and vr != b"UN"
            _walk(fp, end, little if vr != b"UN" else True, inner_explicit, depth + 1)
            continue
        if fp.tell() + length > end:
            raise _Truncated(
                f"element ({group:04X},{elem:04X}) at byte {pos} declares {length} bytes, "
                f"only {end - fp.tell()} remain"
            )
        if depth == 0 and tag in PIXEL_TAGS:
            pixel = (tag, fp.tell())
        fp.seek(length, 1)


def check_complete(fp: BinaryIO, size: int, ds: FileDataset) -> tuple[int, int | None] | None:
    """Verify every element of the file ``fp`` (``size`` bytes) lies within it; return
    ``(pixel tag, value offset)`` of top-level pixel data, if any.

    pydicom stops silently at a truncated element, so this walk is what detects a cut
    transfer.  A deflated data set (PS3.5 §A.5) is inflated in full and walked; its pixel
    data has no offset in the file (``None``).
    """
    tsuid = ds.file_meta.TransferSyntaxUID
    if tsuid in DEFLATED:
        import zlib

        fp.seek(_dataset_start(fp))
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        # the inflated data set is walked from memory, or from disk when it is large
        with tempfile.SpooledTemporaryFile(INFLATED_IN_MEMORY_MAX) as inflated:
            while chunk := fp.read(1 << 20):
                inflated.write(inflater.decompress(chunk))
            inflated.write(inflater.flush())
            if not inflater.eof:
                raise _Truncated("deflated data set ends before the end of the zlib stream")
            end = inflated.tell()
            inflated.seek(0)
            pixel = _walk(inflated, end, True, True)  # type: ignore[arg-type]
        return (pixel[0], None) if pixel else None
    fp.seek(_dataset_start(fp))
    ts = UID(tsuid)
    little = ts.is_little_endian if ts.is_transfer_syntax else True
    explicit = not ts.is_implicit_VR if ts.is_transfer_syntax else True
    return _walk(fp, size, little, explicit)


def _dataset_start(fp: BinaryIO) -> int:
    """Offset of the first data set element after the File Meta Information (PS3.10 §7.1)."""
    fp.seek(132)
    head = fp.read(12)
    group_length: int = struct.unpack("<I", head[8:12])[0]
    return 132 + 12 + group_length


def _tag_hex(tag: int) -> str:
    return f"{tag:08X}"


def _json_element(elem: DataElement, uri: str, threshold: int) -> dict[str, Any]:
    vr = elem.VR
    if vr == "SQ":
        return (
            {
                "vr": "SQ",
                "Value": [
                    _json_dataset(item, f"{uri}/{i}", threshold)
                    for i, item in enumerate(elem.value)
                ]
                if elem.value
                else [],
            }
            if elem.value
            else {"vr": "SQ"}
        )
    if vr in BULK_VRS:
        value = elem.value
        length = len(value) if isinstance(value, (bytes, bytearray)) else 0
        if length > threshold:
            return {"vr": vr, "BulkDataURI": uri}
    try:
        return elem.to_json_dict(None, 2**62)  # type: ignore[no-any-return]
    except Exception as exc:  # an invalid value must not block ingest
        log.debug("cannot convert %s to JSON: %s", elem.tag, exc)
        return {"vr": vr}


def _json_dataset(ds: Dataset, uri: str, threshold: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.tag.group == 0x0002:
            continue
        key = _tag_hex(elem.tag)
        out[key] = _json_element(elem, f"{uri}/{key}", threshold)
    return out


def _hex(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


#: JSON keys of the indexed attributes: ``Keyword`` or ``Sequence.Keyword`` paths.
_JSON_PATHS: dict[str, tuple[str, ...]] = {}


def _json_path(path: str) -> tuple[str, ...]:
    keys = _JSON_PATHS.get(path)
    if keys is None:
        keys = _JSON_PATHS[path] = tuple(_hex(k) for k in path.split("."))
    return keys


def _json_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):  # PN (PS3.18 §F.2.2): groups joined as in PS3.5 §6.2.1
        groups = [value.get(k, "") for k in ("Alphabetic", "Ideographic", "Phonetic")]
        return "=".join(groups).rstrip("=")
    return str(value)


def _json_str(metadata: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """The value at ``keys`` (:func:`_json_path`) in DICOM JSON as the index stores it:
    text, multiple values joined with backslashes, the first item of a sequence; None
    when absent or empty."""
    if len(keys) == 1:  # a top-level element: most are absent, or one text value
        elem = metadata.get(keys[0])
        if not elem:
            return None
        values = elem.get("Value")
        if not values:
            return None
        if len(values) == 1 and type(values[0]) is str:
            return values[0] or None
    node: Any = metadata
    for i, key in enumerate(keys):
        elem = node.get(key) if isinstance(node, dict) else None
        if not elem:
            return None
        values = elem.get("Value")
        if not values:
            return None
        if i < len(keys) - 1:
            node = values[0]
            continue
        text = "\\".join(_json_text(v) for v in values)
        return text or None
    return None


#: The index columns the reader fills, with their JSON keys (looked up once).
_INDEXED: list[tuple[Attribute, tuple[str, ...]]] = [
    (a, _json_path(a.path))
    for a in ATTRIBUTES
    if not a.computed and a.column != "transfer_syntax_uid"
]


_UID_TAGS = {
    kw: Tag(kw) for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
}
_UID_KEYS = {kw: f"{tag:08X}" for kw, tag in _UID_TAGS.items()}


def _uid(ds: Dataset, keyword: str) -> str | None:
    """A top-level UI value straight from its raw bytes when pydicom has not converted
    it yet (PS3.5 §6.2: padded with NUL); other forms go through pydicom."""
    raw = ds._dict.get(_UID_TAGS[keyword])
    if isinstance(raw, RawDataElement) and raw.VR in (None, "UI") and raw.value is not None:
        text = raw.value.decode("latin-1").strip("\x00 ")
        if text and "\\" not in text:
            return text
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _person_name_words(name: str | None) -> str | None:
    """Normalized words of a person name for fuzzy matching (PS3.18 §8.3.4.1)."""
    if not name:
        return None
    words = [w for w in name.upper().replace("=", "^").replace(" ", "^").split("^") if w]
    return " " + " ".join(words) if words else None


class DicomFileReader:
    """Implements :class:`dicomhub.core.ports.InstanceReader` with pydicom."""

    def __init__(self, bulk_data_threshold: int = 1024) -> None:
        self.bulk_data_threshold = bulk_data_threshold

    def read(
        self,
        path: Path,
        content: bytes | None = None,
        head: bytes | None = None,
        size: int | None = None,
    ) -> ParsedInstance:
        """Parse and validate one received object (PS3.10 §7.1 File Meta Information):
        the file at ``path``, or its bytes ``content`` when the caller holds them.
        ``head``: the file's first bytes, when the caller kept them (``size``: the
        file's size): enough for an object whose last element is its bulk Pixel Data,
        which then is not read back.

        One walk of the bytes (:mod:`dicomhub.codecs.walker`) where it can; pydicom
        otherwise, with the same result."""
        if head is not None and content is None:
            if size is None:
                size = os.stat(path).st_size
            if len(head) >= size:
                content = head[:size]
            else:
                parsed = self._walked(head, size)
                if parsed is not None:
                    return parsed
        if content is not None:
            parsed = self._walked(content)
            if parsed is not None:
                return parsed
            with io.BytesIO(content) as fp:
                return self._read(fp, len(content))
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            if size <= READ_WHOLE_MAX:
                parsed = self._walked(fp.read())
            else:  # only the pages holding element headers are read
                with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    parsed = self._walked(mapped)
            if parsed is not None:
                return parsed
            fp.seek(0)
            return self._read(fp, size)

    def _walked(self, buf: Any, size: int | None = None) -> ParsedInstance | None:
        """The instance from one walk of ``buf`` (the first bytes of an object of
        ``size`` bytes, if given), or None when pydicom, or the whole file, must be read."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                walked = walker.walk(buf, self.bulk_data_threshold, size)
                return self._parse_walked(walked)
        except StoreFailure:
            raise
        except Exception as exc:  # walker.Fallback, or a value it could not convert
            log.debug("read by pydicom: %s", exc)
            return None

    def _read(self, fp: BinaryIO, size: int) -> ParsedInstance:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=False)
        except InvalidDicomError as exc:
            raise StoreFailure(
                Status.CANNOT_UNDERSTAND,
                f"not a DICOM Part 10 file (no 'DICM' preamble/File Meta Information): {exc}",
            ) from None
        except Exception as exc:
            raise StoreFailure(Status.CANNOT_UNDERSTAND, f"cannot parse data set: {exc}") from None
        meta = getattr(ds, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta:
            raise StoreFailure(
                Status.CANNOT_UNDERSTAND, "File Meta Information has no Transfer Syntax UID"
            )
        tsuid = str(meta.TransferSyntaxUID)
        try:
            pixel = check_complete(fp, size, ds)
        except _Truncated as exc:
            raise StoreFailure(Status.CANNOT_UNDERSTAND, f"truncated data set: {exc}") from None
        except Exception as exc:
            raise StoreFailure(Status.CANNOT_UNDERSTAND, f"malformed data set: {exc}") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self._parse(ds, tsuid, pixel)
        except StoreFailure:
            raise
        except Exception as exc:
            raise StoreFailure(Status.CANNOT_UNDERSTAND, f"cannot parse data set: {exc}") from None

    def _parse(
        self, ds: FileDataset, tsuid: str, pixel: tuple[int, int | None] | None
    ) -> ParsedInstance:
        uids = _checked_uids(lambda kw: _uid(ds, kw))
        meta_sop = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
        base = _bulk_base(uids)
        # one conversion of the data set (mostly straight from the raw bytes); the index
        # columns are read from it
        metadata = dicomjson_fast.convert(ds, base, self.bulk_data_threshold, _json_element)
        return _instance(uids, meta_sop, tsuid, metadata, pixel, ds.get("BitsAllocated"))

    def _parse_walked(self, walked: walker.Walked) -> ParsedInstance:
        metadata = walked.metadata
        uids = _checked_uids(lambda kw: _json_uid(metadata, kw))
        walked.resolve(_bulk_base(uids))
        bits = metadata.get("00280100", {}).get("Value")
        if bits is not None and len(bits) != 1:
            raise walker.Fallback("Bits Allocated with several values")
        return _instance(
            uids,
            walked.media_storage_sop_instance_uid,
            walked.transfer_syntax_uid,
            metadata,
            walked.pixel,
            bits[0] if bits else None,
        )


def _json_uid(metadata: dict[str, Any], keyword: str) -> str | None:
    """A top-level UI value from DICOM JSON, several values joined by backslashes."""
    values = metadata.get(_UID_KEYS[keyword], {}).get("Value")
    return "\\".join(values) if values else None


def _bulk_base(uids: dict[str, str]) -> str:
    return (
        f"{BULK_BASE}/studies/{uids['StudyInstanceUID']}/series/"
        f"{uids['SeriesInstanceUID']}/instances/{uids['SOPInstanceUID']}/bulkdata"
    )


def _checked_uids(get: Callable[[str], str | None]) -> dict[str, str]:
    """The four identifying UIDs, present and at most 64 characters (PS3.5 §9.1)."""
    uids: dict[str, str] = {}
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = get(kw)
        if not value:
            raise StoreFailure(Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"missing {kw}")
        uids[kw] = value.strip().rstrip("\x00")
        if len(uids[kw]) > 64:
            raise StoreFailure(
                Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                f"{kw} is longer than 64 characters (PS3.5 §9.1)",
            )
    return uids


def _instance(
    uids: dict[str, str],
    meta_sop: str,
    tsuid: str,
    metadata: dict[str, Any],
    pixel: tuple[int, int | None] | None,
    bits_allocated: Any,
) -> ParsedInstance:
    """The parsed instance from its DICOM JSON: index columns, Pixel Data as bulk data."""
    warns: list[str] = []
    if meta_sop and meta_sop != uids["SOPInstanceUID"]:
        # stored as received; the index uses the data set's SOPInstanceUID
        log.info("%s: MediaStorageSOPInstanceUID differs", uids["SOPInstanceUID"])
    base = _bulk_base(uids)
    columns: dict[str, Any] = {}
    for attr, keys in _INDEXED:
        value = _json_str(metadata, keys)
        if value is None:
            columns[attr.column] = None
            continue
        if attr.vr in ("IS", "US"):
            try:
                columns[attr.column] = int(float(value.split("\\")[0]))
            except ValueError:
                columns[attr.column] = None  # not indexed; the file keeps its value
                log.info("%s: %s '%s' is not an integer", uids["SOPInstanceUID"], attr.path, value)
            continue
        if attr.vr in ("DA", "TM"):
            value = value.split("\\")[0].replace(":", "").replace("-", "").strip()
        columns[attr.column] = value[:256] if attr.vr != "UI" else value
    for pn in ("patient_name", "referring_physician_name"):
        name = columns.get(pn)
        columns[pn + "_norm"] = name.upper() if name else None
        columns[pn + "_words"] = _person_name_words(name)
    columns["transfer_syntax_uid"] = tsuid
    columns["study_instance_uid"] = uids["StudyInstanceUID"]
    columns["series_instance_uid"] = uids["SeriesInstanceUID"]
    columns["sop_instance_uid"] = uids["SOPInstanceUID"]
    columns["sop_class_uid"] = uids["SOPClassUID"]
    # pixel data is not read at ingest (stop_before_pixels): add it as bulk data.
    pixel_vrs = {0x7FE00010: "OW", 0x7FE00008: "OF", 0x7FE00009: "OD"}
    if pixel is not None:
        tag = pixel[0]
        vr = "OB" if tsuid not in _NATIVE and tag == 0x7FE00010 else pixel_vrs[tag]
        if tag == 0x7FE00010 and tsuid in _NATIVE and (bits_allocated or 16) <= 8:
            vr = "OB"
        metadata[_tag_hex(tag)] = {"vr": vr, "BulkDataURI": f"{base}/{_tag_hex(tag)}"}
    return ParsedInstance(
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        transfer_syntax_uid=tsuid,
        columns=columns,
        metadata=metadata,
        pixel_data_offset=pixel[1] if pixel else None,
        has_pixel_data=pixel is not None,
        warnings=warns,
    )


_NATIVE = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
)
