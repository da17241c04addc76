"""Core services: store, query, retrieve, delete (DESIGN §3).

The edges (DICOMweb now, DIMSE next) call these; they speak only ports and domain
types.  The store service implements the compensating store of DESIGN §2 /
Microsoft's StoreOrchestrator: validate → write blob durably → commit index row, and
on any failure leave neither behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dicomhub.core import syntaxes
from dicomhub.core.access import SYSTEM, AccessScope
from dicomhub.core.attributes import Level
from dicomhub.core.dicomjson import row_to_json
from dicomhub.core.errors import CannotTranscode, InvalidRequest, NotFound, StoreFailure
from dicomhub.core.model import (
    BULK_BASE,
    IndexedInstance,
    ParsedInstance,
    ReceivedObject,
    RemoteNode,
    StagedFile,
    Status,
    StoredInstance,
    StoreOutcome,
)
from dicomhub.core.ports import (
    BlobStore,
    DuplicateInstance,
    Index,
    InstanceReader,
    NodeRegistry,
    PixelCodec,
)
from dicomhub.core.query import Query
from dicomhub.core.staging import staging_name
from dicomhub.core.syntaxes import ELE, LOSSLESS_SOURCES

log = logging.getLogger(__name__)
_T = TypeVar("_T")
#: syntaxes whose Pixel Data the pixel digest hashes as stored (no decoding)
NATIVE_LITTLE_ENDIAN = frozenset({syntaxes.ELE, syntaxes.ILE})


def sha256_hex(*chunks: bytes | memoryview) -> str:
    """The SHA-256 (hex) of the chunks one after the other."""
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigest()


class _PlacementFailed(Exception):
    """The blob of a store could not be made durable (``error``); nothing was indexed."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _wait_quietly(placing: Future[None] | None) -> None:
    """Wait until a placement has finished, whatever its outcome (before the blob it
    placed, or not, may be removed)."""
    if placing is not None:
        with contextlib.suppress(Exception):
            placing.result()


#: Name of the pixel digest recorded for every instance (codecs/transcode.py).
PIXEL_DIGEST_ALGORITHM = "sha256-canonical-pixels-v1"


def storage_key(owner: int, study: str, series: str, sop: str, sha256: str) -> str:
    """Opaque but readable key: ``<owner>/<h2>/<study>/<series>/<sop>.<sha12>.dcm``.

    The content digest in the name means an overwrite never reuses a key, so the old
    object can be removed after the new index row commits.
    """
    h2 = hashlib.sha1(study.encode()).hexdigest()[:2]
    return f"{owner}/{h2}/{study}/{series}/{sop}.{sha256[:12]}.dcm"


@dataclass
class _Ready:
    """An object of a group store that passed validation (StoreService.store_many)."""

    index: int
    parsed: ParsedInstance
    staged: StagedFile
    outcome: StoreOutcome
    owner: int = 0
    key: str = ""


class StoreService:
    """Stores one received object (PS3.4 B.2 semantics for both STOW-RS and C-STORE)."""

    def __init__(
        self,
        index: Index,
        blobs: BlobStore,
        reader: InstanceReader,
        duplicate_policy: str = "reject",
        fsync: bool = True,
        pixels: PixelCodec | None = None,
        ingest_transfer_syntax: str | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.reader = reader
        self.duplicate_policy = duplicate_policy
        self.fsync = fsync
        self.pixels = pixels
        self.ingest_transfer_syntax = ingest_transfer_syntax
        #: threads for hashing beside the caller (hashlib releases the GIL), if any
        self.executor = executor

    def sha256_of(self, *parts: bytes | memoryview) -> str | Future[str]:
        """The SHA-256 of ``parts`` one after the other (hex): computed on
        :attr:`executor` when there is one, so that the caller parses the object
        meanwhile (see :class:`StagedFile`)."""
        return self._beside(sha256_hex, *parts)

    def _beside(self, fn: Callable[..., _T], *args: Any) -> _T | Future[_T]:
        """``fn(*args)`` on :attr:`executor` (a future), or here when there is none or it
        has been shut down (the archive is stopping)."""
        if self.executor is not None:
            with contextlib.suppress(RuntimeError):
                return self.executor.submit(fn, *args)
        return fn(*args)

    @property
    def _presync(self) -> bool:
        """Whether received files are fsynced early, while they are parsed: only when
        they are stored as received (with an ingest syntax most would be replaced by their
        re-encoded copy, and their fsync wasted)."""
        return self.fsync and self.ingest_transfer_syntax is None

    def staging_dir(self) -> Path:
        """Where edges write incoming bytes before calling :meth:`store`."""
        return self.blobs.staging_dir()

    def clear_staging(self) -> int:
        """At start-up, before any edge receives: remove what a crash left in staging
        (partly received objects, never indexed); how many."""
        return self.blobs.clear_staging()

    def store(
        self,
        staged: StagedFile,
        expected_study_uid: str | None = None,
        *,
        access: AccessScope = SYSTEM,
        expected_sop_class_uid: str | None = None,
        expected_sop_instance_uid: str | None = None,
        original_transfer_syntax_uid: str | None = None,
        original_planar_configuration: int | None = None,
        owners: dict[str, int] | None = None,
    ) -> StoreOutcome:
        """Validate, store and index one staged file; the staged file is always consumed.

        The ``expected_*`` UIDs come from the request (the STOW-RS URL, the C-STORE
        command's Affected SOP Class/Instance UID); a data set that contradicts them fails
        with 0xA900 (PS3.4 B.2.3) and is not stored.  ``original_*`` is what a client
        that re-encoded the object losslessly before sending says it was (recorded only).
        ``owners`` is a cache of store namespaces by Study Instance UID that a caller
        keeps for one session of ``access`` (a DIMSE association): see :meth:`_owner`.
        """
        if self._presync:
            self.blobs.presync(staged.path)  # the disk works while the object is parsed
        try:
            return self._guarded(
                self._store,
                staged,
                expected_study_uid,
                (expected_sop_class_uid, expected_sop_instance_uid),
                access,
                (original_transfer_syntax_uid, original_planar_configuration),
                owners,
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.path.unlink()

    def store_many(
        self,
        received: Sequence[ReceivedObject],
        expected_study_uid: str | None = None,
        *,
        access: AccessScope = SYSTEM,
    ) -> list[StoreOutcome]:
        """Store the objects of one request (a STOW-RS body) with one durability barrier
        and one index transaction (group commit); one outcome per object, in order.

        Same semantics as calling :meth:`store` for each: every object is validated on
        its own, a failure of one does not fail the others, blobs are durable before the
        index commits, and all staged files are consumed.  Duplicates, overwrites and
        anything the group transaction refuses go the one-by-one way.
        """
        outcomes: list[StoreOutcome | None] = [None] * len(received)
        ready: list[_Ready] = []
        leftovers: list[Path] = [r.staged.path for r in received]
        if self._presync:
            for r in received:
                self.blobs.presync(r.staged.path)
        try:
            for i, r in enumerate(received):
                prepared = self._guarded(
                    self._prepare,
                    r.staged,
                    expected_study_uid,
                    (None, None),
                    (r.original_transfer_syntax_uid, r.original_planar_configuration),
                )
                if isinstance(prepared, StoreOutcome):
                    outcomes[i] = prepared
                    continue
                parsed, staged, outcome = prepared
                leftovers.append(staged.path)
                ready.append(_Ready(i, parsed, staged, outcome))
            try:
                self._commit_group(ready, outcomes, access)
            except Exception as exc:  # the index cannot be read: nothing was placed yet
                log.exception("group store failed")
                for item in ready:
                    if outcomes[item.index] is None:
                        outcomes[item.index] = StoreOutcome(
                            status=Status.PROCESSING_FAILURE,
                            message=f"processing failure: {exc}",
                        )
        finally:
            for path in leftovers:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return [
            o
            if o is not None
            else StoreOutcome(status=Status.PROCESSING_FAILURE, message="not processed")
            for o in outcomes
        ]

    def _commit_group(
        self, ready: list[_Ready], outcomes: list[StoreOutcome | None], access: AccessScope
    ) -> None:
        """Blobs of ``ready`` in place (one fsync per directory), then one index insert."""
        if not ready:
            return
        owners: dict[str, int] = {}
        for r in ready:  # one request: a granted namespace too is looked up once
            r.owner = self._owner(r.parsed.study_instance_uid, access, owners, keep_granted=True)
        existing: dict[int, dict[str, StoredInstance]] = {}
        for owner in set(owners.values()):
            sops = [r.parsed.sop_instance_uid for r in ready if r.owner == owner]
            existing[owner] = self.index.find_instances(sops, owner)
        group: list[_Ready] = []
        singles: list[_Ready] = []
        seen: set[tuple[int, str]] = set()
        for r in ready:
            ident = (r.owner, r.parsed.sop_instance_uid)
            if ident in seen or r.parsed.sop_instance_uid in existing[r.owner]:
                singles.append(r)  # duplicate handling needs the one-by-one path
                continue
            seen.add(ident)
            r.key = storage_key(
                r.owner,
                r.parsed.study_instance_uid,
                r.parsed.series_instance_uid,
                r.parsed.sop_instance_uid,
                r.staged.sha256,
            )
            group.append(r)
        errors = self.blobs.put_files([(r.key, r.staged.path) for r in group], fsync=self.fsync)
        placed: list[_Ready] = []
        for r, err in zip(group, errors, strict=True):
            if err is not None:
                r.outcome.status = Status.OUT_OF_RESOURCES
                r.outcome.message = f"cannot write to storage: {err.strerror or err}"
                outcomes[r.index] = r.outcome
            else:
                placed.append(r)
        try:
            self.index.add_instances(
                [IndexedInstance(r.parsed, r.staged, r.key, r.owner) for r in placed]
            )
        except Exception as exc:  # e.g. a concurrent store of one of them: one by one
            log.info("group index insert refused (%s); indexing one by one", exc)
            for r in placed:
                outcomes[r.index] = self._guarded(
                    self._index_placed, r.parsed, r.staged, r.outcome, r.owner, r.key
                )
        else:
            for r in placed:
                if r.outcome.warnings:
                    r.outcome.status = Status.COERCION_OF_DATA_ELEMENTS
                outcomes[r.index] = r.outcome
        for r in singles:
            outcomes[r.index] = self._guarded(
                self._index_and_store, r.parsed, r.staged, r.outcome, access
            )

    @staticmethod
    def _guarded(fn: Callable[..., _T], *args: Any) -> _T | StoreOutcome:
        """``fn(*args)``, its failure turned into a failed outcome: one bad object never
        fails a request (no 500) nor the other objects with it."""
        try:
            return fn(*args)
        except StoreFailure as exc:
            return StoreOutcome(status=exc.status, message=str(exc))
        except Exception as exc:
            log.exception("store failed")
            return StoreOutcome(
                status=Status.PROCESSING_FAILURE, message=f"processing failure: {exc}"
            )

    def _store(
        self,
        staged: StagedFile,
        expected_study_uid: str | None,
        expected: tuple[str | None, str | None],
        access: AccessScope,
        original: tuple[str | None, int | None] = (None, None),
        owners: dict[str, int] | None = None,
    ) -> StoreOutcome:
        prepared = self._prepare(staged, expected_study_uid, expected, original)
        if isinstance(prepared, StoreOutcome):
            return prepared
        parsed, staged, outcome = prepared
        try:
            return self._index_and_store(parsed, staged, outcome, access, owners)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.path.unlink()  # a transcoded copy not moved into storage

    def _prepare(
        self,
        staged: StagedFile,
        expected_study_uid: str | None,
        expected: tuple[str | None, str | None],
        original: tuple[str | None, int | None],
    ) -> StoreOutcome | tuple[ParsedInstance, StagedFile, StoreOutcome]:
        """Parse and check one object, record its pixel digest and apply the ingest
        policy: a failed outcome, or what to store (``staged`` may be a transcoded copy)."""
        parsed = self.reader.read(staged.path, head=staged.head, size=staged.size)
        outcome = StoreOutcome(
            status=Status.SUCCESS,
            sop_class_uid=parsed.sop_class_uid,
            sop_instance_uid=parsed.sop_instance_uid,
            study_instance_uid=parsed.study_instance_uid,
            series_instance_uid=parsed.series_instance_uid,
            warnings=list(parsed.warnings),
        )
        want_class, want_instance = expected
        for name, want, got in (
            ("SOPClassUID", want_class, parsed.sop_class_uid),
            ("SOPInstanceUID", want_instance, parsed.sop_instance_uid),
        ):
            if want is not None and want != got:
                outcome.status = Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
                outcome.message = f"{name} {got} of the data set differs from {want} of the request"
                return outcome
        if expected_study_uid is not None and parsed.study_instance_uid != expected_study_uid:
            outcome.status = Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
            outcome.message = (
                f"StudyInstanceUID {parsed.study_instance_uid} does not match the study "
                f"of the request URL {expected_study_uid}"
            )
            return outcome
        parsed.original_transfer_syntax_uid = original[0] or parsed.transfer_syntax_uid
        if self.pixels is not None and parsed.has_pixel_data:
            if parsed.transfer_syntax_uid in NATIVE_LITTLE_ENDIAN and not self._should_transcode(
                parsed.transfer_syntax_uid
            ):
                planar = self.pixels.deferred_digest_planar(
                    staged.path,
                    parsed,
                    head=(staged.head, staged.size) if staged.head is not None else None,
                )
                if planar is not None:
                    # stored as received, and its pixel digest is the SHA-256 of stored
                    # bytes: computed when first asked (RetrieveService.pixel_records),
                    # from the stored file checked against the SHA-256 recorded now
                    parsed.original_planar_configuration = (
                        original[1] if original[0] and original[1] is not None else planar
                    )
                    return parsed, staged, outcome
            self._record_digest(staged, parsed, original)
            if parsed.pixel_digest is not None and self._should_transcode(
                parsed.transfer_syntax_uid
            ):
                staged, parsed = self._transcode(staged, parsed)
        return parsed, staged, outcome

    def _record_digest(
        self, staged: StagedFile, parsed: ParsedInstance, original: tuple[str | None, int | None]
    ) -> None:
        """Set the pixel digest and the original Planar Configuration of ``parsed``."""
        assert self.pixels is not None
        digest, planar = self.pixels.pixel_digest(staged.path, parsed)
        parsed.pixel_digest = digest
        parsed.original_planar_configuration = (
            original[1] if original[0] and original[1] is not None else planar
        )

    def _should_transcode(self, transfer_syntax_uid: str) -> bool:
        """Ingest policy: re-encode native and lossless encodings only (never lossy ones)."""
        target = self.ingest_transfer_syntax
        return (
            target is not None
            and transfer_syntax_uid != target
            and transfer_syntax_uid in LOSSLESS_SOURCES
        )

    def _transcode(
        self, staged: StagedFile, parsed: ParsedInstance
    ) -> tuple[StagedFile, ParsedInstance]:
        """Re-encode a received object in the ingest syntax, verified against its pixel
        digest; on any problem the object is stored as received (nothing is lost)."""
        assert self.pixels is not None and self.ingest_transfer_syntax is not None
        out = Path(staging_name(str(self.blobs.staging_dir())))
        try:
            transcoded = self.pixels.transcode_file(
                staged.path, self.ingest_transfer_syntax, out, expected_digest=parsed.pixel_digest
            )
            new_parsed = self.reader.read(out)
        except (CannotTranscode, StoreFailure) as exc:
            log.info("kept %s as received: %s", parsed.sop_instance_uid, exc)
            with contextlib.suppress(FileNotFoundError):
                out.unlink()
            return staged, parsed
        new_parsed.pixel_digest = parsed.pixel_digest
        new_parsed.original_transfer_syntax_uid = parsed.original_transfer_syntax_uid
        new_parsed.original_planar_configuration = parsed.original_planar_configuration
        new_parsed.warnings = parsed.warnings
        staged.path.unlink()
        return transcoded, new_parsed

    def _index_and_store(
        self,
        parsed: ParsedInstance,
        staged: StagedFile,
        outcome: StoreOutcome,
        access: AccessScope,
        owners: dict[str, int] | None = None,
    ) -> StoreOutcome:
        owner = self._owner(parsed.study_instance_uid, access, owners)
        existing = self.index.find_instance(parsed.sop_instance_uid, owner)
        if existing is not None:
            return self._duplicate(existing, parsed, staged, outcome, owner)
        key = storage_key(
            owner,
            parsed.study_instance_uid,
            parsed.series_instance_uid,
            parsed.sop_instance_uid,
            staged.sha256,
        )
        # the blob is made durable on the store's threads while the index transaction is
        # prepared; the transaction commits only once the blob is durable
        placing = self.blobs.put_file_async(key, staged.path, fsync=self.fsync)
        try:
            return self._index_placed(parsed, staged, outcome, owner, key, placing)
        except _PlacementFailed as failed:
            outcome.status = Status.OUT_OF_RESOURCES
            outcome.message = f"cannot write to storage: {failed.error.strerror or failed.error}"
            return outcome

    def _owner(
        self,
        study: str,
        access: AccessScope,
        owners: dict[str, int] | None,
        keep_granted: bool = False,
    ) -> int:
        """The namespace a store of ``study`` by ``access`` goes to, through ``owners``.

        For a session (a DIMSE association) only the caller's own namespace is remembered:
        it stays right whatever happens to the study meanwhile (the own namespace is also
        where a store goes when the study is gone), whereas a grant on another subscriber's
        study can be revoked, so that answer is looked up again each time.  Within one
        request (``keep_granted``) every answer is kept.
        """
        if owners is not None and study in owners:
            return owners[study]
        default = self.index.default_owner()
        owner = self.index.store_owner(study, access, default)
        own = access.subscriber_pk if access.subscriber_pk is not None else default
        if owners is not None and (keep_granted or owner == own):
            owners[study] = owner
        return owner

    def _index_placed(
        self,
        parsed: ParsedInstance,
        staged: StagedFile,
        outcome: StoreOutcome,
        owner: int,
        key: str,
        placing: Future[None] | None = None,
    ) -> StoreOutcome:
        """Index a blob durable under ``key`` (or being made so by ``placing``: the index
        commits only after it succeeded); without its row the blob is removed.  A failed
        ``placing`` raises :class:`_PlacementFailed`, nothing indexed."""

        def durable() -> None:
            assert placing is not None
            try:
                placing.result()
            except OSError as exc:
                raise _PlacementFailed(exc) from exc

        try:
            self.index.add_instance(
                parsed, staged, key, owner, before_write=durable if placing else None
            )
        except DuplicateInstance:
            _wait_quietly(placing)
            # lost a race with a concurrent store of the same SOP Instance UID
            existing = self._discard(key, parsed.sop_instance_uid, owner)
            if existing is None:
                raise
            return self._duplicate(existing, parsed, staged, outcome, owner, already_moved=True)
        except BaseException:
            _wait_quietly(placing)
            try:
                self._discard(key, parsed.sop_instance_uid, owner)  # no blob without its row
            except OSError as exc:  # e.g. the storage that failed the placement
                log.warning("could not remove the blob %s of a failed store: %s", key, exc)
            raise
        if outcome.warnings:
            outcome.status = Status.COERCION_OF_DATA_ELEMENTS
        return outcome

    def _discard(self, key: str, sop_instance_uid: str, owner: int) -> StoredInstance | None:
        """Remove a blob we wrote unless the index references it.

        Identical content has the same key, so a concurrent store of the same bytes
        that committed first owns this very file: it must stay.
        """
        existing = self.index.find_instance(sop_instance_uid, owner)
        if existing is None or existing.storage_key != key:
            self.blobs.delete(key)
        return existing

    def _duplicate(
        self,
        existing: StoredInstance,
        parsed: Any,
        staged: StagedFile,
        outcome: StoreOutcome,
        owner: int,
        already_moved: bool = False,
    ) -> StoreOutcome:
        if existing.sha256 == staged.sha256:
            outcome.message = "identical instance already stored; not stored again"
            return outcome
        if (
            existing.study_instance_uid != parsed.study_instance_uid
            or self.duplicate_policy == "reject"
        ):
            outcome.status = Status.DUPLICATE_SOP_INSTANCE
            where = (
                "in another study"
                if existing.study_instance_uid != parsed.study_instance_uid
                else f"with different content (duplicate policy: {self.duplicate_policy})"
            )
            outcome.message = f"SOP Instance {parsed.sop_instance_uid} is already stored {where}"
            return outcome
        if already_moved:  # a concurrent overwrite won the race: report it, keep theirs
            outcome.status = Status.DUPLICATE_SOP_INSTANCE
            outcome.message = "a concurrent request stored this SOP Instance first"
            return outcome
        key = storage_key(
            owner,
            parsed.study_instance_uid,
            parsed.series_instance_uid,
            parsed.sop_instance_uid,
            staged.sha256,
        )
        self.blobs.put_file(key, staged.path, fsync=self.fsync)
        try:
            old = self.index.replace_instance(parsed, staged, key, owner)
        except BaseException:
            self.blobs.delete(key)
            raise
        if old.storage_key != key:
            self.blobs.delete(old.storage_key)
        outcome.warnings.append("replaced the stored instance (duplicate policy: overwrite)")
        outcome.status = Status.COERCION_OF_DATA_ELEMENTS
        return outcome


class QueryService:
    """QIDO-RS and C-FIND searches (PS3.18 §10.6, PS3.4 C.4.1) within an access scope."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def ping(self) -> None:
        """Reach the index (liveness check); raises if the database does not answer."""
        self.index.default_owner()

    def search(self, access: AccessScope, query: Query, scope: dict[str, str]) -> list[Any]:
        """Raw rows for a query (the DIMSE edge formats them as datasets)."""
        return self.index.search(query, scope, access)

    def search_json(
        self, access: AccessScope, query: Query, scope: dict[str, str], base_url: str
    ) -> list[dict[str, Any]]:
        """QIDO-RS results in the DICOM JSON model (PS3.18 §10.6.3.3.2)."""
        if query.level in (Level.SERIES, Level.IMAGE) and "StudyInstanceUID" in scope:
            series = scope.get("SeriesInstanceUID") if query.level == Level.IMAGE else None
            if not self.index.instances(access, scope["StudyInstanceUID"], series):
                what = f"series {series}" if series else f"study {scope['StudyInstanceUID']}"
                raise NotFound(f"{what} not found")
        rows = self.index.search(query, scope, access)
        return [row_to_json(r, query, base_url) for r in rows]


class RetrieveService:
    """WADO-RS retrieval: instances, metadata, frames, rendered, bulk data (PS3.18 §10.4).

    Everything is looked up within the caller's access scope: what it may not see does
    not exist for it (404).
    """

    def __init__(self, index: Index, blobs: BlobStore, pixels: PixelCodec) -> None:
        self.index = index
        self.blobs = blobs
        self.pixels = pixels

    def instances(
        self,
        access: AccessScope,
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> list[StoredInstance]:
        """The instances of a resource; :class:`NotFound` if there are none."""
        found = self.index.instances(access, study, series, instance)
        if not found:
            raise NotFound(_describe(study, series, instance) + " not found")
        return found

    def open(self, item: StoredInstance) -> Iterator[bytes]:
        """The stored object's bytes."""
        return self.blobs.open(item.storage_key)

    def local_path(self, item: StoredInstance) -> Path:
        """A local path to the stored object (for decoders)."""
        return self.blobs.local_path(item.storage_key)

    def explicit_le(self, item: StoredInstance) -> bytes:
        """The instance decompressed to Explicit VR Little Endian, same UIDs (PS3.5 A.2)."""
        return self.transcoded(item, ELE)

    def can_encode(self, transfer_syntax_uid: str) -> bool:
        """Whether instances can be re-encoded in this syntax (codec availability)."""
        return self.pixels.can_encode(transfer_syntax_uid)

    def transcoded(self, item: StoredInstance, transfer_syntax_uid: str) -> bytes:
        """The instance in another transfer syntax, same UIDs (PS3.5 §10); lossless unless
        the syntax is lossy, which callers only use when asked for it explicitly.
        Raises :class:`CannotTranscode` when that cannot be done faithfully."""
        return self.pixels.transcode(self.local_path(item), transfer_syntax_uid)

    def frames_in(
        self, item: StoredInstance, numbers: Sequence[int], transfer_syntax_uid: str
    ) -> Iterator[bytes]:
        """Frames of an instance found by :meth:`instances`, as fragments of a (compressed)
        syntax (PS3.18 §8.7.3.3.2)."""
        return self.pixels.frames_in(self.local_path(item), numbers, transfer_syntax_uid)

    def pixel_records(
        self, access: AccessScope, study: str, series: str | None = None
    ) -> list[dict[str, Any]]:
        """Per instance: stored and original syntax and the pixel digest (dicomhub extension,
        docs/conformance.md "Pixel digests"), so a client can prove a transfer lossless.

        A native object stored as received is indexed without its digest (it is a hash
        of the stored pixel bytes, so nothing is lost by waiting): it is computed here the
        first time it is asked for, from the stored file once that is checked against the
        SHA-256 recorded at ingest, and recorded in the index.
        """
        found = self.instances(access, study, series)
        computed: list[tuple[StoredInstance, str]] = []
        for i in found:
            if (
                i.pixel_digest is None
                and i.has_pixels
                and i.transfer_syntax_uid in NATIVE_LITTLE_ENDIAN
            ):
                digest = self.pixels.stored_pixel_digest(self.local_path(i), i.sha256)
                if digest is not None:
                    computed.append((i, digest))
        if computed:
            self.index.record_pixel_digests(computed)
            by_key = {i.storage_key: d for i, d in computed}
            found = [
                dataclasses.replace(i, pixel_digest=by_key.get(i.storage_key, i.pixel_digest))
                for i in found
            ]
        return [
            {
                "StudyInstanceUID": i.study_instance_uid,
                "SeriesInstanceUID": i.series_instance_uid,
                "SOPInstanceUID": i.sop_instance_uid,
                "SOPClassUID": i.sop_class_uid,
                "TransferSyntaxUID": i.transfer_syntax_uid,
                "OriginalTransferSyntaxUID": i.original_transfer_syntax_uid
                or i.transfer_syntax_uid,
                "OriginalPlanarConfiguration": i.original_planar_configuration,
                "NumberOfFrames": i.number_of_frames,
                "PixelDigest": i.pixel_digest,
                "PixelDigestAlgorithm": PIXEL_DIGEST_ALGORITHM if i.pixel_digest else None,
            }
            for i in found
        ]

    def metadata(
        self,
        access: AccessScope,
        study: str,
        series: str | None,
        instance: str | None,
        base_url: str,
    ) -> Iterator[bytes]:
        """A JSON array of the instances' metadata, streamed (PS3.18 §10.4.1.1.2)."""
        docs = self.index.metadata(access, study, series, instance)
        first = next(docs, None)
        if first is None:
            raise NotFound(_describe(study, series, instance) + " not found")
        token = BULK_BASE.encode()
        base = base_url.encode()

        def _gen() -> Iterator[bytes]:
            yield b"[" + first.replace(token, base)
            for doc in docs:
                yield b"," + doc.replace(token, base)
            yield b"]"

        return _gen()

    def frames(self, item: StoredInstance, numbers: Sequence[int]) -> Iterator[bytes]:
        """Native frames of an instance found by :meth:`instances` (PS3.18 §10.4.1.1.4)."""
        return self.pixels.native_frames(self.local_path(item), numbers)

    def rendered(
        self,
        access: AccessScope,
        study: str,
        series: str | None,
        instance: str | None,
        frame: int | None,
        params: object,
        thumbnail: bool = False,
    ) -> bytes:
        """One rendered image (PS3.18 §10.4.1.1.5 / §10.4.1.1.6).

        A study or series renders its representative instance: the middle instance with
        pixel data of the first series (docs/conformance.md).
        """
        found = self.instances(access, study, series, instance)
        if instance is None:
            first_series = found[0].series_instance_uid
            in_series = [i for i in found if i.series_instance_uid == first_series]
            with_pixels = [i for i in in_series if i.has_pixels] or in_series
            item = with_pixels[len(with_pixels) // 2]
        else:
            item = found[0]
        return self.pixels.render(self.local_path(item), frame or 1, params, thumbnail)

    def select(
        self, access: AccessScope, level: Level, keys: dict[str, list[str]]
    ) -> list[StoredInstance]:
        """Instances for a C-GET/C-MOVE identifier's unique keys (PS3.4 C.4.2.2.1)."""
        return self.index.select_instances(level, keys, access)

    def bulkdata(
        self, access: AccessScope, study: str, series: str, instance: str, tag_path: Sequence[str]
    ) -> bytes:
        """The value of one bulk data element (PS3.18 §10.4.1.1.3)."""
        item = self.instances(access, study, series, instance)[0]
        return self.pixels.bulk_value(self.local_path(item), tag_path)


class DeleteService:
    """Removes studies, series and instances: index rows first, then blobs."""

    def __init__(self, index: Index, blobs: BlobStore) -> None:
        self.index = index
        self.blobs = blobs

    def delete(
        self,
        access: AccessScope,
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> int:
        """Delete a resource the caller owns; return the number of instances removed."""
        keys = self.index.delete(access, study, series, instance)
        if not keys:
            raise NotFound(_describe(study, series, instance) + " not found")
        for key in keys:
            try:
                self.blobs.delete(key)
            except OSError:
                log.exception("could not delete blob %s (orphan left on storage)", key)
        return len(keys)


def _describe(study: str, series: str | None, instance: str | None) -> str:
    if instance:
        return f"instance {instance}"
    if series:
        return f"series {series}"
    return f"study {study}"


_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class NodeService:
    """The registry of remote DICOM nodes: C-MOVE destinations, devices, printers."""

    def __init__(self, registry: NodeRegistry) -> None:
        self.registry = registry

    def add(
        self, name: str, ae_title: str, host: str, port: int, description: str = ""
    ) -> RemoteNode:
        """Validate and register a node (AE title per PS3.5 Table 6.2-1, AE VR)."""
        if not _NODE_NAME.match(name):
            raise InvalidRequest(
                "node name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        title = ae_title.strip()
        if not _AE_TITLE.match(ae_title) or not title:
            raise InvalidRequest(
                "AE title: 1-16 printable characters, no backslash, not only spaces"
            )
        if not host or len(host) > 255 or any(c.isspace() for c in host):
            raise InvalidRequest("host: a host name or IP address")
        if not 1 <= int(port) <= 65535:
            raise InvalidRequest("port: 1-65535")
        node = RemoteNode(name, title, host, int(port), description)
        self.registry.add(node)
        return node

    def list(self) -> list[RemoteNode]:
        """All registered nodes."""
        return self.registry.list()

    def get(self, name: str) -> RemoteNode:
        """One node; :class:`NotFound` if unknown."""
        node = self.registry.get(name)
        if node is None:
            raise NotFound(f"no node named '{name}'")
        return node

    def remove(self, name: str) -> None:
        """Unregister a node; :class:`NotFound` if unknown."""
        if not self.registry.remove(name):
            raise NotFound(f"no node named '{name}'")

    def by_ae_title(self, ae_title: str) -> RemoteNode | None:
        """The node registered under an AE title (C-MOVE destination lookup)."""
        return self.registry.by_ae_title(ae_title.strip())
