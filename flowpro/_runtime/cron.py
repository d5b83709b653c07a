"""Cron: the leader inserts one job per tick of each cron worker, exactly once across nodes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from croniter import croniter

from flowpro.job import InsertPlan, NewJob
from flowpro.storage.base import Storage

log = logging.getLogger("flowpro.cron")


class CronEntry:
    """One schedule: a name (unique), a cron expression and how to build its job."""

    def __init__(
        self, name: str, expression: str, build: Callable[[datetime], NewJob | InsertPlan]
    ) -> None:
        self.name = name
        self.expression = expression
        self.build = build


# How far back a leader looks for ticks it has not checked: a follower that becomes leader after
# weeks must not insert weeks of ticks (the tick table forgets ticks older than a day, so they
# would run twice). Ticks missed for longer than this, with no leader at all, are skipped.
MAX_CATCH_UP = timedelta(hours=1)


class Cron:
    """Inserts due ticks. The tick table's primary key makes each tick insert once, whichever
    node is leader; only ticks after the node started, and at most ``max_catch_up`` old, are
    considered (no backfill storm)."""

    def __init__(
        self,
        storage: Storage,
        entries: Sequence[CronEntry],
        *,
        since: datetime,
        max_catch_up: timedelta = MAX_CATCH_UP,
    ) -> None:
        self.storage = storage
        self.entries = list(entries)
        self.max_catch_up = max_catch_up
        self._checked = since

    def due(self, entry: CronEntry, now: datetime) -> list[datetime]:
        """Return the ticks of ``entry`` after the last check, up to ``now``."""
        ticks: list[datetime] = []
        it = croniter(entry.expression, max(self._checked, now - self.max_catch_up))
        while True:
            tick: datetime = it.get_next(datetime)
            if tick > now:
                return ticks
            ticks.append(tick)

    def tick(self, now: datetime) -> int:
        """Insert every due tick's job; return how many were inserted by this node."""
        inserted = 0
        for entry in self.entries:
            for tick in self.due(entry, now):
                try:
                    if self.storage.insert_cron_job(entry.name, tick, entry.build(tick)):
                        inserted += 1
                except Exception:
                    log.exception("cron %s: could not insert the tick at %s", entry.name, tick)
                    raise
        self._checked = now
        return inserted
