"""Filesystem blob store: opaque keys map to files under a root directory.

Durability (DESIGN §2): an object is written under a temporary name in ``staging/``,
fsynced, renamed into place and its directory fsynced; only then does the index row
commit.  Keys never contain ``..`` and are relative, so a key cannot escape the root.

The fsync of a staged file can start early (:meth:`FileSystemBlobStore.presync`), on a few
threads of the store's own, while the caller parses the object: ``put_file`` then waits
for that fsync instead of issuing its own, so the disk's latency overlaps the CPU work
(and concurrent fsyncs of a request's files share the filesystem's journal commits).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from dicomhub.core.errors import NotFound

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: Threads that fsync staged files ahead of ``put_file`` (per store).
PRESYNC_THREADS = 4
#: Pending early fsyncs kept before finished ones of files never placed are dropped.
_PRESYNC_SWEEP = 256
#: Object directories remembered as existing (then forgotten all at once).
_DIRS_KEPT = 4096
#: Seconds a process stages into one subdirectory of ``staging/`` (staging_dir), and
#: how many it has, in turn (objects stored and soon deleted free their inodes in the
#: groups of several directories, not in the one a new file is created in next).
STAGING_ROTATE = 1.0
STAGING_DIRS = 64
# linux/fs.h: inode flags ioctls (long-sized argument) and the top-directory flag
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


class FileSystemBlobStore:
    """Implements :class:`dicomhub.core.ports.BlobStore` on a local or shared filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.objects = self.root / "objects"
        self._staging = self.root / "staging"
        self.objects.mkdir(parents=True, exist_ok=True)
        self._staging.mkdir(parents=True, exist_ok=True)
        _mark_top_directory(self._staging)
        self._staging_current = self._staging
        self._staging_until = 0.0  # the first staging_dir() makes this process's own
        self._staging_pid = 0
        self._staging_prefix = ""
        self._staging_seq = 0
        self._staging_lock = threading.Lock()
        self._presync_pool: ThreadPoolExecutor | None = None
        self._place_pool: ThreadPoolExecutor | None = None
        self._presynced: dict[Path, Future[None]] = {}
        self._presync_lock = threading.Lock()
        self._objects = str(self.objects)
        #: object directories this process made or found (bounded): a placement into
        #: one skips mkdir; one pruned meanwhile (delete) is made again (_move_in)
        self._dirs: set[str] = set()

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.objects / key

    def staging_dir(self) -> Path:
        """Directory for incoming files, on the same filesystem as the objects: one of
        this process's :data:`STAGING_DIRS` subdirectories of ``staging/``, the next one
        every :data:`STAGING_ROTATE` seconds (round and round).

        Why not ``staging/`` itself: a new file's inode is taken from its directory's
        block group (ext4), so one staging directory puts every object's inode in one
        group, where deleted studies leave thousands of freed inodes that each later
        file creation scans past (on ext4 without a journal, a recently deleted inode is
        skipped only after a buffer lookup: 7-27 % of an HTTP worker's CPU during
        STOW-RS after deletions, measured), and where all workers' creates and renames
        take the same directory lock.  ``staging/`` is marked a top directory
        (``chattr +T``, where the filesystem supports it), so that its subdirectories,
        and with them the objects' inodes, are spread over the block groups.  A
        subdirectory is never removed while the process runs (a caller may still be
        about to create a file in one it was given); :meth:`clear_staging` removes them
        at start-up."""
        now = time.monotonic()
        if now >= self._staging_until or self._staging_pid != os.getpid():
            self._next_staging_dir(now)
        return self._staging_current

    def _next_staging_dir(self, now: float) -> None:
        with self._staging_lock:
            pid = os.getpid()
            if now < self._staging_until and self._staging_pid == pid:
                return  # another thread moved on meanwhile
            if self._staging_pid != pid:  # this process's first (a forked child's too)
                self._staging_pid, self._staging_seq = pid, 0
                self._staging_prefix = f"{pid:x}-{secrets.token_hex(4)}-"
            current = self._staging / f"{self._staging_prefix}{self._staging_seq % STAGING_DIRS}"
            self._staging_seq += 1
            self._staging_until = now + STAGING_ROTATE
            try:
                current.mkdir(exist_ok=True)
            except OSError as exc:
                # staging cannot take a directory now (full disk, gone): files staged
                # meanwhile fail where they are created, with the reason (STOW-RS 507,
                # C-STORE 0xA700); the next turn tries again
                log.warning("cannot make a staging directory %s: %s", current, exc)
                return
            self._staging_current = current

    def clear_staging(self) -> int:
        """Remove the files a stopped server left in staging (and the emptied staging
        directories); how many files."""
        removed = 0
        for leftover in [*self._staging.glob("*.part"), *self._staging.glob("*/*.part")]:
            with contextlib.suppress(OSError):
                leftover.unlink()
                removed += 1
        for directory in self._staging.iterdir():
            if directory.is_dir() and directory != self._staging_current:
                with contextlib.suppress(OSError):
                    directory.rmdir()
        return removed

    def presync(self, source: Path) -> None:
        """Start the fsync of the staged file ``source`` in the background; the
        ``put_file``/``put_files`` that places it waits for it (and fails with its error)."""
        with self._presync_lock:
            if self._presync_pool is None:
                self._presync_pool = ThreadPoolExecutor(
                    PRESYNC_THREADS, thread_name_prefix="blob-fsync"
                )
            if len(self._presynced) >= _PRESYNC_SWEEP:  # files removed without being placed
                for path in [p for p, f in self._presynced.items() if f.done()]:
                    del self._presynced[path]
            # RuntimeError: the interpreter is exiting; put_file then syncs the file itself
            with contextlib.suppress(RuntimeError):
                self._presynced[source] = self._presync_pool.submit(_fsync, source)

    def close(self) -> None:
        """Wait for the early fsyncs and placements still running and stop their threads."""
        with self._presync_lock:
            pools = (self._place_pool, self._presync_pool)
            self._place_pool = self._presync_pool = None
            self._presynced.clear()
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=True)

    def put_file(self, key: str, source: Path, *, fsync: bool = True) -> None:
        """Move ``source`` into place durably: fsync file, rename, fsync directory."""
        directory = self._move_in(key, source, fsync)
        if fsync:
            _fsync(directory)

    def put_file_async(self, key: str, source: Path, *, fsync: bool = True) -> Future[None]:
        """:meth:`put_file` on threads of the store's own (not those of :meth:`presync`,
        whose fsync a placement may wait for)."""
        with self._presync_lock:
            if self._place_pool is None:
                self._place_pool = ThreadPoolExecutor(
                    PRESYNC_THREADS, thread_name_prefix="blob-place"
                )
            pool = self._place_pool
        try:
            return pool.submit(self.put_file, key, source, fsync=fsync)
        except RuntimeError:  # the interpreter is exiting: place it here and now
            done: Future[None] = Future()
            try:
                self.put_file(key, source, fsync=fsync)
            except OSError as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)
            return done

    def put_files(
        self, items: Sequence[tuple[str, Path]], *, fsync: bool = True
    ) -> list[OSError | None]:
        """:meth:`put_file` for many objects, each directory fsynced once (group commit).

        Every file is fsynced and renamed into place, then each directory that received
        files is fsynced once: the objects are durable when this returns.  The result
        holds, per item, ``None`` or the error that kept it from being stored (its
        source is then left in staging for the caller to remove).
        """
        errors: list[OSError | None] = []
        dirs: dict[str, list[int]] = {}
        for i, (key, source) in enumerate(items):
            try:
                directory = self._move_in(key, source, fsync)
            except OSError as exc:
                errors.append(exc)
                continue
            errors.append(None)
            dirs.setdefault(directory, []).append(i)
        if fsync:
            for directory, moved in dirs.items():
                try:
                    _fsync(directory)
                except OSError as exc:  # not durable: report every object of the directory
                    for i in moved:
                        errors[i] = exc
        return errors

    def _move_in(self, key: str, source: Path, fsync: bool) -> str:
        """fsync ``source`` (if asked) and rename it to ``key``'s path; that path's
        directory.  Paths as strings and known directories not made again: this runs
        for every stored object (C-STORE: on the association's critical path)."""
        _check_key(key)
        target = f"{self._objects}/{key}"
        directory = target.rpartition("/")[0]
        if directory not in self._dirs:
            self._make_dir(directory)
        with self._presync_lock:
            early = self._presynced.pop(source, None)
        if early is not None:
            early.result()  # its OSError is ours
        elif fsync:
            _fsync(source)
        try:
            os.replace(source, target)
        except FileNotFoundError:
            if not os.path.exists(source):
                raise
            # the directory was pruned meanwhile (its last object deleted, perhaps by
            # another process): made again
            self._make_dir(directory)
            os.replace(source, target)
        return directory

    def _make_dir(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        if len(self._dirs) >= _DIRS_KEPT:
            self._dirs.clear()
        self._dirs.add(directory)

    def open(self, key: str) -> Iterator[bytes]:
        """Stream the object in 1 MiB chunks."""
        path = self._path(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise NotFound(f"object {key} is missing from storage") from None

        def _gen() -> Iterator[bytes]:
            with fh:
                while chunk := fh.read(CHUNK):
                    yield chunk

        return _gen()

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``."""
        with open(self._path(key), "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def local_path(self, key: str) -> Path:
        """The object's own file."""
        path = self._path(key)
        if not path.exists():
            raise NotFound(f"object {key} is missing from storage")
        return path

    def delete(self, key: str) -> None:
        """Remove the object and prune empty parent directories."""
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        parent = path.parent
        while parent != self.objects:
            try:
                parent.rmdir()
            except OSError:
                break
            self._dirs.discard(str(parent))
            parent = parent.parent

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        return self._path(key).exists()

    def size(self, key: str) -> int:
        """Size in bytes."""
        return self._path(key).stat().st_size


def _mark_top_directory(path: Path) -> None:
    """Set ext4's top-directory flag on ``path`` (``chattr +T``: its subdirectories are
    spread over the block groups by the Orlov allocator); a hint, so nothing happens
    where the filesystem or platform has no such flag."""
    if not sys.platform.startswith("linux"):
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        flags = array.array("l", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & _FS_TOPDIR_FL:
            flags[0] |= _FS_TOPDIR_FL
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags, True)
    except OSError:
        pass  # tmpfs, xfs, btrfs...: no such flag, nothing to do
    finally:
        os.close(fd)


def _check_key(key: str) -> None:
    """A key is relative and never climbs out of the root."""
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"invalid storage key {key!r}")


def _fsync(path: str | Path) -> None:
    """fsync a file or a directory (a directory: the names in it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
