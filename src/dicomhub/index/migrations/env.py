"""Alembic environment: runs the migrations on the connection dicomhub hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from dicomhub.index.tables import metadata

config = context.config
target_metadata = metadata


def run_migrations_online() -> None:
    """Run with the connection in ``config.attributes['connection']`` or a fresh engine."""
    connection = config.attributes.get("connection")
    schema = config.attributes.get("schema")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table_schema=schema,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section) or {},
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `dicomhub db upgrade`")
run_migrations_online()
