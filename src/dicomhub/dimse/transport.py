"""Two costs of pynetdicom's transport layer: reading PDUs and accepting associations.

**Reading PDUs in whole pieces** (PS3.8 §9.3: a PDU is a 6-byte header and the length
it announces).

pynetdicom's ``AssociationSocket.recv`` reads a PDU 4096 bytes at a time, each piece
appended to a growing ``bytearray``: a 256 KiB P-DATA-TF takes 64 calls into the socket
and as many copies, the largest cost of receiving a C-STORE in Python.  :func:`recv`
reads into a buffer of the announced size with ``recv_into`` (as many calls as the
kernel has pieces ready, usually one or two) and keeps pynetdicom's contract: it blocks
until ``nr_bytes`` arrived, and returns what it has when the peer closes.

**Accepting an association** (PS3.8 §9.3.2): pynetdicom gives every new association a
``deepcopy`` of the server's presentation contexts.  With every storage SOP class in
every accepted transfer syntax that is hundreds of objects whose UIDs pydicom validates
again with a regular expression on the way: ~30 ms of CPU per association, most of what
a modality that opens one association per image costs.  :func:`copy_contexts` copies
them field by field instead (a UID is an immutable ``str``; lists are copied, so what
negotiation changes on one association stays there).
"""

from __future__ import annotations

import copy
from typing import Any

from pynetdicom import transport as _pynetdicom_transport
from pynetdicom.presentation import PresentationContext
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


def copy_contexts(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """``copy.deepcopy`` for pynetdicom's transport module: a list of presentation
    contexts is copied field by field, anything else deeply as before."""
    if isinstance(value, list) and all(isinstance(cx, PresentationContext) for cx in value):
        out = []
        for cx in value:
            new = PresentationContext.__new__(PresentationContext)
            new.__dict__.update(
                {k: list(v) if isinstance(v, list) else v for k, v in vars(cx).items()}
            )
            out.append(new)
        return out
    return copy.deepcopy(value, memo)


def install() -> None:
    """Make every association read PDUs with :func:`recv` and get its presentation
    contexts from :func:`copy_contexts` (idempotent)."""
    AssociationSocket.recv = recv  # type: ignore[method-assign]
    _pynetdicom_transport.deepcopy = copy_contexts  # type: ignore[attr-defined,assignment]
