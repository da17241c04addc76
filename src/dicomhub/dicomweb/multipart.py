"""multipart/related (RFC 2387) for DICOMweb: a streaming parser and writers.

The parser is incremental: it is fed chunks as they arrive and emits part boundaries
and body data without ever holding a whole part, let alone a whole request, in memory
(PS3.18 §8.6.1.2, §10.5.1.2).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

from dicomhub.core.errors import InvalidRequest


@dataclass
class PartHeaders:
    """Headers of one body part, lower-cased names."""

    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        """The part's Content-Type (empty when absent)."""
        return self.headers.get("content-type", "")


class MultipartError(InvalidRequest):
    """The body is not a well-formed multipart/related entity."""


# parser events
START, DATA, END = "start", "data", "end"
MAX_HEADER_BYTES = 16 * 1024


class MultipartParser:
    """Incremental parser; :meth:`feed` yields ``(event, payload)`` tuples.

    Events: ``("start", PartHeaders)``, ``("data", bytes or memoryview)``, ``("end", None)``.
    A data payload is a slice of a chunk that was fed (a view, not a copy) or of a few
    bytes kept from the chunk before: when the chunks are immutable ``bytes``, so are
    the payloads, and they may be kept after the next call.
    Call :meth:`close` after the last chunk: it raises :class:`MultipartError` if the
    closing boundary was never seen.

    Each byte of the body is searched once and copied at most once (the few bytes at a
    chunk's end that may begin a delimiter, and part headers cut between chunks), so a
    part's body goes from the socket's chunks to its consumer without a copy.
    """

    def __init__(self, boundary: str) -> None:
        if not boundary or len(boundary) > 200:
            raise MultipartError("missing or invalid multipart boundary")
        self.delimiter = b"\r\n--" + boundary.encode("latin-1")
        self.buffer = b"\r\n"  # lets the first boundary match the CRLF-prefixed delimiter
        self.state = "preamble"
        self.done = False
        self.parts = 0

    def feed(self, chunk: bytes) -> Iterator[tuple[str, object]]:
        """Consume a chunk and yield the events it completes."""
        if self.done:
            return  # epilogue is ignored
        delimiter = self.delimiter
        n = len(delimiter)
        pos = 0
        carry = self.buffer
        if not carry:
            buf = chunk
        elif self.state in ("body", "preamble") and len(chunk) >= n - 1:
            # the kept bytes (at most the delimiter's length, and none of them a whole
            # delimiter) may begin one, which then ends in the chunk's first n - 1
            # bytes: only those are joined
            k = (carry + chunk[: n - 1]).find(delimiter)
            body = self.state == "body"
            if k < 0:
                if body:
                    yield DATA, carry
            else:
                if body:
                    if k:
                        yield DATA, carry[:k]
                    yield END, None
                self.state = "after_boundary"
                pos = k + n - len(carry)
            buf = chunk
        else:  # before the first part, between parts, or a chunk shorter than the delimiter
            buf = carry + chunk
        self.buffer = b""
        view = memoryview(buf)
        end = len(buf)
        while True:
            if self.state == "preamble":
                idx = buf.find(delimiter, pos)
                if idx < 0:
                    self.buffer = buf[max(pos, end - n) :]
                    return
                pos = idx + n
                self.state = "after_boundary"
            if self.state == "after_boundary":
                if end - pos < 2:
                    self.buffer = buf[pos:]
                    return
                if buf.startswith(b"--", pos):
                    self.done = True
                    return
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > 1024:
                        raise MultipartError("garbage after multipart boundary")
                    self.buffer = buf[pos:]
                    return
                if buf[pos:eol].strip(b" \t"):
                    raise MultipartError("garbage after multipart boundary")
                pos = eol + 2
                self.state = "headers"
            if self.state == "headers":
                if buf.startswith(b"\r\n", pos):
                    stop, skip = pos, 2
                else:
                    stop, skip = buf.find(b"\r\n\r\n", pos), 4
                if stop < 0:
                    if end - pos > MAX_HEADER_BYTES:
                        raise MultipartError("part headers too long")
                    self.buffer = buf[pos:]
                    return
                headers = PartHeaders()
                raw = buf[pos:stop].decode("latin-1") if stop > pos else ""
                for line in raw.split("\r\n"):
                    if not line:
                        continue
                    name, sep, value = line.partition(":")
                    if not sep:
                        raise MultipartError(f"malformed part header line {line[:80]!r}")
                    headers.headers[name.strip().lower()] = value.strip()
                pos = stop + skip
                self.state = "body"
                self.parts += 1
                yield START, headers
            if self.state == "body":
                idx = buf.find(delimiter, pos)
                if idx < 0:
                    # pass on all but a tail that could be the start of the delimiter
                    safe = end - n + 1
                    if safe > pos:
                        yield DATA, view[pos:safe]
                        pos = safe
                    self.buffer = buf[pos:]
                    return
                if idx > pos:
                    yield DATA, view[pos:idx]
                yield END, None
                pos = idx + n
                self.state = "after_boundary"

    def close(self) -> None:
        """Check that the body ended with the closing boundary."""
        if not self.done:
            if self.parts == 0:
                raise MultipartError("no body part found (wrong boundary?)")
            raise MultipartError("multipart body ended before its closing boundary (truncated)")


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a media type and its parameters (RFC 9110 §8.3.1), parameter names lower-cased."""
    parts = _split_params(value)
    media = parts[0].strip().lower() if parts else ""
    params: dict[str, str] = {}
    for p in parts[1:]:
        name, sep, val = p.partition("=")
        if not sep:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        params[name.strip().lower()] = val
    return media, params


def _split_params(value: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def new_boundary() -> str:
    """A random boundary that will not occur in DICOM data by chance."""
    return "dicomhub-" + secrets.token_hex(16)


def part_header(boundary: str, content_type: str, extra: dict[str, str] | None = None) -> bytes:
    """The delimiter and headers that open one body part."""
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    for name, value in (extra or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def closing(boundary: str) -> bytes:
    """The closing delimiter."""
    return f"--{boundary}--\r\n".encode("latin-1")
