"""Pruning: delete finished jobs older than the retention period (leader only)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from flowpro.storage.base import Storage

log = logging.getLogger("flowpro.pruner")


class Pruner:
    """Deletes completed, cancelled and discarded jobs finished more than ``retention`` ago."""

    def __init__(self, storage: Storage, *, retention: timedelta, limit: int = 10_000) -> None:
        self.storage = storage
        self.retention = retention
        self.limit = limit

    def tick(self, now: datetime) -> int:
        """Delete one batch of old finished jobs; return how many."""
        deleted = self.storage.prune_jobs(before=now - self.retention, limit=self.limit)
        self.storage.prune_cron_ticks(before=now - max(self.retention, timedelta(days=1)))
        if deleted:
            log.info("pruned %d finished job(s)", deleted)
        return deleted
