"""Schema migrations with Alembic, run programmatically (``dicomhub db upgrade``).

``dicomhub serve`` upgrades the schema at start-up, so a fresh data directory or an
older index just works.  On PostgreSQL a ``schema`` isolates one archive (tests use
one schema per run).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(engine: Engine, schema: str | None = None, revision: str = "head") -> None:
    """Bring the index schema to ``revision`` (default: the latest)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        if schema and conn.dialect.name == "postgresql":
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            conn.execute(text(f'SET search_path TO "{schema}"'))
        cfg.attributes["connection"] = conn
        cfg.attributes["schema"] = schema if conn.dialect.name == "postgresql" else None
        command.upgrade(cfg, revision)
