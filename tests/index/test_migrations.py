"""Alembic migrations build exactly the schema of ``index/tables.py`` (SQLite and PostgreSQL)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from dicomhub.context import Context
from dicomhub.index.migrate import alembic_config
from dicomhub.index.tables import metadata


def test_migrated_schema_matches_the_tables(ctx: Context) -> None:
    with ctx.index.engine.connect() as conn:
        mc = MigrationContext.configure(conn)
        diff = compare_metadata(mc, metadata)
    # PostgreSQL's extra varchar_pattern_ops indexes are intentional and not in tables.py
    diff = [d for d in diff if not (d[0] == "remove_index" and d[1].name.endswith("_pattern"))]
    assert diff == []


def test_upgrade_is_idempotent_and_versioned(ctx: Context) -> None:
    ctx.index.upgrade()  # second run: nothing to do, no error
    with ctx.index.engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert version == head
