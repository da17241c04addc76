"""Reading PDUs from the socket in whole pieces (PS3.8 §9.3: a PDU is a 6-byte header
and the length it announces).

pynetdicom's ``AssociationSocket.recv`` reads a PDU 4096 bytes at a time, each piece
appended to a growing ``bytearray``: a 256 KiB P-DATA-TF takes 64 calls into the socket
and as many copies, the largest cost of receiving a C-STORE in Python.  :func:`recv`
reads into a buffer of the announced size with ``recv_into`` (as many calls as the
kernel has pieces ready, usually one or two) and keeps pynetdicom's contract: it blocks
until ``nr_bytes`` arrived, and returns what it has when the peer closes.
"""

from __future__ import annotations

from pynetdicom.transport import AssociationSocket

_ORIGINAL = AssociationSocket.recv


def recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``nr_bytes`` from the association's socket (fewer only if the peer closed)."""
    sock = self.socket
    if sock is None:
        return _ORIGINAL(self, nr_bytes)  # pynetdicom's own error handling
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    got = 0
    while got < nr_bytes:
        n = sock.recv_into(view[got:], nr_bytes - got)
        if not n:  # connection closed: what arrived so far, as pynetdicom does
            del view
            del buffer[got:]
            return buffer
        got += n
    return buffer


def install() -> None:
    """Make every association read PDUs with :func:`recv` (idempotent)."""
    AssociationSocket.recv = recv  # type: ignore[method-assign]
