"""Storage associations served without pynetdicom's association threads
(dicomhub.dimse.lean), and the ones left to pynetdicom.

What came in, over loopback to a live archive (SQLite and PostgreSQL): pynetdicom
requestors proposing only CT/MR storage and Verification (lean), or also Study Root
C-FIND, or SCP/SCU role selection, or an asynchronous operations window (pynetdicom);
C-ECHO and C-STOREs of a CT and an MR (Explicit and Implicit VR Little Endian); a C-STORE
whose data set names another SOP Instance UID than its command (0xA900); then raw PDUs
written on an established association's socket: a P-DATA-TF on a presentation context
that was not accepted, a data set before its Command Set, a PDU of an unknown type, a
Command Set that is not one and a P-DATA-TF longer than the agreed maximum — each ends
in an A-ABORT from the archive with nothing stored; an association left idle past the
network timeout; more associations than ``max_associations``.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import AsynchronousOperationsWindowNegotiation
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from conftest import SAMPLES, LiveNode
from dicomhub.dimse.lean import LeanServer
from integration.dimse_helpers import qido_instances

CT = SAMPLES / "nema-wg04" / "REF" / "CT1_UNC"
MR = SAMPLES / "nema-wg04" / "REF" / "MR1_UNC"


def _copy(path: object, patient: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient
    return ds


def _associate(node: LiveNode, setup: Callable[[AE], list[object]] | None = None) -> Association:
    ae = AE(ae_title="PYNETSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for cx in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(cx, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    extra = setup(ae) if setup else None
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMHUB", ext_neg=extra)
    assert assoc.is_established
    return assoc


def _patient() -> str:
    return f"LEAN-{generate_uid()[-10:]}"


def test_a_storage_association_is_served_lean(node: LiveNode) -> None:
    """CT/MR storage and Verification only: served by dicomhub.dimse.lean; C-ECHO
    succeeds, both C-STOREs succeed and QIDO-RS finds them."""
    before = LeanServer.served
    patient = _patient()
    assoc = _associate(node)
    try:
        assert assoc.send_c_echo().Status == 0
        for path in (CT, MR):
            assert assoc.send_c_store(_copy(path, patient)).Status == 0
    finally:
        assoc.release()
    assert LeanServer.served == before + 1
    assert len(qido_instances(node, PatientID=patient)) == 2


def test_a_mismatched_command_uid_is_refused(node: LiveNode) -> None:
    """A C-STORE-RQ whose Affected SOP Instance UID differs from the data set's: 0xA900
    (PS3.4 B.2.3), nothing stored; the association goes on and the next C-STORE works."""
    patient = _patient()
    ds = _copy(CT, patient)
    assoc = _associate(node)
    try:
        # pynetdicom takes the command's UID from the data set: edit the encoded command
        from pynetdicom import dimse_primitives

        original = dimse_primitives.C_STORE.AffectedSOPInstanceUID.fset
        other = generate_uid()

        def swapped(self: object, value: object) -> None:
            original(self, other if value == ds.SOPInstanceUID else value)  # type: ignore[misc]

        dimse_primitives.C_STORE.AffectedSOPInstanceUID = property(  # type: ignore[method-assign]
            dimse_primitives.C_STORE.AffectedSOPInstanceUID.fget, swapped
        )
        try:
            assert assoc.send_c_store(ds).Status == 0xA900
        finally:
            dimse_primitives.C_STORE.AffectedSOPInstanceUID = property(  # type: ignore[method-assign]
                dimse_primitives.C_STORE.AffectedSOPInstanceUID.fget, original
            )
        assert assoc.send_c_store(_copy(MR, patient)).Status == 0
    finally:
        assoc.release()
    found = qido_instances(node, PatientID=patient)
    assert len(found) == 1


def _find_context(ae: AE) -> list[object]:
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    return []


def _role(ae: AE) -> list[object]:
    return [build_role(CTImageStorage, scu_role=True, scp_role=False)]


def _async_ops(ae: AE) -> list[object]:
    item = AsynchronousOperationsWindowNegotiation()
    item.maximum_number_operations_invoked = 1
    item.maximum_number_operations_performed = 1
    return [item]


@pytest.mark.parametrize("setup", [_find_context, _role, _async_ops], ids=["find", "role", "async"])
def test_other_associations_are_left_to_pynetdicom(
    node: LiveNode, setup: Callable[[AE], list[object]]
) -> None:
    """Storage plus C-FIND, or with an SCP/SCU role selection item, or an asynchronous
    operations window: pynetdicom serves it (not counted by the lean path) and stores."""
    before = LeanServer.served
    patient = _patient()
    assoc = _associate(node, setup)
    try:
        assert assoc.send_c_store(_copy(CT, patient)).Status == 0
    finally:
        assoc.release()
    assert LeanServer.served == before
    assert len(qido_instances(node, PatientID=patient)) == 1


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BxI", 0x04, len(pdv)) + pdv


def _command(fields: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack("<HHI", 0, e, len(v)) + v for e, v in fields)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _store_command(sop_class: str, sop: str) -> bytes:
    def uid(u: str) -> bytes:
        raw = u.encode()
        return raw + b"\x00" if len(raw) % 2 else raw

    return _command(
        [
            (0x0002, uid(sop_class)),
            (0x0100, struct.pack("<H", 0x0001)),
            (0x0110, struct.pack("<H", 7)),
            (0x0700, struct.pack("<H", 0)),
            (0x0800, struct.pack("<H", 0x0000)),
            (0x1000, uid(sop)),
        ]
    )


RAW_CASES = {
    "unaccepted context": lambda cid: _pdv(
        cid + 100, 0x03, _store_command(CTImageStorage, "1.2.3")
    ),
    "data before command": lambda cid: _pdv(cid, 0x02, b"\x08\x00\x16\x00" * 4),
    "unknown PDU type": lambda cid: struct.pack(">BxI", 0x0B, 4) + b"\x00" * 4,
    "not a command set": lambda cid: _pdv(cid, 0x03, b"\x02\x00\x00\x00\x04\x00\x00\x00"),
    "PDU over the maximum": lambda cid: struct.pack(">BxI", 0x04, 16 << 20),
}


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_protocol_errors_abort_the_association(node: LiveNode, case: str) -> None:
    """Raw PDUs on an established lean association (see the module documentation): the
    archive sends an A-ABORT (the requestor sees the association aborted) and stores
    nothing; a new association then stores as usual."""
    before = LeanServer.served
    assoc = _associate(node)
    assert LeanServer.served == before + 1
    (cx,) = [c for c in assoc.accepted_contexts if c.abstract_syntax == CTImageStorage]
    sock = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert sock is not None
    sock.sendall(RAW_CASES[case](cx.context_id))
    deadline = time.monotonic() + 20
    while not assoc.is_aborted:
        assert time.monotonic() < deadline, "the archive did not abort"
        time.sleep(0.05)
    patient = _patient()
    again = _associate(node)
    try:
        assert again.send_c_store(_copy(CT, patient)).Status == 0
    finally:
        again.release()
    assert len(qido_instances(node, PatientID=patient)) == 1


def _ae(node: LiveNode) -> AE:
    """The application entity of the node's DIMSE server."""
    import gc

    from dicomhub.dimse.server import DimseServer

    (server,) = [
        o
        for o in gc.get_objects()
        if isinstance(o, DimseServer) and o._server is not None and o.port == node.port
    ]
    return server.ae


def test_an_idle_association_is_aborted_after_the_network_timeout(
    node: LiveNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An association that sends nothing for longer than ``network_timeout`` (1 s
    here): the archive aborts it."""
    monkeypatch.setattr(_ae(node), "network_timeout", 1.0)
    assoc = _associate(node)
    deadline = time.monotonic() + 20
    while not assoc.is_aborted:
        assert time.monotonic() < deadline, "an idle association was kept"
        time.sleep(0.1)


def test_the_association_limit_holds(node: LiveNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """``max_associations`` (2 here) counts lean associations: beyond it a request is
    rejected (transient, service provider, local limit exceeded)."""
    monkeypatch.setattr(_ae(node), "maximum_associations", 2)
    held: list[Association] = []
    try:
        held = [_associate(node) for _ in range(2)]
        scu = AE(ae_title="PYNETSCU")
        scu.add_requested_context(CTImageStorage)
        third = scu.associate("127.0.0.1", node.port, ae_title="DICOMHUB")
        assert third.is_rejected
        rj = third.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
    finally:
        for a in held:
            a.release()


def test_an_unregistered_calling_ae_is_rejected(node: LiveNode) -> None:
    """A storage association from an AE title that is no registered device: rejected
    permanently by the service user, calling AE title not recognised (PS3.8 §9.3.4)."""
    scu = AE(ae_title="NOSUCHDEVICE")
    scu.add_requested_context(CTImageStorage)
    assoc = scu.associate("127.0.0.1", node.port, ae_title="DICOMHUB")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)


@pytest.mark.parametrize("sent", [b"", b"\x01\x00\x00"], ids=["nothing", "3 bytes"])
def test_a_connection_that_stalls_before_its_request_is_closed(
    node: LiveNode, monkeypatch: pytest.MonkeyPatch, sent: bytes
) -> None:
    """A TCP connection that sends nothing, or only the first 3 bytes of an
    A-ASSOCIATE-RQ, and then waits: closed once the ACSE timeout (1 s here) has
    passed, and the port goes on serving."""
    monkeypatch.setattr(_ae(node), "acse_timeout", 1.0)
    with socket.create_connection(("127.0.0.1", node.port), timeout=20) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        try:
            data = sock.recv(100)
        except ConnectionResetError:
            data = b""
        assert time.monotonic() - started < 15
        assert data == b"" or data[:1] == b"\x07"  # closed, or an A-ABORT first
    assoc = _associate(node)
    assert assoc.send_c_echo().Status == 0
    assoc.release()
