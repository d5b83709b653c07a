"""The storage of the node running the current job, for graph helpers called inside process()."""

from __future__ import annotations

from contextvars import ContextVar

from flowpro.errors import ConfigError
from flowpro.storage.base import Storage

current_storage: ContextVar[Storage | None] = ContextVar("flowpro_current_storage", default=None)


def require_storage(what: str) -> Storage:
    """Return the storage of the running job, or raise naming ``what`` needs one.

    Raises:
        ConfigError: called outside a running job.
    """
    storage = current_storage.get()
    if storage is None:
        raise ConfigError(f"{what} works inside a running job; elsewhere use the FlowPro app")
    return storage
