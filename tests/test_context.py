"""Process-level choices of the composition root (dicomhub/context.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicomhub import config
from dicomhub.config import AUTO_WORKERS_MAX, Settings, serving
from dicomhub.context import build_context, ingest_write_threads


def test_stow_writer_threads_share_the_cores_among_worker_processes() -> None:
    """What came in: worker counts 1-8 on 1, 2 and 16 cores.  One process gets a writer
    thread per core (at most two); N worker processes share the cores, at least one
    thread each."""
    assert ingest_write_threads(1, cores=2) == 2
    assert ingest_write_threads(2, cores=2) == 1
    assert ingest_write_threads(4, cores=2) == 1
    assert ingest_write_threads(1, cores=1) == 1
    assert ingest_write_threads(1, cores=16) == 2
    assert ingest_write_threads(8, cores=16) == 2
    assert ingest_write_threads(0, cores=2) == 2  # not a worker count: as one process


def test_a_worker_process_context_has_its_share_of_writer_threads(tmp_path: Path) -> None:
    """What came in: the settings of `dicomhub serve --workers 2` on this machine: the
    context of each worker holds ingest_write_threads(2) writer threads."""
    ctx = build_context(Settings(data_dir=tmp_path, workers=2))
    try:
        assert ctx.ingest._max_workers == ingest_write_threads(2)  # type: ignore[attr-defined]
    finally:
        ctx.close()


def test_serve_runs_one_worker_per_usable_core_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What came in: the default settings (workers 0, dimse_workers 0) on 1, 2, 3 and 16
    usable cores, and explicit counts.  `dicomhub serve` runs one worker per core (at
    most AUTO_WORKERS_MAX) of each kind, one process on a single core; explicit counts
    are kept; in-process use keeps 0 (one process)."""
    assert 1 <= config.usable_cores() <= (os.cpu_count() or 1)
    defaults = Settings()
    assert (defaults.workers, defaults.dimse_workers) == (0, 0)
    for cores, expected in ((1, 1), (2, 2), (3, 3), (16, AUTO_WORKERS_MAX)):
        monkeypatch.setattr(config, "usable_cores", lambda cores=cores: cores)
        s = serving(Settings())
        assert (s.workers, s.dimse_workers) == (expected, expected)
        s = serving(Settings(workers=1, dimse_workers=3))
        assert (s.workers, s.dimse_workers) == (1, 3)
