"""Zero-copy sending writes to its own connection even when the descriptor number is
reused (dicomhub.dicomweb.zerocopy; RFC 9112 §7.1 chunks).

What came in: a 4 MB stored file sent by ``DirectSocket.send_files_async`` to a client
that does not read at first; while the sending thread waits, the server side of the
connection is closed (as uvicorn does when a client leaves) and a new connection is made,
which gets the same descriptor number.  Real sockets (socket pairs); the transport is a
stand-in that reports an open, drained transport, as uvicorn's does at that point.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from pathlib import Path

from dicomhub.dicomweb.zerocopy import DirectSocket, FilePart


class _OpenTransport:
    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _drain(sock: socket.socket, into: list[int]) -> None:
    while chunk := sock.recv(1 << 16):
        into[0] += len(chunk)


def test_a_reused_descriptor_number_gets_nothing(tmp_path: Path) -> None:
    stored = tmp_path / "instance.dcm"
    stored.write_bytes(os.urandom(4 << 20))
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    server.setblocking(False)
    before = _open_fds()

    async def scenario() -> tuple[int, int, int]:
        direct = DirectSocket(_OpenTransport(), server.fileno())
        task = asyncio.ensure_future(direct.send_files_async([FilePart(b"head", stored, b"tail")]))
        await asyncio.sleep(0.3)  # the thread now waits for the client to read
        number = server.fileno()
        server.close()  # what uvicorn does when the client goes away
        other, other_peer = socket.socketpair()  # the next connection
        reused = number in (other.fileno(), other_peer.fileno())
        received = [0]
        reader = threading.Thread(target=_drain, args=(client, received))
        reader.start()
        sent = await asyncio.wait_for(task, 30)
        client.shutdown(socket.SHUT_RDWR)
        reader.join(10)
        for end in (other, other_peer):
            end.setblocking(False)
        stray = 0
        for end in (other, other_peer):
            with contextlib.suppress(BlockingIOError):
                stray += len(end.recv(1 << 16))
        other.close()
        other_peer.close()
        assert reused, "the test needs the number to be reused to prove anything"
        return sent, received[0], stray

    sent, received, stray = asyncio.run(scenario())
    client.close()
    expected = len(b"%x\r\n" % (4 + (4 << 20) + 4)) + 4 + (4 << 20) + 4 + 2
    assert sent == expected
    assert received == expected  # the whole response reached its own client
    assert stray == 0  # and nothing went to the connection that got the number
    assert _open_fds() == before - 2  # the duplicate is closed (and both ends of the pair)
