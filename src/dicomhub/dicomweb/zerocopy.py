"""Zero-copy sending of stored files in HTTP/1.1 responses (``sendfile(2)``).

uvicorn sends every body through Python bytes and its transport buffer (it has no ASGI
``http.response.pathsend``).  For WADO-RS retrieves of whole instances that costs a read
into memory and one or two copies per byte; the kernel can instead move the file's pages
to the socket directly.  This module finds the connection's socket behind uvicorn's
``send`` (outermost, before any middleware wraps it) and writes HTTP/1.1 chunks
(RFC 9112 §7.1) of stored files to it with ``os.sendfile`` from a worker thread, while
the response start, other parts and the last chunk still go through ASGI.  The sending
threads are a pool of their own: clients that read slowly (or stop) hold only those, never
the threads the rest of the application runs on.

It is used only where it is safe: plain HTTP/1.1 (no TLS: the bytes must be encrypted by
the transport), a response in chunked transfer coding, and only once the transport's own
buffer is empty, so bytes never overtake each other.  Anywhere else (another ASGI
server, TLS, HTTP/1.0) responses are streamed the ordinary way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)

#: Scope key under which :class:`DicomhubAPI` leaves the connection's :class:`DirectSocket`.
SCOPE_KEY = "dicomhub.direct_socket"
#: Seconds a blocked socket may stay unwritable before the response is abandoned.
WRITE_TIMEOUT = 60.0
#: Responses sending at the same time; more wait for a free thread (their clients too).
SENDFILE_THREADS = 32
_SENDFILE_THREADS = ThreadPoolExecutor(SENDFILE_THREADS, thread_name_prefix="sendfile")


class DirectWriteError(OSError):
    """The peer went away or stopped reading; the connection must be dropped."""


@dataclass(frozen=True)
class FilePart:
    """One chunk: ``prefix`` (part headers), the file's bytes, ``suffix`` (CRLF)."""

    prefix: bytes
    path: Path
    suffix: bytes


class DirectSocket:
    """The socket of one HTTP/1.1 connection served by uvicorn, for chunked sendfile."""

    def __init__(self, transport: Any, fd: int) -> None:
        self.transport = transport
        self.fd = fd

    async def drained(self) -> None:
        """Wait until the transport has written out everything it buffered."""
        deadline = time.monotonic() + WRITE_TIMEOUT
        while self.transport.get_write_buffer_size():
            if self.transport.is_closing() or time.monotonic() > deadline:
                raise DirectWriteError("connection closed while draining")
            await asyncio.sleep(0.0005)
        if self.transport.is_closing():
            raise DirectWriteError("connection closed")

    async def send_files_async(self, parts: Sequence[FilePart]) -> int:
        """Write each part as one HTTP chunk, after :meth:`drained`, on the sendfile
        threads (not the application's thread pool: slow clients must not take the threads
        every other request needs).  Returns the bytes written; raises
        :class:`DirectWriteError`.

        The threads write to a duplicate of the connection's descriptor, taken here, on
        the event loop's thread, while the transport is still open.  The descriptor
        number itself is not safe to use from another thread: if the client goes away,
        uvicorn closes it, and the next connection accepted may get the same number;
        writing to the number would then send the rest of this response to that other
        client.  The duplicate always refers to this connection (writes to it fail once
        the peer is gone) and is closed by the thread when it is done.
        """
        if self.transport.is_closing():
            raise DirectWriteError("connection closed")
        fd = os.dup(self.fd)
        try:
            future = _SENDFILE_THREADS.submit(_send_files_then_close, fd, parts)
        except BaseException:
            os.close(fd)
            raise
        # a job cancelled before a thread took it never runs: close the duplicate here
        future.add_done_callback(lambda f: os.close(fd) if f.cancelled() else None)
        return await asyncio.wrap_future(future)


def _send_files_then_close(fd: int, parts: Sequence[FilePart]) -> int:
    try:
        return _send_files(fd, parts)
    finally:
        os.close(fd)


def _send_files(fd: int, parts: Sequence[FilePart]) -> int:
    """Each part as one HTTP chunk (RFC 9112 §7.1) on the socket ``fd``."""
    total = 0
    for part in parts:
        with open(part.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            length = len(part.prefix) + size + len(part.suffix)
            total += _write(fd, b"%x\r\n" % length + part.prefix)
            total += _sendfile(fd, fh.fileno(), size)
            total += _write(fd, part.suffix + b"\r\n")
    log.debug("sendfile: %d parts, %d bytes", len(parts), total)
    return total


def _wait_writable(fd: int) -> None:
    _, writable, _ = select.select([], [fd], [], WRITE_TIMEOUT)
    if not writable:
        raise DirectWriteError("peer stopped reading")


def _write(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        try:
            sent = os.write(fd, view)
        except BlockingIOError:
            _wait_writable(fd)
            continue
        except OSError as exc:
            raise DirectWriteError(str(exc)) from exc
        view = view[sent:]
    return len(data)


def _sendfile(fd: int, in_fd: int, count: int) -> int:
    offset = 0
    while offset < count:
        try:
            sent = os.sendfile(fd, in_fd, offset, count - offset)
        except BlockingIOError:
            _wait_writable(fd)
            continue
        except OSError as exc:
            raise DirectWriteError(str(exc)) from exc
        if sent == 0:  # the file shrank under us: cannot keep the chunk length
            raise DirectWriteError("file ended early")
        offset += sent
    return count


def direct_socket(scope: Scope, send: Send) -> DirectSocket | None:
    """The connection's socket when ``send`` is uvicorn's own and the connection is plain
    HTTP/1.1; else None."""
    if scope.get("type") != "http" or scope.get("http_version") != "1.1":
        return None
    if scope.get("scheme") != "http":
        return None
    transport: Any = getattr(getattr(send, "__self__", None), "transport", None)
    # asyncio's and uvloop's transports (uvloop's do not subclass asyncio.Transport)
    if not all(
        callable(getattr(transport, name, None))
        for name in ("get_extra_info", "get_write_buffer_size", "is_closing", "abort")
    ):
        return None
    if transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    try:
        fd = int(sock.fileno()) if sock is not None else -1
    except (OSError, ValueError):
        return None
    return DirectSocket(transport, fd) if fd >= 0 else None


class DicomhubAPI(FastAPI):
    """FastAPI that notes, per request, the socket behind the server's ``send``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            direct = direct_socket(scope, send)
            if direct is not None:
                scope[SCOPE_KEY] = direct
        await super().__call__(scope, receive, send)
