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

    Events: ``("start", PartHeaders)``, ``("data", bytes or memoryview)``, ``("end", None)``;
    a data payload is valid until the next call.
    Call :meth:`close` after the last chunk: it raises :class:`MultipartError` if the
    closing boundary was never seen.
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
        n = len(self.delimiter)
        if self.state == "body" and len(self.buffer) < n <= len(chunk):
            # inside a part's body, with at most a possible start of a delimiter kept:
            # a chunk without a delimiter is passed on as a view, not copied
            tail = self.buffer
            # a delimiter starting in the kept tail would end in the chunk's first bytes
            if (not tail or (tail + chunk[: n - 1]).find(self.delimiter) < 0) and chunk.find(
                self.delimiter
            ) < 0:
                if tail:
                    yield DATA, tail
                safe = len(chunk) - n + 1
                yield DATA, memoryview(chunk)[:safe]
                self.buffer = chunk[safe:]
                return
        self.buffer += chunk
        while True:
            if self.state == "preamble":
                idx = self.buffer.find(self.delimiter)
                if idx < 0:
                    keep = len(self.delimiter)
                    if len(self.buffer) > keep:
                        self.buffer = self.buffer[-keep:]
                    return
                self.buffer = self.buffer[idx + len(self.delimiter) :]
                self.state = "after_boundary"
            if self.state == "after_boundary":
                if len(self.buffer) < 2:
                    return
                if self.buffer.startswith(b"--"):
                    self.done = True
                    self.buffer = b""
                    return
                eol = self.buffer.find(b"\r\n")
                if eol < 0:
                    if len(self.buffer) > 1024:
                        raise MultipartError("garbage after multipart boundary")
                    return
                if self.buffer[:eol].strip(b" \t"):
                    raise MultipartError("garbage after multipart boundary")
                self.buffer = self.buffer[eol + 2 :]
                self.state = "headers"
            if self.state == "headers":
                end = self.buffer.find(b"\r\n\r\n")
                if self.buffer.startswith(b"\r\n"):
                    end, skip = 0, 2
                else:
                    skip = 4
                if end < 0:
                    if len(self.buffer) > MAX_HEADER_BYTES:
                        raise MultipartError("part headers too long")
                    return
                headers = PartHeaders()
                raw = self.buffer[:end].decode("latin-1") if end else ""
                for line in raw.split("\r\n"):
                    if not line:
                        continue
                    name, sep, value = line.partition(":")
                    if not sep:
                        raise MultipartError(f"malformed part header line {line[:80]!r}")
                    headers.headers[name.strip().lower()] = value.strip()
                self.buffer = self.buffer[end + skip :]
                self.state = "body"
                self.parts += 1
                yield START, headers
            if self.state == "body":
                idx = self.buffer.find(self.delimiter)
                if idx < 0:
                    # emit all but a tail that could be the start of the delimiter
                    safe = len(self.buffer) - len(self.delimiter) + 1
                    if safe > 0:
                        yield DATA, self.buffer[:safe]
                        self.buffer = self.buffer[safe:]
                    return
                if idx:
                    yield DATA, self.buffer[:idx]
                yield END, None
                self.buffer = self.buffer[idx + len(self.delimiter) :]
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
