"""STOW-RS: Store Instances (PS3.18 §10.5).

The body is parsed as it streams in; each part is written to a staging file while its
SHA-256 is computed, so memory does not grow with the request.  Only when the whole
body has arrived intact are the parts stored (a truncated, malformed or oversized body
stores nothing).  Each instance is then stored by the core store service, which
validates, writes durably and indexes it, or leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dicomhub.core.access import AccessScope
from dicomhub.core.errors import (
    InsufficientStorage,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from dicomhub.core.model import ReceivedObject, StagedFile, Status, StoreOutcome
from dicomhub.core.staging import staging_name
from dicomhub.core.syntaxes import LOSSLESS_SOURCES
from dicomhub.dicomweb.deps import BaseURL, Ctx, WriteAccess
from dicomhub.dicomweb.multipart import (
    DATA,
    END,
    START,
    MultipartParser,
    PartHeaders,
    parse_content_type,
)

log = logging.getLogger(__name__)
router = APIRouter()

DICOM_TYPES = ("application/dicom", "")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


#: dicomhub extension part headers: a client that re-encoded an object losslessly before
#: sending it says how it was encoded originally, so a later pull can restore it
#: (docs/conformance.md "Pixel digests"); ignored unless well-formed.
ORIGINAL_TS_HEADER = "dicomhub-original-transfer-syntax"
ORIGINAL_PC_HEADER = "dicomhub-original-planar-configuration"


#: Bytes of a request's body that may wait for its writer at most (then the body is
#: read no further until the writer has caught up): memory stays bounded by a slow disk.
WRITE_AHEAD = 8 << 20

#: The first bytes of each part kept in memory for the ingest reader, which then need not
#: read the staged file back (StagedFile.head): at most this many per part, and at most
#: HEAD_BUDGET per request (parts after that are read back from their files).
HEAD_BYTES = 16 << 10
HEAD_BUDGET = 8 << 20


class _Writer:
    """Creates, writes and hashes the staging files of one request on a worker thread,
    job after job in the order given, while the event loop goes on parsing the body.
    After each :data:`WRITE_AHEAD` bytes it lets the other requests' writers have the
    thread (they share a small pool).

    ``os.write`` and SHA-256 release the GIL, so with two cores they run beside the
    event loop instead of in it.  The jobs hold the body's chunks (immutable bytes) by
    reference until written; :meth:`wait` bounds how many bytes may wait.  A job that
    fails keeps its error for :meth:`wait`, and the jobs after it are skipped, except
    the clean-up job of :meth:`abandon`.
    """

    def __init__(self, pool: Executor, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self._lock = threading.Lock()
        self._jobs: collections.deque[tuple[Callable[[], None], int, bool]] = collections.deque()
        self._running = False
        self._pending = 0  # bytes (at least 1 per job) not yet done
        self._waiter: tuple[asyncio.Event, int] | None = None
        self.error: BaseException | None = None

    def submit(self, job: Callable[[], None], size: int = 0, *, always: bool = False) -> None:
        """Queue ``job`` (``size`` bytes of body); ``always``: run even after a failure."""
        with self._lock:
            self._jobs.append((job, max(size, 1), always))
            self._pending += max(size, 1)
            if self._running:
                return
            self._running = True
        self._schedule()

    def _schedule(self) -> None:
        """Run :meth:`_drain` on the pool, or here when the pool has stopped (the server
        is shutting down): a body still arriving is written or removed all the same."""
        try:
            self._pool.submit(self._drain)
        except RuntimeError:
            self._drain()

    def _drain(self) -> None:
        done = 0
        while True:
            with self._lock:
                if not self._jobs:
                    self._running = False
                    return
                if done >= WRITE_AHEAD:
                    # fair to the other requests: back to the end of the pool's queue, so
                    # a large upload that the disk cannot keep up with never holds a thread
                    break
                job, size, always = self._jobs.popleft()
            done += size
            if always or self.error is None:
                try:
                    job()
                except BaseException as exc:
                    log.warning("STOW-RS: writing a staged part failed: %s", exc)
                    if self.error is None:
                        self.error = exc
            with self._lock:
                self._pending -= size
                wake = None
                if self._waiter is not None and self._pending <= self._waiter[1]:
                    wake, self._waiter = self._waiter[0], None
            if wake is not None:
                with contextlib.suppress(RuntimeError):  # the event loop has stopped
                    self._loop.call_soon_threadsafe(wake.set)
        self._schedule()

    def pending(self) -> int:
        """Bytes (at least 1 per job) queued or being written."""
        with self._lock:
            return self._pending

    async def wait(self, limit: int = 0) -> None:
        """Until at most ``limit`` bytes are pending (0: every job is done); then the
        first failure of a job, if any, is raised: a file that could not be created or
        written (OSError: a full or failing disk) as :class:`InsufficientStorage` (507),
        wherever in the body it happened."""
        while True:
            with self._lock:
                if self._pending <= limit:
                    break
                event = asyncio.Event()
                self._waiter = (event, limit)
            await event.wait()
        if isinstance(self.error, OSError):
            raise InsufficientStorage(
                f"cannot write the request to staging storage: {self.error.strerror or self.error}"
            ) from self.error
        if self.error is not None:
            raise self.error

    def abandon(self, parts: list[_Part]) -> None:
        """The request failed: skip what is still queued, then remove every staged file
        of ``parts`` (on the writer's thread, after any write still running)."""
        if self.error is None:
            self.error = InvalidRequest("request abandoned")

        def discard() -> None:
            for p in parts:
                p.discard()

        self.submit(discard, always=True)


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), or None where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_SYNC_FILE_RANGE = _sync_file_range()
#: start writing the dirty pages of the range to the disk, without waiting
SYNC_FILE_RANGE_WRITE = 2


class _Part:
    """One body part; its staging file is created, written and hashed by a _Writer."""

    def __init__(
        self,
        staging: str | Path,
        content_type: str,
        headers: dict[str, str],
        writeback: bool = False,
    ) -> None:
        self.content_type = content_type
        self.writeback = writeback and _SYNC_FILE_RANGE is not None
        original = headers.get(ORIGINAL_TS_HEADER, "").strip()
        self.original_ts = original if original in LOSSLESS_SOURCES else None
        planar = headers.get(ORIGINAL_PC_HEADER, "").strip()
        self.original_pc = int(planar) if planar in ("0", "1") else None
        self.accepted = content_type.split(";")[0].strip().lower() in DICOM_TYPES
        self.size = 0
        self.hasher = hashlib.sha256()
        #: first bytes kept for the reader (HEAD_BYTES): room left, and what was kept
        self.head_room = 0
        self.head: bytes | None = None
        self.path: str | None = None
        self.fd: int | None = None
        if self.accepted:
            self.path = staging_name(str(staging))

    def open(self) -> None:
        """Create the staging file: a new file of its own (O_EXCL), written unbuffered
        (the chunks arrive large)."""
        if self.path is not None:
            self.fd = os.open(self.path, _CREATE, 0o600)

    def keep_head(self, data: bytes | memoryview) -> None:
        """Keep a copy of the part's first bytes, up to the room reserved for them."""
        take = bytes(data[: self.head_room])
        self.head = take if self.head is None else self.head + take
        self.head_room -= len(take)

    def write(self, data: bytes | memoryview) -> None:
        if self.fd is not None:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
            self.hasher.update(data)

    def close(self) -> None:
        """Close the staging file; with ``writeback``, first start writing it to the disk
        (sync_file_range, not waiting): the fsync that makes it durable before the
        response (the blob store's) then finds it written or on its way, instead of
        every part of a request waiting for the disk at the end."""
        if self.fd is not None:
            if self.writeback:
                assert _SYNC_FILE_RANGE is not None
                _SYNC_FILE_RANGE(self.fd, 0, 0, SYNC_FILE_RANGE_WRITE)  # a hint: errors ignored
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        self.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _response_dataset(outcomes: list[StoreOutcome], base: str) -> tuple[int, dict[str, Any]]:
    """Store Instances Response Module (PS3.18 §10.5.3, Table 10.5.3-1)."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    warning = False
    studies: set[str] = set()
    for o in outcomes:
        item: dict[str, Any] = {
            "00081150": {"vr": "UI", "Value": [o.sop_class_uid]}
            if o.sop_class_uid
            else {"vr": "UI"},
            "00081155": {"vr": "UI", "Value": [o.sop_instance_uid]}
            if o.sop_instance_uid
            else {"vr": "UI"},
        }
        if o.failed:
            item["00081197"] = {"vr": "US", "Value": [int(o.status)]}
            failed.append(item)
            continue
        studies.add(str(o.study_instance_uid))
        item["00081190"] = {
            "vr": "UR",
            "Value": [
                f"{base}/studies/{o.study_instance_uid}/series/{o.series_instance_uid}"
                f"/instances/{o.sop_instance_uid}"
            ],
        }
        if o.status != Status.SUCCESS or o.warnings:
            warning = True
            code = o.status if o.status != Status.SUCCESS else Status.COERCION_OF_DATA_ELEMENTS
            item["00081196"] = {"vr": "US", "Value": [int(code)]}
        referenced.append(item)
    doc: dict[str, Any] = {}
    if len(studies) == 1:
        doc["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{next(iter(studies))}"]}
    if failed:
        doc["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        doc["00081199"] = {"vr": "SQ", "Value": referenced}
    if not referenced:
        status = 409
    elif failed or warning:
        status = 202
    else:
        status = 200
    return status, doc


async def _receive(
    request: Request, staging: Path, max_bytes: int, pool: Executor, writeback: bool = False
) -> list[_Part]:
    """Parse the multipart body into parts staged in files (written and hashed by a
    :class:`_Writer` on ``pool``); on any failure nothing is left in staging.
    ``writeback``: each file's writing to the disk starts when its part is complete."""
    content_type = request.headers.get("content-type", "")
    media, params = parse_content_type(content_type)
    if media != "multipart/related":
        raise UnsupportedMediaType(
            f'STOW-RS takes multipart/related; type="application/dicom", not '
            f"'{content_type or '(no Content-Type)'}'"
        )
    part_type = params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaType(
            f"multipart type '{part_type}' is not supported; use application/dicom"
        )
    boundary = params.get("boundary")
    if not boundary:
        raise InvalidRequest("multipart/related Content-Type without a boundary parameter")
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise InvalidRequest("invalid Content-Length") from None
        if declared > max_bytes:
            raise PayloadTooLarge(
                f"request body of {declared} bytes exceeds the limit of {max_bytes}"
            )
    parser = MultipartParser(boundary)
    writer = _Writer(pool, asyncio.get_running_loop())
    staging_dir = str(staging)
    parts: list[_Part] = []
    current: _Part | None = None
    received = 0
    head_budget = HEAD_BUDGET
    try:
        async for chunk in request.stream():
            if not isinstance(chunk, bytes):  # the writer holds views of it: immutable only
                chunk = bytes(chunk)
            received += len(chunk)
            if received > max_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
            for event, payload in parser.feed(chunk):
                if event == START:
                    assert isinstance(payload, PartHeaders)
                    current = _Part(staging_dir, payload.content_type, payload.headers, writeback)
                    parts.append(current)
                    if current.accepted:
                        current.head_room = min(HEAD_BYTES, head_budget)
                        head_budget -= current.head_room
                        writer.submit(current.open)
                elif event == DATA:
                    assert current is not None and isinstance(payload, (bytes, memoryview))
                    current.size += len(payload)
                    if current.accepted:
                        if current.head_room:
                            current.keep_head(payload)
                        writer.submit(functools.partial(current.write, payload), len(payload))
                elif event == END and current is not None:
                    if current.accepted:
                        head_budget += current.head_room  # room not used
                        current.head_room = 0
                        writer.submit(current.close)
                    current = None
            if writer.pending() > WRITE_AHEAD:
                await writer.wait(WRITE_AHEAD // 2)
        parser.close()
        await writer.wait()
    except BaseException as exc:
        writer.abandon(parts)
        if not isinstance(exc, asyncio.CancelledError):
            # the error response goes out once nothing of the request is left in staging
            with contextlib.suppress(Exception):
                await writer.wait()
        raise
    return parts


def _store_all(
    ctx: Any, parts: list[_Part], study: str | None, access: AccessScope
) -> list[StoreOutcome]:
    """Store the DICOM parts of one request as a group (one durability barrier, one
    index transaction); other parts fail with 0xC000 (PS3.18 §10.5.3)."""
    outcomes: list[StoreOutcome | None] = [None] * len(parts)
    received: list[ReceivedObject] = []
    positions: list[int] = []
    for i, part in enumerate(parts):
        if not part.accepted or part.path is None:
            outcomes[i] = StoreOutcome(
                status=Status.CANNOT_UNDERSTAND,
                message=f"part of type '{part.content_type}' is not application/dicom",
            )
            continue
        staged = StagedFile(Path(part.path), part.size, part.hasher.hexdigest(), head=part.head)
        received.append(ReceivedObject(staged, part.original_ts, part.original_pc))
        positions.append(i)
    for i, outcome in zip(
        positions, ctx.store.store_many(received, study, access=access), strict=True
    ):
        outcomes[i] = outcome
    return [o for o in outcomes if o is not None]


async def _stow(
    request: Request, ctx: Ctx, base: str, study: str | None, *, access: AccessScope
) -> JSONResponse:
    parts = await _receive(
        request,
        ctx.store.staging_dir(),
        ctx.settings.max_request_bytes,
        ctx.ingest,
        writeback=ctx.settings.fsync,
    )
    if not parts:
        raise InvalidRequest("multipart body has no parts")
    outcomes = await run_in_threadpool(_store_all, ctx, parts, study, access)
    status, doc = _response_dataset(outcomes, base)
    headers = {}
    messages = [
        f"{o.sop_instance_uid or 'part ' + str(i + 1)}: "
        + "; ".join(m for m in [o.message, *o.warnings] if m)
        for i, o in enumerate(outcomes)
        if o.failed or o.warnings
    ]
    if messages:
        for m in messages:
            log.info("STOW-RS: %s", m)
        # RFC 9111 §5.5 style warning text, one per problem (bounded)
        headers["Warning"] = ", ".join(
            '299 dicomhub "' + m.replace('"', "'").replace("\r", " ").replace("\n", " ") + '"'
            for m in messages[:20]
        )
    return JSONResponse(
        doc, status_code=status, media_type="application/dicom+json", headers=headers
    )


@router.post("/studies")
async def store_instances(
    request: Request, ctx: Ctx, access: WriteAccess, base: BaseURL
) -> JSONResponse:
    """Store instances of any studies (PS3.18 §10.5.1.1)."""
    return await _stow(request, ctx, base, None, access=access)


@router.post("/studies/{study}")
async def store_study_instances(
    study: str, request: Request, ctx: Ctx, access: WriteAccess, base: BaseURL
) -> JSONResponse:
    """Store instances of one study; others fail with 0xA900 (PS3.18 §10.5.1.1)."""
    return await _stow(request, ctx, base, study, access=access)
