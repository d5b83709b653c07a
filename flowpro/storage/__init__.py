"""Storage adapters behind one port; ``open_storage`` picks one from a URL."""

from __future__ import annotations

import os

from flowpro.errors import ConfigError
from flowpro.storage.base import Storage

DEFAULT_URL = "sqlite:///flowpro.db"


def resolve_url(url: str | None) -> str:
    """Return ``url``, else ``$FLOWPRO_DATABASE_URL``, else the embedded SQLite default."""
    return url or os.environ.get("FLOWPRO_DATABASE_URL") or DEFAULT_URL


def open_storage(url: str | None = None) -> Storage:
    """Return the adapter for a database URL.

    Raises:
        ConfigError: the URL is malformed or names an unsupported database.

    Example:
        >>> open_storage("sqlite:///flowpro.db").dialect   # doctest: +SKIP
        'sqlite'
    """
    resolved = resolve_url(url)
    scheme = resolved.split(":", 1)[0].lower() if ":" in resolved else ""
    backend = scheme.split("+", 1)[0]
    try:
        if backend == "sqlite":
            from flowpro.storage.sqlite import SQLiteStorage

            return SQLiteStorage(resolved)
        if backend in ("postgresql", "postgres"):
            from flowpro.storage.postgres import PostgresStorage

            return PostgresStorage(resolved)
    except ConfigError:
        raise
    except Exception as exc:  # sqlalchemy.exc.ArgumentError and friends
        raise ConfigError(f"invalid database URL {resolved!r}: {exc}") from exc
    raise ConfigError(
        f"unsupported database URL {resolved!r}: use sqlite:///PATH or postgresql://..."
    )


__all__ = ["DEFAULT_URL", "Storage", "open_storage", "resolve_url"]
