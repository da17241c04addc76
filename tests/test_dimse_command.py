"""Command Sets written by dicomhub.dimse.command equal pydicom's encoding (PS3.7 §E.1)."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom import dimse_messages, dimse_primitives, dsutils

from dicomhub.dimse import command

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901"  # odd length


def _primitives() -> list[tuple[str, object]]:
    """Requests and responses of every DIMSE-C and DIMSE-N service, filled in."""
    out: list[tuple[str, object]] = []
    store = dimse_primitives.C_STORE()
    store.MessageID = 3
    store.AffectedSOPClassUID = SOP_CLASS
    store.AffectedSOPInstanceUID = SOP_INSTANCE
    store.Priority = 2
    store.MoveOriginatorApplicationEntityTitle = "ORIGIN"
    store.MoveOriginatorMessageID = 9
    out.append(("C_STORE_RQ", store))
    for status, comment in ((0x0000, None), (0xA900, "SOPInstanceUID differs"), (0xB000, None)):
        rsp = dimse_primitives.C_STORE()
        rsp.MessageIDBeingRespondedTo = 3
        rsp.AffectedSOPClassUID = SOP_CLASS
        rsp.AffectedSOPInstanceUID = SOP_INSTANCE
        rsp.Status = status
        if comment:
            rsp.ErrorComment = comment
        out.append(("C_STORE_RSP", rsp))
    find = dimse_primitives.C_FIND()
    find.MessageIDBeingRespondedTo = 5
    find.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    find.Status = 0xFF00
    find.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    out.append(("C_FIND_RSP", find))
    move = dimse_primitives.C_MOVE()
    move.MessageIDBeingRespondedTo = 6
    move.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    move.Status = 0xFF00
    move.NumberOfRemainingSuboperations = 12
    move.NumberOfCompletedSuboperations = 3
    move.NumberOfFailedSuboperations = 1
    move.NumberOfWarningSuboperations = 0
    out.append(("C_MOVE_RSP", move))
    echo = dimse_primitives.C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    echo.Status = 0
    out.append(("C_ECHO_RSP", echo))
    report = dimse_primitives.N_EVENT_REPORT()
    report.MessageID = 11
    report.AffectedSOPClassUID = "1.2.840.10008.1.20.1"
    report.AffectedSOPInstanceUID = "1.2.840.10008.1.20.1.1"
    report.EventTypeID = 2
    out.append(("N_EVENT_REPORT_RQ", report))
    get = dimse_primitives.N_GET()
    get.MessageIDBeingRespondedTo = 4
    get.AffectedSOPClassUID = "1.2.840.10008.5.1.1.16"
    get.AffectedSOPInstanceUID = "1.2.840.10008.5.1.1.17"
    get.Status = 0x0107
    out.append(("N_GET_RSP", get))
    return out


@pytest.mark.parametrize(("name", "primitive"), _primitives(), ids=lambda v: str(v)[:20])
def test_command_set_bytes_equal_pydicoms(name: str, primitive: object) -> None:
    """Each message type, built by pynetdicom from a filled-in primitive: same bytes."""
    msg = getattr(dimse_messages, name)()
    msg.primitive_to_message(primitive)
    expected = dsutils.encode(msg.command_set, True, True)
    assert expected
    assert command.encode_command_set(msg.command_set) == expected
    assert command.encode(msg.command_set, True, True) == expected


def test_multivalued_and_attribute_tags() -> None:
    """Attribute Identifier List (AT, several values) and an odd-length Error Comment."""
    ds = Dataset()
    ds.CommandGroupLength = 0
    ds.AttributeIdentifierList = [0x00100010, 0x00100020]
    ds.OffendingElement = [0x00080018]
    ds.ErrorComment = "bad value"
    ds.Status = 0x0106
    assert command.encode_command_set(ds) == dsutils.encode(ds, True, True)


def test_anything_else_goes_to_pydicom() -> None:
    """A data set outside group 0000, or explicit VR, is not written here."""
    ds = Dataset()
    ds.PatientName = "DOE^JANE"
    assert command.encode_command_set(ds) is None
    assert command.encode(ds, True, True) == dsutils.encode(ds, True, True)
    cmd = Dataset()
    cmd.Status = 0
    assert command.encode(cmd, False, True) == dsutils.encode(cmd, False, True)


def _store_rsp(
    status: int,
    comment: str | None = None,
    offending: list[int] | None = None,
    uids: bool = True,
) -> dimse_primitives.C_STORE:
    rsp = dimse_primitives.C_STORE()
    rsp.MessageIDBeingRespondedTo = 3
    if uids:
        rsp.AffectedSOPClassUID = SOP_CLASS
        rsp.AffectedSOPInstanceUID = SOP_INSTANCE
    rsp.Status = status
    if comment is not None:
        rsp.ErrorComment = comment
    if offending is not None:
        rsp.OffendingElement = offending
    return rsp


STORE_RESPONSES = [
    _store_rsp(0x0000),
    _store_rsp(0x0000, uids=False),
    _store_rsp(0xA900, "SOPInstanceUID differs"),  # even length
    _store_rsp(0xA700, "out of resources: disk full"),  # odd length
    _store_rsp(0xC000, "Ärger mit dem Datensatz"),  # Latin-1 in LO
    _store_rsp(0xB000, offending=[0x00100010, 0x00100020]),
]


def _sent(primitive: object, fast: bool, max_pdu: int = 0) -> list[list[tuple[int, bytes]]]:
    """The P-DATA values that pynetdicom's send_msg, or dicomhub's, queues for the DUL."""
    from pynetdicom import AE, _config
    from pynetdicom.association import Association

    assoc = Association(AE(), "acceptor")
    assoc.requestor.maximum_length = max_pdu
    level = _config.LOG_HANDLER_LEVEL
    _config.LOG_HANDLER_LEVEL = "none"
    try:
        send = command.send_msg if fast else command._ORIGINAL_SEND
        send(assoc.dimse, primitive, 5)  # type: ignore[arg-type]
    finally:
        _config.LOG_HANDLER_LEVEL = level
    out = []
    while not assoc.dul.to_provider_queue.empty():
        pdata = assoc.dul.to_provider_queue.get_nowait()
        out.append([tuple(v) for v in pdata.presentation_data_value_list])
    return out


@pytest.mark.parametrize("rsp", STORE_RESPONSES, ids=lambda r: f"{r.Status:04X}")
def test_store_response_sent_as_pynetdicom_sends_it(rsp: dimse_primitives.C_STORE) -> None:
    """The same P-DATA, byte for byte: one value, Command Set and last fragment."""
    command.install()
    fast = _sent(rsp, fast=True)
    assert fast == _sent(rsp, fast=False)
    assert len(fast) == 1 and fast[0][0][1][0] == 0x03
    assert command.store_response_command(rsp) == fast[0][0][1][1:]


def test_store_response_larger_than_the_peer_pdu_goes_through_pynetdicom() -> None:
    """A peer whose maximum PDU cannot hold the response in one P-DATA: pynetdicom
    fragments it (PS3.8 §E.2), with the same bytes."""
    command.install()
    rsp = _store_rsp(0xA900, "SOPInstanceUID differs")
    small = _sent(rsp, fast=True, max_pdu=64)
    assert len(small) > 1
    assert small == _sent(rsp, fast=False, max_pdu=64)
