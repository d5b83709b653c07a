"""Staging: due scheduled and retryable jobs become available (leader only)."""

from __future__ import annotations

from datetime import datetime

from flowpro.storage.base import Storage


class Stager:
    """Moves due jobs to ``available`` in batches and wakes their queues."""

    def __init__(self, storage: Storage, *, limit: int = 5_000) -> None:
        self.storage = storage
        self.limit = limit

    def tick(self, now: datetime) -> int:
        """Stage due jobs; return how many queues were touched."""
        return len(self.storage.stage_jobs(now=now, limit=self.limit))
