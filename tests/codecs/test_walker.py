"""The single-pass walker gives exactly what the general (pydicom) reader gives.

What came in: every sample of ../shared/dicom-samples, pydicom's test files and its
Specific Character Set files (PS3.5 §6.1), whole, cut short at many points, and with
elements the walker hands to pydicom; constructed data sets with undefined-length
sequences and items, elements after Pixel Data and trailing padding (PS3.5 §7.5, §8).
"""

from __future__ import annotations

import io
import struct
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import MANIFEST
from dicomhub.codecs import reader as reader_module
from dicomhub.codecs import walker
from dicomhub.codecs.reader import DicomFileReader
from dicomhub.core.errors import StoreFailure
from dicomhub.core.model import Status

PYDICOM_DATA = Path(pydicom.__file__).parent / "data"
FILES = (
    [s.path for s in MANIFEST]
    + sorted((PYDICOM_DATA / "charset_files").glob("*.dcm"))
    + sorted((PYDICOM_DATA / "test_files").rglob("*.dcm"))
)


def _general(content: bytes) -> object:
    """The general path: pydicom's reader, the completeness walk, the JSON conversion."""
    try:
        with io.BytesIO(content) as fp:
            return DicomFileReader()._read(fp, len(content))
    except StoreFailure as exc:
        return (exc.status, str(exc))


def _fast(content: bytes) -> object:
    try:
        return DicomFileReader().read(Path("/nonexistent/never-opened"), content)
    except StoreFailure as exc:
        return (exc.status, str(exc))


def _fast_head(head: bytes, size: int) -> object:
    try:
        return DicomFileReader().read(Path("/nonexistent/never-opened"), head=head, size=size)
    except StoreFailure as exc:
        return (exc.status, str(exc))


def _walks(content: bytes) -> bool:
    try:
        walker.walk(content, 1024)
    except Exception:
        return False
    return True


def test_every_sample_walks_to_what_pydicom_reads() -> None:
    """UIDs, index columns, DICOM JSON (BulkDataURIs included), Pixel Data offset."""
    walked: Counter[str] = Counter()
    syntaxes: set[str] = set()
    mismatches = []
    for path in FILES:
        content = path.read_bytes()
        if not _walks(content):
            continue
        fast, general = _fast(content), _general(content)
        if fast != general:
            mismatches.append(str(path))
            continue
        if not isinstance(fast, tuple):
            walked[str(fast.columns.get("modality"))] += 1  # type: ignore[attr-defined]
            syntaxes.add(fast.transfer_syntax_uid)  # type: ignore[attr-defined]
    assert not mismatches, mismatches[:10]
    assert sum(walked.values()) > 300
    assert {"CT", "MR", "US", "NM", "XA", "SEG"} <= set(walked), walked
    # native Explicit VR Little Endian and the encapsulated syntaxes built on it
    assert {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"} <= syntaxes
    assert len(syntaxes) >= 8


def test_what_the_walker_leaves_still_reads() -> None:
    """Implicit VR, Big Endian and Deflated samples fall back to pydicom: same result."""
    left = 0
    for path in FILES:
        content = path.read_bytes()
        if _walks(content):
            continue
        left += 1
        assert _fast(content) == _general(content), path
    assert left >= 30


def _samples_of(syntax: str, count: int) -> list[Path]:
    return [s.path for s in MANIFEST if s.transfer_syntax_uid == syntax][:count]


@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"]
)
def test_cut_short_anywhere_is_refused_as_pydicom_refuses_it(syntax: str) -> None:
    """A transfer cut at any of 40 points (header, sequences, pixel data) gives the
    general path's failure, never a half-parsed instance."""
    for path in _samples_of(syntax, 3):
        content = path.read_bytes()
        for i in range(1, 41):
            cut = content[: len(content) * i // 41]
            fast = _fast(cut)
            assert fast == _general(cut), (path, len(cut))
            if len(cut) < len(content) - 8:
                assert isinstance(fast, tuple), (path, len(cut))
                assert fast[0] == Status.CANNOT_UNDERSTAND


def test_not_dicom_is_refused() -> None:
    for content in (b"", b"hello", b"\0" * 128 + b"DICM", b"\0" * 128 + b"DICM" + b"\xff" * 64):
        fast = _fast(content)
        assert isinstance(fast, tuple) and fast[0] == Status.CANNOT_UNDERSTAND
        assert fast == _general(content)


def _part10(ds: Dataset, tail: bytes = b"") -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue() + tail


def _base() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jörg"
    ds.PatientID = "W-1"
    ds.Modality = "OT"
    ds.FrameIncrementPointer = [0x00181063, 0x00541330]  # AT, two values
    return ds


def test_constructed_sequences_and_trailing_elements() -> None:
    """Undefined-length sequence and items, nested sequences, AT values, Latin-1
    names, an element after Pixel Data and NUL padding after it: the walker converts all
    of it, and agrees with pydicom."""
    ds = _base()
    inner = Dataset()
    inner.CodeValue = "T-D3000"
    inner.CodingSchemeDesignator = "SRT"
    item = Dataset()
    item.ConceptNameCodeSequence = Sequence([inner])
    item.TextValue = "Ödem"
    ds.ContentSequence = Sequence([item, Dataset()])
    ds.ContentSequence.is_undefined_length = True
    ds.ContentSequence[0].is_undefined_length_sequence_item = True
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(16))
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 8)  # Data Set Trailing Padding after Pixel Data
    content = _part10(ds, tail=b"\0\0\0\0")
    assert _walks(content)
    fast = _fast(content)
    assert fast == _general(content)
    assert fast.metadata["00100010"] == {  # type: ignore[attr-defined]
        "vr": "PN",
        "Value": [{"Alphabetic": "Müller^Jörg"}],
    }
    assert fast.metadata["00280009"]["Value"] == ["00181063", "00541330"]  # type: ignore[attr-defined]
    content_items = fast.metadata["0040A730"]["Value"]  # type: ignore[attr-defined]
    assert content_items[1] == {}
    assert content_items[0]["0040A160"]["Value"] == ["Ödem"]
    assert fast.pixel_data_offset == content.index(bytes(range(16)))  # type: ignore[attr-defined]
    assert "FFFCFFFC" not in fast.metadata  # type: ignore[attr-defined]


def test_pixel_data_element_cut_after_a_complete_header_is_refused() -> None:
    ds = _base()
    ds.add_new(0x7FE00010, "OB", b"\0" * 64)
    content = _part10(ds)[:-10]
    assert not _walks(content)
    fast = _fast(content)
    assert isinstance(fast, tuple) and "truncated" in fast[1]
    assert fast == _general(content)


def test_bulk_data_uris_name_the_instance() -> None:
    """Binary values over the threshold become BulkDataURIs under the instance's own
    base, in items too (PS3.18 §8.6.2)."""
    ds = _base()
    item = Dataset()
    item.add_new(0x00091002, "OB", b"\1" * 2000)
    ds.add_new(0x00090010, "LO", "DICOMHUB TEST")
    ds.add_new(0x00091001, "SQ", Sequence([item]))
    content = _part10(ds)
    fast = _fast(content)
    assert fast == _general(content)
    uri = fast.metadata["00091001"]["Value"][0]["00091002"]["BulkDataURI"]  # type: ignore[attr-defined]
    assert uri.endswith(f"/instances/{ds.SOPInstanceUID}/bulkdata/00091001/0/00091002")


def test_a_large_file_is_walked_from_a_mapping(tmp_path: Path) -> None:
    """Above READ_WHOLE_MAX the file is mapped, not read: same result as from bytes."""
    path = max(
        (s.path for s in MANIFEST if s.transfer_syntax_uid == "1.2.840.10008.1.2.1"),
        key=lambda p: p.stat().st_size,
    )
    assert path.stat().st_size > reader_module.READ_WHOLE_MAX
    content = path.read_bytes()
    assert _walks(content)
    assert DicomFileReader().read(path) == _fast(content)


def test_repeated_element_goes_to_pydicom() -> None:
    """A tag that occurs twice is left to pydicom, which keeps the last value."""
    ds = _base()
    content = _part10(ds)
    # append a second Patient ID at the end of the data set
    extra = struct.pack("<HH2sH", 0x0010, 0x0020, b"LO", 4) + b"W-2 "
    doubled = content + extra
    assert not _walks(doubled)
    assert _fast(doubled) == _general(doubled)


def _walked(buf: bytes, size: int | None = None) -> object:
    try:
        return walker.walk(buf, 1024, size)
    except Exception as exc:  # Fallback, or a value it cannot convert: the general path
        return exc


def test_first_bytes_walk_as_the_whole_or_say_they_are_short() -> None:
    """What came in: every sample's first 1, 2, 4, 16 and 64 KiB (and cuts just before,
    at and after its Pixel Data header), given with the whole object's size, as STOW-RS
    hands the ingest reader a part's first bytes.  The walk gives exactly what walking
    the whole object gives, or raises Short (the file is then read back); never a
    different result, never a silent truncation.  Most images walk from their first
    64 KiB (not encapsulated ones: their fragments are walked to the end); the reader,
    given them, reads what walking the whole gives."""
    from_head = 0
    images = 0
    for path in FILES:
        content = path.read_bytes()
        whole = _walked(content)
        cuts = {1 << 10, 2 << 10, 4 << 10, 16 << 10, 64 << 10}
        if isinstance(whole, walker.Walked) and whole.pixel is not None:
            images += 1
            cuts |= {whole.pixel[1] - 9, whole.pixel[1] - 1, whole.pixel[1], whole.pixel[1] + 1}
        for cut in sorted(c for c in cuts if 0 < c < len(content)):
            got = _walked(content[:cut], len(content))
            if isinstance(got, walker.Short):
                continue
            if isinstance(whole, walker.Walked):
                assert got == whole, (path, cut)
                from_head += cut == 64 << 10
            else:  # the whole object needs the general path: so does its head
                assert isinstance(got, Exception), (path, cut, whole)
        head = content[: 64 << 10]
        if isinstance(whole, walker.Walked) and isinstance(
            _walked(head, len(content)), walker.Walked
        ):  # the reader too: no file is opened
            assert _fast_head(head, len(content)) == _fast(content), path
    assert images > 300
    assert from_head > 50, from_head  # native images over 64 KiB (encapsulated: Short)


def test_first_bytes_short_of_a_value_after_pixel_data() -> None:
    """What came in: an image whose Pixel Data is followed by another element (a Data
    Set Trailing Padding, PS3.5 §7.5); its first bytes up to the Pixel Data value do not
    show what follows, so the walk says Short instead of accepting it."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(64 * 64)
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 16)
    fp = io.BytesIO()
    ds.save_as(fp, enforce_file_format=True)
    content = fp.getvalue()
    whole = _walked(content)
    assert isinstance(whole, walker.Walked) and whole.pixel is not None
    head = content[: whole.pixel[1]]
    assert isinstance(_walked(head, len(content)), walker.Short)
    # cut right after Pixel Data: the trailing element's header is not there either
    assert isinstance(_walked(content[: whole.pixel[1] + 64 * 64 + 4], len(content)), walker.Short)
    assert _walked(content[: whole.pixel[1] + 64 * 64 + 12], len(content)) == whole
