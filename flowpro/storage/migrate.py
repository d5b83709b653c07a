"""Run the alembic migrations shipped with flowpro (inside the wheel, or beside the source)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from sqlalchemy import Engine, inspect, text

from flowpro.errors import ConfigError
from flowpro.storage.schema import VERSION_TABLE

# The newest revision in migrations/versions; a test checks it against alembic's head.
HEAD_REVISION = "0005"


def migrations_dir() -> Path:
    """Return the folder holding alembic's env.py and versions/."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise ConfigError("flowpro's migrations are missing from this install; reinstall flowpro")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (default: the newest)."""
    from alembic import command

    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the schema to ``revision`` ("base" removes every table)."""
    from alembic import command

    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """Return the schema's revision, or None when flowpro's tables are not there."""
    with engine.connect().execution_options(flowpro_read=True) as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def is_current(engine: Engine) -> bool:
    """Return whether the schema is at the newest revision."""
    return current_revision(engine) == HEAD_REVISION


def _config() -> Config:

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config
