"""Shared fixtures: real SQLite and PostgreSQL indexes, a real HTTP server on loopback,
and the real sample files of ../shared/dicom-samples (read-only: tests copy what they
modify into tmp_path)."""

from __future__ import annotations

import csv
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import create_engine, text

from dicomhub.config import Settings
from dicomhub.context import Context, build_context
from dicomhub.dicomweb.app import create_app

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = Path(os.environ.get("DICOMHUB_SAMPLES", ROOT.parent / "shared" / "dicom-samples"))
PG_URL = os.environ.get("DICOMHUB_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Sample:
    """One row of MANIFEST.tsv."""

    path: Path
    modality: str
    transfer_syntax_uid: str
    frames: int
    pixel_decode: str
    photometric: str
    bits_allocated: str

    @property
    def id(self) -> str:
        return str(self.path.relative_to(SAMPLES))


def load_manifest() -> list[Sample]:
    """All sample files with their MANIFEST facts."""
    out = []
    with open(SAMPLES / "MANIFEST.tsv", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            out.append(
                Sample(
                    path=SAMPLES / row["file"],
                    modality=row["modality"],
                    transfer_syntax_uid=row["transfer_syntax_uid"],
                    frames=int(row["frames"] or 1),
                    pixel_decode=row["pixel_decode"],
                    photometric=row["photometric"],
                    bits_allocated=row["bits_alloc"],
                )
            )
    return out


MANIFEST = load_manifest()


def pg_available() -> bool:
    """Whether the test PostgreSQL answers (CI always has it)."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """(URL, schema) of a fresh index: a SQLite file, or a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.sqlite3'}", None
        return
    if not pg_available() and not os.environ.get("CI"):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield PG_URL, schema
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(scope="session")
def database_module() -> Iterator[object]:
    """Factory for module-scoped archives: ``make(backend, tmp) -> (url, schema)``."""
    schemas: list[str] = []

    def make(backend: str, tmp: Path) -> tuple[str, str | None]:
        if backend == "sqlite":
            return f"sqlite:///{tmp / 'index.sqlite3'}", None
        if not pg_available() and not os.environ.get("CI"):
            pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
        schema = f"t_{uuid.uuid4().hex[:12]}"
        schemas.append(schema)
        return PG_URL, schema

    yield make
    if schemas:
        engine = create_engine(PG_URL)
        with engine.begin() as conn:
            for schema in schemas:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def make_settings(data_dir: Path, url: str, schema: str | None, **kw: object) -> Settings:
    """Settings for a test archive (fsync off only where a test says so)."""
    return Settings(data_dir=data_dir, database_url=url, database_schema=schema, **kw)  # type: ignore[arg-type]


@pytest.fixture
def ctx(tmp_path: Path, database: tuple[str, str | None]) -> Iterator[Context]:
    """A real archive (index + filesystem storage) without HTTP."""
    url, schema = database
    context = build_context(make_settings(tmp_path / "data", url, schema))
    yield context
    context.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving the app on a loopback port in a background thread."""

    def __init__(self, context: Context) -> None:
        self.ctx = context
        self.port = free_port()
        config = uvicorn.Config(
            create_app(context),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture
def server(ctx: Context) -> Iterator[LiveServer]:
    """A live DICOMweb server on a fresh archive (SQLite and PostgreSQL)."""
    with LiveServer(ctx) as live:
        yield live


@dataclass
class LiveNode:
    """DICOMweb and DIMSE edges of one archive, both live on loopback."""

    http: LiveServer
    ae_title: str
    port: int

    @property
    def ctx(self) -> Context:
        return self.http.ctx

    @property
    def url(self) -> str:
        return self.http.url


@pytest.fixture
def node(tmp_path: Path, database: tuple[str, str | None]) -> Iterator[LiveNode]:
    """An archive serving DICOMweb and DIMSE (AE title DICOMHUB) on free loopback ports,
    on SQLite and on PostgreSQL."""
    from dicomhub.dimse.server import DimseServer

    url, schema = database
    context = build_context(
        make_settings(tmp_path / "data", url, schema, dimse_port=free_port(), ae_title="DICOMHUB")
    )
    dimse = DimseServer(context)
    dimse.start()
    try:
        with LiveServer(context) as live:
            yield LiveNode(live, "DICOMHUB", dimse.port)
    finally:
        dimse.stop()
        context.close()
