"""Shared by the benchmark scripts: a fresh database of each kind."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from urllib.parse import quote

CATALOGS = tuple(
    f"pg_catalog.{name}"
    for name in ("pg_attribute", "pg_class", "pg_depend", "pg_type", "pg_index", "pg_constraint")
)
PG_URL = os.environ.get("FLOWPRO_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/test")


def fresh_url(backend: str, tmp: str) -> tuple[str, Callable[[], None] | None]:
    """Return the URL of an empty database (a SQLite file in ``tmp``, or a new PostgreSQL
    schema) and a function that drops it (None for SQLite)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp}/bench-{uuid.uuid4().hex[:6]}.db", None
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")

    def drop() -> None:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
            # Every round creates and drops a schema: dead catalog rows. Where autovacuum is
            # off (as on the machine these figures come from) they pile up and slow every
            # later statement plan at random, so clean them as autovacuum would. Without the
            # right to, PostgreSQL skips a table with a warning.
            conn.execute(f"VACUUM {', '.join(CATALOGS)}")

    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}", drop
