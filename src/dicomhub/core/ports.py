"""Ports: what the core needs from the outside world (``typing.Protocol``).

Adapters in ``index/``, ``storage/`` and ``codecs/`` implement them; only
``dicomhub.context`` wires concrete classes to these ports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

from dicomhub.core.access import AccessScope
from dicomhub.core.attributes import Level
from dicomhub.core.model import (
    IndexedInstance,
    ParsedInstance,
    QueryRow,
    RemoteNode,
    StagedFile,
    StoredInstance,
)
from dicomhub.core.query import Query


class BlobStore(Protocol):
    """Blind object storage by opaque key (cf. Orthanc ``IStorageArea``)."""

    def presync(self, source: Path) -> None:
        """Start making the staged file ``source`` durable in the background, while the
        caller validates it; the ``put_file`` that places it waits for that."""
        ...

    def put_file(self, key: str, source: Path, *, fsync: bool = True) -> None:
        """Make ``source`` durable under ``key``; ``source`` is consumed (moved or deleted)."""
        ...

    def put_file_async(self, key: str, source: Path, *, fsync: bool = True) -> Future[None]:
        """:meth:`put_file` on the store's own threads, so that the caller prepares its
        index transaction meanwhile; the caller waits for the result before it commits."""
        ...

    def put_files(
        self, items: Sequence[tuple[str, Path]], *, fsync: bool = True
    ) -> list[OSError | None]:
        """:meth:`put_file` for many (key, source) pairs with one durability barrier; per
        item ``None`` or the error that kept it from being stored (source left behind)."""
        ...

    def open(self, key: str) -> Iterator[bytes]:
        """Stream the whole object in chunks."""
        ...

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Read ``length`` bytes from ``offset``."""
        ...

    def local_path(self, key: str) -> Path:
        """A local file with the object's bytes (the file itself on a filesystem store)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; missing objects are not an error."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    def staging_dir(self) -> Path:
        """Local directory for incoming files (same filesystem, so ``put_file`` is a rename)."""
        ...

    def clear_staging(self) -> int:
        """Remove every file left in :meth:`staging_dir` (uploads a stopped server never
        finished: none is indexed); the number removed.  Only while nothing receives."""
        ...


class InstanceReader(Protocol):
    """Parses and validates a received Part 10 file (PS3.10 §7)."""

    def read(
        self,
        path: Path,
        content: bytes | None = None,
        head: bytes | None = None,
        size: int | None = None,
    ) -> ParsedInstance:
        """Parse the file at ``path`` (or its bytes ``content``, when the caller holds
        them; or its first bytes ``head`` of ``size``, read back only when they do not
        suffice); raise :class:`~dicomhub.core.errors.StoreFailure` with the reason if
        invalid."""
        ...


class Index(Protocol):
    """The transactional index of studies, series and instances.

    Every read takes an :class:`AccessScope` and applies it inside the query; writes take
    the owner (subscriber) whose namespace the object belongs to (docs/security.md).
    """

    def default_owner(self) -> int:
        """The subscriber that owns objects stored by server admins (``default``)."""
        ...

    def store_owner(self, study_instance_uid: str, access: AccessScope, default_pk: int) -> int:
        """The namespace a store by ``access`` goes to."""
        ...

    def find_instance(self, sop_instance_uid: str, owner_pk: int) -> StoredInstance | None:
        """Look up an instance by SOP Instance UID within an owner's namespace."""
        ...

    def find_instances(
        self, sop_instance_uids: Sequence[str], owner_pk: int
    ) -> dict[str, StoredInstance]:
        """The instances among ``sop_instance_uids`` in an owner's namespace, by UID."""
        ...

    def add_instances(
        self,
        items: Sequence[IndexedInstance],
        before_write: Callable[[], None] | None = None,
    ) -> None:
        """Insert instances (creating studies and series) in one transaction, all or none.

        ``before_write`` runs once the rows are prepared, before the transaction takes
        the database's write lock; if it raises, nothing is written and its exception
        propagates (a store waits there for its blobs to be durable: never while holding
        the lock other writers wait for).  Raises :class:`DuplicateInstance` if one SOP
        Instance UID is already indexed.
        """
        ...

    def add_instance(
        self,
        parsed: ParsedInstance,
        staged: StagedFile,
        storage_key: str,
        owner_pk: int,
        before_write: Callable[[], None] | None = None,
    ) -> None:
        """Insert one instance (creating its study and series rows) in one transaction
        (``before_write`` as in :meth:`add_instances`).

        Raises :class:`DuplicateInstance` if the SOP Instance UID is already indexed.
        """
        ...

    def replace_instance(
        self, parsed: ParsedInstance, staged: StagedFile, storage_key: str, owner_pk: int
    ) -> StoredInstance:
        """Replace the existing row of this SOP Instance UID; return the old one."""
        ...

    def record_pixel_digests(self, digests: Sequence[tuple[StoredInstance, str]]) -> None:
        """Record the pixel digest of instances indexed without one (computed when first
        asked); a row since replaced by another object is left alone."""
        ...

    def search(self, query: Query, scope: dict[str, str], access: AccessScope) -> list[QueryRow]:
        """Run a query; ``scope`` holds the StudyInstanceUID/SeriesInstanceUID of the path."""
        ...

    def instances(
        self,
        access: AccessScope,
        study: str,
        series_uid: str | None = None,
        instance_uid: str | None = None,
    ) -> list[StoredInstance]:
        """Visible instances under a resource, ordered by series and instance number."""
        ...

    def select_instances(
        self, level: Level, keys: dict[str, list[str]], access: AccessScope
    ) -> list[StoredInstance]:
        """Visible instances matching the unique keys of a retrieve identifier."""
        ...

    def metadata(
        self,
        access: AccessScope,
        study: str,
        series_uid: str | None = None,
        instance_uid: str | None = None,
    ) -> Iterator[bytes]:
        """The stored DICOM JSON of each visible instance under a resource."""
        ...

    def delete(
        self,
        access: AccessScope,
        study: str,
        series_uid: str | None = None,
        instance_uid: str | None = None,
    ) -> list[str]:
        """Remove the index rows under a resource; return the storage keys to delete."""
        ...

    def count_instances(self, owner_pk: int | None = None) -> int:
        """Number of indexed instances (of one owner, or all)."""
        ...


class NodeRegistry(Protocol):
    """Registry of remote DICOM nodes (PS3.7 application entities we talk to)."""

    def add(self, node: RemoteNode) -> None:
        """Register a node; :class:`~dicomhub.core.errors.Conflict` if the name exists."""
        ...

    def get(self, name: str) -> RemoteNode | None:
        """A node by name."""
        ...

    def by_ae_title(self, ae_title: str) -> RemoteNode | None:
        """The node registered with this AE title (first by name if several)."""
        ...

    def list(self) -> list[RemoteNode]:
        """All nodes, by name."""
        ...

    def remove(self, name: str) -> bool:
        """Remove a node; False if there was none."""
        ...


class DuplicateInstance(Exception):
    """Raised by :meth:`Index.add_instance` when the SOP Instance UID already exists."""


class PixelCodec(Protocol):
    """Frame extraction and rendering (PS3.18 §10.4.1.1.4, §10.4.1.1.5)."""

    def number_of_frames(self, path: Path) -> int:
        """Frames in the object (1 for single-frame images)."""
        ...

    def native_frames(self, path: Path, frame_numbers: Sequence[int]) -> Iterator[bytes]:
        """Frames (1-based) in native little-endian form."""
        ...

    def render(
        self, path: Path, frame_number: int, params: object, thumbnail: bool = False
    ) -> bytes:
        """A consumer-format image (JPEG/PNG) of one frame."""
        ...

    def bulk_value(self, path: Path, tag_path: Sequence[str]) -> bytes:
        """A bulk data value by tag path: ``["7FE00010"]``, ``["52009230", "0", …]``."""
        ...

    def pixel_digest(
        self, path: Path, parsed: ParsedInstance | None = None, content: bytes | None = None
    ) -> tuple[str | None, int | None]:
        """(pixel digest, Planar Configuration as stored) of an object; digest ``None``
        when it has no decodable Pixel Data (codecs/transcode.py defines the digest).
        ``parsed`` (what the reader found) lets native pixel data be hashed without
        parsing the header again, from ``content`` (the file's bytes) when given."""
        ...

    def deferred_digest_planar(
        self,
        path: Path,
        parsed: ParsedInstance,
        content: bytes | None = None,
        head: tuple[bytes, int] | None = None,
    ) -> int | None:
        """The stored Planar Configuration when the pixel digest is a hash of the stored
        Pixel Data bytes (computable later from the stored file), else ``None``
        (``head``: the file's first bytes and its size, when the caller kept them)."""
        ...

    def stored_pixel_digest(self, path: Path, sha256: str) -> str | None:
        """The pixel digest of a stored object whose bytes must have SHA-256 ``sha256``
        (``None`` if they do not, or it has no decodable pixel data)."""
        ...

    def transcode(
        self,
        path: Path,
        transfer_syntax_uid: str,
        *,
        planar_configuration: int | None = None,
        verify: bool = False,
        expected_digest: str | None = None,
    ) -> bytes:
        """The object in another transfer syntax (PS3.5 §10), losslessly unless the
        syntax is lossy.  Raises :class:`~dicomhub.core.errors.CannotTranscode` when it
        cannot be done faithfully."""
        ...

    def transcode_file(
        self, path: Path, transfer_syntax_uid: str, dst: Path, *, expected_digest: str | None
    ) -> StagedFile:
        """Re-encode ``path`` into a new file ``dst``, decoded again and checked against
        ``expected_digest`` (or the source's digest); its size and SHA-256 come back."""
        ...

    def frames_in(
        self, path: Path, frame_numbers: Sequence[int], transfer_syntax_uid: str
    ) -> Iterator[bytes]:
        """Frames (1-based) as fragments of ``transfer_syntax_uid`` (PS3.18 §10.4.1.1.4);
        frames already in that syntax are passed through without re-encoding."""
        ...

    def can_encode(self, transfer_syntax_uid: str) -> bool:
        """Whether objects can be written in this transfer syntax at all."""
        ...
