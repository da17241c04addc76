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


def test_presentation_contexts_copied_field_by_field() -> None:
    """In: every storage SOP class with three transfer syntaxes and SCP/SCU roles set:
    the copies hold equal values in objects of their own (a change to one copy's transfer
    syntaxes or role leaves the original alone); other values are deep-copied."""
    from pynetdicom import AllStoragePresentationContexts
    from pynetdicom.presentation import PresentationContext

    contexts = []
    for i, cx in enumerate(AllStoragePresentationContexts):
        new = PresentationContext()
        new.context_id = (2 * i + 1) % 256
        new.abstract_syntax = cx.abstract_syntax
        new.transfer_syntax = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.5"]
        new.scp_role, new.scu_role = True, False
        contexts.append(new)
    copies = transport.copy_contexts(contexts)
    assert len(copies) == len(contexts)
    for original, copied in zip(contexts, copies, strict=True):
        assert copied is not original
        assert copied.context_id == original.context_id
        assert copied.abstract_syntax == original.abstract_syntax
        assert copied.transfer_syntax == original.transfer_syntax
        assert copied.transfer_syntax is not original.transfer_syntax
        assert (copied.scp_role, copied.scu_role) == (True, False)
    copies[0].transfer_syntax.append("1.2.840.10008.1.2.4.80")
    copies[0].scp_role = False
    assert len(contexts[0].transfer_syntax) == 3 and contexts[0].scp_role is True
    nested = {"a": [1, [2, 3]]}
    deep = transport.copy_contexts(nested)
    assert deep == nested and deep["a"][1] is not nested["a"][1]
