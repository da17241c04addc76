"""C-STORE requests received by dicomhub.dimse.receive equal what pynetdicom decodes
(PS3.7 §9.3.1, PS3.8 Annex E); other messages go through pynetdicom unchanged.

What came in: C-STORE-RQ messages encoded by pynetdicom's own message encoder, whole and
split into P-DATA of several sizes, with and without the Move Originator elements;
C-ECHO-RQ, C-FIND-RQ and a C-STORE-RQ with an extra element (left to pynetdicom);
a data set interrupted by a Command Set or another presentation context (aborted);
cut and malformed Command Sets.  Real pynetdicom ``Association`` objects (not connected)
provide the DIMSE service provider, its DUL event queue and its message queue.
"""

from __future__ import annotations

import logging
import queue
import struct
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, dimse_messages, dimse_primitives
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import P_DATA

from dicomhub.dimse import command, receive

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"
SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901"  # odd length
DATA_SET = bytes(range(256)) * 1000 + b"\x01"  # 256001 bytes


@pytest.fixture(autouse=True)
def _installed() -> Iterator[None]:
    """As dicomhub's DIMSE server runs: pynetdicom's logging handlers unbound."""
    command.install()
    receive.install()
    level = _config.LOG_HANDLER_LEVEL
    _config.LOG_HANDLER_LEVEL = "none"
    yield
    _config.LOG_HANDLER_LEVEL = level


def _store(originator: bool = False) -> dimse_primitives.C_STORE:
    req = dimse_primitives.C_STORE()
    req.MessageID = 7
    req.AffectedSOPClassUID = SOP_CLASS
    req.AffectedSOPInstanceUID = SOP_INSTANCE
    req.Priority = 1
    if originator:
        req.MoveOriginatorApplicationEntityTitle = "MOVER"
        req.MoveOriginatorMessageID = 42
    req.DataSet = BytesIO(DATA_SET)
    return req


def _p_data(primitive: Any, message: str, max_pdu: int, context_id: int = 3) -> list[P_DATA]:
    msg = getattr(dimse_messages, message)()
    msg.primitive_to_message(primitive)
    msg.context_id = context_id
    return list(msg.encode_msg(context_id, max_pdu))


def _provider() -> Any:
    return Association(AE(), "acceptor").dimse


def _deliver(provider: Any, p_data: list[P_DATA]) -> tuple[int, Any]:
    for p in p_data:
        provider.receive_primitive(p)
    return provider.msg_queue.get_nowait()  # type: ignore[no-any-return]


def _original(p_data: list[P_DATA]) -> tuple[int, Any]:
    provider = _provider()
    for p in p_data:
        receive._ORIGINAL(provider, p)
    return provider.msg_queue.get_nowait()  # type: ignore[no-any-return]


_FIELDS = (
    "MessageID",
    "AffectedSOPClassUID",
    "AffectedSOPInstanceUID",
    "Priority",
    "MoveOriginatorApplicationEntityTitle",
    "MoveOriginatorMessageID",
)


@pytest.mark.parametrize("max_pdu", [0, 16382, 4096])
@pytest.mark.parametrize("originator", [False, True])
def test_store_request_as_pynetdicom_decodes_it(max_pdu: int, originator: bool) -> None:
    """The same request fields and data set bytes as pynetdicom's own decoding, the data
    set kept as the fragments that carried it."""
    p_data = _p_data(_store(originator), "C_STORE_RQ", max_pdu)
    context_id, fast = _deliver(_provider(), p_data)
    ref_context, ref = _original(p_data)
    assert isinstance(fast, receive.ReceivedStore)
    assert context_id == ref_context == fast._context_id == 3
    for name in _FIELDS:
        assert getattr(fast, name) == getattr(ref, name), name
    assert fast.MessageID == 7 and fast.Priority == 1
    assert fast.is_valid_request and ref.is_valid_request
    assert fast._joined is None  # the check did not join the data set
    assert b"".join(fast.fragments) == DATA_SET == ref.DataSet.getvalue()
    assert fast.DataSet.getvalue() == DATA_SET  # joined for code that wants a BytesIO
    if max_pdu:
        assert len(fast.fragments) > 1


def test_several_messages_in_a_row() -> None:
    """Each message starts afresh: three C-STOREs, then a C-ECHO, then a C-STORE."""
    provider = _provider()
    for _ in range(3):
        _, req = _deliver(provider, _p_data(_store(), "C_STORE_RQ", 16382))
        assert b"".join(req.fragments) == DATA_SET
    echo = dimse_primitives.C_ECHO()
    echo.MessageID = 8
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    _, got = _deliver(provider, _p_data(echo, "C_ECHO_RQ", 16382))
    assert isinstance(got, dimse_primitives.C_ECHO) and got.MessageID == 8
    _, req = _deliver(provider, _p_data(_store(True), "C_STORE_RQ", 0))
    assert isinstance(req, receive.ReceivedStore)
    assert req.MoveOriginatorMessageID == 42


def test_find_goes_through_pynetdicom() -> None:
    find = dimse_primitives.C_FIND()
    find.MessageID = 9
    find.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    find.Priority = 2
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = "X"
    buffer = BytesIO()
    identifier.save_as(buffer, implicit_vr=True, little_endian=True)
    find.Identifier = BytesIO(buffer.getvalue())
    _, got = _deliver(_provider(), _p_data(find, "C_FIND_RQ", 16382))
    assert type(got) is dimse_primitives.C_FIND
    assert got.Identifier.getvalue() == buffer.getvalue()


def _command_with(extra: bytes) -> list[P_DATA]:
    """A C-STORE-RQ Command Set with ``extra`` elements appended, then its data set."""
    p_data = _p_data(_store(), "C_STORE_RQ", 0)
    context_id, first = p_data[0].presentation_data_value_list[0]
    out = P_DATA()
    rest = p_data[0].presentation_data_value_list[1:]
    out.presentation_data_value_list = [[context_id, first + extra], *rest]
    return [out, *p_data[1:]]


def test_unknown_command_element_goes_through_pynetdicom() -> None:
    """(0000,0600) Move Destination does not belong in a C-STORE-RQ: pynetdicom decides."""
    extra = struct.pack("<HHI", 0, 0x0600, 6) + b"DEST  "
    _, got = _deliver(_provider(), _command_with(extra))
    assert type(got) is dimse_primitives.C_STORE
    assert got.DataSet.getvalue() == DATA_SET


@pytest.mark.parametrize(
    "command_bytes",
    [
        b"\x00\x00\x00\x01\x02\x00\x00",  # header cut
        struct.pack("<HHI", 8, 0x0100, 2) + b"\x01\x00",  # not group 0000
        struct.pack("<HHI", 0, 0x0100, 2) + b"\x01\x00" * 2,  # element repeated (cut)
        struct.pack("<HHI", 0, 0x0100, 10) + b"\x01\x00",  # value runs past the end
    ],
)
def test_malformed_command_sets_are_not_decoded(command_bytes: bytes) -> None:
    assert receive.decode_command(command_bytes) is None


def test_store_request_needs_its_required_elements() -> None:
    def us(v: int) -> bytes:
        return struct.pack("<H", v)

    whole = {
        0x0002: SOP_CLASS.encode() + b"\x00",
        0x0100: us(1),
        0x0110: us(5),
        0x0700: us(0),
        0x0800: us(0),
        0x1000: SOP_INSTANCE.encode() + b"\x00",
    }
    req = receive.store_request(whole)
    assert req is not None and req.AffectedSOPInstanceUID == SOP_INSTANCE
    for missing in whole:
        if missing != 0x0700:
            partial = {k: v for k, v in whole.items() if k != missing}
            assert receive.store_request(partial) is None, hex(missing)
    assert receive.store_request({**whole, 0x0800: us(0x0101)}) is None  # no data set
    assert receive.store_request({**whole, 0x0100: us(0x0020)}) is None  # C-FIND-RQ
    assert receive.store_request({**whole, 0x0110: b"\x01"}) is None  # US of one byte


@pytest.mark.parametrize("intruder", ["command", "context"])
def test_data_set_interrupted_aborts(intruder: str) -> None:
    """A Command Set, or a value of another presentation context, before the data set's
    last fragment: the message is invalid and the association is aborted (Evt19), as
    pynetdicom does for an invalid message."""
    provider = _provider()
    p_data = _p_data(_store(), "C_STORE_RQ", 4096)
    for p in p_data[:3]:
        provider.receive_primitive(p)
    bad = P_DATA()
    if intruder == "command":
        bad.presentation_data_value_list = [[3, b"\x03" + b"\x00" * 8]]
    else:
        bad.presentation_data_value_list = [[5, b"\x02" + b"\x00" * 8]]
    provider.receive_primitive(bad)
    assert provider.dul.event_queue.get_nowait() == "Evt19"
    with pytest.raises(queue.Empty):
        provider.msg_queue.get_nowait()
    assert getattr(provider, "_dicomhub_store", None) is None


def test_pynetdicom_logging_handlers_get_a_message(caplog: pytest.LogCaptureFixture) -> None:
    """With pynetdicom's standard logging handlers bound, EVT_DIMSE_RECV carries the
    C_STORE_RQ message they read, and they log it without error."""
    _config.LOG_HANDLER_LEVEL = "standard"
    caplog.set_level(logging.DEBUG, logger="pynetdicom")
    _, req = _deliver(_provider(), _p_data(_store(), "C_STORE_RQ", 16382))
    assert isinstance(req, receive.ReceivedStore)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "C-STORE RQ" in caplog.text


@pytest.mark.parametrize(
    "value",
    [
        SOP_INSTANCE,
        SOP_CLASS,
        "1.2.3",
        "0.0",
        "1" * 64,
        "1.02.3",  # a component with a leading zero: valid, not conformant (logged)
        "1.2.3.",  # an empty last component
        "1" * 65,  # too long: pynetdicom refuses it
        "1.2.a",  # not digits
        "",
        b"1.2.3\x00",
        None,
    ],
)
def test_set_uid_is_pynetdicoms(value: Any, caplog: pytest.LogCaptureFixture) -> None:
    """What came in: conformant UIDs (taken as they are), and UIDs pynetdicom warns
    about or refuses, bytes, '' and None (left to pynetdicom): the same UID, the same
    ValueError and the same log messages as pynetdicom's own ``set_uid``."""
    from pynetdicom.utils import set_uid as original

    def run(fn: Any) -> tuple[Any, list[str]]:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="pynetdicom"):
            try:
                result: Any = fn(value, "Affected SOP Instance UID")
            except ValueError as exc:
                result = ("ValueError", str(exc))
        return result, [r.getMessage() for r in caplog.records]

    ours, ours_log = run(receive.set_uid)
    theirs, theirs_log = run(original)
    assert ours == theirs and type(ours) is type(theirs)
    assert ours_log == theirs_log
    receive.install()
    assert dimse_primitives.set_uid is receive.set_uid  # type: ignore[attr-defined]
