"""Thin DIMSE event handlers over the core services (pynetdicom ``evt`` handlers).

Each handler turns a DIMSE request into a core service call and the result, or a domain
error, into a DIMSE status — in this module only (cf. pynetdicom's apps/qrscp/handlers).

- C-ECHO: Verification (PS3.4 Annex A)
- C-STORE: Storage (PS3.4 Annex B) through the same store service as STOW-RS
- C-FIND / C-GET / C-MOVE: Query/Retrieve, Patient and Study Root (PS3.4 Annex C)
- N-ACTION: Storage Commitment Push Model (PS3.4 Annex J)
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import socket
import struct
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import (
    AE,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    build_context,
    build_role,
    evt,
)
from pynetdicom.events import Event

from dicomhub.core import syntaxes
from dicomhub.core.access import AccessScope, AuditRecord, Principal
from dicomhub.core.attributes import Level
from dicomhub.core.dicomjson import row_to_json
from dicomhub.core.errors import CannotTranscode, DicomhubError, InvalidRequest, Unauthorized
from dicomhub.core.model import StagedFile, StoredInstance
from dicomhub.core.query import parse_find
from dicomhub.core.staging import staging_name
from dicomhub.dimse import reactor
from dicomhub.dimse import status as st

if TYPE_CHECKING:
    from dicomhub.context import Context

log = logging.getLogger(__name__)

PATIENT_ROOT = {
    "1.2.840.10008.5.1.4.1.2.1.1",  # FIND
    "1.2.840.10008.5.1.4.1.2.1.2",  # MOVE
    "1.2.840.10008.5.1.4.1.2.1.3",  # GET
}
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Syntaxes a C-GET/C-MOVE sub-operation may be re-encoded in when the peer does not
#: accept the stored one, in order of preference: native first (cheapest, universally
#: decodable), then the lossless compressed ones.  Lossy syntaxes are never produced for
#: a peer that did not store them (PS3.5 §8.2: a lossy re-encoding is a new image).
SUB_OPERATION_TARGETS = (
    syntaxes.ELE,
    syntaxes.ILE,
    syntaxes.DEFLATED_ELE,
    syntaxes.HTJ2K_LOSSLESS,
    syntaxes.JPEG_LS_LOSSLESS,
    syntaxes.J2K_LOSSLESS,
    syntaxes.HTJ2K_RPCL,
    syntaxes.HTJ2K,
    syntaxes.J2K,
    syntaxes.JPEG_LOSSLESS_SV1,
    syntaxes.JPEG_LOSSLESS,
    syntaxes.RLE,
)
_LEVELS = {
    "PATIENT": Level.PATIENT,
    "STUDY": Level.STUDY,
    "SERIES": Level.SERIES,
    "IMAGE": Level.IMAGE,
}
_UNIQUE = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


#: Lossless syntaxes offered to a C-MOVE destination besides the stored ones.
MOVE_REENCODE_OFFER = (
    syntaxes.HTJ2K_LOSSLESS,
    syntaxes.JPEG_LS_LOSSLESS,
    syntaxes.J2K_LOSSLESS,
    syntaxes.JPEG_LOSSLESS_SV1,
    syntaxes.RLE,
)


def _prefer_requestor_order_for_get(assoc: Any, primitive: Any) -> None:
    """For storage SOP classes the requestor wants us to send on (SCP role selection,
    PS3.7 D.3.3.4, i.e. C-GET), accept the transfer syntax the requestor proposed first
    among those we can always produce, rather than our own first choice: it receives
    instances as stored when it offered that syntax, otherwise re-encoded losslessly into
    the syntax it prefers.  Lossy or retired syntaxes it prefers are not chosen."""
    from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation

    scp_classes = {
        str(item.sop_class_uid)
        for item in (primitive.user_information or [])
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.scp_role
    }
    if not scp_classes:
        return
    wanted: dict[str, list[str]] = {}
    for cx in primitive.presentation_context_definition_list or []:
        if str(cx.abstract_syntax) in scp_classes:
            order = wanted.setdefault(str(cx.abstract_syntax), [])
            order += [str(ts) for ts in cx.transfer_syntax if str(ts) not in order]
    contexts = assoc.acceptor.supported_contexts
    for cx in contexts:
        preferred = wanted.get(str(cx.abstract_syntax))
        if preferred:
            ours = [str(ts) for ts in cx.transfer_syntax]
            # the requestor's order, among the syntaxes we can always produce (any stored
            # instance can be re-encoded into them losslessly); then the rest, ours
            first = [ts for ts in preferred if ts in ours and ts in SUB_OPERATION_TARGETS]
            cx.transfer_syntax = first + [ts for ts in ours if ts not in first]
    assoc.acceptor.supported_contexts = contexts


def _request(event: Event) -> Any:
    """The DIMSE request primitive (typed loosely: its attributes depend on the service)."""
    return event.request


def _text(elem: Any) -> str:
    value = elem.value
    if value is None or value == "":
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _identifier_keys(identifier: Dataset) -> list[tuple[str, str]]:
    """Flatten an identifier into ``(keyword or Seq.Keyword, value)`` pairs."""
    keys: list[tuple[str, str]] = []
    for elem in identifier:
        if elem.tag.group in (0x0000, 0x0002) or elem.tag in (0x00080005, 0x00080052):
            continue
        name = elem.keyword or f"{elem.tag:08X}"
        if elem.VR == "SQ":
            items = list(elem.value or [])
            if items:
                for sub in items[0]:
                    keys.append((f"{name}.{sub.keyword}", _text(sub)))
            else:
                keys.append((name, ""))
            continue
        keys.append((name, _text(elem)))
    return keys


def _level(identifier: Dataset, model: str) -> Level:
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    level = _LEVELS.get(raw)
    if level is None:
        raise InvalidRequest(f"QueryRetrieveLevel '{raw}' is not PATIENT/STUDY/SERIES/IMAGE")
    if level == Level.PATIENT and model not in PATIENT_ROOT:
        raise InvalidRequest("PATIENT level is only valid in the Patient Root model")
    return level


@dataclass
class _StoreSession:
    """What one association's C-STOREs share: the store namespace per study (looked up
    once, see ``StoreService._owner``) and the instances stored per study, audited as one
    "DICOM Instances Transferred" event per study and association (PS3.15 A.5.3.2)."""

    owners: dict[str, int] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)


class DimseHandlers:
    """The event handlers of dicomhub's application entity."""

    def __init__(self, ctx: Context, ae_title: str) -> None:
        self.ctx = ctx
        self.ae_title = ae_title
        self._principals: weakref.WeakKeyDictionary[Any, Principal] = weakref.WeakKeyDictionary()
        self._sessions: weakref.WeakKeyDictionary[Any, _StoreSession] = weakref.WeakKeyDictionary()

    def bindings(self) -> list[tuple[Any, Any]]:
        """``evt_handlers`` for ``AE.start_server``."""
        return [
            (evt.EVT_CONN_OPEN, self.on_connection),
            (evt.EVT_CONN_CLOSE, self.on_close),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_N_ACTION, self.on_n_action),
            *reactor.bindings(),
        ]

    def on_connection(self, event: Event) -> None:
        """Disable Nagle on accepted connections: without TCP_NODELAY every small DIMSE
        response waits for the peer's delayed ACK (~40-50 ms per message)."""
        try:
            sock = event.assoc.dul.socket.socket  # type: ignore[union-attr]
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):
            log.debug("could not set TCP_NODELAY", exc_info=True)

    def on_close(self, event: Event) -> None:
        """The connection closed (release, abort or network loss): audit the studies
        this association stored more than the first instance of (PS3.15 A.5.3.2)."""
        session = self._sessions.pop(event.assoc, None)
        if session is not None:
            self.close_session(event, session)

    def open_session(self, peer: Any) -> _StoreSession:
        """The C-STORE session of an association served by dicomhub.dimse.lean."""
        return _StoreSession()

    def close_session(self, peer: Any, session: _StoreSession) -> None:
        """Audit the studies an association stored more than the first instance of."""
        for study, count in session.stored.items():
            if count > 1:
                self._audit(peer, "store", "C", 0, study=study, instances=count)

    def authenticate(self, calling: str, address: str) -> Principal | None:
        """The registered device calling as ``calling`` from ``address``, audited
        either way (``None``: the association is to be rejected)."""
        principal = self.ctx.auth.authenticate_ae(calling, address)
        self._audit(
            None, "association", "E", 0 if principal else 4, calling, address, principal=principal
        )
        if principal is None:
            log.info(
                "rejecting association from %s at %s: not a registered device", calling, address
            )
        return principal

    def on_requested(self, event: Event) -> None:
        """A-ASSOCIATE-RQ: the calling AE title must be a registered device calling from an
        allowed address; otherwise reject (rejected-permanent, service-user, calling AE
        title not recognised — PS3.8 §9.3.4)."""
        assoc = event.assoc
        primitive: Any = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title).strip()
        try:
            address = assoc.requestor.address
        except ValueError:
            address = ""
        principal = self.authenticate(calling, address)
        if principal is None:
            assoc.acse.send_reject(0x01, 0x01, 0x03)
            assoc.kill()  # as pynetdicom's own rejections: wait until the A-ASSOCIATE-RJ is out
            return
        self._principals[assoc] = principal
        _prefer_requestor_order_for_get(assoc, primitive)

    def principal(self, event: Event) -> Principal:
        """The device authenticated for the event's association."""
        principal = self._principals.get(event.assoc)
        if principal is None:  # cannot happen: unauthenticated associations are rejected
            raise Unauthorized("association not authenticated")
        return principal

    def access(self, event: Event) -> AccessScope:
        """The access scope of the association's device."""
        scope = self.principal(event).scope
        return scope

    def _audit(
        self,
        event: Any,
        name: str,
        action: str,
        outcome: int,
        calling: str | None = None,
        address: str | None = None,
        principal: Principal | None = None,
        study: str | None = None,
        **detail: Any,
    ) -> None:
        if isinstance(event, Event):
            principal = self._principals.get(event.assoc)
            calling = str(event.assoc.requestor.ae_title).strip()
            try:
                address = event.assoc.requestor.address
            except ValueError:
                address = None
        elif event is not None:  # an association of dicomhub.dimse.lean
            principal, calling, address = event.principal, event.calling, event.address
        try:
            self.ctx.audit.record(
                AuditRecord(
                    event=name,
                    action=action,
                    outcome=outcome,
                    principal=principal.name if principal else calling,
                    subscriber=principal.subscriber if principal else None,
                    source=f"{calling}@{address}",
                    interface="dimse",
                    study_instance_uid=study,
                    detail={"calling_ae": calling, **detail},
                )
            )
        except Exception:
            log.exception("could not write the audit event")

    # -- Verification ----------------------------------------------------------------------
    def on_echo(self, event: Event) -> int:
        """C-ECHO: always success (PS3.4 A.4)."""
        return st.SUCCESS

    # -- Storage ---------------------------------------------------------------------------
    def on_store(self, event: Event) -> Dataset:
        """C-STORE: write the received bytes as a Part 10 file and store it (PS3.4 B.2.2).

        The data set is not decoded and re-encoded: its bytes, as received in the accepted
        transfer syntax, follow a File Meta Information header built from the command.
        """
        req: Any = event.request
        fragments = getattr(req, "fragments", None)  # receive.ReceivedStore
        if fragments is None:
            fragments = [req.DataSet.getbuffer()]
        session = self._sessions.setdefault(event.assoc, _StoreSession())
        status, message = self.store_fragments(
            session,
            event,
            str(req.AffectedSOPClassUID),
            str(req.AffectedSOPInstanceUID),
            str(event.context.transfer_syntax),
            fragments,
        )
        return self._status(status, message)

    def store_fragments(
        self,
        session: _StoreSession,
        peer: Any,
        sop_class: str,
        sop_instance: str,
        transfer_syntax: str,
        fragments: list[Any],
    ) -> tuple[int, str]:
        """Store a C-STORE's data set (its fragments as received, in ``transfer_syntax``)
        for the association ``peer`` (a pynetdicom event, or an association of
        dicomhub.dimse.lean): the response's Status and Error Comment."""
        if isinstance(peer, Event):
            calling = str(peer.assoc.requestor.ae_title)
            access = self.access(peer)
        else:
            calling = peer.calling
            if peer.principal is None:  # cannot happen: unauthenticated ones are rejected
                raise Unauthorized("association not authenticated")
            access = peer.principal.scope
        name = staging_name(str(self.ctx.store.staging_dir()))
        try:
            head = part10_header(sop_class, sop_instance, transfer_syntax, calling)
            size, kept, digest = self._stage(name, [head, *fragments])
        except Exception as exc:
            Path(name).unlink(missing_ok=True)
            log.exception("C-STORE: cannot stage the data set")
            return 0xA700, f"cannot stage: {exc}"
        outcome = self.ctx.store.store(
            StagedFile(Path(name), size, digest, head=kept),
            access=access.for_write(),
            expected_sop_class_uid=sop_class,
            expected_sop_instance_uid=sop_instance,
            owners=session.owners,
        )
        study = outcome.study_instance_uid
        first = True  # failures are always "first": each is audited
        if study and not outcome.failed:
            first = study not in session.stored
            session.stored[study] = session.stored.get(study, 0) + 1
        if first:
            # failures one by one; a study's first instance at once (so the event exists
            # while the association goes on); the others in the count at the close
            self._audit(
                peer,
                "store",
                "C",
                8 if outcome.failed else 0,
                study=study,
                sop=sop_instance,
                status=int(outcome.status),
            )
        if outcome.failed or outcome.warnings:
            log.info(
                "C-STORE %s from %s: 0x%04X %s",
                sop_instance,
                calling,
                outcome.status,
                "; ".join([outcome.message, *outcome.warnings]),
            )
        return int(outcome.status), outcome.message

    def _stage(self, name: str, parts: list[Any]) -> tuple[int, bytes, str | Future[str]]:
        """Write the File Meta header and the data set's fragments to the new file
        ``name`` as received (``os.writev``, no joined copy): its size, its first
        :data:`STAGE_HEAD_BYTES` (the reader walks them, as for a STOW-RS part, and reads
        the file only when the data set goes on past them before its Pixel Data) and its
        SHA-256, computed on another core meanwhile (a future; hashlib releases the GIL).

        Joining the fragments into one ``bytes`` cost a fresh 0.5 MB allocation per CT
        image, its page faults and a copy: writing them as they are measured 300 -> 160 µs
        per instance."""
        size = sum(len(p) for p in parts)
        fd = os.open(name, _STAGE_FLAGS, 0o600)
        try:
            _write_all(fd, parts)
        finally:
            os.close(fd)
        head, need = [], STAGE_HEAD_BYTES
        for part in parts:
            if need <= 0:
                break
            head.append(bytes(part[:need]))
            need -= len(head[-1])
        return size, b"".join(head), self.ctx.store.sha256_of(*parts)

    @staticmethod
    def _status(code: int, comment: str = "") -> Dataset:
        ds = Dataset()
        ds.Status = code
        if code != st.SUCCESS and comment:
            ds.ErrorComment = comment[:64]
        return ds

    # -- Query -----------------------------------------------------------------------------
    def on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        """C-FIND at PATIENT/STUDY/SERIES/IMAGE level with the QIDO-RS matching engine."""
        identifier = event.identifier
        model = str(_request(event).AffectedSOPClassUID)
        try:
            level = _level(identifier, model)
            query = parse_find(level, _identifier_keys(identifier))
            rows = self.ctx.query.search(self.access(event), query, {})
        except DicomhubError as exc:
            self._audit(event, "query", "E", 4, error=str(exc))
            yield self._status(st.FIND_IDENTIFIER_DOES_NOT_MATCH, str(exc)).Status, None
            return
        self._audit(
            event,
            "query",
            "E",
            0,
            level=level.value,
            matches=len(rows),
            keys=dict(_identifier_keys(identifier)),
        )
        for row in rows:
            if _cancelled(event):
                yield st.CANCEL, None
                return
            yield st.PENDING, self._find_result(row, query, identifier, level)

    def _find_result(self, row: Any, query: Any, identifier: Dataset, level: Level) -> Dataset:
        doc = row_to_json(row, query, "")
        out = Dataset()
        out.SpecificCharacterSet = "ISO_IR 192"
        out.QueryRetrieveLevel = level.value
        for elem in identifier:
            if elem.tag.group in (0x0000, 0x0002) or elem.tag in (0x00080005, 0x00080052):
                continue
            tag = f"{elem.tag:08X}"
            if tag in doc and doc[tag].get("Value") is not None:
                try:
                    out.add(Dataset.from_json({tag: doc[tag]})[elem.tag])
                    continue
                except Exception:  # a value the requested VR cannot hold: return empty
                    log.debug("cannot return %s", tag)
            out.add_new(elem.tag, elem.VR, [] if elem.VR == "SQ" else None)
        out.RetrieveAETitle = self.ae_title
        return out

    # -- Retrieve --------------------------------------------------------------------------
    def _select(self, event: Event, identifier: Dataset, model: str) -> list[StoredInstance]:
        level = _level(identifier, model)
        keys: dict[str, list[str]] = {}
        for lv in (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE):
            name = _UNIQUE[lv]
            value = str(identifier.get(name, "") or "")
            if isinstance(identifier.get(name), pydicom.multival.MultiValue):
                value = "\\".join(identifier.get(name))
            values = [v.strip() for v in value.split("\\") if v.strip()]
            if lv == level and not values:
                raise InvalidRequest(f"{name} is required at {level.value} level")
            if values:
                keys[name] = values
            if lv == level:
                break
        return self.ctx.retrieve.select(self.access(event), level, keys)

    def _dataset(self, item: StoredInstance, accepted: set[str]) -> Dataset:
        """The stored instance as a data set in a syntax the peer accepted (PS3.4 C.4.2.3,
        C.4.3.3): as stored when accepted, else transcoded losslessly to the first accepted
        syntax that can carry it (:data:`SUB_OPERATION_TARGETS`)."""
        path = self.ctx.retrieve.local_path(item)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if item.transfer_syntax_uid in accepted or not accepted:
                return pydicom.dcmread(path)
            failures: list[str] = []
            for target in SUB_OPERATION_TARGETS:
                if target not in accepted:
                    continue
                try:
                    data = self.ctx.retrieve.transcoded(item, target)
                except CannotTranscode as exc:
                    failures.append(f"{target}: {exc}")
                    continue
                ds = pydicom.dcmread(io.BytesIO(data))
                syntax = UID(target)
                # pynetdicom encodes for the context; the data set must say it is in it
                ds.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian)
                return ds
        raise InvalidRequest(
            f"peer accepts none of {item.transfer_syntax_uid} or a syntax it can be "
            f"re-encoded in losslessly ({'; '.join(failures) or ', '.join(sorted(accepted))})"
        )

    def _dataset_or_stored(
        self, item: StoredInstance, accepted: dict[str, set[str]], service: str
    ) -> Dataset:
        """The instance in a syntax the peer accepted; if there is none, as stored, so that
        only this sub-operation fails (a Warning yielded by the handler would end them all).
        """
        try:
            return self._dataset(item, accepted.get(item.sop_class_uid, set()))
        except DicomhubError as exc:
            log.warning("%s: %s: %s", service, item.sop_instance_uid, exc)
            return self._dataset(item, set())

    def on_get(self, event: Event) -> Iterator[Any]:
        """C-GET: C-STORE sub-operations on the same association (PS3.4 C.4.3)."""
        try:
            items = self._select(event, event.identifier, str(_request(event).AffectedSOPClassUID))
        except DicomhubError as exc:
            log.info("C-GET refused: %s", exc)
            self._audit(event, "retrieve", "R", 4, service="C-GET", error=str(exc))
            # pynetdicom answers Success to "0 sub-operations"; announce one so that the
            # failure status is what the requestor receives (PS3.4 C.4.3.1.3.1)
            yield 1
            yield st.RETRIEVE_IDENTIFIER_DOES_NOT_MATCH, None
            return
        for study in sorted({i.study_instance_uid for i in items}) or [""]:
            self._audit(
                event, "retrieve", "R", 0, study=study, service="C-GET", instances=len(items)
            )
        accepted: dict[str, set[str]] = {}
        for cx in event.assoc.accepted_contexts:
            if cx.as_scu:  # we act as Storage SCU on this association
                accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
        yield len(items)
        for item in items:
            if _cancelled(event):
                yield st.CANCEL, None
                return
            yield st.PENDING, self._dataset_or_stored(item, accepted, "C-GET")

    def _negotiate(
        self, host: str, port: int, ae_title: str, items: list[StoredInstance]
    ) -> tuple[list[Any], dict[str, set[str]]]:
        """Propose contexts for the instances to move and learn what the destination accepts.

        Per SOP Class one context offering the stored compressed syntaxes, one offering
        Explicit and Implicit VR Little Endian and one offering the other lossless syntaxes
        we write; a probing association tells which the destination accepts, so instances
        are re-encoded before pynetdicom sends them when necessary.
        """
        offered: dict[str, list[str]] = {}
        for item in items:
            syntaxes = offered.setdefault(item.sop_class_uid, [])
            if item.transfer_syntax_uid not in syntaxes:
                syntaxes.insert(0, item.transfer_syntax_uid)
        contexts = []
        plain: list[str | UID] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        for sop_class, stored in list(offered.items())[:42]:
            # one context with the stored compressed syntaxes, one uncompressed, one with
            # the other lossless syntaxes we can write: a destination that takes only some
            # compressed syntax gets the rest re-encoded into it (PS3.4 C.4.2.3.1)
            compressed = [ts for ts in stored if ts not in plain]
            if compressed:
                contexts.append(build_context(sop_class, compressed))
            contexts.append(build_context(sop_class, plain))
            others = [ts for ts in MOVE_REENCODE_OFFER if ts not in compressed]
            contexts.append(build_context(sop_class, others))
        if not contexts:  # nothing to move: pynetdicom still opens the association
            contexts.append(build_context("1.2.840.10008.1.1"))
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.network_timeout = 30
        ae.requested_contexts = contexts
        assoc = ae.associate(host, port, ae_title=ae_title)
        accepted: dict[str, set[str]] = {}
        if assoc.is_established:
            for cx in assoc.accepted_contexts:
                accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
            assoc.release()
        return contexts, accepted

    def on_move(self, event: Event) -> Iterator[Any]:
        """C-MOVE to a registered node (PS3.4 C.4.2); unknown destination → 0xA801."""
        destination = str(event.move_destination or "").strip()
        node = self.ctx.nodes.by_ae_title(destination)
        if node is None:
            log.info("C-MOVE: unknown destination '%s'", destination)
            self._audit(
                event,
                "retrieve",
                "R",
                4,
                service="C-MOVE",
                destination=destination,
                error="unknown destination",
            )
            yield None, None
            return
        try:
            items = self._select(event, event.identifier, str(_request(event).AffectedSOPClassUID))
        except DicomhubError as exc:
            log.info("C-MOVE refused: %s", exc)
            self._audit(event, "retrieve", "R", 4, service="C-MOVE", error=str(exc))
            # pynetdicom needs a destination association before it reports a status
            yield (
                node.host,
                node.port,
                {
                    "contexts": [build_context("1.2.840.10008.1.1")],
                    "ae_title": node.ae_title,
                },
            )
            yield 1
            yield st.RETRIEVE_IDENTIFIER_DOES_NOT_MATCH, None
            return
        for study in sorted({i.study_instance_uid for i in items}) or [""]:
            self._audit(
                event,
                "retrieve",
                "R",
                0,
                study=study,
                service="C-MOVE",
                destination=destination,
                instances=len(items),
            )
        contexts, accepted = self._negotiate(node.host, node.port, node.ae_title, items)
        yield node.host, node.port, {"contexts": contexts, "ae_title": node.ae_title}
        yield len(items)
        for item in items:
            if _cancelled(event):
                yield st.CANCEL, None
                return
            yield st.PENDING, self._dataset_or_stored(item, accepted, "C-MOVE")

    # -- Storage Commitment ----------------------------------------------------------------
    def on_n_action(self, event: Event) -> tuple[int, Dataset | None]:
        """Storage Commitment request (PS3.4 J.3.2); the result follows as N-EVENT-REPORT."""
        req: Any = event.request
        if str(req.RequestedSOPClassUID) != STORAGE_COMMITMENT:
            return st.PROCESSING_FAILURE, None
        if int(req.ActionTypeID) != 1:
            return st.NO_SUCH_ACTION_TYPE, None
        info = event.action_information
        if "TransactionUID" not in info or "ReferencedSOPSequence" not in info:
            return st.INVALID_ARGUMENT_VALUE, None
        requestor = event.assoc.requestor
        assoc = event.assoc
        threading.Thread(
            target=self._commitment_report,
            args=(info, requestor.ae_title, requestor.address, assoc, self.access(event)),
            daemon=True,
            name="storage-commitment",
        ).start()
        return st.SUCCESS, None

    def commitment_result(self, info: Dataset, access: AccessScope) -> tuple[int, Dataset]:
        """Check each referenced instance against the index and its SHA-256 (PS3.4 J.3.3)."""
        success, failed = [], []
        for ref in info.ReferencedSOPSequence:
            sop_class = str(ref.get("ReferencedSOPClassUID", ""))
            sop = str(ref.get("ReferencedSOPInstanceUID", ""))
            found = self.ctx.retrieve.select(access, Level.IMAGE, {"SOPInstanceUID": [sop]})
            stored = found[0] if found else None
            reason = None
            if stored is None:
                reason = st.COMMIT_NO_SUCH_OBJECT_INSTANCE
            elif stored.sop_class_uid != sop_class:
                reason = st.COMMIT_CLASS_INSTANCE_CONFLICT
            elif not self._verify(stored):
                reason = st.COMMIT_PROCESSING_FAILURE
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop
            if reason is None:
                item.RetrieveAETitle = self.ae_title
                success.append(item)
            else:
                item.FailureReason = reason
                failed.append(item)
        report = Dataset()
        report.TransactionUID = info.TransactionUID
        report.RetrieveAETitle = self.ae_title
        if success:
            report.ReferencedSOPSequence = success
        if failed:
            report.FailedSOPSequence = failed
        return (2 if failed else 1), report

    def _verify(self, stored: StoredInstance) -> bool:
        try:
            h = hashlib.sha256()
            for chunk in self.ctx.retrieve.open(stored):
                h.update(chunk)
        except (OSError, DicomhubError):
            return False
        return h.hexdigest() == stored.sha256

    def _commitment_report(
        self, info: Dataset, ae_title: str, address: str, assoc: Any, access: AccessScope
    ) -> None:
        event_type, report = self.commitment_result(info, access)
        node = self.ctx.nodes.by_ae_title(ae_title)
        if node is not None:
            ae = AE(ae_title=self.ae_title)
            ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
            ae.add_requested_context(STORAGE_COMMITMENT)
            # we initiate the association but act as the SCP of the SOP class (PS3.4 J.3.3)
            out = ae.associate(
                node.host,
                node.port,
                ae_title=node.ae_title,
                ext_neg=[build_role(STORAGE_COMMITMENT, scp_role=True)],
            )
            if out.is_established:
                out.send_n_event_report(
                    report, event_type, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
                )
                out.release()
                return
            log.warning(
                "storage commitment: %s (%s:%s) not reachable", ae_title, node.host, node.port
            )
        if assoc.is_established:
            try:
                assoc.send_n_event_report(
                    report, event_type, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
                )
                return
            except Exception:
                log.exception("storage commitment: report on the same association failed")
        log.warning(
            "storage commitment result for %s (%s) could not be delivered; register "
            "the requestor with `dicomhub node add`",
            ae_title,
            address,
        )


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element (PS3.5 §7.1.2)."""
    group, elem = tag >> 16, tag & 0xFFFF
    if vr == b"OB":  # 2 reserved bytes and a 32-bit length
        return struct.pack("<HH2s2xI", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _padded(value: str, pad: bytes) -> bytes:
    data = value.encode("ascii")
    return data + pad if len(data) % 2 else data


#: Responses of one C-FIND/C-GET/C-MOVE queued for sending before the handler waits.
MAX_QUEUED_RESPONSES = 64
#: How long the handler waits for the DUL to read what the peer sent (a C-CANCEL).
CANCEL_READ_WAIT = 1.0


def _cancelled(event: Event) -> bool:
    """Whether the peer cancelled the request being answered (PS3.7 §9.3.2.3), with flow
    control of the responses.

    pynetdicom's DUL thread sends every queued response before it reads the socket again,
    so a C-FIND answered faster than its responses are sent would never see a C-CANCEL,
    and would queue all its responses in memory.  So: at most
    :data:`MAX_QUEUED_RESPONSES` are queued; and when the peer has sent something (the
    socket is readable), the handler waits until the DUL has sent what is queued and read
    it, then asks pynetdicom whether it was a C-CANCEL.
    """
    assoc = event.assoc
    dul = assoc.dul
    queued = dul.to_provider_queue
    deadline = time.monotonic() + CANCEL_READ_WAIT
    if queued.qsize() > MAX_QUEUED_RESPONSES:
        while queued.qsize() > MAX_QUEUED_RESPONSES // 4 and assoc.is_established:
            time.sleep(0.0005)
    sock = dul.socket
    if sock is not None and sock.ready:
        while not queued.empty() and assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.0002)
        while sock.ready and assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.0002)
        time.sleep(0.0002)  # the DUL decodes what it read and files the C-CANCEL
    return bool(event.is_cancelled)


#: First bytes of a received data set kept in memory for the reader (File Meta and the
#: data set's attributes up to the Pixel Data of a CT/MR image fit in far less).
STAGE_HEAD_BYTES = 16 << 10
_STAGE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
#: iovecs per writev(2) call at most (IOV_MAX on Linux)
_IOV_MAX = 1024


def _write_all(fd: int, parts: list[Any]) -> None:
    """Write ``parts`` one after the other to ``fd`` (writev(2), resumed after a short
    write, at most IOV_MAX buffers per call)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    i = 0
    while i < len(views):
        done = os.writev(fd, views[i : i + _IOV_MAX])
        if done <= 0:
            raise OSError(errno.EIO, "writev wrote nothing")
        while done:
            n = len(views[i])
            if done >= n:
                done -= n
                i += 1
            else:
                views[i] = views[i][done:]
                done = 0


def part10_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str
) -> bytes:
    """Preamble, "DICM" and the File Meta Information (PS3.10 §7.1) of a received C-STORE
    data set: what pydicom's ``write_file_meta_info`` writes for pynetdicom's
    ``Event.file_meta`` plus Source Application Entity Title, built directly (it is
    written once per received instance)."""
    body = b"".join(
        [
            _element(0x00020001, b"OB", b"\x00\x01"),
            _element(0x00020002, b"UI", _padded(sop_class_uid, b"\x00")),
            _element(0x00020003, b"UI", _padded(sop_instance_uid, b"\x00")),
            _element(0x00020010, b"UI", _padded(transfer_syntax_uid, b"\x00")),
            _element(0x00020012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
            _element(0x00020013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
            _element(0x00020016, b"AE", _padded(source_ae.strip(), b" ")),
        ]
    )
    group_length = _element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body
