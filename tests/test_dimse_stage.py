"""How a received C-STORE data set is staged (dicomhub.dimse.handlers._write_all).

What came in: the Part 10 header and the P-DATA fragments of a data set as received —
bytes, memoryviews of a PDU buffer, empty fragments, more fragments than one writev(2)
takes (IOV_MAX) — written whole, and again with a writev that writes at most 1000 bytes
per call (a short write, resumed where it stopped).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dicomhub.dimse import handlers


def _parts() -> list[Any]:
    pdu = bytearray(os.urandom(300_000))
    view = memoryview(pdu)
    parts: list[Any] = [b"\x00" * 128 + b"DICM", view[:100_000], b"", view[100_000:250_000]]
    parts += [bytes([i % 256]) * (i % 7) for i in range(2 * handlers._IOV_MAX + 5)]  # many small
    parts.append(view[250_000:])
    return parts


def _write(path: Path, parts: list[Any]) -> bytes:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        handlers._write_all(fd, parts)
    finally:
        os.close(fd)
    return path.read_bytes()


def test_fragments_are_written_in_order(tmp_path: Path) -> None:
    parts = _parts()
    assert _write(tmp_path / "a.part", parts) == b"".join(bytes(p) for p in parts)


def test_a_short_write_is_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.writev

    def short(fd: int, buffers: list[Any]) -> int:
        assert len(buffers) <= handlers._IOV_MAX
        calls.append(len(buffers))
        head = b"".join(bytes(b) for b in buffers)[:1000]
        return real(fd, [head])

    monkeypatch.setattr(handlers.os, "writev", short)
    parts = _parts()
    assert _write(tmp_path / "b.part", parts) == b"".join(bytes(p) for p in parts)
    assert len(calls) > 300  # ~560 kB in 1000-byte writes


def test_a_writev_that_writes_nothing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers.os, "writev", lambda fd, buffers: 0)
    with pytest.raises(OSError, match="wrote nothing"):
        _write(tmp_path / "c.part", [b"abc"])
