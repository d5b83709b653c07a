"""Heartbeats of this node, and rescue of the jobs of nodes that stopped beating (leader)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from flowpro.storage.base import Storage

log = logging.getLogger("flowpro.lifeline")


class Lifeline:
    """Beats for this node; as leader, rescues jobs of nodes silent for ``rescue_after``."""

    def __init__(
        self, storage: Storage, node: str, queues: Sequence[str], *, rescue_after: float
    ) -> None:
        self.storage = storage
        self.node = node
        self.queues = list(queues)
        self.rescue_after = timedelta(seconds=rescue_after)

    def beat(self, now: datetime) -> None:
        """Record that this node is alive."""
        self.storage.heartbeat(self.node, queues=self.queues, now=now)

    def rescue(self, now: datetime) -> int:
        """Return orphaned executing jobs to their queues; return how many."""
        rescued = self.storage.rescue_jobs(now=now, alive_since=now - self.rescue_after)
        if rescued:
            log.warning("rescued %d job(s) of nodes that stopped responding", rescued)
        # Forget long-dead nodes so the table stays small.
        self.storage.prune_nodes(before=now - 10 * self.rescue_after)
        return rescued

    def repair(self, now: datetime) -> int:
        """Heal workflow steps that a crash, manual edit or deleted dep left stuck."""
        changed = self.storage.repair_graphs(now=now)
        if changed:
            log.warning("repaired %d workflow step(s)", changed)
        return changed
