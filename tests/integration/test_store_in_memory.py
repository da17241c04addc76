"""StoreService.store of an object whose first bytes the edge kept (StagedFile.head, the
C-STORE path): parsed from them, file hashed on the store's threads, blob placed while
the index transaction runs (PS3.4 B.2.2).

What came in: the CT and MR samples (Explicit VR Little Endian) and an RGB RLE sample, each
staged as a file with its first STAGE_HEAD_BYTES kept; once with the ingest-hash threads
running and once after they were shut down (as while the archive stops): the same rows
either way.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

import pytest

from conftest import SAMPLES, staged_files
from dicomhub.codecs import transcode
from dicomhub.context import Context
from dicomhub.core.model import StagedFile, Status
from dicomhub.dimse import handlers
from integration.dimse_helpers import CT_LE, MR_LE
from integration.helpers import served_pixel_digest

RLE = "pylibjpeg-data/ljdata_ds/RLELossless/SC_rgb_rle.dcm"


def _stage(ctx: Context, source: Path) -> StagedFile:
    content = source.read_bytes()
    path = ctx.store.staging_dir() / f"{uuid.uuid4().hex}.part"
    shutil.copyfile(source, path)
    head = content[: handlers.STAGE_HEAD_BYTES]
    return StagedFile(path, len(content), ctx.store.sha256_of(content), head=head)


@pytest.mark.parametrize("threads", ["running", "shut down"])
def test_store_from_memory(ctx: Context, threads: str) -> None:
    if threads == "shut down":
        assert ctx.store.executor is not None
        ctx.store.executor.shutdown(wait=True)
    for name in (CT_LE, MR_LE, RLE):
        source = SAMPLES / name
        assert source.exists(), f"{name} is not among the samples"
        outcome = ctx.store.store(_stage(ctx, source))
        assert outcome.status in (Status.SUCCESS, Status.COERCION_OF_DATA_ELEMENTS), outcome
        stored = ctx.index.find_instance(outcome.sop_instance_uid, ctx.index.default_owner())
        assert stored is not None
        placed = ctx.blobs.local_path(stored.storage_key).read_bytes()
        assert placed == source.read_bytes()
        assert stored.sha256 == hashlib.sha256(placed).hexdigest()
        assert served_pixel_digest(ctx, stored) == transcode.pixel_digest(source)
    assert staged_files(ctx.settings.data_dir) == []
