"""The facade: ``FlowPro`` ties storage, workers and the node together."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, overload

from flowpro._runtime.chunks import run_chunk
from flowpro._runtime.cron import CronEntry
from flowpro._runtime.executor import run_sync_bounded
from flowpro._runtime.node import Node, NodeConfig, node_name
from flowpro.errors import ConfigError, GraphError
from flowpro.graph import render
from flowpro.graph.batch import Batch
from flowpro.graph.dag import Dag, registered_dags
from flowpro.graph.status import WorkflowStatus
from flowpro.graph.workflow import Workflow
from flowpro.job import InsertPlan, Job, JobState, NewJob, utcnow
from flowpro.storage import open_storage, resolve_url
from flowpro.storage.base import Storage
from flowpro.worker import Worker, chunk_workers, registered_workers

log = logging.getLogger("flowpro")

DEFAULT_CONCURRENCY = 10
DRAIN_BATCH = 100


class FlowPro:
    """A handle on one flowpro database: insert, inspect, run and drain jobs.

    Args:
        url: ``sqlite:///PATH`` (the embedded default) or ``postgresql://...``; None reads
            ``$FLOWPRO_DATABASE_URL``, else ``sqlite:///flowpro.db``.
        node: a prefix for this process's node name (a unique suffix is added).
        config: node timing (`NodeConfig`) or keyword overrides of it.

    Example:
        >>> fp = FlowPro("sqlite:///flowpro.db")                 # doctest: +SKIP
        >>> fp.migrate()                                         # doctest: +SKIP
        >>> job = fp.insert(Fetch.new({"url": "https://x"}))     # doctest: +SKIP
        >>> fp.drain()                                           # doctest: +SKIP
        {'completed': 1}
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        node: str | None = None,
        config: NodeConfig | Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        self.url = resolve_url(url)
        base = config.model_dump() if isinstance(config, NodeConfig) else dict(config or {})
        try:
            self.config = NodeConfig(**{**base, **settings})
        except Exception as exc:
            raise ConfigError(f"invalid node settings: {exc}") from exc
        self.node_prefix = node
        self._storage: Storage | None = None
        self._storage_lock = threading.Lock()
        self._stop = threading.Event()
        self._node: Node | None = None

    # Storage

    @property
    def storage(self) -> Storage:
        """The storage adapter, opened on first use (the SQLite default migrates itself)."""
        if self._storage is None:
            with self._storage_lock:
                if self._storage is None:
                    storage = open_storage(self.url)
                    if storage.dialect == "sqlite" and not storage.schema_is_current():
                        storage.migrate()
                    self._storage = storage
        return self._storage

    def migrate(self) -> None:
        """Create or upgrade flowpro's tables (alembic upgrade head); safe to repeat.

        Example:
            >>> FlowPro("postgresql://localhost/app").migrate()   # doctest: +SKIP
        """
        self.storage.migrate()

    def close(self) -> None:
        """Release the database connections."""
        if self._storage is not None:
            self._storage.close()
            self._storage = None

    def __enter__(self) -> FlowPro:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Inserting

    @overload
    def insert(self, job: NewJob, *, conn: Any = None) -> Job: ...

    @overload
    def insert(self, job: Workflow | Batch, *, conn: Any = None) -> list[Job]: ...

    def insert(self, job: NewJob | Workflow | Batch, *, conn: Any = None) -> Job | list[Job]:
        """Save one job, or a whole workflow, in one transaction (the caller's SQLAlchemy
        transaction when ``conn`` is given).

        Args:
            job: an unsaved job from ``Worker.new``, a ``Workflow`` or a ``Batch``.
            conn: an open SQLAlchemy ``Connection`` whose transaction the insert joins.

        Returns:
            The saved job with its ``id``; for a workflow or batch, its saved jobs in order.

        Raises:
            ArgsError: the args are invalid (nothing is written).
            GraphError: the workflow is invalid: a cycle, an unknown dep (nothing is written).
            StorageError: the database failed.

        Example:
            >>> fp.insert(Fetch.new({"url": "https://x"}, schedule_in=60)).state  # doctest: +SKIP
            'scheduled'
        """
        if isinstance(job, NewJob):
            return self.insert_all([job], conn=conn)[0]
        if isinstance(job, Workflow | Batch):
            return self.storage.insert_plan(job.plan(), conn=conn)
        raise TypeError(
            f"insert expects a job from Worker.new() or a Workflow, got {type(job).__name__}"
        )

    def insert_all(self, jobs: Iterable[NewJob], *, conn: Any = None) -> list[Job]:
        """Save many jobs in one transaction with bulk statements: all or none.

        Example:
            >>> jobs = fp.insert_all([Fetch.new({"url": u}) for u in urls])  # doctest: +SKIP
        """
        items = list(jobs)
        for item in items:
            if not isinstance(item, NewJob):
                raise TypeError(
                    f"insert expects jobs built by Worker.new(), got {type(item).__name__}"
                )
        return self.storage.insert_jobs(items, conn=conn)

    # Reading and managing

    def get_job(self, job_id: int) -> Job | None:
        """Return the job with this id, or None when there is no such job.

        Example:
            >>> fp.get_job(12345678) is None   # doctest: +SKIP
            True
        """
        return self.storage.get_job(int(job_id))

    def list_jobs(
        self,
        *,
        state: str | Sequence[str] | None = None,
        queue: str | Sequence[str] | None = None,
        worker: type[Worker] | str | Sequence[type[Worker] | str] | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Return jobs, newest first, filtered by state, queue and worker (all optional).

        Example:
            >>> fp.list_jobs(state="completed", queue="etl", worker=Fetch)  # doctest: +SKIP
        """
        states = [str(JobState(s)) for s in _many(state)]
        workers = [w if isinstance(w, str) else w.__flowpro_name__ for w in _many(worker)]
        return self.storage.list_jobs(
            states=states, queues=list(_many(queue)), workers=workers, limit=limit
        )

    def cancel_job(self, job_id: int) -> Job | None:
        """Cancel a job that has not finished (an executing attempt's result is then ignored).

        Returns the job as it is now, or None when there is no such job.

        Example:
            >>> fp.cancel_job(job.id).state   # doctest: +SKIP
            'cancelled'
        """
        return self.storage.cancel_job(int(job_id), now=utcnow())

    def retry_job(self, job_id: int) -> Job | None:
        """Make a finished, scheduled or retryable job available now (with one more attempt
        if it had used them all).

        Example:
            >>> fp.retry_job(job.id).state   # doctest: +SKIP
            'available'
        """
        return self.storage.retry_job(int(job_id), now=utcnow())

    # Workflows

    def workflow_status(self, workflow_id: str) -> WorkflowStatus:
        """Return a workflow's state, step counts per state and duration (sub-workflows
        included): one aggregate over that workflow's steps, as cheap for 10,000 steps as for
        five.

        Raises:
            GraphError: there is no such workflow.

        Example:
            >>> fp.workflow_status(wf.workflow_id).counts   # doctest: +SKIP
            {'completed': 4}
        """
        workflows, counts, last_finished = self.storage.workflow_summary(workflow_id)
        if not workflows:
            raise GraphError(f"there is no workflow {workflow_id!r}")
        return WorkflowStatus.from_counts(workflow_id, workflows, counts, last_finished)

    def workflow_graph(self, workflow_id: str, format: str = "mermaid") -> str:
        """Return a workflow run as a graph with each step's state: ``"mermaid"``, ``"dot"``
        or ``"json"``.

        Example:
            >>> print(fp.workflow_graph(wf.workflow_id, format="dot"))   # doctest: +SKIP
        """
        renderers = {"mermaid": render.to_mermaid, "dot": render.to_dot, "json": render.to_json}
        if format not in renderers:
            raise ConfigError(f"unknown graph format {format!r}: use mermaid, dot or json")
        workflows, jobs, edges = self.storage.workflow_rows(workflow_id)
        if not workflows:
            raise GraphError(f"there is no workflow {workflow_id!r}")
        return renderers[format](render.from_run(workflow_id, workflows, jobs, edges))

    # Running

    def run(
        self,
        queues: Mapping[str, int] | None = None,
        *,
        until_idle: bool = False,
        cron: Sequence[CronEntry] | None = None,
    ) -> None:
        """Run a node in this process until ``stop()`` (or, ``until_idle``, nothing is left).

        Args:
            queues: queue name -> concurrency; None runs every queue that a registered
                worker names, 10 at a time each.
            until_idle: return once nothing in these queues is available, executing, or due.
            cron: extra schedules; cron workers that are registered are always included.

        Raises:
            ConfigError: a queue limit is not a positive int, or there is no queue to run.
            StorageError: the database is unreachable at start.

        Example:
            >>> fp.run(queues={"etl": 10}, until_idle=True)   # doctest: +SKIP
        """
        plan = dict(queues) if queues is not None else default_queues()
        for name, limit in plan.items():
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ConfigError(f"queue {name!r}: concurrency must be an int >= 1, got {limit!r}")
        if not plan:
            raise ConfigError("no queues to run: import your workers or pass queues={...}")
        entries = [*cron_entries(), *(cron or [])]
        node = Node(
            self.storage,
            queues=plan,
            config=self.config,
            name=node_name(self.node_prefix),
            cron=entries,
        )
        self._node = node
        node.start()
        try:
            node.wait(self._stop, until_idle=until_idle)
        finally:
            node.stop()
            self._node = None
            # Cleared here, not at the start: a stop() that arrives while run() is starting
            # (a SIGTERM during start-up) must not be lost.
            self._stop.clear()

    def stop(self) -> None:
        """Ask ``run()`` to shut down gracefully; callable from any thread or signal handler.

        A stop that arrives before ``run()`` has started makes that ``run()`` return at once.

        Example:
            >>> threading.Timer(5, fp.stop).start(); fp.run()   # doctest: +SKIP
        """
        self._stop.set()
        node = self._node
        if node is not None:
            node.poke()  # run(until_idle=True) waits on the node's wake-up, not on the stop

    @property
    def node(self) -> Node | None:
        """The running node, while ``run()`` is running."""
        return self._node

    def drain(self, queue: str | None = None, *, with_scheduled: bool = False) -> dict[str, int]:
        """Run available jobs in this thread until none is left; return outcomes by state.

        Jobs run in priority then scheduled order; jobs that become available meanwhile
        (zero-backoff retries and anything an ack releases) run too. ``with_scheduled`` also
        runs jobs scheduled in the future. Drain stops when a round only snoozed jobs, so a
        worker that keeps snoozing cannot make it loop forever. A worker's ``timeout`` is
        enforced as in ``run()``: a sync attempt with a timeout runs in a helper thread and
        is failed (and interrupted) when it runs out.

        Example:
            >>> fp.drain(queue="etl")   # doctest: +SKIP
            {'completed': 3, 'retryable': 1}
        """
        storage = self.storage
        name = node_name("drain")
        counts: Counter[str] = Counter()
        chunked = chunk_workers(queue)
        exclude = [cls.__flowpro_name__ for cls in chunked]
        storage.heartbeat(name, queues=[queue or "*"], now=utcnow())
        try:
            while True:
                now = utcnow()
                storage.stage_jobs(now=_far_future() if with_scheduled else now)
                acks = []
                for cls in chunked:
                    while chunk := storage.fetch_chunk(
                        queue,
                        cls.__flowpro_name__,
                        size=cls.chunk_size,
                        ready_before=None,
                        node=name,
                        now=now,
                    ):
                        chunk_acks = run_chunk(chunk, utcnow, storage)
                        storage.ack_jobs(chunk_acks)
                        acks.extend(chunk_acks)
                jobs = storage.fetch_jobs(
                    queue, demand=DRAIN_BATCH, node=name, now=now, exclude=exclude
                )
                if jobs:
                    job_acks = [run_sync_bounded(job, utcnow, storage) for job in jobs]
                    storage.ack_jobs(job_acks)
                    acks.extend(job_acks)
                if not acks:
                    break
                counts.update(str(ack.state) for ack in acks)
                if all(ack.state is JobState.SCHEDULED for ack in acks):
                    # Only snoozes were left (Snooze(0) would otherwise loop forever).
                    break
                storage.heartbeat(name, queues=[queue or "*"], now=utcnow())
        finally:
            storage.remove_node(name)
        return dict(counts)


def default_queues() -> dict[str, int]:
    """Return every queue a registered worker names, at the default concurrency."""
    return {cls.queue: DEFAULT_CONCURRENCY for cls in registered_workers()}


def cron_entries() -> list[CronEntry]:
    """Return a cron entry for every registered worker with ``cron=`` and every DAG with a
    schedule."""
    entries = [
        CronEntry(f"worker:{cls.__flowpro_name__}", cls.cron, _cron_builder(cls))
        for cls in registered_workers()
        if cls.cron
    ]
    entries += [
        CronEntry(f"dag:{d.name}", d.schedule, _dag_builder(d))
        for d in registered_dags()
        if d.schedule
    ]
    return entries


def _dag_builder(d: Dag) -> Callable[[datetime], InsertPlan]:
    def build(tick: datetime) -> InsertPlan:
        return d(tick).put_context({"flowpro_tick": tick.isoformat()}).plan()

    return build


def _cron_builder(cls: type[Worker]) -> Callable[[datetime], NewJob]:
    def build(tick: datetime) -> NewJob:
        return cls.new({}, meta={"cron_tick": tick.isoformat()})

    return build


def _many(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | type):
        return [value]
    return list(value)


def _far_future() -> datetime:
    return datetime(9999, 1, 1, tzinfo=utcnow().tzinfo)


__all__ = ["FlowPro"]
