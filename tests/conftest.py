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
from typing import Any

import pytest
import requests
import uvicorn
from sqlalchemy import create_engine, text

from dicomhub.config import Settings
from dicomhub.context import Context, build_context
from dicomhub.core.access import Kind, Principal, Role
from dicomhub.dicomweb.app import create_app
from dicomhub.dicomweb.protocol import BodyProtocol

ROOT = Path(__file__).resolve().parents[1]


def _samples_dir() -> Path:
    """DICOMHUB_SAMPLES, else ../shared/dicom-samples next to the checkout, else /work/shared."""
    if os.environ.get("DICOMHUB_SAMPLES"):
        return Path(os.environ["DICOMHUB_SAMPLES"])
    for candidate in (ROOT.parent / "shared" / "dicom-samples", Path("/work/shared/dicom-samples")):
        if (candidate / "MANIFEST.tsv").exists():
            return candidate
    return ROOT.parent / "shared" / "dicom-samples"


SAMPLES = _samples_dir()
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


def staged_files(data_dir: Path) -> list[Path]:
    """Files in the archive's staging area (in its per-process subdirectories too):
    uploads received but not (yet) placed; empty once every store has finished."""
    staging = data_dir / "storage" / "staging"
    return sorted(p for p in staging.rglob("*") if p.is_file()) if staging.exists() else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AuthedHTTP:
    """``requests`` with the bearer token of the live server a URL belongs to.

    Tests call ``http.get(url)`` to act as that archive's admin (created at start-up, as
    ``dicomhub serve`` does); raw ``requests`` calls go unauthenticated.
    """

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}

    def headers_for(self, url: str, headers: dict[str, str] | None) -> dict[str, str]:
        merged = dict(headers or {})
        for origin, token in self.tokens.items():
            if url.startswith(origin) and "Authorization" not in merged:
                merged["Authorization"] = f"Bearer {token}"
        return merged

    def request(self, method: str, url: str, **kw: Any) -> requests.Response:
        kw["headers"] = self.headers_for(url, kw.get("headers"))
        return requests.request(method, url, **kw)

    def get(self, url: str, **kw: Any) -> requests.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> requests.Response:
        return self.request("POST", url, **kw)

    def delete(self, url: str, **kw: Any) -> requests.Response:
        return self.request("DELETE", url, **kw)


http = AuthedHTTP()

CLI_ADMIN = Principal(0, "test-admin", Kind.USER, Role.ADMIN, None, None)


class LiveServer:
    """uvicorn serving the app on a loopback port in a background thread.

    Like ``dicomhub serve``, it creates the ``admin`` user on a fresh archive; ``token``
    is a bearer token of that admin and ``headers`` carries it.
    """

    def __init__(self, context: Context) -> None:
        self.ctx = context
        self.port = free_port()
        if context.auth.bootstrap_admin() is None and not context.auth.store.principal_get("admin"):
            context.auth.add_user(CLI_ADMIN, None, "admin", Role.ADMIN, None, "test")
        self.token = context.auth.issue_token(CLI_ADMIN, "admin", 3600, "test")[0]
        self.headers = {"Authorization": f"Bearer {self.token}"}
        config = uvicorn.Config(
            create_app(context),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            http=BodyProtocol,  # as dicomhub serve runs it (dicomweb/worker.py)
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """A dicomweb-client authenticated as the admin."""
        from dicomweb_client.api import DICOMwebClient

        return DICOMwebClient(self.url, headers=self.headers)

    def __enter__(self) -> LiveServer:
        http.tokens[self.origin] = self.token
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
        http.tokens.pop(self.origin, None)


@pytest.fixture
def server(ctx: Context) -> Iterator[LiveServer]:
    """A live DICOMweb server on a fresh archive (SQLite and PostgreSQL)."""
    with LiveServer(ctx) as live:
        yield live


# Calling AE titles of the DIMSE test peers (DCMTK defaults and the tests' pynetdicom AEs),
# registered as one device of the subscriber 'default', where the admin's uploads land.
TEST_AE_TITLES = (
    "ECHOSCU",
    "STORESCU",
    "FINDSCU",
    "GETSCU",
    "MOVESCU",
    "PYNETDICOM",
    "PYNETSCU",
    "CONCURRENT",
    "TRUNCATED",
    "ABORTER",
    "PRIVATE",
    "COMMITSCU",
    "COMMITSCP",
    "STORESCP",
)


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
    context.auth.add_device(CLI_ADMIN, "default", "test-tools", TEST_AE_TITLES, (), "test")
    dimse = DimseServer(context)
    dimse.start()
    try:
        with LiveServer(context) as live:
            yield LiveNode(live, "DICOMHUB", dimse.port)
    finally:
        dimse.stop()
        context.close()
