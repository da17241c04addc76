"""HTTP content coding of the JSON responses of the DICOMweb edge.

PS3.18 §8.4.1 (Table 8.4.1-1) lets a user agent state the content codings it accepts in
the response with ``Accept-Encoding``, and PS3.18 §8.4.2 (Table 8.4.2-1) requires a
``Content-Encoding`` header field whenever the origin server applied a content coding to
the representation. The negotiation follows RFC 9110: §12.5.3 (``Accept-Encoding``,
q-values, ``*``, ``identity``), §8.4 (``Content-Encoding``; ``x-gzip`` is read as
``gzip``, §8.4.1.3) and §12.5.5 (``Vary``).

What is encoded: successful (200) responses under the DICOMweb prefix whose media type
is JSON (``application/json``, ``application/dicom+json`` or any ``+json``), whose body
is at least ``minimum_size`` bytes and which carry no ``Content-Encoding`` yet — in
practice QIDO-RS results and WADO-RS metadata. Those are produced in one piece, so the
body is buffered, encoded with ``zstd`` (RFC 8878; preferred when offered with the same
weight) or ``gzip`` (RFC 1952), and sent with a corrected ``Content-Length``. Every JSON
response under the prefix carries ``Vary: Accept-Encoding``, encoded or not.

Everything else (multipart/related DICOM, frames, bulk data, rendered images, octet
streams) is passed through message by message, never buffered: pixel data is mostly
compressed already and the retrieve bodies are streamed.

Responses outside the DICOMweb prefix (``/auth``, ``/audit``, ``/api``) are never
encoded: token responses hold secrets next to request-supplied text, which compression
would expose to length side channels (BREACH).
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Callable, Sequence
from typing import Final

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

IDENTITY: Final = "identity"
ZSTD: Final = "zstd"
GZIP: Final = "gzip"

#: bodies this large are encoded in a worker thread rather than on the event loop
THREAD_THRESHOLD: Final = 256 * 1024

# RFC 9110 §5.6.2 token, §12.4.2 qvalue
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_QVALUE = re.compile(r"^(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)$")
_ALIASES: Final = {"x-gzip": GZIP}  # RFC 9110 §8.4.1.3


def _zstd_available() -> bool:
    try:
        import imagecodecs

        return bool(imagecodecs.ZSTD.available)
    except Exception:  # an imagecodecs build without the zstd codec
        return False


#: content codings the server can apply, in its order of preference for equal weights
SUPPORTED: Final[tuple[str, ...]] = (ZSTD, GZIP) if _zstd_available() else (GZIP,)


def parse_accept_encoding(value: str) -> dict[str, float]:
    """The codings of an ``Accept-Encoding`` field value with their weights (RFC 9110
    §12.5.3): names lower-cased, ``x-gzip`` read as ``gzip``, a missing weight is 1.

    Members that are not a token with an optional valid ``q`` weight are ignored (an
    unreadable weight must not turn into 1). A coding listed twice keeps its lowest weight,
    so an explicit refusal (``q=0``) is never overridden.
    """
    out: dict[str, float] = {}
    for member in value.split(","):
        name, *params = (p.strip() for p in member.split(";"))
        if not name:
            continue  # empty list elements are allowed (RFC 9110 §5.6.1)
        if not _TOKEN.match(name):
            continue
        weight = 1.0
        valid = True
        for param in params:
            key, sep, raw = param.partition("=")
            if key.strip().lower() != "q":
                continue  # no other parameter is defined: ignore it
            raw = raw.strip()
            if not sep or not _QVALUE.match(raw):
                valid = False
                break
            weight = float(raw)
        if not valid:
            continue
        coding = name.lower()
        coding = _ALIASES.get(coding, coding)
        out[coding] = min(weight, out.get(coding, weight))
    return out


def choose_encoding(header: str | None, available: Sequence[str] = SUPPORTED) -> str:
    """The content coding to apply, ``identity`` for none.

    - no ``Accept-Encoding`` field, or an empty one: ``identity`` (an absent field would
      allow any coding, but a client that does not ask gets the plain representation);
    - otherwise the available coding with the highest non-zero weight, explicitly listed
      or through ``*``; ``available`` breaks ties (``zstd`` before ``gzip``);
    - ``identity`` wins only when it is given (itself or via ``*``) a weight higher than
      that coding's;
    - when no available coding is acceptable, ``identity`` — even if the field refused it
      (``identity;q=0``): sending the plain representation is more useful than 406.
    """
    if header is None or not header.strip():
        return IDENTITY
    prefs = parse_accept_encoding(header)
    star = prefs.get("*")
    best, best_q = IDENTITY, 0.0
    for coding in available:
        q = prefs.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    if best == IDENTITY:
        return IDENTITY
    identity_q = prefs.get(IDENTITY, star)
    if identity_q is not None and identity_q > best_q:
        return IDENTITY
    return best


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type is JSON: application/json or any ``+json`` subtype."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def add_vary(headers: MutableHeaders, field: str = "Accept-Encoding") -> None:
    """Add ``field`` to the Vary header unless it (or ``*``) is already there."""
    present = [item.strip() for line in headers.getlist("vary") for item in line.split(",")]
    present = [item for item in present if item]
    if "*" in present or field.lower() in (item.lower() for item in present):
        return
    headers["Vary"] = ", ".join([*present, field])


def encoder(coding: str, *, gzip_level: int = 6, zstd_level: int = 3) -> Callable[[bytes], bytes]:
    """The function that applies ``coding`` to a body."""
    if coding == GZIP:
        # mtime=0: the same body always encodes to the same bytes
        return lambda data: gzip.compress(data, compresslevel=gzip_level, mtime=0)
    if coding == ZSTD:
        import imagecodecs

        return lambda data: bytes(imagecodecs.zstd_encode(data, level=zstd_level))
    raise ValueError(f"unsupported content coding {coding!r}")


def _request_header(scope: Scope, name: bytes) -> str | None:
    """A request header, several lines of it combined with commas (RFC 9110 §5.3)."""
    values = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == name]
    return ", ".join(values) if values else None


def _with_headers(message: Message, headers: MutableHeaders) -> Message:
    return {**message, "headers": headers.raw}


class ContentEncodingMiddleware:
    """Applies ``zstd`` or ``gzip`` to JSON responses as negotiated (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        prefix: str = "/dicom-web",
        minimum_size: int = 1024,
        codings: Sequence[str] = SUPPORTED,
        gzip_level: int = 6,
        zstd_level: int = 3,
    ) -> None:
        unknown = [c for c in codings if c not in (ZSTD, GZIP)]
        if unknown:
            raise ValueError(f"unsupported content codings: {unknown}")
        self.app = app
        self.prefix = prefix.rstrip("/")
        self.minimum_size = minimum_size
        self.codings = tuple(codings)
        self.gzip_level = gzip_level
        self.zstd_level = zstd_level

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix + "/"):
            await self.app(scope, receive, send)
            return
        coding = choose_encoding(_request_header(scope, b"accept-encoding"), self.codings)
        if scope["method"] == "HEAD":
            coding = IDENTITY  # no body to encode; the header fields still say Vary
        responder = _Responder(self, coding, send)
        await self.app(scope, receive, responder.send)
        await responder.finish()


class _Responder:
    """The ``send`` of one response: passes messages through, or holds a JSON response
    until its body is complete and then sends it encoded."""

    def __init__(self, mw: ContentEncodingMiddleware, coding: str, send: Send) -> None:
        self.mw = mw
        self.coding = coding
        self.downstream = send
        self.start: Message | None = None  # held while buffering
        self.chunks: list[bytes] = []

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._start(message)
        elif self.start is None:
            await self.downstream(message)
        elif kind == "http.response.body":
            self.chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                await self._complete()
        else:  # an extension message (pathsend, trailers…): give up encoding
            await self._flush(more_body=True)
            await self.downstream(message)

    async def _start(self, message: Message) -> None:
        headers = MutableHeaders(raw=list(message.get("headers", [])))
        if not is_json(headers.get("content-type")):
            await self.downstream(message)  # streamed as is
            return
        add_vary(headers)
        message = _with_headers(message, headers)
        if (
            self.coding == IDENTITY
            or int(message["status"]) != 200
            or "content-encoding" in headers
            or message.get("trailers", False)
        ):
            await self.downstream(message)
            return
        self.start = message

    async def _complete(self) -> None:
        assert self.start is not None
        body = b"".join(self.chunks)
        if len(body) < self.mw.minimum_size:
            await self._flush(more_body=False)
            return
        encode = encoder(self.coding, gzip_level=self.mw.gzip_level, zstd_level=self.mw.zstd_level)
        try:
            if len(body) >= THREAD_THRESHOLD:
                encoded = await run_in_threadpool(encode, body)
            else:
                encoded = encode(body)
        except Exception:
            log.exception("%s encoding failed; the response is sent unencoded", self.coding)
            await self._flush(more_body=False)
            return
        if len(encoded) >= len(body):  # nothing gained
            await self._flush(more_body=False)
            return
        headers = MutableHeaders(raw=list(self.start["headers"]))
        headers["Content-Encoding"] = self.coding
        headers["Content-Length"] = str(len(encoded))
        etag = headers.get("etag")
        if etag and etag.startswith('"') and etag.endswith('"'):
            # a strong validator differs per content coding (RFC 9110 §8.8.3)
            headers["ETag"] = f'{etag[:-1]}-{self.coding}"'
        start = _with_headers(self.start, headers)
        self.start, self.chunks = None, []
        await self.downstream(start)
        await self.downstream({"type": "http.response.body", "body": encoded, "more_body": False})

    async def _flush(self, *, more_body: bool) -> None:
        """Send the held start and body unchanged."""
        if self.start is None:
            return
        start, body = self.start, b"".join(self.chunks)
        self.start, self.chunks = None, []
        await self.downstream(start)
        if body or not more_body:
            await self.downstream(
                {"type": "http.response.body", "body": body, "more_body": more_body}
            )

    async def finish(self) -> None:
        """After the app returned: a response it left incomplete goes out as it was."""
        await self._flush(more_body=True)
