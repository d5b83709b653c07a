"""The PostgreSQL adapter: SKIP LOCKED claiming, bulk unnest writes, LISTEN/NOTIFY wake-ups."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from flowpro._json import loads
from flowpro.errors import ConfigError, StorageError
from flowpro.job import Ack, Job, JobState, NewJob, has_follow_ups
from flowpro.storage._sql import (
    ACK_SET,
    CLAIM_COLUMNS,
    RETRY_DELAYS,
    SqlStorage,
    split_completions,
)
from flowpro.storage.base import ClaimedChunk

log = logging.getLogger("flowpro.storage")
T = TypeVar("T")

CHANNEL = "flowpro_jobs"
# Transient errors worth retrying the whole transaction for: serialization failure, deadlock,
# and the connection-level classes (the pool reconnects on the next checkout).
TRANSIENT_SQLSTATES = {"40001", "40P01", "57P01", "08000", "08003", "08006", "08001", "08004"}

# Claimed rows are updated by their ids as an array: one index probe each, whatever the
# planner makes of a join to the CTE.
IN_PICKED = "id = ANY(ARRAY(SELECT id FROM picked))"
# Set on every connection flowpro opens. Its statements touch a few rows by key, in a working
# set that is cached; with the default random_page_cost (4, for spinning disks) the planner
# reckoned a sequential scan of a table of some thousands of rows cheaper than a hundred
# primary-key probes, and the ack of a 100-job chunk read the whole table (4.8 ms against
# 2.3 ms, EXPLAIN ANALYZE on 10,000 jobs). 1.1 is PostgreSQL's advice for SSDs.
# TimeZone UTC: psycopg then returns timestamps in datetime.timezone.utc, which flowpro uses
# throughout. In a server zone (even 'Etc/UTC', a ZoneInfo to psycopg) every timestamp of every
# claimed row was converted twice: 2.1 us a row of two timestamps against 0.5.
SESSION_SETTINGS = "SET random_page_cost = 1.1; SET TimeZone = 'UTC'"
_CLAIM = (
    "WITH picked AS (SELECT id FROM flowpro_jobs WHERE state = 'available' {queue} "
    "ORDER BY priority, scheduled_at, id LIMIT %(demand)s FOR UPDATE SKIP LOCKED) "
    "UPDATE flowpro_jobs SET state = 'executing', attempt = attempt + 1, "
    f"attempted_at = %(now)s, attempted_by = %(node)s WHERE {IN_PICKED} "
    f"RETURNING {CLAIM_COLUMNS}"
)
CLAIM_QUEUE = _CLAIM.format(queue="AND queue = %(queue)s")
CLAIM_ANY = _CLAIM.format(queue="")
ACK = (
    f"UPDATE flowpro_jobs AS j SET {ACK_SET.format(v='v.', t='j.', errors='v.errors::jsonb')} "
    # Binary parameters (%(name)b): psycopg dumps a list of a thousand acks several times
    # faster than as text arrays, which quote and escape every element.
    "FROM unnest(%(ids)b::bigint[], %(attempts)b::int[], %(states)b::text[], "
    "%(ats)b::timestamptz[], %(scheduled)b::timestamptz[], %(errors)b::text[], "
    "%(maxes)b::int[], %(recorded)b::bytea[]) "
    "AS v(id, attempt, state, at, scheduled_at, errors, max_attempts, recorded) "
    "WHERE j.id = v.id AND j.attempt = v.attempt AND (j.state = 'executing') IS TRUE "
    "RETURNING j.id, j.workflow_id, j.batch_id"
)
# Plain completions sharing one time (a chunk's): only (id, attempt) per job.
COMPLETE = (
    "UPDATE flowpro_jobs AS j SET state = 'completed', completed_at = %(at)s "
    "FROM unnest(%(ids)b::bigint[], %(attempts)b::int[]) AS v(id, attempt) "
    "WHERE j.id = v.id AND j.attempt = v.attempt AND (j.state = 'executing') IS TRUE "
    "RETURNING j.id, j.workflow_id, j.batch_id"
)
# Run right after ACK, in the same transaction (and round trip): steps waiting on workflow steps
# this transaction just completed lose one unmet dep per completed one, and become available at
# zero. A separate statement (not a CTE of the ack) reads the edges with a fresh snapshot, so
# a step appended while its dep was being acked is seen. Only rows this transaction completed
# count (their xmin is ours), so a fenced-out or repeated ack never releases anything twice.
RELEASE = (
    # `(...) IS TRUE` keeps the planner on the primary key: on fresh data its statistics make
    # the state index look cheap, and scanning every completed (or suspended) row of a large
    # workflow on each ack makes the run quadratic.
    "WITH done AS (SELECT id FROM flowpro_jobs WHERE id = ANY(%(ids)s::bigint[]) "
    "AND (state = 'completed') IS TRUE AND workflow_id IS NOT NULL "
    "AND xmin::text::bigint = txid_current() %% 4294967296), "
    "freed AS (UPDATE flowpro_jobs AS t SET deps_pending = t.deps_pending - c.n, "
    "state = CASE WHEN t.deps_pending - c.n > 0 THEN t.state "
    "WHEN t.scheduled_at > %(now)s THEN 'scheduled' ELSE 'available' END "
    "FROM (SELECT d.job_id, count(*) AS n FROM flowpro_deps d "
    # The ANY() bound lets the planner probe the dep index with the (few) acked ids.
    "WHERE d.dep_id = ANY(%(ids)s::bigint[]) AND d.dep_id IN (SELECT id FROM done) "
    "GROUP BY d.job_id) AS c "
    "WHERE t.id = c.job_id AND (t.state = 'suspended') IS TRUE RETURNING t.state, t.queue), "
    f"told AS (SELECT q, pg_notify('{CHANNEL}', q) FROM "
    "(SELECT DISTINCT queue AS q FROM freed WHERE state = 'available') AS x) "
    "SELECT q FROM told"
)
COPY_FROM = 64
COPY_JOBS = (
    "COPY flowpro_jobs (id, state, queue, worker, args, meta, tags, errors, attempt, "
    "max_attempts, priority, inserted_at, scheduled_at, workflow_id, step, deps_pending, "
    "batch_id, chunk_key) FROM STDIN"
)
INSERT_MANY = (
    "INSERT INTO flowpro_jobs (id, state, queue, worker, args, meta, tags, errors, attempt, "
    "max_attempts, priority, inserted_at, scheduled_at, workflow_id, step, deps_pending, "
    "batch_id, chunk_key) "
    "SELECT t.id, t.state, t.queue, t.worker, t.args::jsonb, t.meta::jsonb, t.tags::jsonb, "
    "'[]'::jsonb, 0, t.max_attempts, t.priority, %(now)s, t.scheduled_at, t.workflow_id, "
    "t.step, t.deps_pending, t.batch_id, t.chunk_key "
    "FROM unnest(%(ids)s::bigint[], %(states)s::text[], %(queues)s::text[], "
    "%(workers)s::text[], %(args)s::text[], %(metas)s::text[], %(tags)s::text[], "
    "%(maxes)s::int[], %(priorities)s::int[], %(scheduled)s::timestamptz[], "
    "%(workflows)s::text[], %(steps)s::text[], %(pending)s::int[], %(batches)s::text[], "
    "%(chunks)s::text[]) "
    "AS t(id, state, queue, worker, args, meta, tags, max_attempts, priority, scheduled_at, "
    "workflow_id, step, deps_pending, batch_id, chunk_key)"
)
INSERT_ONE = (
    "INSERT INTO flowpro_jobs (state, queue, worker, args, meta, tags, errors, attempt, "
    "max_attempts, priority, inserted_at, scheduled_at) VALUES (%(state)s, %(queue)s, "
    "%(worker)s, %(args)s::jsonb, %(meta)s::jsonb, %(tags)s::jsonb, '[]'::jsonb, 0, "
    "%(max_attempts)s, %(priority)s, %(now)s, %(scheduled_at)s) RETURNING id"
)
NEXT_IDS = (
    "SELECT nextval(pg_get_serial_sequence('flowpro_jobs', 'id')) FROM generate_series(1, %(n)s)"
)
# Acks and claims may commit without waiting for the WAL flush: a database crash can then forget
# the last fraction of a second of them, which only means those jobs run again (at least once);
# inserts always commit synchronously, so no job is ever lost.
ASYNC_COMMIT = "SET LOCAL synchronous_commit TO OFF"
NOTIFY = f"SELECT pg_notify('{CHANNEL}', q) FROM unnest(%(queues)s::text[]) AS q"


@functools.lru_cache(maxsize=64)
def _pyformat(sql: str) -> str:
    """Return SQL written with ``:name`` parameters in psycopg's ``%(name)s`` style."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)


def _psycopg_transient(exc: BaseException) -> bool:
    import psycopg

    state = getattr(exc, "sqlstate", None)
    return state in TRANSIENT_SQLSTATES or isinstance(exc, psycopg.OperationalError)


def engine_url(url: str) -> Any:
    """Return the SQLAlchemy URL for a postgresql:// URL, with the psycopg 3 driver."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(f"not a PostgreSQL URL: {url!r}")
    if parsed.get_driver_name() not in ("psycopg", "postgresql", ""):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.set(drivername="postgresql+psycopg")


def _apply_session_settings(conn: Any) -> None:
    """Run ``SESSION_SETTINGS`` on a new psycopg connection, leaving no transaction open."""
    with conn.cursor() as cur:
        cur.execute(SESSION_SETTINGS)
    if not conn.autocommit:
        conn.commit()


class PostgresStorage(SqlStorage):
    """The distributed engine: any number of nodes on any number of hosts share one database.

    Example:
        >>> storage = PostgresStorage("postgresql://root@127.0.0.1/test")   # doctest: +SKIP
    """

    dialect = "postgresql"
    parallel_claims = True

    def __init__(self, url: str, *, pool_size: int = 10, synchronous_acks: bool = False) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:  # pragma: no cover - depends on the install
            raise ConfigError(
                "PostgreSQL needs psycopg 3: pip install 'flowpro[postgres]'"
            ) from None
        sa_url = engine_url(url)
        # No pre-ping: it costs a round trip per transaction. A connection that died is
        # invalidated on its first error and the transaction is retried (see _is_transient).
        engine = create_engine(
            sa_url, pool_size=pool_size, max_overflow=pool_size, json_deserializer=loads
        )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            _apply_session_settings(dbapi_conn)

        super().__init__(url, engine)
        self.synchronous_acks = synchronous_acks
        self._conninfo = sa_url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._listener: _Listener | None = None
        self._local = threading.local()
        self._hot: list[Any] = []  # every thread-owned connection, closed by close()
        self._idle_hot: list[Any] = []  # those whose thread has ended, for the next one
        self._hot_lock = threading.Lock()
        self._listener_lock = threading.Lock()

    # Dialect hooks

    def _dt(self, value: Any) -> datetime | None:
        if value is None or value.tzinfo is UTC:
            return value  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]

    def _json_out(self, value: Any) -> Any:
        # JSON columns arrive decoded from pooled connections, but as JSON text from a
        # producer's own connection (see _hot_connection), whose claims are decoded here: a
        # chunk's by the worker thread that runs it, while the producer is already waiting on
        # its next call. Every JSON column flowpro keeps holds an object or an array, so a
        # decoded value is never a str.
        if type(value) is not str:
            return value
        # Most tags, errors and meta are empty: skip the parser for them.
        if value == "{}":
            return {}
        if value == "[]":
            return []
        return loads(value)

    def _json_append(self, column: str, name: str) -> str:
        return f"{column} || jsonb_build_array(CAST(:{name} AS jsonb))"

    def _is_transient(self, exc: DBAPIError) -> bool:
        state = getattr(exc.orig, "sqlstate", None)
        return exc.connection_invalidated or state in TRANSIENT_SQLSTATES

    # Inserting, claiming, acking

    def _insert_simple(
        self, c: Connection, jobs: Sequence[NewJob], now: datetime
    ) -> list[Job] | None:
        if len(jobs) != 1 or jobs[0].seal is not None:
            return None
        # One plain job: a single statement whose id comes from the column default. It writes
        # no graph or chunk columns: a batch member or a chunk job takes the general path.
        job = jobs[0]
        if job.batch_id is not None or job.chunk_key is not None or job.workflow_id is not None:
            return None
        at = job.resolve_scheduled_at(now)
        state = JobState.AVAILABLE if at <= now else JobState.SCHEDULED
        with self._cursor(c) as cur:
            cur.execute(
                INSERT_ONE,
                {
                    "state": state.value,
                    "queue": job.queue,
                    "worker": job.worker,
                    "args": job.args_json,
                    "meta": job.meta_json,
                    "tags": json.dumps(job.tags),
                    "max_attempts": job.max_attempts,
                    "priority": job.priority,
                    "now": now,
                    "scheduled_at": at,
                },
            )
            job_id = cur.fetchone()[0]
            if state is JobState.AVAILABLE:
                cur.execute(NOTIFY, {"queues": [job.queue]})
        return [self._saved(job, job_id, now, state)]

    def _reserve_ids(self, c: Connection, count: int) -> list[int]:
        with self._cursor(c) as cur:
            cur.execute(NEXT_IDS, {"n": count})
            return [row[0] for row in cur.fetchall()]

    def _write_jobs(self, c: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        with self._cursor(c) as cur:
            if len(rows) >= COPY_FROM:
                # COPY streams rows with the driver's C encoder: several times faster than
                # binding arrays, whose elements are escaped one by one in Python.
                with cur.copy(COPY_JOBS) as copy:
                    for row in rows:
                        copy.write_row((*row[:7], "[]", 0, *row[7:]))
                return
            columns = list(zip(*rows, strict=True))
            cur.execute(
                INSERT_MANY,
                {
                    "ids": list(columns[0]),
                    "states": list(columns[1]),
                    "queues": list(columns[2]),
                    "workers": list(columns[3]),
                    "args": list(columns[4]),
                    "metas": list(columns[5]),
                    "tags": list(columns[6]),
                    "maxes": list(columns[7]),
                    "priorities": list(columns[8]),
                    "now": rows[0][9],
                    "scheduled": list(columns[10]),
                    "workflows": list(columns[11]),
                    "steps": list(columns[12]),
                    "pending": list(columns[13]),
                    "batches": list(columns[14]),
                    "chunks": list(columns[15]),
                },
            )

    def _write_steps(self, c: Connection, steps: Sequence[tuple[str, str, int]]) -> None:
        self._insert_arrays(
            c,
            "flowpro_steps",
            (("workflow_id", "text"), ("step", "text"), ("job_id", "bigint")),
            steps,
        )

    def _write_deps(self, c: Connection, edges: Sequence[tuple[int, int]]) -> None:
        self._insert_arrays(c, "flowpro_deps", (("job_id", "bigint"), ("dep_id", "bigint")), edges)

    def _insert_arrays(
        self,
        c: Connection,
        table: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[Any]],
    ) -> None:
        """Insert ``rows`` into ``table`` in one statement: one array per column (name, SQL
        type), unnested on the server."""
        names = ", ".join(name for name, _type in columns)
        arrays = ", ".join(f"%(c{i})s::{kind}[]" for i, (_name, kind) in enumerate(columns))
        with self._cursor(c) as cur:
            cur.execute(
                f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays})",
                {f"c{i}": [row[i] for row in rows] for i in range(len(columns))},
            )

    def _notify_in_tx(self, c: Connection, queues: Sequence[str]) -> None:
        # NOTIFY inside the transaction: delivered on commit, also the caller's transaction's.
        with self._cursor(c) as cur:
            cur.execute(NOTIFY, {"queues": list(queues)})

    def _claim_rows(self, c: Connection, sql: str, params: dict[str, Any]) -> list[Any]:
        return self._pipelined(c, _pyformat(sql), params)

    def _for_update(self) -> str:
        return " FOR UPDATE OF j"

    def _for_update_plain(self) -> str:
        return " FOR UPDATE"

    def _skip_locked(self) -> str:
        return " FOR UPDATE SKIP LOCKED"

    def _in_picked(self) -> str:
        return IN_PICKED

    def _fetch(
        self,
        c: Connection,
        queue: str | None,
        demand: int,
        node: str,
        now: datetime,
        exclude: Sequence[str] = (),
    ) -> list[Job]:
        params: dict[str, Any] = {"now": now, "node": node, "demand": demand, "queue": queue}
        sql = CLAIM_ANY if queue is None else CLAIM_QUEUE
        if exclude:
            params["exclude"] = list(exclude)
            where = "" if queue is None else "AND queue = %(queue)s "
            # A chunk worker's job without a partition (a batch callback) runs on its own.
            excluded = "(worker <> ALL(%(exclude)s::text[]) OR chunk_key IS NULL)"
            sql = _CLAIM.format(queue=f"{where}AND {excluded}")
        return self._claimed_jobs(self._pipelined(c, sql, params), node, now)

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
        """Ack and claim in one pipelined round trip, then commit.

        This is the hot path of every producer, so it runs on a connection owned by the calling
        thread (no pool checkout, no SQLAlchemy transaction object): about a third less Python
        work per round. Acks of workflow steps and batch members have follow-ups in the same
        transaction, so they take the general path.
        """
        if (exclude and demand > 0) or any(
            ack.batch or (ack.graph and ack.state in (JobState.CANCELLED, JobState.DISCARDED))
            for ack in acks
        ):
            # Failures cascade (and batch members count) in Python: the general path.
            return super().ack_and_fetch(
                acks, queue, demand=demand, node=node, now=now, exclude=exclude
            )
        released: list[str] = []

        def run(raw: Any) -> tuple[list[int], list[Job]]:
            released.clear()
            return self._ack_and_fetch(raw, acks, queue, demand, node, now, released)

        result = self._on_hot_connection(run, what="ack_and_fetch")
        if released:
            self._wake_local(released)
        return result

    def _on_hot_connection(self, fn: Callable[[Any], T], *, what: str) -> T:
        """Run ``fn`` with this thread's own connection, retrying transient failures on a
        fresh one (a failed connection is dropped)."""
        for delay in (*RETRY_DELAYS, None):
            raw = self._hot_connection()
            try:
                return fn(raw)
            except Exception as exc:
                self._drop_hot_connection(raw)
                if delay is not None and _psycopg_transient(exc):
                    time.sleep(delay)
                    continue
                raise StorageError(f"{what} failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _ack_and_fetch(
        self,
        raw: Any,
        acks: Sequence[Ack],
        queue: str,
        demand: int,
        node: str,
        now: datetime,
        released: list[str],
    ) -> tuple[list[int], list[Job]]:
        graph = any(ack.graph for ack in acks)
        statements = self._ack_statements(acks)
        ack_curs = [raw.cursor() for _ in statements]
        release_cur = raw.cursor()
        claim_cur = raw.cursor()
        try:
            with raw.pipeline():
                if not self.synchronous_acks:
                    # On the release cursor, whose first result is never read anyway.
                    release_cur.execute(ASYNC_COMMIT)
                for cur, (sql, params) in zip(ack_curs, statements, strict=True):
                    cur.execute(sql, params)
                if graph:
                    # The ids as an array literal: its text is built several times faster
                    # than psycopg dumps a list (it inspects every element to pick a type).
                    ids = "{" + ",".join([str(a.id) for a in acks]) + "}"
                    release_cur.execute(RELEASE, {"ids": ids, "now": now})
                if demand > 0:
                    claim_cur.execute(
                        CLAIM_QUEUE, {"now": now, "node": node, "demand": demand, "queue": queue}
                    )
                # The commit travels in the same round trip; results are read once it is done.
                raw.commit()
            applied = [row[0] for cur in ack_curs for row in cur.fetchall()]
            if graph:
                released.extend(row[0] for row in release_cur.fetchall())
            rows = claim_cur.fetchall() if demand > 0 else []
        except BaseException:
            raw.rollback()
            raise
        finally:
            for cur in ack_curs:
                cur.close()
            release_cur.close()
            claim_cur.close()
        return applied, self._claimed_jobs(rows, node, now)

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
        """Write ``acks``, then claim up to ``count`` chunks, in one transaction, one statement
        each, on the calling thread's own connection: the acks and the first claim in one
        pipelined round trip, and when it found a chunk, the other ``count - 1`` in a second
        one with the commit (each sees the rows the ones before it claimed, so no job is in two
        chunks). Acks of workflow steps and batch members have follow-ups written in Python:
        they take the general path."""
        if has_follow_ups(acks):
            return super().fetch_chunk_many(
                queue,
                worker,
                size=size,
                ready_before=ready_before,
                node=node,
                now=now,
                count=count,
                acks=acks,
            )
        picked, params = self._chunk_pick(queue, worker, size, ready_before, node, now)
        sql = _pyformat(picked + self._picked_claim())
        found = self._on_hot_connection(
            lambda raw: self._chunk_rounds(raw, sql, params, count, acks), what="fetch_chunk"
        )
        decode = functools.partial(self._claimed_jobs, node=node, now=now)
        return [ClaimedChunk(rows, decode) for rows in found]

    def _chunk_rounds(
        self, raw: Any, sql: str, params: dict[str, Any], count: int, acks: Sequence[Ack]
    ) -> list[list[Any]]:
        first = raw.cursor()
        more: list[Any] = []
        ack_curs = [(raw.cursor(), statement) for statement in self._ack_statements(acks)]
        try:
            with raw.pipeline():
                if not self.synchronous_acks:
                    first.execute(ASYNC_COMMIT)
                for cur, (ack_sql, ack_params) in ack_curs:
                    cur.execute(ack_sql, ack_params)
                first.execute(sql, params)
            found: list[list[Any]] = []
            rows = first.fetchall()
            if rows:
                found.append(rows)
            # Only when a chunk was ready: then the next ones usually are too, and when they
            # are not, the statements that find nothing cost one (grouping) scan each.
            if rows:
                more = [raw.cursor() for _ in range(count - 1)]
            with raw.pipeline():
                for cur in more:
                    cur.execute(sql, params)
                raw.commit()
            for cur in more:
                # Every result counts: a later statement can find a chunk that an earlier one
                # did not (jobs inserted meanwhile), and its rows are claimed now.
                rows = cur.fetchall()
                if rows:
                    found.append(rows)
            return found
        except BaseException:
            raw.rollback()
            raise
        finally:
            first.close()
            for cur in more:
                cur.close()
            for cur, _statement in ack_curs:
                cur.close()

    def _hot_connection(self) -> Any:
        raw = getattr(self._local, "conn", None)
        if raw is None or raw.closed:
            raw = self._take_idle_hot()
            if raw is None:
                import psycopg
                from psycopg.types.string import TextLoader

                raw = psycopg.connect(self._conninfo)
                _apply_session_settings(raw)
                # jsonb as its text (psycopg's C text loader); the claim decodes it with
                # _json_out, which skips the parser for empty columns. psycopg's jsonb loader
                # is Python code run for every column of every row: 4.3 µs a claimed row of
                # four JSON columns against 1.6.
                raw.adapters.register_loader("jsonb", TextLoader)
                with self._hot_lock:
                    self._hot.append(raw)
            self._local.conn = raw
        return raw

    def _take_idle_hot(self) -> Any:
        """Return an open connection a finished thread handed on, or None."""
        with self._hot_lock:
            while self._idle_hot:
                raw = self._idle_hot.pop()
                if not raw.closed:
                    return raw
                self._hot.remove(raw)
        return None

    def release_thread(self) -> None:
        """Hand the calling thread's own connection (see ``_hot_connection``) to the next
        thread that needs one: a producer calls this as it ends, so that every ``run()``
        reuses the connections of the one before rather than leaving them open until
        ``close()``."""
        raw = getattr(self._local, "conn", None)
        self._local.conn = None
        if raw is None or raw.closed:
            return
        import psycopg

        if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._drop_hot_connection(raw)  # never hand over an open transaction
            return
        with self._hot_lock:
            if raw in self._hot:
                self._idle_hot.append(raw)

    def _drop_hot_connection(self, raw: Any) -> None:
        self._local.conn = None
        with self._hot_lock:
            if raw in self._hot:
                self._hot.remove(raw)
        with contextlib.suppress(Exception):
            raw.close()

    def _ack(self, c: Connection, acks: Sequence[Ack]) -> list[tuple[int, str | None, str | None]]:
        return [
            (r[0], r[1], r[2])
            for sql, params in self._ack_statements(acks)
            for r in self._pipelined(c, sql, params)
        ]

    def _ack_statements(self, acks: Sequence[Ack]) -> list[tuple[str, dict[str, Any]]]:
        """Return the statements writing ``acks``: one per group of plain completions that
        share a time (a chunk's), one for the rest."""
        groups, rest = split_completions(acks)
        statements: list[tuple[str, dict[str, Any]]] = [
            (COMPLETE, {"at": at, "ids": [a.id for a in g], "attempts": [a.attempt for a in g]})
            for at, g in groups.items()
        ]
        if rest:
            statements.append((ACK, self._ack_params(rest)))
        return statements

    def _pipelined(self, c: Connection, sql: str, params: dict[str, Any]) -> list[Any]:
        """Run one statement, with BEGIN (and the async-commit setting) in the same round trip."""
        raw = c.connection.driver_connection
        cur = raw.cursor()  # type: ignore[union-attr]
        try:
            with raw.pipeline():  # type: ignore[union-attr]
                if not self.synchronous_acks:
                    cur.execute(ASYNC_COMMIT)
                cur.execute(sql, params)
            rows: list[Any] = cur.fetchall()
            return rows
        finally:
            cur.close()

    def _ack_params(self, acks: Sequence[Ack]) -> dict[str, Any]:
        return {
            "ids": [a.id for a in acks],
            "attempts": [a.attempt for a in acks],
            "states": [a.state.value for a in acks],
            "ats": [a.at for a in acks],
            "scheduled": [a.scheduled_at for a in acks],
            "errors": [None if a.errors is None else json.dumps(a.errors) for a in acks],
            "maxes": [a.max_attempts for a in acks],
            "recorded": [a.recorded for a in acks],
        }

    # Wake-ups

    def notify(self, queues: Sequence[str]) -> None:
        """Wake producers of these queues on every node (NOTIFY) and in this process."""
        self._wake_local(queues)

        def run(c: Connection) -> None:
            with self._cursor(c) as cur:
                cur.execute(NOTIFY, {"queues": list(queues)})

        try:
            self._write(run, what="notify")
        except Exception:  # the pollers still find the jobs
            log.warning("NOTIFY failed; other nodes will find the jobs by polling", exc_info=True)

    def subscribe(self, wakeup: Any) -> None:
        """Start the LISTEN connection (once) and call ``wakeup`` on every notification."""
        super().subscribe(wakeup)
        with self._listener_lock:
            if self._listener is None:
                self._listener = _Listener(self._conninfo, self._wake_remote)
                self._listener.start()

    def _wake_remote(self, queue: str) -> None:
        self._wake_local([queue])

    def listener_connected(self) -> bool:
        """Return whether the LISTEN connection is up (for tests and health checks)."""
        return self._listener is not None and self._listener.connected.is_set()

    def close(self) -> None:
        """Stop the listener and dispose of the pool."""
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        with self._hot_lock:
            hot, self._hot, self._idle_hot = self._hot, [], []
        for raw in hot:
            with contextlib.suppress(Exception):
                raw.close()
        super().close()


class _Listener(threading.Thread):
    """A dedicated LISTEN connection; reconnects with backoff, producers poll meanwhile."""

    def __init__(self, conninfo: str, callback: Any) -> None:
        super().__init__(name="flowpro-listener", daemon=True)
        self._conninfo = conninfo
        self._callback = callback
        self._stopped = threading.Event()
        self.connected = threading.Event()
        self._conn: Any = None

    def run(self) -> None:
        import psycopg

        delay = 0.1
        while not self._stopped.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    self._conn = conn
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    delay = 0.1
                    while not self._stopped.is_set():
                        for note in conn.notifies(timeout=0.1):
                            self._callback(note.payload)
            except Exception as exc:
                self.connected.clear()
                if self._stopped.is_set():
                    return
                log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, delay)
                self._stopped.wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                self._conn = None
                self.connected.clear()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=2)
