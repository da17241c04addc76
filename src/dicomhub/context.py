"""Composition root: the one place where concrete adapters are built and wired.

Everything else receives ports (:mod:`dicomhub.core.ports`) or services.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomhub.codecs.pixels import PydicomPixelCodec
from dicomhub.codecs.reader import DicomFileReader
from dicomhub.config import Settings
from dicomhub.core.services import (
    DeleteService,
    NodeService,
    QueryService,
    RetrieveService,
    StoreService,
)
from dicomhub.index.nodes import SqlNodeRegistry
from dicomhub.index.repository import SqlIndex
from dicomhub.storage.filesystem import FileSystemBlobStore


@dataclass
class Context:
    """The running archive: settings, adapters and the services built on them."""

    settings: Settings
    index: SqlIndex
    blobs: FileSystemBlobStore
    store: StoreService
    query: QueryService
    retrieve: RetrieveService
    delete: DeleteService
    nodes: NodeService

    def close(self) -> None:
        """Release database connections."""
        self.index.dispose()


def build_context(settings: Settings, *, migrate: bool = True) -> Context:
    """Build the archive from settings; create/upgrade the index schema by default."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    index = SqlIndex(settings.effective_database_url, settings.database_schema)
    if migrate:
        index.upgrade()
    blobs = FileSystemBlobStore(settings.data_dir / "storage")
    reader = DicomFileReader(settings.bulk_data_threshold)
    pixels = PydicomPixelCodec()
    return Context(
        settings=settings,
        index=index,
        blobs=blobs,
        store=StoreService(index, blobs, reader, settings.duplicate_policy.value, settings.fsync),
        query=QueryService(index),
        retrieve=RetrieveService(index, blobs, pixels),
        delete=DeleteService(index, blobs),
        nodes=NodeService(SqlNodeRegistry(index.engine, index.write_engine)),
    )
