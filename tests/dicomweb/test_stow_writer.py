"""The STOW-RS writer (dicomweb/stow.py ``_Writer``): staging files created, written and
hashed on a worker thread in the order the body arrived, bounded memory, failures kept
for the event loop and nothing left in staging when a request is abandoned.

Real threads, real files in a temporary staging directory, a real event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dicomhub.core.errors import InsufficientStorage
from dicomhub.dicomweb import stow
from dicomhub.dicomweb.multipart import closing, part_header
from dicomhub.dicomweb.stow import WRITE_AHEAD, _Part, _Writer

DICOM = "application/dicom"


def _chunks(data: bytes, size: int) -> list[memoryview]:
    view = memoryview(data)
    return [view[i : i + size] for i in range(0, len(data), size)]


async def _write_parts(writer: _Writer, staging: Path, bodies: list[bytes]) -> list[_Part]:
    parts = []
    for body in bodies:
        part = _Part(staging, DICOM, {})
        parts.append(part)
        writer.submit(part.open)
        for chunk in _chunks(body, 65_537):
            part.size += len(chunk)
            writer.submit(lambda p=part, c=chunk: p.write(c), len(chunk))
        writer.submit(part.close)
    await writer.wait()
    return parts


def test_parts_are_written_and_hashed_in_order(tmp_path: Path) -> None:
    """Three parts of 1 MB, 1 byte and 0 bytes, sent in 64 KiB views: each file holds
    exactly its bytes and the part's SHA-256 is the file's."""
    bodies = [os.urandom(1 << 20), b"\x01", b""]
    with ThreadPoolExecutor(2) as pool:

        async def main() -> list[_Part]:
            return await _write_parts(_Writer(pool, asyncio.get_running_loop()), tmp_path, bodies)

        parts = asyncio.run(main())
    for part, body in zip(parts, bodies, strict=True):
        assert part.path is not None and Path(part.path).read_bytes() == body
        assert part.size == len(body)
        assert part.hasher.hexdigest() == hashlib.sha256(body).hexdigest()
        assert part.fd is None  # closed


def test_wait_bounds_what_is_pending(tmp_path: Path) -> None:
    """A writer held by a slow disk (a job blocked on an event): 3 MB wait; ``wait(1 MB)``
    returns only once the writer is down to 1 MB, and ``wait()`` once it is done."""
    gate = threading.Event()
    done: list[int] = []
    with ThreadPoolExecutor(1) as pool:

        async def main() -> None:
            writer = _Writer(pool, asyncio.get_running_loop())
            writer.submit(gate.wait)
            for i in range(3):
                writer.submit(lambda i=i: done.append(i), 1 << 20)
            assert writer.pending() == 1 + (3 << 20)
            waiting = asyncio.create_task(writer.wait(1 << 20))
            await asyncio.sleep(0.05)
            assert not waiting.done()  # still 3 MB behind the blocked job
            gate.set()
            await waiting
            assert writer.pending() <= 1 << 20
            assert len(done) >= 2
            await writer.wait()
            assert writer.pending() == 0 and done == [0, 1, 2]

        asyncio.run(main())


def test_a_failed_job_is_raised_and_the_rest_skipped(tmp_path: Path) -> None:
    """A staging directory that has gone (the disk was unmounted): creating the file
    fails, ``wait`` raises it as InsufficientStorage (507) — also a wait for the body's
    bound in the middle of a request — the part's writes are skipped, a job marked
    ``always`` still runs."""
    missing = tmp_path / "gone"
    ran: list[str] = []
    with ThreadPoolExecutor(2) as pool:

        async def main() -> None:
            writer = _Writer(pool, asyncio.get_running_loop())
            part = _Part(missing, DICOM, {})
            writer.submit(part.open)
            writer.submit(lambda: ran.append("write"), 10)
            writer.submit(lambda: ran.append("always"), always=True)
            for limit in (0, WRITE_AHEAD // 2):
                with pytest.raises(InsufficientStorage, match="staging") as caught:
                    await writer.wait(limit)
                assert isinstance(caught.value.__cause__, FileNotFoundError)

        asyncio.run(main())
    assert ran == ["always"]
    assert not missing.exists()


def test_abandon_removes_every_staged_file_after_the_running_write(tmp_path: Path) -> None:
    """A request that fails while its writer is busy (a write blocked mid-way): after
    ``abandon`` the queued writes are skipped, and once the blocked write ends every file
    of the request, open or closed, is removed."""
    gate = threading.Event()
    with ThreadPoolExecutor(2) as pool:

        async def main() -> None:
            writer = _Writer(pool, asyncio.get_running_loop())
            first = _Part(tmp_path, DICOM, {})
            second = _Part(tmp_path, DICOM, {})
            for part in (first, second):
                writer.submit(part.open)
                writer.submit(lambda p=part: p.write(b"x" * 1000), 1000)
            writer.submit(gate.wait)  # the disk stalls here
            writer.submit(lambda: second.write(b"never written"), 13)
            await asyncio.sleep(0.05)
            assert len(list(tmp_path.iterdir())) == 2
            writer.abandon([first, second])
            gate.set()
            with pytest.raises(Exception, match="abandoned"):
                await writer.wait()
            assert first.fd is None and second.fd is None

        asyncio.run(main())
    assert list(tmp_path.iterdir()) == []


def test_other_parts_are_not_staged(tmp_path: Path) -> None:
    """A part that is not application/dicom gets no staging file."""
    part = _Part(tmp_path, "text/plain", {})
    assert not part.accepted and part.path is None
    part.open()
    part.write(b"ignored")
    part.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_large_upload_does_not_hold_the_thread(tmp_path: Path) -> None:
    """Two requests share one writer thread: one has 24 MiB queued behind a slow disk
    (1 MiB jobs of 5 ms), the other one small job queued just after.  The small one runs
    after at most WRITE_AHEAD bytes of the large one, not after all of it."""
    order: list[str] = []
    with ThreadPoolExecutor(1) as pool:

        async def main() -> None:
            loop = asyncio.get_running_loop()
            large, small = _Writer(pool, loop), _Writer(pool, loop)

            def slow(i: int) -> None:
                time.sleep(0.005)
                order.append(f"large-{i}")

            for i in range(24):
                large.submit(lambda i=i: slow(i), 1 << 20)
            small.submit(lambda: order.append("small"), 100)
            await small.wait()
            await large.wait()

        asyncio.run(main())
    assert len(order) == 25
    assert order.index("small") <= WRITE_AHEAD >> 20


def test_jobs_still_run_when_the_pool_has_stopped(tmp_path: Path) -> None:
    """The server is stopping (its writer pool shut down) while a body arrives: the jobs
    run on the caller's thread, so the part is written, or removed when abandoned."""
    pool = ThreadPoolExecutor(1)
    pool.shutdown()

    async def main() -> tuple[_Part, _Part]:
        writer = _Writer(pool, asyncio.get_running_loop())
        kept = (await _write_parts(writer, tmp_path, [b"kept"]))[0]
        other = _Writer(pool, asyncio.get_running_loop())
        dropped = _Part(tmp_path, DICOM, {})
        other.submit(dropped.open)
        other.submit(lambda: dropped.write(b"dropped"), 7)
        other.abandon([dropped])
        return kept, dropped

    kept, dropped = asyncio.run(main())
    assert kept.path is not None and Path(kept.path).read_bytes() == b"kept"
    assert dropped.path is not None and not Path(dropped.path).exists()


class _Body:
    """What ``_receive`` reads of a request: its headers and its body in chunks."""

    def __init__(self, parts: list[bytes], chunk: int) -> None:
        boundary = "test-boundary-0123"
        data = b"".join(part_header(boundary, DICOM) + p + b"\r\n" for p in parts)
        data += closing(boundary)
        self.headers = {"content-type": f"multipart/related; boundary={boundary}"}
        self._chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]

    async def stream(self):  # type: ignore[no-untyped-def]
        for c in self._chunks:
            yield c


@pytest.mark.parametrize("chunk", [100, 4099, 256_000])
def test_received_parts_keep_their_first_bytes_within_a_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """What came in: a body of 12 parts (40 KiB, 1 byte, 0 bytes, 100 KiB, ...) in
    chunks of 100 B, 4 KiB and 250 kB.  Each part keeps its first HEAD_BYTES for the
    ingest reader (the whole part when smaller), exactly its bytes, and a request keeps
    at most HEAD_BUDGET of them: the parts after that keep none (read back from their
    files), while every staged file holds its whole part."""
    monkeypatch.setattr(stow, "HEAD_BUDGET", 5 * stow.HEAD_BYTES // 2)
    bodies = [os.urandom(n) for n in (40_000, 1, 0, 100_000, 5_000, 70_000)] * 2
    with ThreadPoolExecutor(2) as pool:

        async def main() -> list[_Part]:
            return await stow._receive(_Body(bodies, chunk), tmp_path, 1 << 30, pool)  # type: ignore[arg-type]

        parts = asyncio.run(main())
    assert [Path(p.path).read_bytes() for p in parts if p.path] == bodies
    heads = [p.head or b"" for p in parts]
    kept = 0
    for head, body in zip(heads, bodies, strict=True):
        assert body.startswith(head)
        assert len(head) <= stow.HEAD_BYTES
        kept += len(head)
    assert kept <= stow.HEAD_BUDGET
    # the first parts get their whole room (a part's unused room goes back to the budget)
    assert heads[0] == bodies[0][: stow.HEAD_BYTES] and heads[1] == bodies[1]
    assert heads[3] == bodies[3][: stow.HEAD_BYTES]
    assert not heads[-1]  # the budget is spent by then


@pytest.mark.skipif(stow._SYNC_FILE_RANGE is None, reason="sync_file_range(2) is Linux's")
def test_a_part_starts_its_writeback_when_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What came in: a 3 MB part on a server with fsync on (writeback), and one with it
    off.  At close the first part's file is handed to the disk — the real
    sync_file_range(2) is called once on its descriptor, for the whole file, without
    waiting, and succeeds — before the descriptor is closed; the file is whole and its
    hash right.  Without fsync nothing is started."""
    real = stow._SYNC_FILE_RANGE
    assert real is not None
    calls: list[tuple[int, int, int, int, int]] = []

    def recorded(fd: int, offset: int, nbytes: int, flags: int) -> int:
        result = real(fd, offset, nbytes, flags)  # fails (-1) on a closed descriptor
        calls.append((fd, offset, nbytes, flags, result))
        return result

    monkeypatch.setattr(stow, "_SYNC_FILE_RANGE", recorded)
    body = os.urandom(3 << 20)
    part = _Part(tmp_path, DICOM, {}, writeback=True)
    part.open()
    fd = part.fd
    part.write(body)
    part.close()
    assert calls == [(fd, 0, 0, stow.SYNC_FILE_RANGE_WRITE, 0)]
    assert part.fd is None and Path(str(part.path)).read_bytes() == body
    assert part.hasher.hexdigest() == hashlib.sha256(body).hexdigest()

    plain = _Part(tmp_path, DICOM, {})
    assert not plain.writeback
    plain.open()
    plain.write(body)
    plain.close()
    assert len(calls) == 1
