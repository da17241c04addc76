"""Client building blocks without a server: the streaming multipart reader, batching, and
the reading of STOW-RS responses (PS3.18 §10.5.3).

What came in: multipart bodies cut into chunks at every possible boundary position,
truncated bodies, bodies with preamble and transport padding; file lists of mixed sizes;
STOW-RS response documents with referenced and failed instances.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from dicomhub.client.multipart import boundary_of, iter_parts
from dicomhub.client.sdk import _batches, _stow_outcome, _warnings


def _body(parts: list[bytes], boundary: str = "b0undary") -> bytes:
    out = b"preamble to ignore\r\n"
    for p in parts:
        out += f"--{boundary}  \r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
    return out + f"--{boundary}--\r\nepilogue".encode()


PARTS = [b"A" * 10, b"", b"\r\n--b0undar not quite\r\n" * 3, bytes(range(256)) * 40]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1000, 1 << 20])
def test_iter_parts_at_every_chunking(tmp_path: Path, chunk: int) -> None:
    """The same four parts (one empty, one containing look-alike delimiters) come out
    byte-exact whatever the chunk size, headers parsed, spool files written."""
    body = _body(PARTS)
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    got = list(iter_parts(chunks, "b0undary", tmp_path))
    assert [p.path.read_bytes() for p in got] == PARTS
    assert all(p.content_type == "application/dicom" for p in got)
    assert [p.size for p in got] == [len(p) for p in PARTS]


def test_iter_parts_truncated_body_is_an_error(tmp_path: Path) -> None:
    """A body that ends inside a part raises ValueError and leaves no spool file."""
    body = _body(PARTS)[:-200]
    with pytest.raises(ValueError, match="ended inside a part"):
        list(iter_parts([body], "b0undary", tmp_path))
    assert len(list(tmp_path.iterdir())) == 3  # the three complete parts only


def test_boundary_of() -> None:
    assert boundary_of('multipart/related; type="application/dicom"; boundary="x y"') == "x y"
    with pytest.raises(ValueError):
        boundary_of("multipart/related")


def test_batches_bounded_by_count_and_bytes(tmp_path: Path) -> None:
    """Files of 10, 10, 30, 100, 5 bytes, at most 3 per batch and 40 bytes: a file larger
    than the byte bound goes alone; order is kept."""
    files = []
    for i, size in enumerate((10, 10, 30, 100, 5)):
        f = tmp_path / f"{i}.dcm"
        f.write_bytes(b"x" * size)
        files.append(f)
    groups = _batches(files, 3, 40)
    assert [[p.name for p in g] for g in groups] == [
        ["0.dcm", "1.dcm"],
        ["2.dcm"],
        ["3.dcm"],
        ["4.dcm"],
    ]
    assert sum(len(g) for g in _batches(files, 2, 10**6)) == 5


def test_stow_outcome_and_warning_reasons() -> None:
    """A 202 STOW-RS response with one referenced and one failed instance (0xA900) and
    dicomhub's Warning header: stored set, failure code with its meaning and the text."""
    doc = {
        "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}}]},
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081155": {"vr": "UI", "Value": ["1.2.4"]},
                    "00081197": {"vr": "US", "Value": [0xA900]},
                }
            ],
        },
    }
    r = httpx.Response(202, json=doc)
    stored, failed = _stow_outcome(r)
    assert stored == {"1.2.3"}
    assert failed["1.2.4"].startswith("failure 0xA900 (data set does not match SOP class")
    header = '299 dicomhub "1.2.4: StudyInstanceUID 9 does not match", 299 dicomhub "x: y"'
    assert _warnings(header) == {"1.2.4": "StudyInstanceUID 9 does not match", "x": "y"}
