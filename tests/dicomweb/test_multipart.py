"""The streaming multipart/related parser (RFC 2387, PS3.18 §8.6.1.2)."""

from __future__ import annotations

import random

import pytest

from dicomhub.dicomweb.multipart import (
    DATA,
    END,
    START,
    MultipartError,
    MultipartParser,
    PartHeaders,
    closing,
    parse_content_type,
    part_header,
)


def body(boundary: str, parts: list[bytes]) -> bytes:
    out = b"preamble ignored\r\n"
    for p in parts:
        out += part_header(boundary, "application/dicom") + p + b"\r\n"
    return out + closing(boundary) + b"epilogue"


def parse(data: bytes, boundary: str, chunk: int) -> list[tuple[str, bytes]]:
    parser = MultipartParser(boundary)
    parts: list[tuple[str, bytes]] = []
    for i in range(0, len(data), chunk):
        for event, payload in parser.feed(data[i : i + chunk]):
            if event == START:
                assert isinstance(payload, PartHeaders)
                parts.append((payload.content_type, b""))
            elif event == DATA:
                assert isinstance(payload, (bytes, memoryview))
                ctype, acc = parts[-1]
                parts[-1] = (ctype, acc + bytes(payload))
            else:
                assert event == END
    parser.close()
    return parts


@pytest.mark.parametrize("chunk", [1, 2, 7, 13, 14, 15, 16, 64, 1000, 4099, 1 << 20])
def test_parts_survive_any_chunking(chunk: int) -> None:
    rng = random.Random(chunk)
    boundary = "b0undary-xyz"
    # contents include CRLF, dashes and a near-miss of the delimiter
    payloads = [bytes(rng.getrandbits(8) for _ in range(n)) for n in (0, 1, 100, 5000)] + [
        b"\r\n--b0undary-xy not it\r\n--",
        b"--b0undary-xyz",
    ]
    parsed = parse(body(boundary, payloads), boundary, chunk)
    assert [p for _, p in parsed] == payloads
    assert all(c == "application/dicom" for c, _ in parsed)


def test_truncated_body_is_an_error() -> None:
    data = body("bnd", [b"abc" * 100])
    with pytest.raises(MultipartError, match="closing boundary"):
        parse(data[: len(data) // 2], "bnd", 64)


def test_wrong_boundary_finds_no_parts() -> None:
    with pytest.raises(MultipartError, match="no body part"):
        parse(body("right", [b"x"]), "wrong", 64)


def test_garbage_after_boundary() -> None:
    with pytest.raises(MultipartError):
        parse(b"--bnd garbage\r\n\r\n\r\nx\r\n--bnd--", "bnd", 5)


def test_content_type_parameters() -> None:
    media, params = parse_content_type(
        'Multipart/Related; type="application/dicom"; boundary="a;b=c"'
    )
    assert media == "multipart/related"
    assert params == {"type": "application/dicom", "boundary": "a;b=c"}


def test_random_chunking_with_delimiter_prefixes_everywhere() -> None:
    """Bodies whose parts are full of partial delimiters, fed in chunks of random sizes
    (below, at and above the delimiter's length): every part comes back exactly, and
    large chunks inside a part are passed on as views, not copies."""
    boundary = "dicomhub-0123456789abcdef"
    delimiter = b"\r\n--" + boundary.encode()
    rng = random.Random(7)
    views = 0
    for _ in range(30):
        payloads = []
        for _ in range(rng.randint(1, 4)):
            pieces = [
                delimiter[: rng.randint(1, len(delimiter) - 1)]
                if rng.random() < 0.3
                else bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
                for _ in range(rng.randint(0, 40))
            ]
            payloads.append(b"".join(pieces))
        data = body(boundary, payloads)
        parser = MultipartParser(boundary)
        got: list[bytes] = []
        pos = 0
        while pos < len(data):
            size = rng.choice([1, 5, len(delimiter) - 1, len(delimiter), len(delimiter) + 1])
            size = size if rng.random() < 0.5 else rng.randint(1, 5000)
            for event, payload in parser.feed(data[pos : pos + size]):
                if event == START:
                    got.append(b"")
                elif event == DATA:
                    views += isinstance(payload, memoryview)
                    got[-1] += bytes(payload)  # type: ignore[arg-type]
            pos += size
        parser.close()
        assert got == payloads
    assert views > 0


def test_part_bodies_are_views_of_the_chunks_fed() -> None:
    """What came in: a body of two 200 kB parts fed in chunks of 64 KiB.  Every data
    payload of more than a delimiter's length is a view of a chunk that was fed (its
    bytes are not copied) and the parts come back whole."""
    boundary = "dicomhub-views"
    payloads = [bytes(range(256)) * 800, b"\r\n--dicomhub-view" * 10_000]
    data = body(boundary, payloads)
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    parser = MultipartParser(boundary)
    got: list[bytes] = []
    views = 0
    for c in chunks:
        for event, payload in parser.feed(c):
            if event == START:
                got.append(b"")
            elif event == DATA:
                assert isinstance(payload, (bytes, memoryview))
                if len(payload) > len(parser.delimiter):
                    assert isinstance(payload, memoryview) and payload.obj is c
                    views += 1
                got[-1] += bytes(payload)
    parser.close()
    assert got == payloads
    assert views >= len(chunks) - 1
