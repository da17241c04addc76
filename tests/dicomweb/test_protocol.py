"""uvicorn's httptools protocol without its body copies (dicomweb/protocol.py), served
for real by uvicorn on a loopback port and fed by real HTTP clients."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import uvicorn

from conftest import free_port
from dicomhub.config import Settings
from dicomhub.dicomweb.protocol import BodyProtocol
from dicomhub.dicomweb.worker import uvicorn_options


class _Recorder:
    """An ASGI app answering with the SHA-256 and size of each body it received; it
    records the type of every body message."""

    def __init__(self) -> None:
        self.types: list[type] = []
        self.chunks = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        h = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            body = message.get("body", b"")
            self.types.append(type(body))
            self.chunks += bool(body)
            h.update(body)
            size += len(body)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": f"{h.hexdigest()} {size}".encode()})


@pytest.fixture
def served() -> Iterator[tuple[str, _Recorder]]:
    app = _Recorder()
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", http=BodyProtocol
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=20)


def test_dicomhub_serves_http_with_the_body_protocol() -> None:
    """What came in: the settings of `dicomhub serve`: uvicorn is given BodyProtocol."""
    assert uvicorn_options(Settings())["http"] is BodyProtocol


@pytest.mark.parametrize("size", [0, 1, 65_535, 3 << 20, 40 << 20])
def test_bodies_arrive_whole_as_bytes(served: tuple[str, _Recorder], size: int) -> None:
    """What came in: POST bodies of 0 B, 1 B, 64 KiB, 3 MiB and 40 MiB with a
    Content-Length.  The application receives exactly those bytes, every message body
    a ``bytes`` object (as ASGI requires), in several chunks for the large ones."""
    url, app = served
    body = os.urandom(size)
    r = requests.post(url, data=body, timeout=60)
    assert r.status_code == 200
    assert r.text == f"{hashlib.sha256(body).hexdigest()} {size}"
    assert app.types and all(t is bytes for t in app.types)
    if size >= 3 << 20:
        assert app.chunks > 1


def test_chunked_and_trickled_bodies_arrive_whole(served: tuple[str, _Recorder]) -> None:
    """What came in: a body sent with Transfer-Encoding: chunked in pieces of 1 B to
    1 MiB, and a body trickled over a raw socket a few bytes at a time (so chunks arrive
    while one is still waiting for the application).  Both arrive whole."""
    url, _ = served
    pieces = [os.urandom(n) for n in (1, 7, 65_536, 1 << 20, 3, 200_000)]
    r = requests.post(url, data=iter(pieces), timeout=60)
    assert r.text == f"{hashlib.sha256(b''.join(pieces)).hexdigest()} {sum(map(len, pieces))}"

    body = os.urandom(300_000)
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        for i in range(0, len(body), 50_000):
            sock.sendall(body[i : i + 50_000])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert f"{hashlib.sha256(body).hexdigest()} {len(body)}".encode() in answer


class _Flow:
    def __init__(self) -> None:
        self.paused = 0

    def pause_reading(self) -> None:
        self.paused += 1


class _Parser:
    def should_upgrade(self) -> bool:
        return False


class _Cycle:
    def __init__(self) -> None:
        self.body: bytes | bytearray = bytearray()  # as uvicorn starts a request
        self.response_complete = False
        self.message_event = asyncio.Event()


def test_a_lone_chunk_is_passed_on_as_it_is() -> None:
    """What came in: httptools' body callbacks on one request — a 256 kB chunk while
    nothing waits, then two chunks before the application takes them.  The lone chunk is
    the very object the application gets (``bytes(body) is chunk``: no copy); two waiting
    chunks are joined in order; over uvicorn's high-water mark reading is paused, as
    uvicorn does; after the response nothing is kept."""
    protocol = BodyProtocol.__new__(BodyProtocol)  # only on_body's own state is used
    protocol.parser = _Parser()
    protocol.flow = _Flow()
    protocol.cycle = cycle = _Cycle()
    chunk = os.urandom(256_000)
    protocol.on_body(chunk)
    assert bytes(cycle.body) is chunk and cycle.message_event.is_set()
    assert protocol.flow.paused == 1  # 256 kB > 64 KiB
    cycle.body = bytearray()  # the application took it (uvicorn's receive())
    first, second = b"ab", b"cd"
    protocol.on_body(first)
    protocol.on_body(second)
    assert bytes(cycle.body) == b"abcd" and protocol.flow.paused == 1
    cycle.response_complete = True
    cycle.body = bytearray()
    protocol.on_body(b"late")
    assert cycle.body == bytearray()
