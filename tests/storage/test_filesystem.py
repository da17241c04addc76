"""The filesystem blob store: durable moves, streaming and range reads, safe keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomhub.core.errors import NotFound
from dicomhub.storage.filesystem import FileSystemBlobStore


def staged(store: FileSystemBlobStore, data: bytes) -> Path:
    path = store.staging_dir() / "x.part"
    path.write_bytes(data)
    return path


def test_put_open_range_delete(tmp_path: Path) -> None:
    store = FileSystemBlobStore(tmp_path)
    data = bytes(range(256)) * 10000  # 2.5 MB: several 1 MiB chunks
    src = staged(store, data)
    store.put_file("ab/study/series/sop.dcm", src, fsync=True)
    assert not src.exists()  # consumed
    assert store.exists("ab/study/series/sop.dcm")
    chunks = list(store.open("ab/study/series/sop.dcm"))
    assert len(chunks) == 3 and b"".join(chunks) == data
    assert store.read_range("ab/study/series/sop.dcm", 1000, 10) == data[1000:1010]
    assert store.local_path("ab/study/series/sop.dcm").read_bytes() == data
    store.delete("ab/study/series/sop.dcm")
    assert not store.exists("ab/study/series/sop.dcm")
    assert not (tmp_path / "objects" / "ab").exists()  # empty parents pruned
    store.delete("ab/study/series/sop.dcm")  # deleting twice is fine


def test_missing_objects_are_not_found(tmp_path: Path) -> None:
    store = FileSystemBlobStore(tmp_path)
    with pytest.raises(NotFound):
        store.open("nope.dcm")
    with pytest.raises(NotFound):
        store.local_path("nope.dcm")


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside", "a/../../b"])
def test_keys_cannot_escape_the_root(tmp_path: Path, key: str) -> None:
    store = FileSystemBlobStore(tmp_path / "root")
    with pytest.raises(ValueError):
        store.put_file(key, staged(store, b"x"))
