"""One typed settings object for dicomhub.

Values come, in increasing priority, from the defaults below, an optional TOML file
(``--config FILE`` or ``DICOMHUB_CONFIG``), ``DICOMHUB_*`` environment variables and
command-line flags.  Every setting is documented in ``docs/operations.md``.
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

INGEST_SYNTAX_NAMES = {
    "htj2k": "1.2.840.10008.1.2.4.201",
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "jpeg-lossless": "1.2.840.10008.1.2.4.70",
    "rle": "1.2.840.10008.1.2.5",
    "explicit": "1.2.840.10008.1.2.1",
    "deflate": "1.2.840.10008.1.2.1.99",
}


def ingest_syntax_uid(value: str) -> str | None:
    """Resolve an ingest policy ('keep', a name of INGEST_SYNTAX_NAMES or a lossless UID)."""
    name = value.strip().lower()
    if name in ("", "keep", "as-received"):
        return None
    if name in INGEST_SYNTAX_NAMES:
        return INGEST_SYNTAX_NAMES[name]
    if value.strip() in INGEST_SYNTAX_NAMES.values():
        return value.strip()
    raise ValueError(
        f"ingest_transfer_syntax '{value}': use keep, {', '.join(INGEST_SYNTAX_NAMES)} "
        "or one of their UIDs (lossless syntaxes only)"
    )


class DuplicatePolicy(StrEnum):
    """What to do when a SOP Instance UID arrives again with *different* content.

    Identical content (same SHA-256) is always accepted as a success without a second copy.
    """

    REJECT = "reject"
    """Fail the instance with status 0x0111 (Duplicate SOP Instance); keep the first."""
    OVERWRITE = "overwrite"
    """Replace the stored object and its index row with the new one (warning 0xB000)."""


class Settings(BaseSettings):
    """dicomhub settings (env prefix ``DICOMHUB_``)."""

    model_config = SettingsConfigDict(env_prefix="DICOMHUB_", extra="ignore")

    data_dir: Path = Field(Path("./var"), description="Directory for blobs, staging and SQLite.")
    host: str = Field("127.0.0.1", description="HTTP bind address.")
    http_port: int = Field(8000, description="HTTP port.")
    public_url: str | None = Field(
        None,
        description="Base URL clients reach us at (e.g. https://pacs.example.org), used in "
        "RetrieveURL and BulkDataURI; default: derived from each request.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the index; default sqlite:///<data_dir>/index.sqlite3. "
        "PostgreSQL: postgresql+psycopg://user@host/db",
    )
    database_schema: str | None = Field(
        None, description="PostgreSQL schema to use (created if missing)."
    )
    max_request_bytes: int = Field(
        4 * 1024**3, description="Largest STOW-RS request body accepted (bytes); 413 above."
    )
    duplicate_policy: DuplicatePolicy = Field(
        DuplicatePolicy.REJECT,
        description="Same SOP Instance UID with different content: reject | overwrite",
    )
    bulk_data_threshold: int = Field(
        1024,
        description="Binary values longer than this (bytes) become BulkDataURIs in metadata.",
    )
    ingest_transfer_syntax: str = Field(
        "keep",
        description="Transfer syntax objects are stored in: 'keep' (as received, default) or "
        "a lossless syntax (htj2k, jpeg-ls, jpeg2000, jpeg-lossless, rle, explicit, deflate, "
        "or its UID). Only native and lossless encodings are re-encoded, each verified "
        "against its pixel digest; the original bytes are not kept (docs/operations.md).",
    )
    qido_default_limit: int = Field(1000, description="QIDO-RS results when no limit is given.")
    qido_max_limit: int = Field(10000, description="Largest QIDO-RS limit accepted.")
    fsync: bool = Field(True, description="fsync every stored object before indexing it.")
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="HTTP worker processes of `dicomhub serve`; 0 (default): one per usable "
        "CPU core, at most 4 (one process on a single core).",
    )
    token_ttl: int = Field(3600, description="Lifetime of issued bearer tokens (s).")
    credential_cache_seconds: float = Field(
        1.0,
        description="How long a verified bearer token or API key is remembered per process "
        "(s); a revocation made elsewhere takes effect within this time. 0 = check every "
        "request.",
    )
    lockout_threshold: int = Field(5, description="Failed logins before a principal locks.")
    lockout_seconds: int = Field(300, description="How long a locked principal stays locked (s).")
    oidc_issuer: str | None = Field(None, description="Trusted external OpenID Connect issuer.")
    oidc_jwks_url: str | None = Field(None, description="JWKS URL of the trusted issuer.")
    oidc_audience: str | None = Field(None, description="Required 'aud' of external tokens.")
    oidc_claim: str = Field(
        "preferred_username", description="Claim of external tokens naming a local principal."
    )
    audit_jsonl: Path | None = Field(None, description="Also append audit events to this file.")
    audit_syslog: str | None = Field(
        None, description="Also send audit events as RFC 5424 syslog over UDP to host:port."
    )
    tls_port: int = Field(0, description="DICOM TLS port (PS3.15 Annex B); 0 = off.")
    tls_cert: Path | None = Field(None, description="Server certificate (PEM) for DICOM TLS.")
    tls_key: Path | None = Field(None, description="Server private key (PEM) for DICOM TLS.")
    tls_ca: Path | None = Field(
        None, description="CA bundle; when set, DICOM TLS clients must present a certificate."
    )
    dimse_port: int = Field(11112, description="DICOM (DIMSE) port; 0 disables the DIMSE edge.")
    dimse_host: str | None = Field(None, description="DIMSE bind address (default: host).")
    ae_title: str = Field("DICOMHUB", description="Our application entity title.")
    max_pdu: int = Field(262144, description="Largest P-DATA PDU we receive (bytes).")
    max_associations: int = Field(16, description="Concurrent DIMSE associations.")
    dimse_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="DIMSE worker processes: with more than 1 the main process hands each "
        "association to the one with the fewest open associations; 0 (default): one per "
        "usable CPU core, at most 4, in `dicomhub serve`.",
    )
    dimse_lean_storage: bool = Field(
        True,
        description="Serve associations that only store (storage SOP classes and "
        "Verification, no extended negotiation) without pynetdicom's association threads "
        "(dicomhub.dimse.lean); false: pynetdicom serves every association.",
    )
    acse_timeout: float = Field(30, description="Association request/release timeout (s).")
    dimse_timeout: float = Field(60, description="DIMSE message timeout (s).")
    network_timeout: float = Field(60, description="Idle association timeout (s).")
    log_level: str = Field("info", description="Log level.")

    @field_validator("ingest_transfer_syntax")
    @classmethod
    def _check_ingest_syntax(cls, value: str) -> str:
        ingest_syntax_uid(value)
        return value

    @property
    def ingest_target(self) -> str | None:
        """The UID of :attr:`ingest_transfer_syntax`, ``None`` for 'keep'."""
        return ingest_syntax_uid(self.ingest_transfer_syntax)

    @property
    def effective_database_url(self) -> str:
        """The index URL, defaulting to SQLite inside the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"


#: most worker processes of each kind `dicomhub serve` starts by itself (``0``: auto)
AUTO_WORKERS_MAX = 4


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a container's
    cpuset), not all the machine's."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def serving(settings: Settings) -> Settings:
    """``settings`` as ``dicomhub serve`` runs them: ``workers`` and ``dimse_workers``
    left at 0 become one per usable core, at most :data:`AUTO_WORKERS_MAX`.  Elsewhere
    (an application built in-process, tests) 0 means one process."""
    auto = min(usable_cores(), AUTO_WORKERS_MAX)
    update = {name: auto for name in ("workers", "dimse_workers") if getattr(settings, name) == 0}
    return settings.model_copy(update=update) if update else settings


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from TOML file, environment and explicit overrides (highest priority)."""
    import os

    file_values: dict[str, Any] = {}
    path = config_file
    if path is None and os.environ.get("DICOMHUB_CONFIG"):
        path = Path(os.environ["DICOMHUB_CONFIG"])
    if path is not None:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
        file_values = dict(raw.get("dicomhub", raw))
    merged: dict[str, Any] = {}
    # environment wins over file: take file values only for fields not set by env
    for key, value in file_values.items():
        env_key = f"DICOMHUB_{key.upper()}"
        if env_key not in os.environ:
            merged[key] = value
    merged.update({k: v for k, v in overrides.items() if v is not None})
    # constructor arguments take precedence over the environment in pydantic-settings
    return Settings(**merged)


def worker_start(prog: str, env_var: str, tag: str, argv: list[str] | None) -> tuple[int, Settings]:
    """What a worker process of ``dicomhub serve`` starts from: the ``--channel`` its
    main process passed and the main process's settings (JSON in ``env_var``); logging
    set up with ``tag`` in each line.  Exits with status 2 when started by hand."""
    import argparse
    import os
    import sys

    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--channel", type=int, required=True, help="inherited channel socket")
    args = parser.parse_args(argv)
    raw = os.environ.get(env_var)
    if not raw:
        print(f"{env_var} is not set: started outside dicomhub serve?", file=sys.stderr)
        raise SystemExit(2)
    settings = Settings.model_validate_json(raw)
    worker_logging(settings, tag)
    return args.channel, settings


def worker_logging(settings: Settings, tag: str) -> None:
    """Logging of a worker process: the server's level, ``tag`` in each line."""
    import logging

    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[{tag}]: %(message)s",
    )
