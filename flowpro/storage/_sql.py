"""The statements and logic both SQL adapters share; adapters override claiming and wake-ups."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import BindParameter, Connection, Engine, bindparam, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from flowpro.errors import StorageError
from flowpro.job import Ack, Job, JobState, NewJob
from flowpro.storage.base import Wakeup

log = logging.getLogger("flowpro.storage")

T = TypeVar("T")

JOB_COLUMNS = (
    "id, state, queue, worker, args, meta, tags, errors, attempt, max_attempts, priority, "
    "attempted_by, inserted_at, scheduled_at, attempted_at, completed_at, cancelled_at, "
    "discarded_at, recorded"
)
INSERT_COLUMNS = (
    "state, queue, worker, args, meta, tags, errors, attempt, max_attempts, priority, "
    "inserted_at, scheduled_at"
)
TERMINAL = "('completed', 'cancelled', 'discarded')"
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


class SqlStorage:
    """The shared part of the SQLite and PostgreSQL adapters."""

    dialect = "sql"

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
                with self.engine.begin() as c:
                    return fn(c)
            except (DBAPIError, self._driver_error) as exc:
                if delay is not None and self._is_transient(self._wrapped(exc)):
                    time.sleep(delay)
                    continue
                raise StorageError(f"{what} failed: {_driver_message(exc)}") from exc
            except SQLAlchemyError as exc:
                raise StorageError(f"{what} failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

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
            meta=js(row[5]),
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
        )

    def _saved(self, new: NewJob, job_id: int, now: datetime) -> Job:
        """Return the Job a NewJob became, without reading it back."""
        at = new.resolve_scheduled_at(now)
        return Job(
            id=job_id,
            state=JobState.AVAILABLE if at <= now else JobState.SCHEDULED,
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
            scheduled_at=at,
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
        sql = text("SELECT state, count(*) FROM flowpro_jobs GROUP BY state")
        return self._read(
            lambda c: {row[0]: int(row[1]) for row in c.execute(sql)}, what="count_jobs"
        )

    def count_pending(self, queues: Sequence[str], *, now: datetime) -> int:
        """Count jobs of the queues that are runnable now or executing."""
        sql = text(
            "SELECT count(*) FROM flowpro_jobs WHERE queue IN :queues AND "
            "(state IN ('available', 'executing') OR "
            "(state IN ('scheduled', 'retryable') AND scheduled_at <= :now))"
        ).bindparams(bindparam("queues", expanding=True))
        params = {"queues": list(queues), "now": self._ts(now)}
        return self._read(lambda c: int(c.execute(sql, params).scalar_one()), what="count_pending")

    def has_available(self, queue: str) -> bool:
        """Return whether the queue has an available job."""
        sql = text(
            "SELECT 1 FROM flowpro_jobs WHERE state = 'available' AND queue = :queue LIMIT 1"
        )
        return self._read(
            lambda c: c.execute(sql, {"queue": queue}).first() is not None, what="has_available"
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
            "SELECT name FROM flowpro_nodes WHERE heartbeat_at >= :alive)) RETURNING queue"
        )
        params = {"now": self._ts(now), "alive": self._ts(alive_since), "entry": entry}
        queues = self._write(lambda c: [row[0] for row in c.execute(sql, params)], what="rescue")
        if queues:
            self.notify(sorted(set(queues)))
        return len(queues)

    def hand_back_jobs(self, node: str, ids: Sequence[int], *, now: datetime) -> int:
        """Return a stopping node's unfinished jobs without using up an attempt."""
        if not ids:
            return 0
        sql = text(
            "UPDATE flowpro_jobs SET state = 'available', max_attempts = max_attempts + 1 "
            "WHERE id IN :ids AND attempted_by = :node AND state = 'executing' RETURNING queue"
        ).bindparams(bindparam("ids", expanding=True))
        params = {"ids": list(ids), "node": node}
        queues = self._write(lambda c: [row[0] for row in c.execute(sql, params)], what="hand_back")
        if queues:
            self.notify(sorted(set(queues)))
        return len(queues)

    def prune_jobs(self, *, before: datetime, limit: int = 10_000) -> int:
        """Delete terminal jobs that finished before ``before``."""
        sql = text(
            "DELETE FROM flowpro_jobs WHERE id IN (SELECT id FROM flowpro_jobs "
            f"WHERE state IN {TERMINAL} AND "
            "COALESCE(completed_at, cancelled_at, discarded_at) < :before LIMIT :limit)"
        )
        params = {"before": self._ts(before), "limit": limit}
        return self._write(lambda c: c.execute(sql, params).rowcount or 0, what="prune_jobs")

    def cancel_job(self, job_id: int, *, now: datetime) -> Job | None:
        """Cancel a job that has not finished; return it (None when missing)."""
        sql = text(
            "UPDATE flowpro_jobs SET state = 'cancelled', cancelled_at = :now "
            f"WHERE id = :id AND state NOT IN {TERMINAL} RETURNING {JOB_COLUMNS}"
        )
        params = {"id": job_id, "now": self._ts(now)}
        row = self._write(lambda c: c.execute(sql, params).first(), what="cancel_job")
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
        params = {"id": job_id, "now": self._ts(now)}
        row = self._write(lambda c: c.execute(sql, params).first(), what="retry_job")
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

    def insert_cron_job(self, name: str, tick: datetime, job: NewJob) -> Job | None:
        """Insert the job of one cron tick unless that tick was inserted already."""
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
            saved = self._insert(c, [job], now)[0]
            c.execute(mark, {**params, "id": saved.id})
            return saved

        inserted = self._write(run, what="insert_cron_job")
        if inserted is not None:
            self.notify([inserted.queue])
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
        if not jobs:
            return []
        now = self._now()
        saved = self._write(lambda c: self._insert(c, jobs, now), what="insert_jobs", conn=conn)
        queues = sorted({j.queue for j in saved if j.state is JobState.AVAILABLE})
        if queues:
            self._wake_local(queues)
        return saved

    def fetch_jobs(self, queue: str | None, *, demand: int, node: str, now: datetime) -> list[Job]:
        """Claim up to ``demand`` available jobs, best priority and oldest first."""
        return self._write(lambda c: self._fetch(c, queue, demand, node, now), what="fetch_jobs")

    def ack_jobs(self, acks: Sequence[Ack]) -> list[int]:
        """Write outcomes back, fenced by (id, attempt); return the ids that applied."""
        if not acks:
            return []
        return self._write(lambda c: self._ack(c, acks), what="ack_jobs")

    def ack_and_fetch(
        self, acks: Sequence[Ack], queue: str, *, demand: int, node: str, now: datetime
    ) -> tuple[list[int], list[Job]]:
        """Ack finished attempts and claim new jobs in one transaction (one commit)."""

        def run(c: Connection) -> tuple[list[int], list[Job]]:
            applied = self._ack(c, acks) if acks else []
            jobs = self._fetch(c, queue, demand, node, now) if demand > 0 else []
            return applied, jobs

        return self._write(run, what="ack_and_fetch")

    # The adapters implement these three on an open transaction.

    def _insert(self, c: Connection, jobs: Sequence[NewJob], now: datetime) -> list[Job]:
        raise NotImplementedError

    def _fetch(
        self, c: Connection, queue: str | None, demand: int, node: str, now: datetime
    ) -> list[Job]:
        raise NotImplementedError

    def _ack(self, c: Connection, acks: Sequence[Ack]) -> list[int]:
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
