"""The filesystem blob store: durable moves, streaming and range reads, safe keys."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dicomhub.core.errors import NotFound
from dicomhub.storage import filesystem
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


def test_presynced_files_are_placed_after_their_early_fsync(tmp_path: Path) -> None:
    """presync starts the fsync on the store's threads; put_file / put_files wait for it
    and place the exact bytes (what came in: 40 staged files of distinct content)."""
    store = FileSystemBlobStore(tmp_path)
    try:
        files = []
        for i in range(40):
            path = store.staging_dir() / f"{i}.part"
            path.write_bytes(bytes([i]) * (1000 + i))
            store.presync(path)
            files.append(path)
        store.put_file("single/0.dcm", files[0])
        errors = store.put_files([(f"group/{i}.dcm", p) for i, p in enumerate(files) if i])
        assert errors == [None] * 39
        assert store.local_path("single/0.dcm").read_bytes() == bytes([0]) * 1000
        for i in range(1, 40):
            assert store.local_path(f"group/{i}.dcm").read_bytes() == bytes([i]) * (1000 + i)
        assert not store._presynced  # every early fsync was consumed by its placement
    finally:
        store.close()


def test_a_failed_early_fsync_fails_the_placement(tmp_path: Path) -> None:
    """What came in: presync of a staged file that was not there yet (its fsync fails);
    the put_file of it reports that error instead of claiming durability."""
    store = FileSystemBlobStore(tmp_path)
    try:
        path = store.staging_dir() / "late.part"
        store.presync(path)
        store._presynced[path].exception(timeout=10)  # the fsync has failed by now
        path.write_bytes(b"late")
        with pytest.raises(FileNotFoundError):
            store.put_file("late.dcm", path)
        assert not store.exists("late.dcm")
    finally:
        store.close()


def test_early_fsyncs_of_files_never_placed_do_not_pile_up(tmp_path: Path) -> None:
    """Files that fail validation are removed without being placed: their finished early
    fsyncs are dropped once enough have gathered (what came in: 600 such files)."""
    store = FileSystemBlobStore(tmp_path)
    try:
        for i in range(600):
            path = store.staging_dir() / f"bad{i}.part"
            path.write_bytes(b"x")
            store.presync(path)
            store._presynced[path].result(timeout=10)
            path.unlink()
        assert len(store._presynced) <= 256
    finally:
        store.close()


def test_put_file_async_places_durably_or_reports_the_error(tmp_path: Path) -> None:
    """What came in: 20 presynced staged files placed through put_file_async (exact bytes
    under their keys, staging emptied), then one whose key's directory cannot be created
    (a plain file stands in its way): its future fails with that OSError and nothing is
    placed."""
    store = FileSystemBlobStore(tmp_path)
    try:
        futures = []
        for i in range(20):
            path = store.staging_dir() / f"{i}.part"
            path.write_bytes(bytes([i]) * (5000 + i))
            store.presync(path)
            futures.append(store.put_file_async(f"async/{i % 3}/{i}.dcm", path))
        for future in futures:
            assert future.result(timeout=30) is None
        for i in range(20):
            got = store.local_path(f"async/{i % 3}/{i}.dcm").read_bytes()
            assert got == bytes([i]) * (5000 + i)
        assert list(store.staging_dir().iterdir()) == []
        (tmp_path / "objects" / "blocked").write_bytes(b"a file, not a directory")
        failing = store.put_file_async("blocked/x.dcm", staged(store, b"y"))
        with pytest.raises(OSError):
            failing.result(timeout=30)
        assert not store.exists("blocked/x.dcm")
    finally:
        store.close()


def test_a_directory_pruned_by_another_process_is_made_again(tmp_path: Path) -> None:
    """What came in: store A placed an object in a directory (and remembers it); store B
    on the same root (another worker process) deleted that object, pruning the now empty
    directory; A then places another object there — it is stored, not lost."""
    a, b = FileSystemBlobStore(tmp_path), FileSystemBlobStore(tmp_path)
    a.put_file("1/ab/study/series/first.dcm", staged(a, b"first"))
    b.delete("1/ab/study/series/first.dcm")
    assert not (tmp_path / "objects" / "1").exists()
    a.put_file("1/ab/study/series/second.dcm", staged(a, b"second"))
    assert a.local_path("1/ab/study/series/second.dcm").read_bytes() == b"second"
    # and the same store's own delete forgets the directories it pruned
    a.delete("1/ab/study/series/second.dcm")
    assert a.put_files([("1/ab/study/series/third.dcm", staged(a, b"third"))]) == [None]
    assert b.local_path("1/ab/study/series/third.dcm").read_bytes() == b"third"


def test_placing_a_staged_file_that_is_gone_fails(tmp_path: Path) -> None:
    """What came in: a placement of a staged file that does not exist (removed before it
    was placed): the error is reported, no directory retry hides it."""
    store = FileSystemBlobStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        store.put_file("1/ab/s/se/gone.dcm", store.staging_dir() / "gone.part", fsync=False)
    errors = store.put_files([("1/ab/s/se/gone.dcm", store.staging_dir() / "gone.part")])
    assert isinstance(errors[0], FileNotFoundError)


def test_each_process_stages_in_subdirectories_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What came in: files staged and placed over several staging periods (the store's
    period shortened to 0 s, its ring to 3 directories), one file still staged when its
    directory's period ended, a directory handed out and used only after later turns, a
    leftover of a stopped server in an old subdirectory.  Each period has its own
    subdirectory of staging/ (named after the process), used again after the ring's
    turn; none is removed while the store runs (one handed out stays usable);
    clear_staging removes the leftover and the directories."""
    monkeypatch.setattr(filesystem, "STAGING_DIRS", 3)
    store = FileSystemBlobStore(tmp_path)
    staging = tmp_path / "staging"
    store._staging_until = 0.0
    first = store.staging_dir()
    assert first.parent == staging and first.name.startswith(f"{os.getpid():x}-")
    (first / "a.part").write_bytes(b"a")
    store.put_file("k/a.dcm", first / "a.part", fsync=False)
    pending = first / "b.part"
    pending.write_bytes(b"b")  # not placed yet when the period ends
    store._staging_until = 0.0
    second = store.staging_dir()
    assert second != first and second.parent == staging
    assert store.staging_dir() == second  # within its period: the same directory
    store._staging_until = 0.0
    third = store.staging_dir()
    assert len({first, second, third}) == 3
    (second / "late.part").write_bytes(b"late")  # given out two turns ago: still there
    store.put_file("k/late.dcm", second / "late.part", fsync=False)
    store.put_file("k/b.dcm", pending, fsync=False)
    store._staging_until = 0.0
    assert store.staging_dir() == first  # the ring's turn
    assert sorted(p.name for p in staging.iterdir()) == sorted(
        d.name for d in (first, second, third)
    )
    leftover = staging / "old-subdir" / "cut-short.part"
    leftover.parent.mkdir()
    leftover.write_bytes(b"partial")
    assert store.clear_staging() == 1
    assert not leftover.parent.exists()
    assert store.local_path("k/b.dcm").read_bytes() == b"b"
    assert store.local_path("k/late.dcm").read_bytes() == b"late"


def test_staging_is_marked_a_top_directory_where_the_filesystem_can(tmp_path: Path) -> None:
    """What came in: a store on this machine's filesystem.  Where ext4's flags are
    supported (lsattr works), staging/ carries the top-directory flag (T), so its
    subdirectories are spread over the block groups."""
    FileSystemBlobStore(tmp_path)
    out = subprocess.run(["lsattr", "-d", str(tmp_path / "staging")], capture_output=True)
    if out.returncode != 0:
        pytest.skip(f"no inode flags on this filesystem: {out.stderr.decode().strip()}")
    flags = out.stdout.split()[0].decode()
    assert "T" in flags, flags
