"""Leader election by a lease row: exactly one node at a time does the periodic work."""

from __future__ import annotations

import logging
from datetime import datetime

from flowpro.storage.base import Storage

log = logging.getLogger("flowpro.leader")


class Leader:
    """Takes and renews the lease; a node that cannot renew stops acting as leader."""

    def __init__(self, storage: Storage, node: str, *, ttl: float) -> None:
        self.storage = storage
        self.node = node
        self.ttl = ttl
        self.is_leader = False

    def tick(self, now: datetime) -> bool:
        """Take or renew the lease; return whether this node leads now."""
        try:
            leads = self.storage.acquire_leader(self.node, now=now, ttl=self.ttl)
        except Exception as exc:
            log.warning("leader election failed (%s)", exc)
            leads = False
        if leads != self.is_leader:
            log.info("node %s %s leader", self.node, "became" if leads else "is no longer")
        self.is_leader = leads
        return leads

    def resign(self) -> None:
        """Give the lease up so another node takes over at once."""
        if self.is_leader:
            try:
                self.storage.resign_leader(self.node)
            except Exception as exc:
                log.warning("could not resign leadership (%s)", exc)
            self.is_leader = False
