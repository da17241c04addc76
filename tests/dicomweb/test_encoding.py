"""Content coding of JSON responses (RFC 9110 §8.4, §12.5.3; PS3.18 §8.4.1, §8.4.2).

What came in: Accept-Encoding field values (weights, wildcards, refusals, malformed
members) and ASGI responses driven straight through the middleware — JSON bodies of
every size, status and header combination, and a streamed multipart/related body.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from collections.abc import AsyncIterator, Callable

import imagecodecs
import pytest
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomhub.dicomweb import encoding
from dicomhub.dicomweb.encoding import (
    GZIP,
    IDENTITY,
    ZSTD,
    ContentEncodingMiddleware,
    add_vary,
    choose_encoding,
    is_json,
    parse_accept_encoding,
)

# -- parsing -----------------------------------------------------------------------------


def test_parse_weights_default_to_one_and_names_are_case_insensitive() -> None:
    assert parse_accept_encoding("gzip, ZSTD;q=0.5, Identity ; Q=0.25") == {
        "gzip": 1.0,
        "zstd": 0.5,
        "identity": 0.25,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("gzip;q=0", {"gzip": 0.0}),
        ("gzip;q=0.", {"gzip": 0.0}),
        ("gzip;q=0.001", {"gzip": 0.001}),
        ("gzip;q=1.000", {"gzip": 1.0}),
        ("gzip; q=0.8 ", {"gzip": 0.8}),
        ("*;q=0.1", {"*": 0.1}),
    ],
)
def test_parse_valid_qvalues(value: str, expected: dict[str, float]) -> None:
    assert parse_accept_encoding(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "gzip;q=1.5",  # above 1
        "gzip;q=1.001",
        "gzip;q=0.0001",  # more than three decimals
        "gzip;q=-1",
        "gzip;q=",
        "gzip;q",
        "gzip;q=abc",
        "gz ip",  # not a token
        "gzip/1",
        '"gzip"',
    ],
)
def test_parse_ignores_malformed_members(value: str) -> None:
    assert parse_accept_encoding(value + ", zstd") == {"zstd": 1.0}


def test_parse_empty_elements_unknown_parameters_aliases_and_duplicates() -> None:
    assert parse_accept_encoding(" , ,gzip,,") == {"gzip": 1.0}
    assert parse_accept_encoding("gzip;level=9;q=0.3") == {"gzip": 0.3}
    assert parse_accept_encoding("x-gzip;q=0.7") == {"gzip": 0.7}  # RFC 9110 §8.4.1.3
    assert parse_accept_encoding("br, compress, deflate") == {
        "br": 1.0,
        "compress": 1.0,
        "deflate": 1.0,
    }
    # a coding listed twice keeps its lowest weight: a refusal is never overridden
    assert parse_accept_encoding("gzip;q=0, gzip") == {"gzip": 0.0}
    assert parse_accept_encoding("gzip, gzip;q=0.5") == {"gzip": 0.5}
    assert parse_accept_encoding("") == {}


# -- selection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, IDENTITY),  # no field: the plain representation
        ("", IDENTITY),  # empty field: only identity is acceptable
        ("   ", IDENTITY),
        ("identity", IDENTITY),
        ("gzip", GZIP),
        ("zstd", ZSTD),
        ("gzip, zstd", ZSTD),  # equal weights: the server prefers zstd
        ("zstd, gzip", ZSTD),
        ("gzip, deflate", GZIP),  # what python-requests sends
        ("gzip, deflate, br, zstd", ZSTD),  # what current browsers send
        ("zstd;q=0.5, gzip", GZIP),
        ("zstd;q=0.5, gzip;q=0.4", ZSTD),
        ("x-gzip", GZIP),
        ("*", ZSTD),
        ("*;q=0.2, gzip;q=0.5", GZIP),
        ("gzip;q=0, *", ZSTD),
        ("zstd;q=0, *", GZIP),
        ("zstd;q=0, gzip;q=0", IDENTITY),
        ("*;q=0", IDENTITY),
        ("*;q=0, identity;q=0", IDENTITY),  # nothing acceptable: identity nonetheless
        ("identity;q=0", IDENTITY),
        ("br, deflate, compress", IDENTITY),  # nothing the server can apply
        ("gzip;q=0.5, identity", IDENTITY),  # identity weighted higher
        ("gzip, identity", GZIP),  # equal: encode
        ("gzip;q=0.5, identity;q=0.1", GZIP),
        ("gzip;q=0.5, *", ZSTD),
        ("gzip;q=abc", IDENTITY),  # malformed member ignored
        ("GZIP;Q=0.9, ZStd;q=0.8", GZIP),
    ],
)
def test_choose_encoding(header: str | None, expected: str) -> None:
    assert choose_encoding(header, (ZSTD, GZIP)) == expected


def test_choose_encoding_only_among_available_codings() -> None:
    assert choose_encoding("zstd, gzip;q=0.5", (GZIP,)) == GZIP
    assert choose_encoding("zstd", (GZIP,)) == IDENTITY
    assert choose_encoding("*", (GZIP,)) == GZIP
    assert choose_encoding("gzip;q=0.5, *", (GZIP,)) == IDENTITY  # * gives identity 1
    assert choose_encoding("gzip", ()) == IDENTITY


def test_zstd_is_supported_by_this_build() -> None:
    assert encoding.SUPPORTED == (ZSTD, GZIP)


@pytest.mark.parametrize(
    ("ctype", "expected"),
    [
        ("application/dicom+json", True),
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/problem+json", True),
        ("application/dicom+json;charset=utf-8", True),
        ('multipart/related; type="application/dicom+json"; boundary=x', False),
        ('multipart/related; type="application/dicom"; boundary=x', False),
        ("application/dicom", False),
        ("application/octet-stream", False),
        ("image/jpeg", False),
        ("text/plain", False),
        ("application/jsonx", False),
        ("", False),
        (None, False),
    ],
)
def test_is_json(ctype: str | None, expected: bool) -> None:
    assert is_json(ctype) is expected


def test_add_vary_merges_without_duplicates() -> None:
    h = MutableHeaders()
    add_vary(h)
    assert h.getlist("vary") == ["Accept-Encoding"]
    add_vary(h)
    assert h.getlist("vary") == ["Accept-Encoding"]
    h = MutableHeaders(raw=[(b"vary", b"Accept"), (b"vary", b"Origin, ")])
    add_vary(h)
    assert h.getlist("vary") == ["Accept, Origin, Accept-Encoding"]
    h = MutableHeaders(raw=[(b"vary", b"accept-encoding")])
    add_vary(h)
    assert h.getlist("vary") == ["accept-encoding"]
    h = MutableHeaders(raw=[(b"vary", b"*")])
    add_vary(h)
    assert h.getlist("vary") == ["*"]


# -- the middleware ----------------------------------------------------------------------

BIG = json.dumps([{"0020000D": {"vr": "UI", "Value": [f"1.2.3.{i}"]}} for i in range(200)]).encode()
SMALL = b'[{"00100020":{"vr":"LO","Value":["P1"]}}]'


def call(
    app: ASGIApp,
    accept_encoding: str | None = None,
    *,
    path: str = "/dicom-web/studies",
    method: str = "GET",
    sent: list[Message] | None = None,
    **kw: object,
) -> tuple[int, MutableHeaders, bytes, list[Message]]:
    """Run one request through the middleware: (status, headers, body, messages)."""
    messages: list[Message] = [] if sent is None else sent
    headers = [] if accept_encoding is None else [(b"accept-encoding", accept_encoding.encode())]
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }

    async def receive() -> Message:
        await asyncio.sleep(3600)  # no disconnect while the response is sent
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        messages.append(message)

    mw = ContentEncodingMiddleware(app, prefix="/dicom-web", **kw)  # type: ignore[arg-type]
    asyncio.run(mw(scope, receive, send))
    start = messages[0]
    assert start["type"] == "http.response.start"
    body = b"".join(m.get("body", b"") for m in messages[1:])
    assert not messages[-1].get("more_body", False)
    return int(start["status"]), MutableHeaders(raw=list(start["headers"])), body, messages


def dicom_json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/dicom+json", headers=headers)


@pytest.mark.parametrize("offer", ["gzip", "gzip, deflate", "x-gzip", "zstd;q=0.5, gzip"])
def test_gzip(offer: str) -> None:
    status, h, body, _ = call(dicom_json(BIG), offer)
    assert status == 200
    assert h["content-encoding"] == "gzip"
    assert h["content-type"] == "application/dicom+json"
    assert h["vary"] == "Accept-Encoding"
    assert int(h["content-length"]) == len(body) < len(BIG)
    assert gzip.decompress(body) == BIG


@pytest.mark.parametrize("offer", ["zstd", "gzip, zstd", "*", "gzip, deflate, br, zstd"])
def test_zstd(offer: str) -> None:
    _, h, body, _ = call(dicom_json(BIG), offer)
    assert h["content-encoding"] == "zstd"
    assert int(h["content-length"]) == len(body) < len(BIG)
    assert imagecodecs.zstd_decode(body) == BIG


@pytest.mark.parametrize("offer", [None, "", "identity", "br", "gzip;q=0", "*;q=0"])
def test_identity(offer: str | None) -> None:
    _, h, body, _ = call(dicom_json(BIG), offer)
    assert "content-encoding" not in h
    assert h["vary"] == "Accept-Encoding"
    assert int(h["content-length"]) == len(body)
    assert body == BIG


def test_small_json_is_sent_as_is_with_vary() -> None:
    _, h, body, _ = call(dicom_json(SMALL), "gzip")
    assert (body, h["vary"], "content-encoding" in h) == (SMALL, "Accept-Encoding", False)
    # the threshold is configurable and inclusive
    payload = b"[" + b" " * 1022 + b"]"
    assert len(payload) == 1024
    _, h, _, _ = call(dicom_json(payload), "gzip")
    assert h["content-encoding"] == "gzip"
    _, h, _, _ = call(dicom_json(payload[:-2] + b"]"), "gzip")
    assert "content-encoding" not in h
    _, h, _, _ = call(dicom_json(payload[:200] + b"]"), "gzip", minimum_size=100)
    assert h["content-encoding"] == "gzip"


def test_plain_json_and_other_json_suffixes_are_encoded() -> None:
    _, h, body, _ = call(JSONResponse(json.loads(BIG)), "gzip")
    assert h["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(body)) == json.loads(BIG)
    _, h, _, _ = call(Response(BIG, media_type="application/problem+json"), "gzip")
    assert h["content-encoding"] == "gzip"


@pytest.mark.parametrize("status", [202, 204, 206, 400, 404, 406, 500])
def test_only_status_200_is_encoded(status: int) -> None:
    payload = b"" if status == 204 else BIG
    got, h, body, _ = call(dicom_json(payload, status), "gzip")
    assert got == status
    assert "content-encoding" not in h
    assert h["vary"] == "Accept-Encoding"
    assert body == payload


def test_an_existing_content_encoding_is_left_alone() -> None:
    pre = gzip.compress(BIG)
    _, h, body, _ = call(dicom_json(pre, headers={"Content-Encoding": "gzip"}), "zstd")
    assert h.getlist("content-encoding") == ["gzip"]
    assert body == pre


def test_vary_and_strong_etag() -> None:
    app = dicom_json(BIG, headers={"Vary": "Accept", "ETag": '"abc"'})
    _, h, _, _ = call(app, "gzip")
    assert h.getlist("vary") == ["Accept, Accept-Encoding"]
    assert h["etag"] == '"abc-gzip"'  # a strong validator differs per coding
    _, h, _, _ = call(dicom_json(BIG, headers={"ETag": 'W/"abc"'}), "zstd")
    assert h["etag"] == 'W/"abc"'
    _, h, _, _ = call(dicom_json(BIG, headers={"ETag": '"abc"'}), "identity")
    assert h["etag"] == '"abc"'


def test_head_is_not_encoded() -> None:
    _, h, _, _ = call(dicom_json(BIG), "gzip", method="HEAD")
    assert "content-encoding" not in h
    assert h["vary"] == "Accept-Encoding"


def test_paths_outside_the_prefix_are_untouched() -> None:
    for path in ("/auth/token", "/audit", "/api/nodes", "/dicom-webx/studies", "/health"):
        _, h, body, _ = call(dicom_json(BIG), "gzip", path=path)
        assert "content-encoding" not in h and "vary" not in h, path
        assert body == BIG


def test_json_sent_in_several_chunks_is_buffered_and_encoded() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(BIG), 1000):
            yield BIG[i : i + 1000]

    app = StreamingResponse(chunks(), media_type="application/dicom+json")
    _, h, body, messages = call(app, "gzip")
    assert h["content-encoding"] == "gzip"
    assert gzip.decompress(body) == BIG
    assert len(messages) == 2  # start, one encoded body


def test_large_bodies_are_encoded_off_the_event_loop() -> None:
    big = json.dumps([{"00100010": {"vr": "PN", "Value": [f"DOE^{i}"]}} for i in range(30000)])
    payload = big.encode()
    assert len(payload) > encoding.THREAD_THRESHOLD
    for offer, decode in (("gzip", gzip.decompress), ("zstd", imagecodecs.zstd_decode)):
        _, h, body, _ = call(dicom_json(payload), offer)
        assert h["content-encoding"] == offer
        assert decode(body) == payload


def test_multipart_streams_pass_through_unbuffered_and_unencoded() -> None:
    sent: list[Message] = []
    parts = [b"--b\r\nContent-Type: application/dicom\r\n\r\n", os.urandom(5000), b"\r\n--b--\r\n"]

    async def stream() -> AsyncIterator[bytes]:
        for n, part in enumerate(parts):
            # every earlier chunk has left before the next one is produced
            assert len(sent) == 1 + n
            yield part

    app = StreamingResponse(
        stream(), media_type='multipart/related; type="application/dicom"; boundary=b'
    )
    _, h, body, messages = call(app, "gzip, zstd", sent=sent)
    assert "content-encoding" not in h and "vary" not in h
    assert body == b"".join(parts)
    assert [m["body"] for m in messages[1:-1]] == parts


@pytest.mark.parametrize(
    "media", ["application/octet-stream", "image/jpeg", "application/dicom", "text/plain"]
)
def test_non_json_media_types_are_untouched(media: str) -> None:
    _, h, body, _ = call(Response(BIG, media_type=media), "gzip")
    assert "content-encoding" not in h and "vary" not in h
    assert body == BIG


def test_incompressible_body_is_sent_as_is() -> None:
    noise = os.urandom(4096)
    _, h, body, _ = call(dicom_json(noise), "gzip")
    assert "content-encoding" not in h
    assert body == noise


def test_an_encoder_failure_falls_back_to_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(coding: str, **_: int) -> Callable[[bytes], bytes]:
        def fail(data: bytes) -> bytes:
            raise RuntimeError("boom")

        return fail

    monkeypatch.setattr(encoding, "encoder", broken)
    status, h, body, _ = call(dicom_json(BIG), "gzip")
    assert (status, body, "content-encoding" in h) == (200, BIG, False)
    assert h["vary"] == "Accept-Encoding"


def test_an_app_failure_before_the_body_propagates() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/dicom+json")],
            }
        )
        await send({"type": "http.response.body", "body": BIG[:100], "more_body": True})
        raise RuntimeError("index gone")

    sent: list[Message] = []
    with pytest.raises(RuntimeError, match="index gone"):
        call(app, "gzip", sent=sent)
    assert sent == []  # nothing left: an outer error handler can still answer 500


def test_unknown_codings_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="br"):
        ContentEncodingMiddleware(dicom_json(BIG), codings=("br",))
