"""Encoding of DIMSE Command Sets without pydicom's general writer (PS3.7 §6.3.1, §E.1).

A Command Set is always Implicit VR Little Endian and holds only group 0000 elements of a
few simple VRs.  pynetdicom encodes every message's Command Set twice with pydicom's
``write_dataset`` (once for Command Group Length, once to send it): about 0.1 ms each,
a tenth of a C-STORE on a busy association.  :func:`install` replaces the ``encode``
that pynetdicom's message module calls with :func:`encode`, which writes these command
sets directly and hands anything else to pynetdicom's own.

A C-STORE response does not even need pynetdicom's message object: :func:`send_msg`
writes its Command Set straight from the response primitive
(:func:`store_response_command`, PS3.7 Table 9.3-2) and queues the one P-DATA that
carries it; every other message is sent by pynetdicom's ``send_msg``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import _config, dimse_messages, dsutils, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

_ORIGINAL: Callable[..., bytes | None] = dsutils.encode
_ORIGINAL_SEND = DIMSEServiceProvider.send_msg
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101
_NUMBERS = {"UL": "<I", "US": "<H", "SL": "<i", "SS": "<h"}
_TEXT_PAD = {"UI": b"\x00", "AE": b" ", "CS": b" ", "SH": b" ", "LO": b" ", "ST": b" ", "LT": b" "}


def _value(vr: str, value: Any) -> bytes | None:
    """The encoded value of one element, or ``None`` for a VR or value not handled here."""
    if value is None or value == "" or value == []:
        return b""
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    fmt = _NUMBERS.get(vr)
    if fmt is not None:
        if not all(isinstance(v, int) for v in values):
            return None
        return b"".join(struct.pack(fmt, v) for v in values)
    if vr == "AT":  # a tag: group then element, each US (PS3.5 §6.2)
        if not all(isinstance(v, int) for v in values):
            return None
        return b"".join(struct.pack("<HH", v >> 16, v & 0xFFFF) for v in values)
    pad = _TEXT_PAD.get(vr)
    if pad is None or not all(isinstance(v, str) for v in values):
        return None
    raw = "\\".join(values).encode("ascii", "strict") if vr != "LO" else None
    if raw is None:  # LO (Error Comment) may carry other characters; keep them as Latin-1
        raw = "\\".join(values).encode("latin-1", "replace")
    return raw + pad if len(raw) % 2 else raw


def _elements(fields: Iterable[tuple[int, str, Any]]) -> bytes | None:
    """``(element number, VR, value)`` of group 0000 encoded in order, or ``None`` when a
    value is not one this writes."""
    out: list[bytes] = []
    for element, vr, value in fields:
        try:
            encoded = _value(vr, value)
        except (UnicodeEncodeError, struct.error):
            return None
        if encoded is None:
            return None
        out.append(struct.pack("<HHI", 0, element, len(encoded)))
        out.append(encoded)
    return b"".join(out)


def encode_command_set(ds: Dataset) -> bytes | None:
    """``ds`` as an Implicit VR Little Endian Command Set, or ``None`` if it holds an
    element outside group 0000 or of a VR this does not write."""
    if any(int(elem.tag) >> 16 for elem in ds):
        return None
    return _elements((int(elem.tag), elem.VR, elem.value) for elem in ds)


def encode(
    ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> bytes | None:
    """pynetdicom's ``dsutils.encode``, with Command Sets written by
    :func:`encode_command_set`."""
    if is_implicit_vr and is_little_endian and not deflated:
        fast = encode_command_set(ds)
        if fast is not None:
            return fast
    return _ORIGINAL(ds, is_implicit_vr, is_little_endian, deflated)


def store_response_command(rsp: C_STORE) -> bytes | None:
    """The Command Set of a C-STORE-RSP (PS3.7 Table 9.3-2), as pynetdicom writes it:
    the elements that have a value, in tag order, after the Command Group Length; None
    when a value is not one this writes."""
    fields = (
        (0x0002, "UI", rsp.AffectedSOPClassUID),
        (0x0100, "US", C_STORE_RSP),
        (0x0120, "US", rsp.MessageIDBeingRespondedTo),
        (0x0800, "US", NO_DATA_SET),
        (0x0900, "US", rsp.Status),
        (0x0901, "AT", rsp.OffendingElement),
        (0x0902, "LO", rsp.ErrorComment),
        (0x1000, "UI", rsp.AffectedSOPInstanceUID),
    )
    body = _elements((e, vr, value) for e, vr, value in fields if value is not None)
    if body is None:
        return None
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """pynetdicom's ``DIMSEServiceProvider.send_msg``, with a C-STORE response written
    by :func:`store_response_command` when it fits one P-DATA (PS3.8 Annex E)."""
    if (
        type(primitive) is C_STORE
        and primitive.MessageIDBeingRespondedTo is not None
        and _config.LOG_HANDLER_LEVEL == "none"  # pynetdicom's log handlers want a message
    ):
        encoded = store_response_command(primitive)
        limit = self.maximum_pdu_size
        if encoded is not None and (not limit or len(encoded) + 6 <= limit):
            evt.trigger(self.assoc, evt.EVT_DIMSE_SENT, {"message": primitive})
            pdata = P_DATA()
            # Message Control Header: a Command Set, its last fragment (PS3.8 §E.2)
            pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
            self.dul.send_pdu(pdata)
            return
    _ORIGINAL_SEND(self, primitive, context_id)


def install() -> None:
    """Make pynetdicom's DIMSE message module encode Command Sets with :func:`encode`,
    and send C-STORE responses with :func:`send_msg` (idempotent; data sets and
    everything else still go through pydicom)."""
    dimse_messages.encode = encode  # type: ignore[attr-defined]
    DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]
