"""Streaming reader of ``multipart/related`` responses (RFC 2046 §5.1, PS3.18 §8.6.1.2).

WADO-RS answers a study as one multipart body; a study can be gigabytes, so parts are
written to files as they arrive and never held whole in memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Part", "boundary_of", "iter_parts"]


@dataclass
class Part:
    """One body part, spooled to ``path`` (the caller moves or deletes it)."""

    headers: dict[str, str]
    path: Path
    size: int

    @property
    def content_type(self) -> str:
        """The part's Content-Type ('' if absent)."""
        return self.headers.get("content-type", "")


def boundary_of(content_type: str) -> str:
    """The ``boundary`` parameter of a multipart Content-Type; ValueError if missing."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"')
    raise ValueError(f"no boundary in Content-Type '{content_type}'")


def iter_parts(chunks: Iterable[bytes], boundary: str, spool_dir: Path) -> Iterator[Part]:
    """Yield the parts of a multipart body read from ``chunks``, each spooled to a file.

    The delimiter is CRLF ``--boundary`` (RFC 2046 §5.1.1); the preamble and epilogue are
    ignored.  Raises ValueError for a body that ends inside a part.
    """
    delimiter = b"\r\n--" + boundary.encode()
    buf = bytearray(b"\r\n")  # the first delimiter has no CRLF before it
    state = "preamble"
    out = None
    headers: dict[str, str] = {}
    size = 0
    path: Path | None = None
    stream = iter(chunks)
    exhausted = False
    while True:
        if state == "preamble":
            i = buf.find(delimiter)
            if i < 0:
                if exhausted:
                    return
                del buf[: max(0, len(buf) - len(delimiter))]
            else:
                del buf[: i + len(delimiter)]
                state = "after-delimiter"
                continue
        elif state == "after-delimiter":
            if len(buf) >= 2:
                if buf[:2] == b"--":
                    return  # close delimiter
                end = buf.find(b"\r\n")
                if end >= 0:
                    del buf[: end + 2]  # transport padding, then CRLF
                    state = "headers"
                    continue
        elif state == "headers":
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                headers = {}
                for line in bytes(buf[:end]).decode("latin-1").split("\r\n"):
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                del buf[: end + 4]
                fd, name_ = tempfile.mkstemp(dir=spool_dir, suffix=".part")
                path = Path(name_)
                out = open(fd, "wb")  # noqa: SIM115 - closed when the part ends
                size = 0
                state = "body"
                continue
        elif state == "body":
            assert out is not None and path is not None
            i = buf.find(delimiter)
            if i >= 0:
                out.write(buf[:i])
                size += i
                out.close()
                del buf[: i + len(delimiter)]
                state = "after-delimiter"
                yield Part(headers, path, size)
                continue
            keep = len(delimiter)
            if len(buf) > keep:
                n = len(buf) - keep
                out.write(buf[:n])
                size += n
                del buf[:n]
        if exhausted:
            if out is not None and not out.closed:
                out.close()
                if path is not None:
                    path.unlink(missing_ok=True)
            raise ValueError("the multipart body ended inside a part")
        try:
            buf += next(stream)
        except StopIteration:
            exhausted = True
