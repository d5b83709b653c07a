"""Alembic environment for flowpro's own tables (version table: flowpro_alembic_version)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from flowpro.storage import resolve_url
from flowpro.storage.schema import VERSION_TABLE, metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=lambda name, type_, parent: type_ != "table" or name.startswith("flowpro_"),
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = resolve_url(context.config.get_main_option("sqlalchemy.url"))
    if url.startswith(("postgresql://", "postgres://")):
        from flowpro.storage.postgres import engine_url

        url = engine_url(url)
    with create_engine(url).begin() as conn:
        _run(conn)
