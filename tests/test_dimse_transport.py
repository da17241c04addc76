"""dicomhub.dimse.transport.recv keeps pynetdicom's contract for reading PDUs (PS3.8 §9.3):
all the bytes asked for, however the peer splits them; what arrived if it closes."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from dicomhub.dimse import transport


class _Holder:
    """The one attribute of pynetdicom's AssociationSocket that recv uses."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


def _recv(sock: socket.socket, n: int) -> bytearray:
    holder: Any = _Holder(sock)
    return transport.recv(holder, n)


def test_reads_a_pdu_sent_in_small_pieces() -> None:
    """In: 300 000 bytes written 7 000 at a time with pauses: one call returns them all."""
    a, b = socket.socketpair()
    payload = bytes(range(256)) * 1172 + b"tail"
    payload = payload[:300_000]

    def send() -> None:
        for i in range(0, len(payload), 7000):
            a.sendall(payload[i : i + 7000])
            time.sleep(0.0005)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        got = _recv(b, len(payload))
    finally:
        sender.join()
        a.close()
        b.close()
    assert bytes(got) == payload


def test_returns_what_arrived_when_the_peer_closes() -> None:
    """In: 10 bytes then the peer closes while 6 are announced more: those 10 bytes."""
    a, b = socket.socketpair()
    a.sendall(b"0123456789")
    a.close()
    try:
        got = _recv(b, 16)
    finally:
        b.close()
    assert bytes(got) == b"0123456789"


def test_install_replaces_pynetdicoms_reader() -> None:
    """After install(), every association's socket reads through transport.recv."""
    from pynetdicom.transport import AssociationSocket

    transport.install()
    assert AssociationSocket.recv is transport.recv
