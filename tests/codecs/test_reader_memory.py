"""The ingest reader and the pixel digest give the same answer from a file's bytes in
memory (how C-STORE parses what it received) as from the file (PS3.10 §7, PS3.5 §7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import MANIFEST, Sample
from dicomhub.codecs.pixels import PydicomPixelCodec
from dicomhub.codecs.reader import DicomFileReader
from dicomhub.core.errors import StoreFailure
from dicomhub.core.model import Status


def _one_per_kind() -> list[Sample]:
    """One sample per (modality, transfer syntax, bits), below 64 MB."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for s in MANIFEST:
        kind = (s.modality, s.transfer_syntax_uid, s.bits_allocated)
        if kind in seen or s.path.stat().st_size > 64 << 20:
            continue
        seen.add(kind)
        out.append(s)
    return out


SAMPLES = _one_per_kind()


def _read(path: Path, content: bytes | None) -> object:
    try:
        return DicomFileReader().read(path, content)
    except StoreFailure as exc:
        return (exc.status, str(exc))


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.id)
def test_memory_and_file_parse_alike(sample: Sample, tmp_path: Path) -> None:
    """Same UIDs, index columns, DICOM JSON and Pixel Data offset; same pixel digest."""
    content = sample.path.read_bytes()
    from_file = _read(sample.path, None)
    # the path passed with content is never opened: a name that does not exist proves it
    from_memory = _read(tmp_path / "not-written.part", content)
    assert from_memory == from_file
    if isinstance(from_file, tuple):
        return
    codec = PydicomPixelCodec()
    assert codec.pixel_digest(sample.path, from_file, content) == codec.pixel_digest(  # type: ignore[arg-type]
        sample.path,
        from_file,  # type: ignore[arg-type]
    )


def test_kinds_covered() -> None:
    """The comparison above covers several modalities and transfer syntaxes."""
    assert len({s.modality for s in SAMPLES}) >= 5
    assert len({s.transfer_syntax_uid for s in SAMPLES}) >= 5


@pytest.mark.parametrize("cut", [200, 0.5, -3])
def test_truncated_bytes_are_refused(cut: float, tmp_path: Path) -> None:
    """A data set cut short in memory (header, middle of Pixel Data, last bytes): 0xC000."""
    sample = next(s for s in MANIFEST if s.transfer_syntax_uid == "1.2.840.10008.1.2.1")
    content = sample.path.read_bytes()
    end = int(len(content) * cut) if isinstance(cut, float) else cut
    with pytest.raises(StoreFailure) as info:
        DicomFileReader().read(tmp_path / "x.part", content[:end])
    assert info.value.status == Status.CANNOT_UNDERSTAND


def test_not_dicom_bytes_are_refused(tmp_path: Path) -> None:
    """A PNG's bytes sent as a data set: 0xC000, no DICM preamble."""
    with pytest.raises(StoreFailure) as info:
        DicomFileReader().read(tmp_path / "x.part", b"\x89PNG\r\n\x1a\n" + b"\x00" * 400)
    assert info.value.status == Status.CANNOT_UNDERSTAND


def test_deflated_data_set_has_pixel_data_without_an_offset() -> None:
    """In: a Deflated Explicit VR Little Endian file (PS3.5 §A.5) with Pixel Data: the
    reader finds the Pixel Data in the inflated stream (BulkDataURI in the metadata,
    pixel digest computed at ingest) but gives no offset into the deflated file."""
    sample = next(s for s in MANIFEST if s.transfer_syntax_uid == "1.2.840.10008.1.2.1.99")
    parsed = DicomFileReader().read(sample.path)
    assert parsed.has_pixel_data
    assert parsed.pixel_data_offset is None
    assert "BulkDataURI" in parsed.metadata["7FE00010"]
    digest, _ = PydicomPixelCodec().pixel_digest(sample.path, parsed)
    assert digest is not None


def test_large_inflated_data_set_is_walked_from_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """In: the deflated sample with the in-memory limit for its inflated data set at 0
    bytes (as for a large one): it is walked from a temporary file, same findings; and
    cut in half it is refused as truncated."""
    from dicomhub.codecs import reader

    sample = next(s for s in MANIFEST if s.transfer_syntax_uid == "1.2.840.10008.1.2.1.99")
    in_memory = DicomFileReader().read(sample.path)
    monkeypatch.setattr(reader, "INFLATED_IN_MEMORY_MAX", 0)
    assert DicomFileReader().read(sample.path) == in_memory
    content = sample.path.read_bytes()
    with pytest.raises(StoreFailure) as info:
        DicomFileReader().read(sample.path, content[: len(content) // 2])
    assert info.value.status == Status.CANNOT_UNDERSTAND
