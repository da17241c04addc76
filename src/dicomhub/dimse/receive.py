"""Receiving C-STORE requests without pynetdicom's general message decoding (PS3.7 §9.3.1,
PS3.8 §9.3.5 and Annex E).

pynetdicom turns every received DIMSE message into a ``DIMSEMessage`` whose Command Set is
decoded by pydicom, then copies the Command Set element by element into a primitive
(``message_to_primitive``), and gathers the data set fragments in a ``BytesIO``.  For a
C-STORE of a CT slice that is about a tenth of the server's work on the association.

:func:`install` puts :func:`receive_primitive` in front of pynetdicom's own.  When a
message starts with a complete C-STORE-RQ Command Set (the Command Set in one
presentation data value, as every peer sends it) holding only the elements PS3.7 Table
9.3-1 defines, it decodes the Command Set directly (Implicit VR Little Endian, PS3.7 §6.3.1)
into a :class:`ReceivedStore` primitive and keeps the data set fragments as they arrived;
the handler joins them once with the File Meta header.  Every other message, and any
C-STORE-RQ this does not recognise, goes through pynetdicom unchanged.
"""

from __future__ import annotations

import re
import struct
from io import BytesIO
from typing import Any

from pydicom.uid import UID
from pynetdicom import _config, dimse_messages, dimse_primitives, evt
from pynetdicom import utils as pynetdicom_utils
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE

_ORIGINAL = DIMSEServiceProvider.receive_primitive
_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
C_STORE_RQ = 0x0001
NO_DATA_SET = 0x0101
#: Command Set elements of a C-STORE-RQ (PS3.7 Table 9.3-1), by element number
_GROUP_LENGTH = 0x0000
_AFFECTED_SOP_CLASS = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_PRIORITY = 0x0700
_DATA_SET_TYPE = 0x0800
_AFFECTED_SOP_INSTANCE = 0x1000
_MOVE_ORIGINATOR_AE = 0x1030
_MOVE_ORIGINATOR_ID = 0x1031
_KNOWN = frozenset(
    {
        _GROUP_LENGTH,
        _AFFECTED_SOP_CLASS,
        _COMMAND_FIELD,
        _MESSAGE_ID,
        _PRIORITY,
        _DATA_SET_TYPE,
        _AFFECTED_SOP_INSTANCE,
        _MOVE_ORIGINATOR_AE,
        _MOVE_ORIGINATOR_ID,
    }
)


class ReceivedStore(C_STORE):  # type: ignore[misc]
    """A C-STORE request whose data set is kept as the fragments that carried it.

    ``fragments`` are the data set's presentation data values in order (without their
    Message Control Headers); ``DataSet`` joins them on first use, for code that expects
    pynetdicom's ``BytesIO``.
    """

    fragments: list[memoryview] | None = None
    _joined: BytesIO | None = None

    @property  # type: ignore[override]
    def DataSet(self) -> BytesIO | None:
        """The data set as a ``BytesIO`` (joined on first use)."""
        if self._joined is None and self.fragments is not None:
            self._joined = BytesIO(b"".join(self.fragments))
        return self._joined

    @DataSet.setter
    def DataSet(self, value: BytesIO | None) -> None:
        self._joined = value

    @property
    def is_valid_request(self) -> bool:
        """pynetdicom's check, without joining the data set to see that it is there."""
        return self.fragments is not None and all(
            getattr(self, keyword) is not None
            for keyword in self.REQUEST_KEYWORDS
            if keyword != "DataSet"
        )


def decode_command(data: bytes | memoryview) -> dict[int, bytes] | None:
    """The elements of an Implicit VR Little Endian Command Set by element number, or
    None when it is not a well-formed group 0000 (PS3.7 §6.3.1, §E.1)."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            return None
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0 or pos + length > end or element in out:
            return None
        out[element] = bytes(data[pos : pos + length])
        pos += length
    return out


def _us(value: bytes | None) -> int | None:
    return _US.unpack(value)[0] if value is not None and len(value) == 2 else None


def _text(value: bytes, pad: str) -> str:
    return value.decode("ascii").rstrip(pad)


def store_request(command: dict[int, bytes]) -> ReceivedStore | None:
    """A C-STORE-RQ primitive from its decoded Command Set, or None when the Command Set
    is not a C-STORE-RQ with a data set, or has an element or value this does not map
    (pynetdicom then decodes the message itself)."""
    if _us(command.get(_COMMAND_FIELD)) != C_STORE_RQ or not command.keys() <= _KNOWN:
        return None
    data_set_type = _us(command.get(_DATA_SET_TYPE))
    message_id = _us(command.get(_MESSAGE_ID))
    priority = _us(command.get(_PRIORITY))
    sop_class = command.get(_AFFECTED_SOP_CLASS)
    sop_instance = command.get(_AFFECTED_SOP_INSTANCE)
    if (
        data_set_type is None
        or data_set_type == NO_DATA_SET
        or message_id is None
        or priority is None
        or not sop_class
        or not sop_instance
    ):
        return None
    request = ReceivedStore()
    try:
        request.MessageID = message_id
        request.AffectedSOPClassUID = _text(sop_class, "\x00 ")
        request.AffectedSOPInstanceUID = _text(sop_instance, "\x00 ")
        request.Priority = priority
        if _MOVE_ORIGINATOR_AE in command:
            request.MoveOriginatorApplicationEntityTitle = _text(
                command[_MOVE_ORIGINATOR_AE], " "
            ).lstrip(" ")
        if _MOVE_ORIGINATOR_ID in command:
            originator = _us(command[_MOVE_ORIGINATOR_ID])
            if originator is None:
                return None
            request.MoveOriginatorMessageID = originator
    except (ValueError, TypeError, UnicodeDecodeError):
        return None  # pynetdicom decides what an invalid value means
    request.fragments = []
    return request


def _message(request: ReceivedStore) -> Any:
    """What ``EVT_DIMSE_RECV`` carries: the request itself (dicomhub's reactor reads only
    the association), or pynetdicom's ``C_STORE_RQ`` message when pynetdicom's own logging
    handlers are bound (``_config.LOG_HANDLER_LEVEL``), which read its Command Set."""
    if _config.LOG_HANDLER_LEVEL == "none":
        return request
    message = dimse_messages.C_STORE_RQ()
    message.primitive_to_message(request)
    message.context_id = request._context_id
    return message


def receive_primitive(self: DIMSEServiceProvider, primitive: Any) -> None:
    """``DIMSEServiceProvider.receive_primitive`` with C-STORE-RQ messages received as
    :class:`ReceivedStore` (see the module documentation)."""
    incoming: tuple[int, ReceivedStore] | None = getattr(self, "_dicomhub_store", None)
    values: list[tuple[int, bytes]] = getattr(primitive, "presentation_data_value_list", None) or []
    if incoming is None:
        if self.message is not None or not values:
            _ORIGINAL(self, primitive)
            return
        context_id, first = values[0]
        # a whole Command Set (command bit and last-fragment bit) in the first value
        if len(first) < 1 or first[0] & 0x03 != 0x03:
            _ORIGINAL(self, primitive)
            return
        command = decode_command(memoryview(first)[1:])
        request = store_request(command) if command is not None else None
        if request is None:
            _ORIGINAL(self, primitive)
            return
        request._context_id = context_id
        incoming = (context_id, request)
        values = values[1:]
    context_id, request = incoming
    fragments = request.fragments
    assert fragments is not None
    for value_context, data in values:
        header = data[0] if data else 0
        if header & 0x01 or value_context != context_id:
            # a Command Set, or another context, before the data set ended: not a valid
            # message (pynetdicom aborts for an invalid message too, PS3.8 §9.3.1)
            self._dicomhub_store = None  # type: ignore[attr-defined]
            self.dul.event_queue.put("Evt19")
            return
        fragment = memoryview(data)[1:]
        fragments.append(fragment)
        if header & 0x02:
            self._dicomhub_store = None  # type: ignore[attr-defined]
            evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": _message(request)})
            self.msg_queue.put((context_id, request))
            return
    self._dicomhub_store = incoming  # type: ignore[attr-defined]


#: A conformant UID (PS3.5 §9.1): components of digits without leading zeros.
_CONFORMANT_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_SET_UID = pynetdicom_utils.set_uid


def set_uid(
    value: Any,
    name: str,
    allow_empty: bool = True,
    allow_none: bool = True,
    validate: bool = True,
) -> UID | None:
    """pynetdicom's ``set_uid`` for DIMSE primitives, taking a conformant UID string of
    at most 64 characters as it is: pynetdicom would return the same ``UID`` after two
    regular-expression checks of pydicom's and a ``UID.is_valid``, which cost a C-STORE
    more than decoding its Command Set (each UID is set on the request and again on the
    response).  Anything else goes through pynetdicom's checks and messages."""
    if type(value) is str and 0 < len(value) <= 64 and _CONFORMANT_UID.fullmatch(value):
        return UID(value)
    return _SET_UID(value, name, allow_empty, allow_none, validate)  # type: ignore[no-any-return]


def install() -> None:
    """Put :func:`receive_primitive` in front of pynetdicom's, and :func:`set_uid` in
    its DIMSE primitives (idempotent)."""
    DIMSEServiceProvider.receive_primitive = receive_primitive  # type: ignore[method-assign]
    dimse_primitives.set_uid = set_uid  # type: ignore[attr-defined]
