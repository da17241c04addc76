"""Value objects of the archive (no I/O)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any


class Status(IntEnum):
    """Store statuses (PS3.4 Annex B.2.3, PS3.18 §10.5.3 FailureReason / WarningReason)."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007


@dataclass(frozen=True)
class StagedFile:
    """A received object written to local staging storage, not yet in the archive.

    ``digest`` is the SHA-256 of the file, or a future of it when the edge hashes on
    another thread while the object is parsed (:attr:`sha256` waits for it).  ``head``,
    when the edge kept them, are the file's first bytes (a STOW-RS part's, a C-STORE data
    set's): the reader walks them and reads the file back only when the data set does
    not end within them before a bulk value (its Pixel Data).
    """

    path: Path
    size: int
    digest: str | Future[str]
    head: bytes | None = None

    @property
    def sha256(self) -> str:
        """The SHA-256 of the file (hex)."""
        return self.digest if isinstance(self.digest, str) else self.digest.result()


@dataclass
class ParsedInstance:
    """What the index needs from one Part 10 object, read once at ingest.

    ``columns`` maps index column names (see :mod:`dicomhub.core.attributes`) to values;
    ``metadata`` is the DICOM JSON model (PS3.18 Annex F) of the whole data set, with
    bulk data replaced by BulkDataURIs relative to :data:`BULK_BASE`.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    columns: dict[str, Any]
    metadata: dict[str, Any]
    pixel_data_offset: int | None = None  # in the file; None if absent or deflated
    warnings: list[str] = field(default_factory=list)
    pixel_digest: str | None = None
    original_transfer_syntax_uid: str | None = None
    original_planar_configuration: int | None = None
    has_pixel_data: bool = False  # top-level (Float/Double Float) Pixel Data


BULK_BASE = "@@DICOMHUB_BASE@@"
"""Placeholder stored in BulkDataURIs; replaced by the request's DICOMweb base URL."""


@dataclass
class ReceivedObject:
    """A staged object of a request with what its sender says its original encoding was
    (a client that re-encoded it losslessly before sending; recorded only)."""

    staged: StagedFile
    original_transfer_syntax_uid: str | None = None
    original_planar_configuration: int | None = None


@dataclass
class IndexedInstance:
    """One instance to index: what was parsed, the staged file's size and digest, and
    where the blob store keeps it, in which owner's namespace."""

    parsed: ParsedInstance
    staged: StagedFile
    storage_key: str
    owner_pk: int


@dataclass(frozen=True)
class StoredInstance:
    """An instance as the index knows it: enough to stream or decode it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    size: int
    sha256: str
    number_of_frames: int | None = None
    pixel_data_offset: int | None = None
    owner_pk: int = 0
    pixel_digest: str | None = None
    original_transfer_syntax_uid: str | None = None
    original_planar_configuration: int | None = None

    @property
    def has_pixels(self) -> bool:
        """Whether the object has (Float/Double Float) Pixel Data."""
        return self.pixel_data_offset is not None


@dataclass
class StoreOutcome:
    """Result of storing one object (one item of the STOW-RS response, PS3.18 §10.5.3)."""

    status: int
    message: str = ""
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True when the object was not stored (status class Failure)."""
        return self.status not in (0x0000, 0xB000, 0xB006, 0xB007)


@dataclass(frozen=True)
class RemoteNode:
    """A DICOM application entity we can connect to (C-MOVE destination, device, printer)."""

    name: str
    ae_title: str
    host: str
    port: int
    description: str = ""


@dataclass
class QueryRow:
    """One match: attribute values keyed by ``Attribute.path`` plus extra metadata."""

    values: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # DICOM JSON elements by tag
