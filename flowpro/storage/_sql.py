"""The statements and logic both SQL adapters share; adapters override claiming and wake-ups."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import BindParameter, Connection, Engine, bindparam, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from flowpro.errors import StorageError
from flowpro.job import Ack, InsertPlan, Job, JobState, NewJob
from flowpro.storage import _graph as graph
from flowpro.storage.base import ClaimedChunk, Wakeup

log = logging.getLogger("flowpro.storage")

T = TypeVar("T")

JOB_COLUMNS = (
    "id, state, queue, worker, args, meta, tags, errors, attempt, max_attempts, priority, "
    "attempted_by, inserted_at, scheduled_at, attempted_at, completed_at, cancelled_at, "
    "discarded_at, recorded, workflow_id, step, batch_id"
)
# What a claim returns: every column but those the claim itself sets (state, attempted_by and
# attempted_at), which the claimer knows already. Fewer columns are less to build per row.
CLAIM_COLUMNS = (
    "id, queue, worker, args, meta, tags, errors, attempt, max_attempts, priority, "
    "inserted_at, scheduled_at, completed_at, cancelled_at, discarded_at, recorded, "
    "workflow_id, step, batch_id"
)
# Claims the rows of a ``picked`` table of ids (the end of a WITH clause).
CLAIM_PICKED = (
    "UPDATE flowpro_jobs SET state = 'executing', attempt = attempt + 1, "
    "attempted_at = :now, attempted_by = :node WHERE {in_picked} "
    f"RETURNING {CLAIM_COLUMNS}"
)
INSERT_COLUMNS = (
    "state, queue, worker, args, meta, tags, errors, attempt, max_attempts, priority, "
    "inserted_at, scheduled_at"
)
TERMINAL = "('completed', 'cancelled', 'discarded')"
# The states the state index holds: all but the two every claim and ack moves a job between.
NOT_MOVING = "state NOT IN ('available', 'executing')"
# Jobs of :queues runnable at :now or executing, one part per index (claim, executing, stage)
# so that each is read through its index.
PENDING = (
    "state = 'available' AND queue IN :queues",
    "state = 'executing' AND queue IN :queues",
    "state IN ('scheduled', 'retryable') AND scheduled_at <= :now AND queue IN :queues",
)
_STATES = {state.value: state for state in JobState}

# The SET clause of an ack; `v` names the ack's values. Only the fields the outcome changes are
# non-null, so one statement serves every outcome.
ACK_SET = """
    state = {v}state,
    completed_at = CASE WHEN {v}state = 'completed' THEN {v}at ELSE {t}completed_at END,
    cancelled_at = CASE WHEN {v}state = 'cancelled' THEN {v}at ELSE {t}cancelled_at END,
    discarded_at = CASE WHEN {v}state = 'discarded' THEN {v}at ELSE {t}discarded_at END,
    scheduled_at = COALESCE({v}scheduled_at, {t}scheduled_at),
    errors = COALESCE({errors}, {t}errors),
    max_attempts = COALESCE({v}max_attempts, {t}max_attempts),
    recorded = COALESCE({v}recorded, {t}recorded)
"""

RETRY_DELAYS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.0, 2.0, 2.0)

# Acks of this many plain completions sharing one time (a chunk's) are written by a statement
# that takes only (id, attempt) per job; fewer take the general statement.
GROUP_COMPLETIONS_FROM = 8


def _claim_order(job: Job) -> tuple[int, datetime, int]:
    return job.priority, job.scheduled_at, job.id


def split_completions(acks: Sequence[Ack]) -> tuple[dict[datetime, list[Ack]], list[Ack]]:
    """Return the acks that are plain completions (nothing but ``completed`` at a time: no
    errors, record, schedule or attempt change), grouped by time where at least
    ``GROUP_COMPLETIONS_FROM`` share one, and the rest in order.

    Example:
        >>> groups, rest = split_completions([])
        >>> groups, rest
        ({}, [])
    """
    groups: dict[datetime, list[Ack]] = {}
    for ack in acks:
        if (
            ack.state is JobState.COMPLETED
            and ack.errors is None
            and ack.recorded is None
            and ack.scheduled_at is None
            and ack.max_attempts is None
        ):
            groups.setdefault(ack.at, []).append(ack)
    big = {at: group for at, group in groups.items() if len(group) >= GROUP_COMPLETIONS_FROM}
    if not big:
        return {}, list(acks)
    grouped = {id(ack) for group in big.values() for ack in group}
    return big, [ack for ack in acks if id(ack) not in grouped]


def with_step(meta: dict[str, Any], workflow_id: str | None, step: str | None) -> dict[str, Any]:
    """Return a stored ``meta`` with the ``workflow_id`` and step ``name`` of a workflow step.

    The row keeps both in columns of their own, so its stored meta leaves them out: every
    claim, ack and release of a step then writes, reads and decodes less (rows written before
    this carry them in both places, with the same values).

    Example:
        >>> with_step({}, "wf1", "load")
        {'workflow_id': 'wf1', 'name': 'load'}
    """
    if workflow_id is not None and step is not None:
        meta["workflow_id"] = workflow_id
        meta["name"] = step
    return meta


class SqlStorage:
    """The shared part of the SQLite and PostgreSQL adapters."""

    dialect = "sql"
    parallel_claims = False

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self._wakeups: list[Wakeup] = []
        self._wakeup_lock = threading.Lock()
        # The adapters run statements on the driver's own cursors, whose errors SQLAlchemy
        # does not wrap: catch the driver's base class too.
        self._driver_error: type[Exception] = engine.dialect.loaded_dbapi.Error

    # Dialect hooks

    def _ts(self, value: datetime | None) -> Any:
        """Return a datetime as the driver parameter for a timestamp column."""
        return value

    def _dt(self, value: Any) -> datetime | None:
        """Return a timestamp column value as an aware datetime."""
        return value  # type: ignore[no-any-return]

    def _json_out(self, value: Any) -> Any:
        """Return a JSON column value as Python data."""
        return value

    def _json_in(self, name: str) -> str:
        """Return the SQL for a JSON-text parameter bound to a JSON column."""
        return f":{name}"

    def _json_append(self, column: str, name: str) -> str:
        """Return the SQL appending the JSON value of parameter ``name`` to array ``column``."""
        raise NotImplementedError

    def _is_transient(self, exc: DBAPIError) -> bool:
        """Return whether the error is worth retrying the whole transaction for."""
        return False

    def _wrapped(self, exc: Exception) -> DBAPIError:
        """Return a driver error as SQLAlchemy's DBAPIError (the form _is_transient reads)."""
        if isinstance(exc, DBAPIError):
            return exc
        wrapped = DBAPIError.instance(None, None, exc, self._driver_error)
        return wrapped if isinstance(wrapped, DBAPIError) else DBAPIError(None, None, exc)

    # Transactions

    def _write(self, fn: Callable[[Connection], T], *, what: str, conn: Any = None) -> T:
        """Run ``fn`` in a write transaction, retrying transient errors with backoff."""
        if conn is not None:
            try:
                return fn(conn)
            except (DBAPIError, self._driver_error) as exc:
                raise StorageError(f"{what} failed: {_driver_message(exc)}") from exc
        for delay in (*RETRY_DELAYS, None):
            try:
                with self._write_gate(), self.engine.begin() as c:
                    return fn(c)
            except (DBAPIError, self._driver_error) as exc:
                if delay is not None and self._is_transient(self._wrapped(exc)):
                    time.sleep(delay)
                    continue
                raise StorageError(f"{what} failed: {_driver_message(exc)}") from exc
            except SQLAlchemyError as exc:
                raise StorageError(f"{what} failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def release_thread(self) -> None:
        """Release the calling thread's own connection, if the adapter keeps one (the pool's
        connections are returned after every call)."""

    def _write_gate(self) -> AbstractContextManager[Any]:
        """Return what a write transaction holds while it runs (SQLite: this process's lock
        of the database file; PostgreSQL: nothing)."""
        return contextlib.nullcontext()

    def _read(self, fn: Callable[[Connection], T], *, what: str) -> T:
        """Run ``fn`` on a connection that takes no write lock."""
        for delay in (*RETRY_DELAYS, None):
            try:
                with self.engine.connect().execution_options(flowpro_read=True) as c:
                    return fn(c)
            except (DBAPIError, self._driver_error) as exc:
                if delay is not None and self._is_transient(self._wrapped(exc)):
                    time.sleep(delay)
                    continue
                raise StorageError(f"{what} failed: {_driver_message(exc)}") from exc
            except SQLAlchemyError as exc:
                raise StorageError(f"{what} failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Dispose of the connection pool."""
        self.engine.dispose()

    # Rows

    def _job(self, row: Sequence[Any]) -> Job:
        dt = self._dt
        js = self._json_out
        return Job(
            id=row[0],
            state=_STATES[row[1]],
            queue=row[2],
            worker=row[3],
            args=js(row[4]),
            meta=with_step(js(row[5]), row[19], row[20]),
            tags=js(row[6]),
            errors=js(row[7]),
            attempt=row[8],
            max_attempts=row[9],
            priority=row[10],
            attempted_by=row[11],
            inserted_at=dt(row[12]),  # type: ignore[arg-type]
            scheduled_at=dt(row[13]),  # type: ignore[arg-type]
            attempted_at=dt(row[14]),
            completed_at=dt(row[15]),
            cancelled_at=dt(row[16]),
            discarded_at=dt(row[17]),
            recorded=bytes(row[18]) if row[18] is not None else None,
            workflow_id=row[19],
            step=row[20],
            batch_id=row[21],
        )

    def _saved(self, new: NewJob, job_id: int, now: datetime, state: JobState) -> Job:
        """Return the Job a NewJob became, without reading it back."""
        return Job(
            id=job_id,
            state=state,
            queue=new.queue,
            worker=new.worker,
            args=new.args,
            meta=new.meta,
            tags=list(new.tags),
            errors=[],
            attempt=0,
            max_attempts=new.max_attempts,
            priority=new.priority,
            attempted_by=None,
            inserted_at=now,
            scheduled_at=new.resolve_scheduled_at(now),
            workflow_id=new.workflow_id,
            step=new.step,
            batch_id=new.batch_id,
            redacted=new.seal is not None,
        )

    # Reading

    def get_job(self, job_id: int) -> Job | None:
        """Return the job, or None."""
        sql = text(f"SELECT {JOB_COLUMNS} FROM flowpro_jobs WHERE id = :id")

        def run(c: Connection) -> Job | None:
            row = c.execute(sql, {"id": job_id}).first()
            return self._job(row) if row is not None else None

        return self._read(run, what="get_job")

    def list_jobs(
        self,
        *,
        states: Sequence[str] = (),
        queues: Sequence[str] = (),
        workers: Sequence[str] = (),
        limit: int = 100,
        newest_first: bool = True,
    ) -> list[Job]:
        """Return jobs matching every filter given, newest first by default."""
        where = []
        params: dict[str, Any] = {"limit": limit}
        binds: list[BindParameter[Any]] = []
        for column, values in (("state", states), ("queue", queues), ("worker", workers)):
            if values:
                where.append(f"{column} IN :{column}s")
                params[f"{column}s"] = list(values)
                binds.append(bindparam(f"{column}s", expanding=True))
        if states and not {"available", "executing"} & set(states):
            where.append(NOT_MOVING)  # true already; it lets SQLite use the state index
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "DESC" if newest_first else "ASC"
        sql = text(
            f"SELECT {JOB_COLUMNS} FROM flowpro_jobs {clause} ORDER BY id {order} LIMIT :limit"
        ).bindparams(*binds)
        return self._read(
            lambda c: [self._job(r) for r in c.execute(sql, params)], what="list_jobs"
        )

    def count_jobs(self) -> dict[str, int]:
        """Return the number of jobs per state."""
        # One part per index: available and executing jobs are not in the state index.
        sql = text(
            "SELECT 'available', count(*) FROM flowpro_jobs WHERE state = 'available' "
            "UNION ALL SELECT 'executing', count(*) FROM flowpro_jobs WHERE state = 'executing' "
            f"UNION ALL SELECT state, count(*) FROM flowpro_jobs WHERE {NOT_MOVING} "
            "GROUP BY state"
        )
        return self._read(
            lambda c: {row[0]: int(row[1]) for row in c.execute(sql) if row[1]},
            what="count_jobs",
        )

    def count_pending(self, queues: Sequence[str], *, now: datetime) -> int:
        """Count jobs of the queues that are runnable now or executing."""
        sql = "SELECT " + " + ".join(
            f"(SELECT count(*) FROM flowpro_jobs WHERE {p})" for p in PENDING
        )
        return int(self._queues_scalar(sql, queues, now, what="count_pending"))

    def has_pending(self, queues: Sequence[str], *, now: datetime) -> bool:
        """Return whether a job of the queues is runnable now or executing: the idle check of
        ``run(until_idle=True)``, a few index probes however many jobs are queued."""
        sql = "SELECT " + " OR ".join(
            f"EXISTS (SELECT 1 FROM flowpro_jobs WHERE {p})" for p in PENDING
        )
        return bool(self._queues_scalar(sql, queues, now, what="has_pending"))

    def _queues_scalar(self, sql: str, queues: Sequence[str], now: datetime, *, what: str) -> Any:
        """Read the one value of a query on ``:queues`` (a list) and ``:now``."""
        stmt = text(sql).bindparams(bindparam("queues", expanding=True))
        params = {"queues": list(queues), "now": self._ts(now)}
        return self._read(lambda c: c.execute(stmt, params).scalar_one(), what=what)

    def has_available(self, queue: str, exclude: Sequence[str] = ()) -> bool:
        """Return whether the queue has an available job that a plain claim would take (not
        the partitioned jobs of the ``exclude``d chunk workers)."""
        skip = ""
        params: dict[str, Any] = {"queue": queue}
        binds: list[Any] = []
        if exclude:
            skip = " AND (worker NOT IN :exclude OR chunk_key IS NULL)"
            params["exclude"] = list(exclude)
            binds.append(bindparam("exclude", expanding=True))
        sql = text(
            f"SELECT 1 FROM flowpro_jobs WHERE state = 'available' AND queue = :queue{skip} LIMIT 1"
        ).bindparams(*binds)
        return self._read(
            lambda c: c.execute(sql, params).first() is not None, what="has_available"
        )

    # Graphs

    def find_step(self, workflow_id: str, step: str) -> Job | None:
        """Return the job of a workflow step, or None."""
        sql = text(
            f"SELECT {JOB_COLUMNS} FROM flowpro_jobs WHERE id = (SELECT job_id FROM "
            "flowpro_steps WHERE workflow_id = :wf AND step = :step)"
        )

        def run(c: Connection) -> Job | None:
            row = c.execute(sql, {"wf": workflow_id, "step": step}).first()
            return self._job(row) if row is not None else None

        return self._read(run, what="find_step")

    def dependencies(self, job_id: int) -> list[Job]:
        """Return the jobs ``job_id`` depends on."""
        sql = text(
            f"SELECT {JOB_COLUMNS} FROM flowpro_jobs WHERE id IN "
            "(SELECT dep_id FROM flowpro_deps WHERE job_id = :id) ORDER BY id"
        )
        return self._read(
            lambda c: [self._job(r) for r in c.execute(sql, {"id": job_id})], what="dependencies"
        )

    def workflow_context(self, workflow_id: str) -> dict[str, Any] | None:
        """Return a workflow's shared context, or None when there is no such workflow."""
        sql = text("SELECT context FROM flowpro_workflows WHERE id = :id")

        def run(c: Connection) -> dict[str, Any] | None:
            row = c.execute(sql, {"id": workflow_id}).first()
            return None if row is None else dict(self._json_out(row[0]))

        return self._read(run, what="workflow_context")

    def workflow_rows(
        self, workflow_id: str
    ) -> tuple[list[dict[str, Any]], list[Job], list[tuple[int, int]]]:
        """Return a workflow and its sub-workflows: their rows, their jobs, and the edges
        (job id, dep id) between those jobs."""

        def run(c: Connection) -> tuple[list[dict[str, Any]], list[Job], list[tuple[int, int]]]:
            workflows = self._workflow_tree(c, workflow_id)
            if not workflows:
                return [], [], []
            ids = [w["id"] for w in workflows]
            job_sql = text(
                f"SELECT {JOB_COLUMNS} FROM flowpro_jobs WHERE id IN (SELECT job_id FROM "
                "flowpro_steps WHERE workflow_id IN :ids) ORDER BY id"
            ).bindparams(bindparam("ids", expanding=True))
            jobs = [self._job(r) for r in c.execute(job_sql, {"ids": ids})]
            # The edges by a join on the steps table, not a list of the jobs' ids: a workflow
            # of 10,000 steps made that a statement of 10,000 parameters (33 ms to parse and
            # bind on PostgreSQL).
            edge_sql = text(
                "SELECT d.job_id, d.dep_id FROM flowpro_steps s JOIN flowpro_deps d "
                "ON d.job_id = s.job_id WHERE s.workflow_id IN :ids"
            ).bindparams(bindparam("ids", expanding=True))
            edges = [(r[0], r[1]) for r in c.execute(edge_sql, {"ids": ids})] if jobs else []
            return workflows, jobs, edges

        return self._read(run, what="workflow_rows")

    def _workflow_tree(self, c: Connection, workflow_id: str) -> list[dict[str, Any]]:
        """Return the rows of a workflow and its sub-workflows (``_graph.workflow_tree``)."""
        return [
            {
                "id": r[0],
                "name": r[1],
                "parent_id": r[2],
                "ignore_cancelled": bool(r[3]),
                "ignore_discarded": bool(r[4]),
                "ignore_deleted": bool(r[5]),
                "inserted_at": self._dt(r[6]),
            }
            for r in graph.workflow_tree(c, workflow_id)
        ]

    def workflow_summary(
        self, workflow_id: str
    ) -> tuple[list[dict[str, Any]], dict[str, int], datetime | None]:
        """Return a workflow's and its sub-workflows' rows (as ``workflow_rows`` does), their
        steps' count per state, and when a step last finished: one aggregate over their steps
        (found by the steps table's key, each job by its id), so ``workflow_status`` costs the
        same for 5 steps or 10,000 (no rows, no edges)."""
        count_sql = text(
            "SELECT j.state, count(*), max(j.completed_at), max(j.cancelled_at), "
            "max(j.discarded_at) FROM flowpro_steps s JOIN flowpro_jobs j ON j.id = s.job_id "
            "WHERE s.workflow_id IN :ids GROUP BY j.state"
        ).bindparams(bindparam("ids", expanding=True))

        def run(c: Connection) -> tuple[list[dict[str, Any]], dict[str, int], datetime | None]:
            workflows = self._workflow_tree(c, workflow_id)
            if not workflows:
                return [], {}, None
            ids = [w["id"] for w in workflows]
            counts: dict[str, int] = {}
            finished: list[datetime] = []
            for state, n, *times in c.execute(count_sql, {"ids": ids}):
                counts[state] = int(n)
                finished += [t for t in map(self._dt, times) if t is not None]
            return workflows, counts, max(finished, default=None)

        return self._read(run, what="workflow_summary")

    def repair_graphs(self, *, now: datetime, batch: int = 500) -> int:
        """Heal workflow steps left inconsistent (see ``_graph.repair``); return how many
        steps changed. Scans every suspended step, ``batch`` at a time."""
        changed, after = 0, 0
        while True:
            step_changed, last = self._write(
                functools.partial(graph.repair, self, now=now, after=after, limit=batch),
                what="repair_graphs",
            )
            changed += step_changed
            if last == after:
                return changed
            after = last

    def batch_jobs(self, batch_id: str) -> list[Job]:
        """Return the members of a batch."""
        sql = text(f"SELECT {JOB_COLUMNS} FROM flowpro_jobs WHERE batch_id = :id ORDER BY id")
        return self._read(
            lambda c: [self._job(r) for r in c.execute(sql, {"id": batch_id})], what="batch_jobs"
        )

    # Lifecycle writes

    def stage_jobs(self, *, now: datetime, limit: int = 5_000) -> list[str]:
        """Make due scheduled and retryable jobs available; return the queues touched."""
        sql = text(
            "UPDATE flowpro_jobs SET state = 'available' WHERE id IN ("
            "SELECT id FROM flowpro_jobs WHERE state IN ('scheduled', 'retryable') "
            "AND scheduled_at <= :now ORDER BY scheduled_at LIMIT :limit) RETURNING queue"
        )
        params = {"now": self._ts(now), "limit": limit}
        queues = self._write(
            lambda c: sorted({row[0] for row in c.execute(sql, params)}), what="stage_jobs"
        )
        if queues:
            self.notify(queues)
        return queues

    def rescue_jobs(self, *, now: datetime, alive_since: datetime) -> int:
        """Return executing jobs of dead nodes to the queue (or discard them when exhausted)."""
        entry = json.dumps(
            {
                "attempt": None,
                "at": now.isoformat(),
                "kind": "rescued",
                "error": "the node running this attempt stopped responding; job rescued",
            }
        )
        sql = text(
            "UPDATE flowpro_jobs SET "
            "state = CASE WHEN attempt >= max_attempts THEN 'discarded' ELSE 'available' END, "
            "discarded_at = CASE WHEN attempt >= max_attempts THEN :now ELSE discarded_at END, "
            f"errors = {self._json_append('errors', 'entry')} "
            "WHERE state = 'executing' AND (attempted_by IS NULL OR attempted_by NOT IN ("
            "SELECT name FROM flowpro_nodes WHERE heartbeat_at >= :alive)) "
            "RETURNING id, state, queue, workflow_id, batch_id, attempt"
        )
        params = {"now": self._ts(now), "alive": self._ts(alive_since), "entry": entry}
        return self._move_out(sql, params, now, what="rescue")

    def hand_back_jobs(self, node: str, ids: Sequence[int], *, now: datetime) -> int:
        """Return a stopping node's unfinished jobs without using up an attempt."""
        if not ids:
            return 0
        sql = text(
            "UPDATE flowpro_jobs SET state = 'available', max_attempts = max_attempts + 1 "
            "WHERE id IN :ids AND attempted_by = :node AND state = 'executing' "
            "RETURNING id, state, queue, workflow_id, batch_id, attempt"
        ).bindparams(bindparam("ids", expanding=True))
        params = {"ids": list(ids), "node": node}
        return self._move_out(sql, params, now, what="hand_back")

    def unclaim_jobs(self, node: str, ids: Sequence[int]) -> int:
        """Put back jobs a node claimed ahead but never started, as if never claimed: the
        attempt is given back (no late ack can exist) and graphs count nothing."""
        if not ids:
            return 0
        sql = text(
            "UPDATE flowpro_jobs SET state = 'available', attempt = attempt - 1 "
            "WHERE id IN :ids AND attempted_by = :node AND state = 'executing' RETURNING queue"
        ).bindparams(bindparam("ids", expanding=True))
        params = {"ids": list(ids), "node": node}
        queues = self._write(lambda c: [row[0] for row in c.execute(sql, params)], what="unclaim")
        if queues:
            self.notify(sorted(set(queues)))
        return len(queues)

    def executing_ids(self, node: str, *, attempted_before: datetime) -> list[int]:
        """Return the ids of jobs ``executing`` under ``node`` claimed before the given time
        (the node's orphan check compares them with what it holds)."""
        sql = text(
            "SELECT id FROM flowpro_jobs WHERE state = 'executing' AND attempted_by = :node "
            "AND attempted_at < :before ORDER BY id"
        )
        params = {"node": node, "before": self._ts(attempted_before)}
        return self._read(lambda c: [row[0] for row in c.execute(sql, params)], what="orphans")

    def _move_out(self, sql: Any, params: dict[str, Any], now: datetime, *, what: str) -> int:
        """Run an UPDATE moving jobs out of ``executing`` (it returns id, state, queue,
        workflow_id, batch_id, attempt), follow up their graphs, wake their queues; return
        how many moved."""
        released: list[str] = []

        def run(c: Connection) -> list[str]:
            rows = c.execute(sql, params).fetchall()
            self._follow_up(c, rows, now, released)
            return [row[2] for row in rows]

        queues = self._write(run, what=what)
        if queues or released:
            self.notify(sorted({*queues, *released}))
        return len(queues)

    def _follow_up(
        self, c: Connection, rows: Sequence[Any], now: datetime, released: list[str]
    ) -> None:
        """Follow up jobs that left ``executing`` outside an ack: rows are (id, state, queue,
        workflow_id, batch_id, attempt); an attempt-1 job's first attempt has ended."""
        moves = [
            (row[0], _STATES[row[1]], row[3], row[4], row[5] == 1)
            for row in rows
            if row[3] is not None or row[4] is not None
        ]
        if moves:
            graph.transitions(self, c, moves, now, released)

    def prune_jobs(self, *, before: datetime, limit: int = 10_000) -> int:
        """Delete terminal jobs that finished before ``before``.

        Workflows go as a unit: their steps, edges and rows are deleted only once every step
        of the root workflow (sub-workflows included) is terminal, so a running workflow never
        loses a dep. Batch rows go once they have no members left.
        """
        plain = text(
            "DELETE FROM flowpro_jobs WHERE id IN (SELECT id FROM flowpro_jobs "
            f"WHERE state IN {TERMINAL} AND {NOT_MOVING} AND workflow_id IS NULL AND "
            "COALESCE(completed_at, cancelled_at, discarded_at) < :before LIMIT :limit)"
        )
        done_roots = text(
            "SELECT w.root_id FROM flowpro_workflows w "
            "LEFT JOIN flowpro_steps s ON s.workflow_id = w.id "
            "LEFT JOIN flowpro_jobs j ON j.id = s.job_id GROUP BY w.root_id "
            f"HAVING sum(CASE WHEN j.id IS NOT NULL AND j.state NOT IN {TERMINAL} "
            "THEN 1 ELSE 0 END) = 0 AND max(w.inserted_at) < :before AND "
            "(max(COALESCE(j.completed_at, j.cancelled_at, j.discarded_at)) IS NULL OR "
            "max(COALESCE(j.completed_at, j.cancelled_at, j.discarded_at)) < :before) "
            "LIMIT 100"
        )
        ids_of = "SELECT id FROM flowpro_workflows WHERE root_id IN :roots"
        steps_of = f"SELECT job_id FROM flowpro_steps WHERE workflow_id IN ({ids_of})"
        delete_deps = text(f"DELETE FROM flowpro_deps WHERE job_id IN ({steps_of})").bindparams(
            bindparam("roots", expanding=True)
        )
        delete_jobs = text(f"DELETE FROM flowpro_jobs WHERE id IN ({steps_of})").bindparams(
            bindparam("roots", expanding=True)
        )
        delete_steps = text(
            f"DELETE FROM flowpro_steps WHERE workflow_id IN ({ids_of})"
        ).bindparams(bindparam("roots", expanding=True))
        delete_workflows = text("DELETE FROM flowpro_workflows WHERE root_id IN :roots").bindparams(
            bindparam("roots", expanding=True)
        )
        delete_batches = text(
            "DELETE FROM flowpro_batches WHERE inserted_at < :before AND NOT EXISTS "
            "(SELECT 1 FROM flowpro_jobs j WHERE j.batch_id = flowpro_batches.id)"
        )
        delete_callbacks = text(
            "DELETE FROM flowpro_batch_callbacks WHERE NOT EXISTS "
            "(SELECT 1 FROM flowpro_batches b WHERE b.id = flowpro_batch_callbacks.batch_id)"
        )
        params = {"before": self._ts(before), "limit": limit}

        def run(c: Connection) -> int:
            deleted = c.execute(plain, params).rowcount or 0
            roots = [row[0] for row in c.execute(done_roots, params)]
            if roots:
                c.execute(delete_deps, {"roots": roots})
                deleted += c.execute(delete_jobs, {"roots": roots}).rowcount or 0
                c.execute(delete_steps, {"roots": roots})
                c.execute(delete_workflows, {"roots": roots})
            c.execute(delete_batches, params)
            c.execute(delete_callbacks)
            return deleted

        return self._write(run, what="prune_jobs")

    def cancel_job(self, job_id: int, *, now: datetime) -> Job | None:
        """Cancel a job that has not finished (cascading to workflow steps that wait on it);
        return it (None when missing)."""
        before = text(f"SELECT state FROM flowpro_jobs WHERE id = :id{self._for_update_plain()}")
        sql = text(
            "UPDATE flowpro_jobs SET state = 'cancelled', cancelled_at = :now "
            f"WHERE id = :id AND state NOT IN {TERMINAL} RETURNING {JOB_COLUMNS}"
        )
        params = {"id": job_id, "now": self._ts(now)}
        released: list[str] = []

        def run(c: Connection) -> Any:
            prior = c.execute(before, params).scalar()
            row = c.execute(sql, params).first()
            if row is not None and (row[19] is not None or row[21] is not None):
                first = prior == "executing" and row[8] == 1
                moves = [(row[0], JobState.CANCELLED, row[19], row[21], first)]
                graph.transitions(self, c, moves, now, released)
            return row

        row = self._write(run, what="cancel_job")
        if released:
            self.notify(sorted(set(released)))
        return self._job(row) if row is not None else self.get_job(job_id)

    def retry_job(self, job_id: int, *, now: datetime) -> Job | None:
        """Make a finished, scheduled or retryable job available again now."""
        sql = text(
            "UPDATE flowpro_jobs SET state = 'available', scheduled_at = :now, "
            "completed_at = NULL, cancelled_at = NULL, discarded_at = NULL, "
            "max_attempts = CASE WHEN attempt >= max_attempts THEN attempt + 1 "
            "ELSE max_attempts END "
            "WHERE id = :id AND state NOT IN ('executing', 'available', 'suspended') "
            f"RETURNING {JOB_COLUMNS}"
        )
        before = text(f"SELECT state FROM flowpro_jobs WHERE id = :id{self._for_update_plain()}")
        params = {"id": job_id, "now": self._ts(now)}

        def run(c: Connection) -> Any:
            prior = c.execute(before, params).scalar()
            row = c.execute(sql, params).first()
            if (
                row is not None
                and row[21] is not None
                and prior in ("completed", "cancelled", "discarded")
            ):
                # The batch counted this member as finished: it is not any more (its next
                # outcome is counted again).
                from flowpro.storage import _batch

                _batch.bump(self, c, row[21], {prior: -1}, now, [])
            return row

        row = self._write(run, what="retry_job")
        if row is None:
            return self.get_job(job_id)
        job = self._job(row)
        self.notify([job.queue])
        return job

    # Nodes and leadership

    def heartbeat(self, node: str, *, queues: Sequence[str], now: datetime) -> None:
        """Record that the node is alive."""
        sql = text(
            "INSERT INTO flowpro_nodes (name, queues, started_at, heartbeat_at) "
            "VALUES (:name, :queues, :now, :now) "
            "ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
        )
        params = {"name": node, "queues": json.dumps(list(queues)), "now": self._ts(now)}
        self._write(lambda c: c.execute(sql, params), what="heartbeat")

    def remove_node(self, node: str) -> None:
        """Forget a node that stopped cleanly."""
        sql = text("DELETE FROM flowpro_nodes WHERE name = :name")
        self._write(lambda c: c.execute(sql, {"name": node}), what="remove_node")

    def live_nodes(self, *, alive_since: datetime) -> list[str]:
        """Return the names of nodes seen since ``alive_since``."""
        sql = text("SELECT name FROM flowpro_nodes WHERE heartbeat_at >= :alive ORDER BY name")
        params = {"alive": self._ts(alive_since)}
        return self._read(lambda c: [r[0] for r in c.execute(sql, params)], what="live_nodes")

    def prune_nodes(self, *, before: datetime) -> int:
        """Forget nodes not seen since ``before``."""
        sql = text("DELETE FROM flowpro_nodes WHERE heartbeat_at < :before")
        params = {"before": self._ts(before)}
        return self._write(lambda c: c.execute(sql, params).rowcount or 0, what="prune_nodes")

    def acquire_leader(self, node: str, *, now: datetime, ttl: float) -> bool:
        """Take or extend the leader lease; return whether ``node`` is the leader."""
        sql = text(
            "INSERT INTO flowpro_leader (name, node, expires_at) VALUES ('flowpro', :node, :exp) "
            "ON CONFLICT (name) DO UPDATE SET node = excluded.node, "
            "expires_at = excluded.expires_at "
            "WHERE flowpro_leader.node = excluded.node OR flowpro_leader.expires_at < :now "
            "RETURNING node"
        )
        params = {"node": node, "exp": self._ts(now + timedelta(seconds=ttl)), "now": self._ts(now)}
        return self._write(lambda c: c.execute(sql, params).first() is not None, what="leader")

    def resign_leader(self, node: str) -> None:
        """Give up the lease if ``node`` holds it."""
        sql = text("DELETE FROM flowpro_leader WHERE name = 'flowpro' AND node = :node")
        self._write(lambda c: c.execute(sql, {"node": node}), what="resign_leader")

    def insert_cron_job(self, name: str, tick: datetime, job: NewJob | InsertPlan) -> Job | None:
        """Insert the job (or plan, e.g. a workflow) of one cron tick unless that tick was
        inserted already; return its (first) job."""
        plan = job if isinstance(job, InsertPlan) else InsertPlan((job,))
        claim = text(
            "INSERT INTO flowpro_cron_ticks (name, tick, inserted_at) VALUES (:name, :tick, :now) "
            "ON CONFLICT DO NOTHING RETURNING name"
        )
        mark = text(
            "UPDATE flowpro_cron_ticks SET job_id = :id WHERE name = :name AND tick = :tick"
        )
        now = self._now()

        def run(c: Connection) -> Job | None:
            params = {"name": name, "tick": self._ts(tick), "now": self._ts(now)}
            if c.execute(claim, params).first() is None:
                return None
            saved = self._insert_plan(c, plan, now)
            c.execute(mark, {**params, "id": saved[0].id})
            queues.extend(j.queue for j in saved if j.state is JobState.AVAILABLE)
            return saved[0]

        queues: list[str] = []
        inserted = self._write(run, what="insert_cron_job")
        if queues:
            self._wake_local(sorted(set(queues)))
        return inserted

    def prune_cron_ticks(self, *, before: datetime) -> int:
        """Forget cron ticks older than ``before``."""
        sql = text("DELETE FROM flowpro_cron_ticks WHERE tick < :before")
        params = {"before": self._ts(before)}
        return self._write(lambda c: c.execute(sql, params).rowcount or 0, what="prune_cron")

    # Inserting, claiming and acking (adapters override the bulk forms)

    def _now(self) -> datetime:
        from flowpro.job import utcnow

        return utcnow()

    def insert_jobs(self, jobs: Sequence[NewJob], *, conn: Any = None) -> list[Job]:
        """Insert jobs in one transaction (the caller's when ``conn`` is given)."""
        return self.insert_plan(InsertPlan(tuple(jobs)), conn=conn)

    def insert_plan(self, plan: InsertPlan, *, conn: Any = None) -> list[Job]:
        """Insert a plan (jobs, workflows, batches, edges) in one transaction."""
        if not plan.jobs:
            return []
        now = self._now()
        saved = self._write(lambda c: self._insert_plan(c, plan, now), what="insert", conn=conn)
        queues = sorted({j.queue for j in saved if j.state is JobState.AVAILABLE})
        if queues:
            self._wake_local(queues)
        return saved

    def _insert_plan(self, c: Connection, plan: InsertPlan, now: datetime) -> list[Job]:
        if not plan.workflows and not plan.batches and not plan.deps and not plan.external_deps:
            fast = self._insert_simple(c, plan.jobs, now)
            if fast is not None:
                return fast
        return graph.insert_plan(self, c, plan, now)

    def _insert_simple(
        self, c: Connection, jobs: Sequence[NewJob], now: datetime
    ) -> list[Job] | None:
        """Insert plain jobs; adapters may take a faster path (None: use the general one)."""
        return None

    def fetch_jobs(
        self,
        queue: str | None,
        *,
        demand: int,
        node: str,
        now: datetime,
        exclude: Sequence[str] = (),
    ) -> list[Job]:
        """Claim up to ``demand`` available jobs, best priority and oldest first (not those
        of the ``exclude``d workers: chunk workers are claimed by chunk)."""
        return self._write(
            lambda c: self._fetch(c, queue, demand, node, now, exclude), what="fetch_jobs"
        )

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
        """Claim one chunk: up to ``size`` available jobs of one worker and partition, from a
        partition that has ``size`` jobs or whose oldest is due since before ``ready_before``
        (None: any partition)."""
        chunks = self.fetch_chunk_many(
            queue, worker, size=size, ready_before=ready_before, node=node, now=now, count=1
        )
        return chunks[0].jobs() if chunks else []

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
        """Write ``acks`` (with what follows from them), then claim up to ``count`` chunks (see
        ``fetch_chunk``), one statement each until none is ready, all in one transaction: a
        producer of chunks commits once a round. Rows become Jobs when the chunk is run."""
        picked, params = self._chunk_pick(queue, worker, size, ready_before, node, now)
        decode = functools.partial(self._claimed_jobs, node=node, now=now)
        released: list[str] = []

        def run(c: Connection) -> list[ClaimedChunk]:
            released.clear()
            if acks:
                graph.after_ack(self, c, acks, self._ack(c, acks), released)
            chunks: list[ClaimedChunk] = []
            while len(chunks) < count:
                rows = self._claim_picked(c, picked, params)
                if not rows:
                    break
                chunks.append(ClaimedChunk(rows, decode))
            return chunks

        chunks = self._write(run, what="fetch_chunk")
        if released:
            self._wake_local(released)
        return chunks

    def _claimed_jobs(self, rows: Sequence[Sequence[Any]], node: str, now: datetime) -> list[Job]:
        """Return claimed rows (``CLAIM_COLUMNS``) as the executing Jobs they became, in claim
        order (priority, scheduled time, id); ``node`` and ``now`` are the claim's own."""
        dt = self._dt
        js = self._json_out
        at = dt(self._ts(now))  # as stored, so as a read-back would give it
        executing = JobState.EXECUTING
        jobs = [
            Job(
                row[0],
                executing,
                row[1],
                row[2],
                js(row[3]),
                with_step(js(row[4]), row[16], row[17]),
                js(row[5]),
                js(row[6]),
                row[7],
                row[8],
                row[9],
                node,
                dt(row[10]),  # type: ignore[arg-type]
                dt(row[11]),  # type: ignore[arg-type]
                at,
                dt(row[12]),
                dt(row[13]),
                dt(row[14]),
                None if row[15] is None else bytes(row[15]),
                row[16],
                row[17],
                row[18],
            )
            for row in rows
        ]
        jobs.sort(key=_claim_order)
        return jobs

    def _chunk_pick(
        self,
        queue: str | None,
        worker: str,
        size: int,
        ready_before: datetime | None,
        node: str,
        now: datetime,
    ) -> tuple[str, dict[str, Any]]:
        """Return the ``WITH`` clause (``:name`` parameters) whose ``picked`` table holds the
        ids of one ready chunk."""
        scope = "state = 'available' AND worker = :worker" + (
            " AND queue = :queue" if queue is not None else ""
        )
        skip = self._skip_locked()
        if ready_before is None:
            ready, head_ready, taken_ready = "count(*) >= 1", "1 = 1", "1 = 1"
        else:
            # Where claims run side by side (SKIP LOCKED), readiness is judged again on the
            # rows this statement could lock: the counts below include rows that another
            # transaction (a node, or the other producer of this queue) is claiming right now,
            # and a partial chunk must wait for its timeout. SQLite writes one at a time.
            taken_ready = (
                "(SELECT count(*) FROM locked) >= :size "
                "OR (SELECT min(scheduled_at) FROM locked) <= :ready"
            )
            ready = "count(*) >= :size OR min(scheduled_at) <= :ready"
            head_ready = (
                "head.scheduled_at <= :ready OR (SELECT count(*) FROM (SELECT 1 FROM "
                f"flowpro_jobs WHERE {scope} AND chunk_key = head.chunk_key LIMIT :size) AS n) "
                ">= :size"
            )
        # The partition of the best available job is taken when it is ready (a bounded count,
        # cheap however long the queue); only otherwise are all partitions grouped to find one.
        sql = (
            # The head is read from the claim index, in claim order: "IS TRUE" keeps the
            # partition index (which would have to sort every ready job) out of the plan.
            f"WITH head AS (SELECT chunk_key, scheduled_at FROM flowpro_jobs WHERE {scope} "
            "AND (chunk_key IS NOT NULL) IS TRUE ORDER BY priority, scheduled_at, id "
            f"LIMIT 1{skip}), "
            f"fast AS (SELECT chunk_key FROM head WHERE {head_ready}), "
            "part AS (SELECT chunk_key FROM fast UNION ALL SELECT chunk_key FROM ("
            f"SELECT chunk_key FROM flowpro_jobs WHERE {scope} AND chunk_key IS NOT NULL "
            f"GROUP BY chunk_key HAVING {ready} ORDER BY min(priority), min(scheduled_at) "
            "LIMIT 1) AS g WHERE NOT EXISTS (SELECT 1 FROM fast)), "
        )
        partition = (
            f"FROM flowpro_jobs WHERE {scope} AND chunk_key = (SELECT chunk_key FROM part "
            f"LIMIT 1) ORDER BY priority, scheduled_at, id LIMIT :size{skip})"
        )
        if skip:
            sql += (
                f"locked AS (SELECT id, scheduled_at {partition}, "
                f"picked AS (SELECT id FROM locked WHERE {taken_ready}) "
            )
        else:
            sql += f"picked AS (SELECT id {partition} "
        params = {
            "worker": worker,
            "queue": queue,
            "size": size,
            "ready": self._ts(ready_before) if ready_before else None,
            "now": self._ts(now),
            "node": node,
        }
        return sql, params

    def ack_jobs(self, acks: Sequence[Ack]) -> list[int]:
        """Write outcomes back, fenced by (id, attempt); return the ids that applied.

        What follows from a job finishing (releasing workflow steps, batch callbacks) happens
        in the same transaction, so it happens exactly once.
        """
        if not acks:
            return []
        released: list[str] = []

        def run(c: Connection) -> list[int]:
            return graph.after_ack(self, c, acks, self._ack(c, acks), released)

        applied = self._write(run, what="ack_jobs")
        if released:
            self._wake_local(released)
        return applied

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
        """Ack finished attempts and claim new jobs in one transaction (one commit)."""
        released: list[str] = []

        def run(c: Connection) -> tuple[list[int], list[Job]]:
            applied = graph.after_ack(self, c, acks, self._ack(c, acks), released) if acks else []
            jobs = self._fetch(c, queue, demand, node, now, exclude) if demand > 0 else []
            return applied, jobs

        result = self._write(run, what="ack_and_fetch")
        if released:
            self._wake_local(released)
        return result

    # The adapters implement these on an open transaction.

    def _reserve_ids(self, c: Connection, count: int) -> list[int]:
        """Return ``count`` new job ids (like nextval), so rows can be written with them."""
        raise NotImplementedError

    def _write_jobs(self, c: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Write job rows: (id, state, queue, worker, args, meta, tags, max_attempts,
        priority, inserted_at, scheduled_at, workflow_id, step, deps_pending, batch_id,
        chunk_key)."""
        raise NotImplementedError

    def _write_steps(self, c: Connection, steps: Sequence[tuple[str, str, int]]) -> None:
        """Write workflow steps (workflow id, step name, job id) in bulk."""
        raise NotImplementedError

    def _write_deps(self, c: Connection, edges: Sequence[tuple[int, int]]) -> None:
        """Write graph edges (job id, dep id) in bulk."""
        c.execute(
            text("INSERT INTO flowpro_deps (job_id, dep_id) VALUES (:job_id, :dep_id)"),
            [{"job_id": a, "dep_id": b} for a, b in edges],
        )

    def _release_rows(
        self, c: Connection, ok: Sequence[int], now: datetime
    ) -> Sequence[Sequence[Any]]:
        """Run the release of the steps waiting on the jobs ``ok`` (see ``_graph``); return
        the (state, queue) of every step it changed."""
        marks, params = graph.in_marks("ok", ok)
        params["now"] = self._ts(now)
        return self._rows(c, graph.RELEASE.format(ok=marks), params)

    def _notify_in_tx(self, c: Connection, queues: Sequence[str]) -> None:
        """Tell other nodes about available jobs when the transaction commits."""

    @staticmethod
    def _cursor(c: Connection) -> contextlib.closing[Any]:
        """Return a cursor of the driver's own connection under ``c``, closed on exit: hot
        statements skip SQLAlchemy's per-statement work."""
        return contextlib.closing(c.connection.driver_connection.cursor())  # type: ignore[union-attr]

    def _rows(self, c: Connection, sql: str, params: dict[str, Any]) -> list[Any]:
        """Run a statement (``:name`` parameters) in the transaction; return its rows. SQLite
        runs it on the driver's cursor (statements of every ack round of workflow steps)."""
        return list(c.execute(text(sql), params))

    def _claim_picked(self, c: Connection, picked: str, params: dict[str, Any]) -> list[Any]:
        """Claim the jobs whose ids the ``WITH`` clause ``picked`` selects (``:name``
        parameters, with ``now`` and ``node``); return their rows (``CLAIM_COLUMNS``)."""
        return self._claim_rows(c, picked + self._picked_claim(), params)

    def _picked_claim(self) -> str:
        """Return the UPDATE that claims the rows of a ``picked`` table (``:name``
        parameters ``now`` and ``node``), returning ``CLAIM_COLUMNS``."""
        return CLAIM_PICKED.format(in_picked=self._in_picked())

    def _in_picked(self) -> str:
        """Return the condition that a row's id is in the ``picked`` table."""
        return "id IN (SELECT id FROM picked)"

    def _claim_rows(self, c: Connection, sql: str, params: dict[str, Any]) -> list[Any]:
        """Run a claiming statement (``:name`` parameters); return its rows. Adapters run it
        on the driver's cursor, as they run their other claims."""
        return self._rows(c, sql, params)

    def _for_update(self) -> str:
        """Return the row-locking clause for a SELECT whose rows the transaction relies on."""
        return ""

    def _for_update_plain(self) -> str:
        """Return the row-locking clause for a single-table SELECT."""
        return ""

    def _fetch(
        self,
        c: Connection,
        queue: str | None,
        demand: int,
        node: str,
        now: datetime,
        exclude: Sequence[str] = (),
    ) -> list[Job]:
        raise NotImplementedError

    def _skip_locked(self) -> str:
        """Return the clause that makes concurrent claimers skip each other's rows."""
        return ""

    def _ack(self, c: Connection, acks: Sequence[Ack]) -> list[tuple[int, str | None, str | None]]:
        """Apply acks; return (id, workflow_id, batch_id) of each that applied."""
        raise NotImplementedError

    # Wake-ups

    def subscribe(self, wakeup: Wakeup) -> None:
        """Call ``wakeup(queue)`` when jobs of that queue may have become available."""
        with self._wakeup_lock:
            self._wakeups.append(wakeup)

    def unsubscribe(self, wakeup: Wakeup) -> None:
        """Stop calling ``wakeup``."""
        with self._wakeup_lock:
            if wakeup in self._wakeups:
                self._wakeups.remove(wakeup)

    def notify(self, queues: Sequence[str]) -> None:
        """Wake this process's producers of these queues (adapters also tell other nodes)."""
        self._wake_local(queues)

    def _wake_local(self, queues: Sequence[str]) -> None:
        with self._wakeup_lock:
            wakeups = list(self._wakeups)
        for wakeup in wakeups:
            for queue in queues:
                try:
                    wakeup(queue)
                except Exception:  # a broken subscriber must not break an insert
                    log.exception("wake-up callback failed")

    # Schema

    def migrate(self) -> None:
        """Bring the schema to the newest version (alembic upgrade head)."""
        from flowpro.storage.migrate import upgrade

        upgrade(self.engine)

    def schema_is_current(self) -> bool:
        """Return whether the schema is at the newest version."""
        from flowpro.storage.migrate import is_current

        try:
            return is_current(self.engine)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read the schema version: {_driver_message(exc)}") from exc


def _driver_message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return (
        str(orig if orig is not None else exc).strip().splitlines()[0]
        if str(orig if orig is not None else exc).strip()
        else type(exc).__name__
    )
