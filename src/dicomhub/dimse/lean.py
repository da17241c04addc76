"""Storage associations without pynetdicom's association machinery (PS3.8 §7, §9; PS3.7
§9.1.1 C-STORE, §9.1.5 C-ECHO).

pynetdicom serves every association with two threads (the DICOM Upper Layer state
machine and the DIMSE dispatcher) that poll each other through queues, and turns every
PDU into several objects and events.  For an association that only stores — what a
modality, a PACS forwarding studies or ``storescu`` opens — that machinery costs as
much CPU as storing the instance itself.  Here one thread per association reads the
socket, answers C-ECHO and C-STORE requests, and stores through the same
:class:`~dicomhub.dimse.handlers.DimseHandlers` code (access control, staging, the store
service, audit) as the pynetdicom path.

Which associations: :func:`lean_request` peeks (``MSG_PEEK``) at the A-ASSOCIATE-RQ and
takes the association only when it is plainly one of these: the DICOM application
context, every proposed abstract syntax a storage SOP class or Verification, and no
user information beyond Maximum Length, Implementation Class UID and Implementation
Version Name (no role selection, user identity, asynchronous operations or extended
negotiation).  Everything else — query/retrieve, storage commitment, C-GET's role
selection, DICOM TLS — is left to pynetdicom, which then reads the same untouched bytes.

The negotiation is pynetdicom's own (:func:`pynetdicom.presentation.negotiate_as_acceptor`
against the AE's supported contexts) and so are the A-ASSOCIATE-AC/RJ encoders, so both
paths accept the same contexts with the same transfer syntaxes.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from dicomhub.dimse import command as cmd
from dicomhub.dimse import receive
from dicomhub.dimse import status as st

if TYPE_CHECKING:
    from pynetdicom import AE

    from dicomhub.core.access import Principal
    from dicomhub.dimse.handlers import DimseHandlers

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
A_ASSOCIATE_RQ_TYPE = 0x01
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_ABORT_TYPE = 0x07
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_STORE_RQ = 0x0001
#: An A-ASSOCIATE-RQ larger than this is left to pynetdicom (ours are ~1 KB).
MAX_REQUEST = 256 * 1024
#: A P-DATA-TF is refused beyond this even when ``max_pdu`` is 0 (no limit announced):
#: its buffer is allocated before its bytes arrive.
MAX_P_DATA = 64 << 20
_PDU_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")
#: Plain user information sub-items (PS3.7 D.3.3.1, D.3.3.2): anything else means a
#: negotiation this path does not do.
_PLAIN_USER_ITEMS = (
    MaximumLengthNotification,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
)


class _Closed(Exception):
    """The peer closed the connection, or sent an A-ABORT."""


class _Abort(Exception):
    """Something the peer sent ends the association with an A-P-ABORT (PS3.8 §7.3)."""

    def __init__(self, reason: int, why: str) -> None:
        super().__init__(why)
        self.reason = reason


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise _Closed("the peer closed the connection")
        got += k
    return buf


class NoRequest(Exception):
    """No whole A-ASSOCIATE-RQ arrived within the ACSE timeout (ARTIM, PS3.8 §9.1.5):
    the connection is to be closed."""


def _peek(sock: socket.socket, n: int, deadline: float) -> bytes:
    """The first ``n`` bytes waiting on ``sock``, left there (``MSG_PEEK``); raises
    :class:`NoRequest` when the peer closes or has not sent them all by ``deadline``
    (a peer that sends a few bytes and stops cannot hold the thread longer)."""
    while True:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = sock.recv(n, socket.MSG_PEEK)
        except OSError as exc:  # the timeout, or a reset
            raise NoRequest(str(exc) or "timed out") from exc
        if not data:
            raise NoRequest("the peer closed the connection")
        if len(data) >= n:
            return data
        if time.monotonic() >= deadline:
            raise NoRequest(f"{len(data)} of {n} bytes of the A-ASSOCIATE-RQ arrived")
        time.sleep(0.001)  # the rest is on its way: recv would return the same at once


def lean_request(sock: socket.socket, timeout: float, storage: frozenset[str]) -> Any | None:
    """The A-ASSOCIATE-RQ primitive waiting on ``sock`` (peeked, not read) when this
    module serves such an association (see the module documentation), else ``None``
    (pynetdicom serves it).  Raises :class:`NoRequest` when no whole request arrives
    within ``timeout`` (the ACSE timeout)."""
    previous = sock.gettimeout()
    deadline = time.monotonic() + timeout
    try:
        pdu_type, length = _PDU_HEADER.unpack(_peek(sock, 6, deadline))
        if pdu_type != A_ASSOCIATE_RQ_TYPE or length > MAX_REQUEST:
            return None
        data = _peek(sock, 6 + length, deadline)
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(previous)
    try:
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(data)
        primitive = pdu.to_primitive()
    except Exception:  # malformed: pynetdicom answers it
        return None
    if str(primitive.application_context_name) != APPLICATION_CONTEXT:
        return None
    contexts = primitive.presentation_context_definition_list or []
    if not contexts or any(
        str(cx.abstract_syntax) not in storage and str(cx.abstract_syntax) != VERIFICATION
        for cx in contexts
    ):
        return None
    if any(type(item) not in _PLAIN_USER_ITEMS for item in primitive.user_information or []):
        return None
    return primitive


@dataclass
class _Message:
    """A DIMSE message being received on one presentation context."""

    context_id: int
    command: bytearray = field(default_factory=bytearray)
    command_done: bool = False
    fields: dict[int, bytes] | None = None
    data: list[memoryview] = field(default_factory=list)


class LeanAssociation:
    """Serves one storage association on ``sock`` (blocking, on the calling thread)."""

    def __init__(
        self,
        sock: socket.socket,
        address: tuple[Any, ...],
        request: Any,
        ae: AE,
        handlers: DimseHandlers,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.sock = sock
        self.address = str(address[0]) if address else ""
        self.request = request
        self.ae = ae
        self.handlers = handlers
        self.on_close = on_close
        self.calling = str(request.calling_ae_title).strip()
        self.accepted: dict[int, PresentationContext] = {}
        self.peer_max = 0
        self.principal: Principal | None = None

    # -- the association --------------------------------------------------------------------
    def run(self) -> None:
        """Negotiate, then serve requests until release, abort or a network problem."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = None
        try:
            self.sock.settimeout(self.ae.acse_timeout)
            _recv_exact(self.sock, _PDU_HEADER.unpack(_recv_exact(self.sock, 6))[1])
            if not self._negotiate():
                return
            session = self.handlers.open_session(self)
            self.sock.settimeout(self.ae.network_timeout)
            self._serve(session)
        except _Abort as exc:
            log.info("association from %s at %s aborted: %s", self.calling, self.address, exc)
            self._send_abort(exc.reason)
        except _Closed:
            pass
        except TimeoutError:
            log.info("association from %s at %s timed out", self.calling, self.address)
            self._send_abort(0x00)
        except OSError as exc:
            log.info("association from %s at %s: %s", self.calling, self.address, exc)
        except Exception:
            log.exception("association from %s at %s failed", self.calling, self.address)
            self._send_abort(0x00)
        finally:
            with contextlib.suppress(OSError):
                self.sock.close()
            if session is not None:
                self.handlers.close_session(self, session)
            if self.on_close is not None:
                self.on_close()

    def _negotiate(self) -> bool:
        """Authenticate the calling AE (as ``DimseHandlers.on_requested``) and accept
        the association, or reject it; whether it was accepted."""
        self.principal = self.handlers.authenticate(self.calling, self.address)
        if self.principal is None:
            self._reject(0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE
            return False
        acceptors = [a for a in self.ae.active_associations if a.is_acceptor]
        if len(acceptors) + LeanServer.active() > self.ae.maximum_associations:
            self._reject(0x02, 0x03, 0x02)  # rejected-transient, provider, local limit
            return False
        result, _roles = negotiate_as_acceptor(
            self.request.presentation_context_definition_list,
            self.ae.supported_contexts,
            None,
        )
        self.accepted = {
            cx.context_id: cx for cx in result if cx.result == 0x00 and cx.context_id is not None
        }
        for item in self.request.user_information or []:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max = int(item.maximum_length_received or 0)
        ac = A_ASSOCIATE()
        ac.application_context_name = UID(APPLICATION_CONTEXT)
        ac.calling_ae_title = self.request.calling_ae_title
        ac.called_ae_title = self.request.called_ae_title
        ac.result = 0x00
        ac.result_source = 0x01
        ac.presentation_context_definition_results_list = result
        length = MaximumLengthNotification()
        length.maximum_length_received = self.ae.maximum_pdu_size
        uid = ImplementationClassUIDNotification()
        uid.implementation_class_uid = self.ae.implementation_class_uid
        info: list[Any] = [length, uid]
        if self.ae.implementation_version_name:
            version = ImplementationVersionNameNotification()
            version.implementation_version_name = self.ae.implementation_version_name
            info.append(version)
        ac.user_information = info
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(ac)
        self.sock.sendall(pdu.encode())
        return True

    def _reject(self, result: int, source: int, reason: int) -> None:
        log.info(
            "rejecting association from %s at %s (0x%02X 0x%02X 0x%02X)",
            self.calling,
            self.address,
            result,
            source,
            reason,
        )
        rj = A_ASSOCIATE()
        rj.result, rj.result_source, rj.diagnostic = result, source, reason
        pdu = A_ASSOCIATE_RJ()
        pdu.from_primitive(rj)
        with contextlib.suppress(OSError):
            self.sock.sendall(pdu.encode())
            # PS3.8 §7.1.1.7: the requestor closes; wait for it a little
            self.sock.settimeout(2.0)
            with contextlib.suppress(OSError, _Closed):
                while self.sock.recv(4096):
                    pass

    def _send_abort(self, reason: int) -> None:
        """An A-ABORT from the service provider (A-P-ABORT, PS3.8 §9.3.8) with ``reason``."""
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02" + bytes([reason]))

    # -- messages ---------------------------------------------------------------------------
    def _serve(self, session: Any) -> None:
        limit = self.ae.maximum_pdu_size
        message: _Message | None = None
        while True:
            pdu_type, length = _PDU_HEADER.unpack(_recv_exact(self.sock, 6))
            if pdu_type == A_RELEASE_RQ:
                _recv_exact(self.sock, length)
                if message is not None:
                    log.info("release from %s during a message: it is dropped", self.calling)
                self.sock.sendall(b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RP
                return
            if pdu_type == A_ABORT_TYPE:
                raise _Closed("the peer aborted the association")
            if pdu_type != P_DATA_TF:
                raise _Abort(0x02, f"unexpected PDU type 0x{pdu_type:02X}")
            if (limit and length > limit + 6) or length > MAX_P_DATA:
                raise _Abort(0x06, f"a P-DATA-TF of {length} bytes (at most {limit} agreed)")
            body = memoryview(_recv_exact(self.sock, length))
            pos = 0
            while pos < length:
                if pos + 6 > length:
                    raise _Abort(0x06, "a truncated presentation data value")
                item_length, context_id, control = _PDV_HEADER.unpack_from(body, pos)
                end = pos + 4 + item_length
                if item_length < 2 or end > length:
                    raise _Abort(0x06, "a presentation data value of a wrong length")
                fragment = body[pos + 6 : end]
                pos = end
                if context_id not in self.accepted:
                    raise _Abort(0x06, f"presentation context {context_id} was not accepted")
                if message is None:
                    message = _Message(context_id)
                elif message.context_id != context_id:
                    raise _Abort(0x02, "a message interleaved with another context's")
                if control & 0x01:  # a Command Set fragment
                    if message.command_done:
                        raise _Abort(0x02, "a Command Set after the data set began")
                    message.command += fragment
                    if control & 0x02:
                        message.command_done = True
                        message.fields = receive.decode_command(bytes(message.command))
                        if message.fields is None:
                            raise _Abort(0x06, "a malformed Command Set")
                        if _us(message.fields.get(0x0800)) == cmd.NO_DATA_SET:
                            self._dispatch(message, session)
                            message = None
                else:
                    if not message.command_done:
                        raise _Abort(0x02, "a data set before its Command Set")
                    message.data.append(fragment)
                    if control & 0x02:
                        self._dispatch(message, session)
                        message = None

    def _dispatch(self, message: _Message, session: Any) -> None:
        fields = message.fields
        assert fields is not None
        field_ = _us(fields.get(0x0100))
        context = self.accepted[message.context_id]
        message_id = _us(fields.get(0x0110))
        if message_id is None:
            raise _Abort(0x06, "a request without a Message ID")
        sop_class = _uid(fields.get(0x0002))
        if field_ == C_ECHO_RQ and not message.data:
            self._respond(
                message.context_id,
                (
                    (0x0002, "UI", sop_class or VERIFICATION),
                    (0x0100, "US", C_ECHO_RSP),
                    (0x0120, "US", message_id),
                    (0x0800, "US", cmd.NO_DATA_SET),
                    (0x0900, "US", st.SUCCESS),
                ),
            )
            return
        if field_ != C_STORE_RQ or not message.data:
            raise _Abort(0x02, f"a DIMSE request 0x{field_ or 0:04X} this association cannot carry")
        sop_instance = _uid(fields.get(0x1000))
        if not sop_class or not sop_instance:
            raise _Abort(0x06, "a C-STORE-RQ without its SOP Class or Instance UID")
        status, comment = self.handlers.store_fragments(
            session,
            self,
            sop_class,
            sop_instance,
            str(context.transfer_syntax[0]),
            message.data,
        )
        fields_out: list[tuple[int, str, Any]] = [
            (0x0002, "UI", sop_class),
            (0x0100, "US", cmd.C_STORE_RSP),
            (0x0120, "US", message_id),
            (0x0800, "US", cmd.NO_DATA_SET),
            (0x0900, "US", status),
        ]
        if status != st.SUCCESS and comment:
            fields_out.append((0x0902, "LO", comment[:64]))
        fields_out.append((0x1000, "UI", sop_instance))
        self._respond(message.context_id, fields_out)

    def _respond(self, context_id: int, fields: Any) -> None:
        """Send a Command Set (no data set) in P-DATA-TF PDUs within the peer's maximum."""
        body = cmd._elements(fields)
        if body is None:
            raise _Abort(0x00, "cannot encode the response")
        encoded = struct.pack("<HHII", 0, 0, 4, len(body)) + body
        room = (self.peer_max - 6) if self.peer_max else len(encoded)
        room = max(room, 1)
        chunks = [encoded[i : i + room] for i in range(0, len(encoded), room)]
        out = bytearray()
        for i, chunk in enumerate(chunks):
            control = 0x03 if i == len(chunks) - 1 else 0x01
            pdv = _PDV_HEADER.pack(len(chunk) + 2, context_id, control) + chunk
            out += _PDU_HEADER.pack(P_DATA_TF, len(pdv)) + pdv
        self.sock.sendall(out)


def _us(value: bytes | None) -> int | None:
    return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None


def _uid(value: bytes | None) -> str:
    return value.decode("ascii", "replace").rstrip("\x00 ") if value else ""


class LeanServer:
    """Counts the associations served here (for the AE's association limit)."""

    _active = 0
    #: associations served here since the process started
    served = 0
    _lock = threading.Lock()

    @classmethod
    def active(cls) -> int:
        """Associations being served by this module in this process."""
        return cls._active

    @classmethod
    def serve(cls, association: LeanAssociation) -> None:
        """Run ``association`` on this thread, counted."""
        with cls._lock:
            cls._active += 1
            cls.served += 1
        try:
            association.run()
        finally:
            with cls._lock:
                cls._active -= 1
