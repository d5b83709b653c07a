"""The Storage port: everything flowpro needs from a database, one adapter per dialect."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from flowpro.job import Ack, InsertPlan, Job, JobState, NewJob

Wakeup = Callable[[str], None]


class ClaimedChunk:
    """A claimed chunk whose rows become Jobs only when ``jobs()`` is first called.

    A producer claims chunks and hands them to executor threads; decoding a hundred rows
    there rather than in the producer keeps the producer's claim-and-ack loop short.

    Example:
        >>> chunk = ClaimedChunk([(3,), (2,)], lambda rows: [row[0] for row in rows])
        >>> chunk.ids, chunk.jobs()
        ([3, 2], [3, 2])
    """

    __slots__ = ("_decode", "_jobs", "_rows", "ids")

    def __init__(self, rows: Sequence[Any], decode: Callable[[Sequence[Any]], list[Any]]) -> None:
        self.ids: list[int] = [row[0] for row in rows]
        self._rows = rows
        self._decode = decode
        self._jobs: list[Job] | None = None

    def jobs(self) -> list[Job]:
        """Return the chunk's jobs, in claim order (priority, scheduled time, id)."""
        if self._jobs is None:
            self._jobs = self._decode(self._rows)
            self._rows = ()
        return self._jobs


class Storage(Protocol):
    """Everything flowpro needs from a database. Domain objects in and out, never rows."""

    dialect: str
    url: str
    #: Whether two connections of one node can claim at the same time without waiting on each
    #: other (PostgreSQL's SKIP LOCKED); SQLite writes one transaction at a time.
    parallel_claims: bool

    # Schema

    def migrate(self) -> None:
        """Bring the schema to the newest version (alembic upgrade head)."""

    def schema_is_current(self) -> bool:
        """Return whether the schema is at the newest version."""

    def close(self) -> None:
        """Release connections and stop the listener."""

    def release_thread(self) -> None:
        """Release what the calling thread holds for itself (a connection of its own) for
        another thread to reuse; a producer's thread calls it as it ends."""

    # Jobs

    def insert_jobs(self, jobs: Sequence[NewJob], *, conn: Any = None) -> list[Job]:
        """Insert jobs in one transaction (the caller's when ``conn`` is given)."""

    def insert_plan(self, plan: InsertPlan, *, conn: Any = None) -> list[Job]:
        """Insert a plan (jobs, workflows, batches and the edges between jobs) in one
        transaction; return the jobs in plan order."""

    def get_job(self, job_id: int) -> Job | None:
        """Return the job, or None."""

    # Graphs

    def find_step(self, workflow_id: str, step: str) -> Job | None:
        """Return the job of a workflow step, or None."""

    def dependencies(self, job_id: int) -> list[Job]:
        """Return the jobs ``job_id`` depends on."""

    def workflow_context(self, workflow_id: str) -> dict[str, Any] | None:
        """Return a workflow's shared context, or None when there is no such workflow."""

    def workflow_rows(
        self, workflow_id: str
    ) -> tuple[list[dict[str, Any]], list[Job], list[tuple[int, int]]]:
        """Return a workflow and its sub-workflows: rows, jobs, and edges (job id, dep id)."""

    def workflow_summary(
        self, workflow_id: str
    ) -> tuple[list[dict[str, Any]], dict[str, int], datetime | None]:
        """Return a workflow's and its sub-workflows' rows (as ``workflow_rows``), their
        steps' count per state, and when a step last finished; one aggregate over their
        steps, however many there are."""

    def batch_jobs(self, batch_id: str) -> list[Job]:
        """Return the members of a batch."""

    def repair_graphs(self, *, now: datetime, batch: int = 500) -> int:
        """Heal workflow steps left inconsistent; return how many steps changed."""

    def list_jobs(
        self,
        *,
        states: Sequence[str] = (),
        queues: Sequence[str] = (),
        workers: Sequence[str] = (),
        limit: int = 100,
        newest_first: bool = True,
    ) -> list[Job]:
        """Return jobs matching every filter given."""

    def count_jobs(self) -> dict[str, int]:
        """Return the number of jobs per state."""

    def fetch_jobs(
        self,
        queue: str | None,
        *,
        demand: int,
        node: str,
        now: datetime,
        exclude: Sequence[str] = (),
    ) -> list[Job]:
        """Claim up to ``demand`` available jobs of ``queue`` (any queue when None), except
        those of the ``exclude``d workers."""

    def fetch_chunk(
        self,
        queue: str | None,
        worker: str,
        *,
        size: int,
        ready_before: datetime | None,
        node: str,
        now: datetime,
    ) -> list[Job]:
        """Claim one ready chunk of ``worker`` (one partition, at most ``size`` jobs)."""

    def fetch_chunk_many(
        self,
        queue: str | None,
        worker: str,
        *,
        size: int,
        ready_before: datetime | None,
        node: str,
        now: datetime,
        count: int,
        acks: Sequence[Ack] = (),
    ) -> list[ClaimedChunk]:
        """Write ``acks`` (as ``ack_jobs`` does, follow-ups included), then claim up to
        ``count`` ready chunks of ``worker``, all in one transaction."""

    def ack_jobs(self, acks: Sequence[Ack]) -> list[int]:
        """Write outcomes back, fenced by (id, attempt); return the ids that applied."""

    def ack_and_fetch(
        self,
        acks: Sequence[Ack],
        queue: str,
        *,
        demand: int,
        node: str,
        now: datetime,
        exclude: Sequence[str] = (),
    ) -> tuple[list[int], list[Job]]:
        """Ack finished attempts and claim new jobs in one transaction."""

    def prune_nodes(self, *, before: datetime) -> int:
        """Forget nodes not seen since ``before``."""

    def has_available(self, queue: str, exclude: Sequence[str] = ()) -> bool:
        """Return whether the queue has an available job (cheap, takes no write lock)."""

    def stage_jobs(self, *, now: datetime, limit: int = 5_000) -> list[str]:
        """Make due scheduled and retryable jobs available; return the queues touched."""

    def rescue_jobs(self, *, now: datetime, alive_since: datetime) -> int:
        """Return executing jobs of nodes not seen since ``alive_since`` to the queue."""

    def hand_back_jobs(self, node: str, ids: Sequence[int], *, now: datetime) -> int:
        """Return unfinished jobs of a node that is shutting down, without using an attempt."""

    def unclaim_jobs(self, node: str, ids: Sequence[int]) -> int:
        """Put back jobs claimed ahead but never started, giving their attempt back."""

    def executing_ids(self, node: str, *, attempted_before: datetime) -> list[int]:
        """Return the ids of jobs ``executing`` under ``node`` claimed before the given time."""

    def prune_jobs(self, *, before: datetime, limit: int = 10_000) -> int:
        """Delete terminal jobs that finished before ``before``."""

    def cancel_job(self, job_id: int, *, now: datetime) -> Job | None:
        """Cancel a job that has not finished; return it (None when missing)."""

    def retry_job(self, job_id: int, *, now: datetime) -> Job | None:
        """Make a job available again; return it (None when missing)."""

    def count_pending(self, queues: Sequence[str], *, now: datetime) -> int:
        """Count jobs of the queues that are runnable now or executing."""

    def has_pending(self, queues: Sequence[str], *, now: datetime) -> bool:
        """Return whether a job of the queues is runnable now or executing (what
        ``count_pending`` counts, found without counting)."""

    # Nodes, leadership, cron

    def heartbeat(self, node: str, *, queues: Sequence[str], now: datetime) -> None:
        """Record that the node is alive."""

    def remove_node(self, node: str) -> None:
        """Forget a node that stopped cleanly."""

    def live_nodes(self, *, alive_since: datetime) -> list[str]:
        """Return the names of nodes seen since ``alive_since``."""

    def acquire_leader(self, node: str, *, now: datetime, ttl: float) -> bool:
        """Take or extend the leader lease; return whether ``node`` is the leader."""

    def resign_leader(self, node: str) -> None:
        """Give up the lease if ``node`` holds it."""

    def insert_cron_job(self, name: str, tick: datetime, job: NewJob | InsertPlan) -> Job | None:
        """Insert the job (or plan) of one cron tick unless that tick was inserted already."""

    def prune_cron_ticks(self, *, before: datetime) -> int:
        """Forget cron ticks older than ``before``."""

    # Wake-ups

    def subscribe(self, wakeup: Wakeup) -> None:
        """Call ``wakeup(queue)`` when jobs of that queue may have become available."""

    def unsubscribe(self, wakeup: Wakeup) -> None:
        """Stop calling ``wakeup``."""

    def notify(self, queues: Sequence[str]) -> None:
        """Tell every node that jobs of these queues may be available."""


def state_of(value: str) -> JobState:
    """Return the JobState for a stored state string."""
    return JobState(value)
