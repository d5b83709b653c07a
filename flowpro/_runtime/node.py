"""A node: producers per queue plus periodic work (beat, lead, stage, rescue, prune, cron)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flowpro._runtime.cron import Cron, CronEntry
from flowpro._runtime.leader import Leader
from flowpro._runtime.lifeline import Lifeline
from flowpro._runtime.producer import Producer
from flowpro._runtime.pruner import Pruner
from flowpro._runtime.stager import Stager
from flowpro.job import utcnow
from flowpro.storage.base import Storage
from flowpro.worker import chunk_workers

log = logging.getLogger("flowpro.node")


class NodeConfig(BaseModel):
    """Timing of a node; the defaults suit production, tests shorten them.

    Example:
        >>> NodeConfig(rescue_after=2.0).heartbeat_interval
        1.0
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    poll_interval: float | None = Field(default=None, gt=0)
    heartbeat_interval: float = Field(default=1.0, gt=0)
    rescue_after: float = Field(default=10.0, gt=0)
    rescue_interval: float = Field(default=1.0, gt=0)
    leader_ttl: float = Field(default=5.0, gt=0)
    stage_interval: float = Field(default=1.0, gt=0)
    prune_interval: float = Field(default=60.0, gt=0)
    repair_interval: float = Field(default=30.0, gt=0)
    retention: timedelta = Field(default=timedelta(days=7), gt=timedelta(0))
    cron_interval: float = Field(default=1.0, gt=0)
    shutdown_grace: float = Field(default=15.0, ge=0)
    idle_check_interval: float = Field(default=0.05, gt=0)

    @model_validator(mode="after")
    def _beats_often_enough(self) -> NodeConfig:
        # A live node whose heartbeats are further apart than rescue_after would have its
        # running jobs rescued and run twice; a lease shorter than the renewal would flap.
        for name in ("rescue_after", "leader_ttl"):
            if getattr(self, name) <= self.heartbeat_interval:
                raise ValueError(
                    f"{name} ({getattr(self, name):g}s) must be longer than "
                    f"heartbeat_interval ({self.heartbeat_interval:g}s)"
                )
        return self


def node_name(prefix: str | None = None) -> str:
    """Return a node name unique to this process and call: host, pid and a random suffix."""
    base = prefix or socket.gethostname()
    return f"{base}.{os.getpid()}.{uuid.uuid4().hex[:6]}"


def claim_lanes(storage: Storage, queue: str, limit: int) -> list[int]:
    """Return the limits of the producers that run ``queue`` with ``limit`` slots in all.

    One producer, except for a queue with chunk workers on a database where two connections
    claim side by side without waiting on each other (PostgreSQL's ``SKIP LOCKED``): there
    two producers share the slots, each with its own connection, loop and acks. A chunk's
    claim and ack are mostly the server's work (two row updates a job), and two independent
    producers keep it busy while each one's Python handles what it got. Plain queues keep
    one: two producers of short jobs make smaller rounds and skip each other's locked rows.

    Example:
        >>> claim_lanes(fp.storage, "ingest", 10)  # doctest: +SKIP
        [5, 5]
        >>> claim_lanes(fp.storage, "emails", 10)  # doctest: +SKIP
        [10]
    """
    if not (chunk_workers(queue) and storage.parallel_claims and limit >= 2):
        return [limit]
    return [limit - limit // 2, limit // 2]


class Node:
    """Runs queues against one storage until stopped."""

    def __init__(
        self,
        storage: Storage,
        *,
        queues: Mapping[str, int],
        config: NodeConfig,
        name: str | None = None,
        cron: Sequence[CronEntry] = (),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.storage = storage
        self.queues = dict(queues)
        self.config = config
        self.name = name or node_name()
        self.clock = clock
        poll = config.poll_interval or (0.05 if storage.dialect == "sqlite" else 1.0)
        self._settled = threading.Event()  # see wait() and poke()
        self.producers = [
            Producer(
                storage,
                queue=q,
                limit=part,
                node=self.name,
                poll_interval=poll,
                clock=clock,
                lane=lane,
                on_settled=self.poke,
            )
            for q, n in self.queues.items()
            for lane, part in enumerate(claim_lanes(storage, q, n), start=1)
        ]
        self.lifeline = Lifeline(
            storage, self.name, list(self.queues), rescue_after=config.rescue_after
        )
        self.leader = Leader(storage, self.name, ttl=config.leader_ttl)
        self.stager = Stager(storage)
        self.pruner = Pruner(storage, retention=config.retention)
        self.cron = Cron(storage, cron, since=clock())
        self._stop = threading.Event()
        self._maintenance = threading.Thread(
            target=self._maintain, name="flowpro-node", daemon=True
        )
        self._started = False

    # Lifecycle

    def start(self) -> None:
        """Register the node (fails fast when the database is unreachable) and start working."""
        self.lifeline.beat(self.clock())
        self.storage.subscribe(self._wake)
        for producer in self.producers:
            producer.start()
        self._maintenance.start()
        self._started = True
        log.info("node %s started: %s", self.name, self.queues)

    def _wake(self, queue: str) -> None:
        for producer in self.producers:
            producer.wake(queue)

    def wait(self, stop: threading.Event, *, until_idle: bool = False) -> None:
        """Block until ``stop`` is set, or (``until_idle``) nothing is left to run.

        ``until_idle`` checks at once, then whenever a producer settles (a database call
        ended with nothing running or unwritten; see ``poke``), and at least every
        ``idle_check_interval`` seconds (jobs another node inserts or schedules wake no
        producer of this node).
        """
        if not until_idle:
            while not stop.wait(0.5):
                pass
            return
        while not stop.is_set():
            self._settled.clear()  # before the check: a settle during it is not lost
            if self.idle():
                return
            self._settled.wait(self.config.idle_check_interval)

    def poke(self) -> None:
        """Wake ``wait(until_idle=True)`` to check now (a producer settled, or a stop came)."""
        self._settled.set()

    def busy(self) -> bool:
        """Return whether attempts are running or outcomes are waiting to be written."""
        return any(p.busy() for p in self.producers)

    def idle(self) -> bool:
        """Return whether nothing in this node's queues is runnable, running or unacked."""
        if self.busy():
            return False
        try:
            pending = self.storage.has_pending(list(self.queues), now=self.clock())
        except Exception as exc:
            log.warning("idle check failed (%s)", exc)
            return False
        return not pending and not self.busy()

    def stop(self) -> None:
        """Stop claiming, let attempts finish within the grace period, hand back the rest."""
        if not self._started:
            return
        self._started = False
        for producer in self.producers:
            producer.stop_claiming()
        deadline = time.monotonic() + self.config.shutdown_grace
        while any(p.busy() for p in self.producers) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        unfinished: list[int] = []
        for producer in self.producers:
            unfinished.extend(producer.halt())
        self.storage.unsubscribe(self._wake)
        self._maintenance.join(timeout=5)
        try:
            if unfinished:
                handed = self.storage.hand_back_jobs(self.name, unfinished, now=self.clock())
                log.warning("handed back %d unfinished job(s)", handed)
            self.leader.resign()
            self.storage.remove_node(self.name)
        except Exception as exc:  # the lifeline of another node rescues them instead
            log.warning("clean shutdown incomplete (%s); jobs will be rescued", exc)
        log.info("node %s stopped", self.name)

    # Periodic work

    def hand_back_orphans(self) -> int:
        """Hand back jobs ``executing`` under this node that no producer of it holds; return
        how many.

        A claim whose commit succeeded while its connection failed (the producer saw an error
        and never got the rows) leaves such jobs behind, and no other node rescues them while
        this one beats. Only jobs claimed ``rescue_after`` seconds ago and before any database
        call still in flight are considered; they never started, so their attempt is given
        back (``unclaim_jobs``).

        Example:
            >>> fp.node.hand_back_orphans()   # doctest: +SKIP
            0
        """
        cutoff = self.clock() - timedelta(seconds=self.config.rescue_after)
        claimed = self.storage.executing_ids(self.name, attempted_before=cutoff)
        if not claimed:
            return 0
        held: set[int] = set()
        for producer in self.producers:
            ids, calling_since = producer.held()
            held |= ids
            if calling_since is not None and calling_since <= cutoff:
                return 0  # a call older than the cutoff is in flight: look again next time
        orphans = [job_id for job_id in claimed if job_id not in held]
        if not orphans:
            return 0
        handed = self.storage.unclaim_jobs(self.name, orphans)
        if handed:
            log.warning("handed back %d job(s) claimed by this node but never started", handed)
        return handed

    def _maintain(self) -> None:
        cfg = self.config
        # Pruning and the workflow repair pass scan many rows; like Oban's plugins they first
        # run one interval after the node starts, not in the middle of its first busy second.
        started = time.monotonic()
        last: dict[str, float] = {"prune": started, "repair": started}

        def due(task: str, interval: float) -> bool:
            now = time.monotonic()
            if now - last.get(task, -1e9) >= interval:
                last[task] = now
                return True
            return False

        step = min(cfg.heartbeat_interval, cfg.stage_interval, cfg.rescue_interval, 0.5)
        while not self._stop.wait(step):
            try:
                if due("beat", cfg.heartbeat_interval):
                    self.lifeline.beat(self.clock())
                    self.leader.tick(self.clock())
                if due("orphans", cfg.rescue_interval):
                    self.hand_back_orphans()
                if not self.leader.is_leader:
                    continue
                if due("stage", cfg.stage_interval):
                    self.stager.tick(self.clock())
                if due("rescue", cfg.rescue_interval):
                    self.lifeline.rescue(self.clock())
                if due("cron", cfg.cron_interval):
                    self.cron.tick(self.clock())
                if due("prune", cfg.prune_interval):
                    self.pruner.tick(self.clock())
                if due("repair", cfg.repair_interval):
                    self.lifeline.repair(self.clock())
            except Exception as exc:
                # The database may be down: keep going, every task retries on its next tick.
                log.warning("periodic work failed (%s); retrying", exc)
