"""The storage of the node running the current job, for graph helpers called inside process()."""

from __future__ import annotations

from contextvars import ContextVar

from flowpro.storage.base import Storage

current_storage: ContextVar[Storage | None] = ContextVar("flowpro_current_storage", default=None)
