"""The SQLite adapter: WAL, busy timeout, BEGIN IMMEDIATE writes, UPDATE ... RETURNING claims."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from flowpro._json import compact, loads
from flowpro.errors import ConfigError, StorageError
from flowpro.job import Ack, Job, JobState, has_follow_ups
from flowpro.storage import _graph as graph
from flowpro.storage._sql import ACK_SET, SqlStorage, split_completions

BUSY_TIMEOUT_MS = 30_000
SYNC_MODES = {"off", "normal", "full", "extra"}

# Claims take two statements and two rows: the picked jobs as one JSON document, then their
# update. Python's sqlite3 lets other threads run at every row it steps through (it releases
# the GIL), and a thread busy with Python code holds on to it for up to the switch interval;
# a claim of a hundred rows returned by UPDATE ... RETURNING waited on the workers a hundred
# times. One row per statement lets it wait twice at most.
_PICK = (
    "WITH picked AS (SELECT id FROM flowpro_jobs WHERE state = 'available' {queue} "
    "ORDER BY priority, scheduled_at, id LIMIT :demand) "
)
PICK_QUEUE = _PICK.format(queue="AND queue = :queue")
PICK_ANY = _PICK.format(queue="")
# The picked rows (CLAIM_COLUMNS, recorded in hex: JSON holds no bytes) as one JSON array.
PICKED_ROWS = (
    "SELECT json_group_array(json_array(id, queue, worker, args, meta, tags, errors, attempt, "
    "max_attempts, priority, inserted_at, scheduled_at, completed_at, cancelled_at, "
    "discarded_at, CASE WHEN recorded IS NULL THEN NULL ELSE hex(recorded) END, workflow_id, "
    "step, batch_id)) FROM flowpro_jobs WHERE id IN (SELECT id FROM picked)"
)
CLAIM_IDS = (
    "UPDATE flowpro_jobs SET state = 'executing', attempt = attempt + 1, "
    "attempted_at = :now, attempted_by = :node "
    # "+state": look the rows up by id. Without statistics SQLite would take the state index
    # and walk every available job to find these.
    "WHERE id IN (SELECT value FROM json_each(:ids)) AND +state = 'available'"
)
# Acks in one statement: their values joined in (UPDATE ... FROM, SQLite 3.33+).
ACK_MANY = (
    "WITH v(id, attempt, state, at, scheduled_at, errors, max_attempts, recorded) AS "
    "(VALUES {rows}) "
    f"UPDATE flowpro_jobs SET {ACK_SET.format(v='v.', t='flowpro_jobs.', errors='v.errors')} "
    "FROM v WHERE flowpro_jobs.id = v.id AND flowpro_jobs.attempt = v.attempt "
    "AND +flowpro_jobs.state = 'executing' "
    "RETURNING flowpro_jobs.id, flowpro_jobs.workflow_id, flowpro_jobs.batch_id"
)
ACK_ROW = "(?, ?, ?, ?, ?, ?, ?, ?)"
# Plain completions sharing one time (a chunk's): the time, then two parameters a job.
# Joined by id (UPDATE ... FROM): "state = 'executing' AND (id, attempt) IN (VALUES ...)"
# would walk the state index through every executing job. No WITH clause: Python's sqlite3
# (before 3.12) reports no rowcount for a statement that does not start with UPDATE.
_COMPLETE = (
    "UPDATE flowpro_jobs SET state = 'completed', completed_at = ? FROM (VALUES {{rows}}) AS v "
    "WHERE flowpro_jobs.id = v.column1 AND flowpro_jobs.attempt = v.column2 "
    "AND +flowpro_jobs.state = 'executing'{only}"
)
COMPLETE_MANY = _COMPLETE.format(
    only=" RETURNING flowpro_jobs.id, flowpro_jobs.workflow_id, flowpro_jobs.batch_id"
)
# The same for jobs outside workflows and batches (nothing follows from them), with no rows
# returned: when every job applies, its count says so.
COMPLETE_PLAIN = _COMPLETE.format(
    only=" AND flowpro_jobs.workflow_id IS NULL AND flowpro_jobs.batch_id IS NULL"
)
ACKS_PER_STATEMENT = 500  # 8 parameters each, well under SQLite's limit of variables
COMPLETIONS_PER_STATEMENT = 2_000  # 2 parameters each
INSERT = (
    "INSERT INTO flowpro_jobs (id, state, queue, worker, args, meta, tags, errors, attempt, "
    "max_attempts, priority, inserted_at, scheduled_at, workflow_id, step, deps_pending, "
    "batch_id, chunk_key) VALUES (?, ?, ?, ?, ?, ?, ?, '[]', 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
ENSURE_SEQUENCE = (
    "INSERT INTO sqlite_sequence (name, seq) "
    "SELECT 'flowpro_jobs', COALESCE((SELECT max(id) FROM flowpro_jobs), 0) "
    "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'flowpro_jobs')"
)
RESERVE_IDS = "UPDATE sqlite_sequence SET seq = seq + ? WHERE name = 'flowpro_jobs' RETURNING seq"


@functools.lru_cache(maxsize=128)
def _release_sql(count: int) -> str:
    """Return the release statement (``_graph.RELEASE``) for ``count`` deps, with positional
    parameters: the time first, then the deps' ids."""
    return graph.RELEASE.replace(":now", "?").format(ok=", ".join(["?"] * count))


@functools.lru_cache(maxsize=4096)
def _parse_ts(value: str) -> datetime:
    """Return a stored time as an aware UTC datetime. Cached: the jobs of one insert share
    their times, and a claim of a hundred of them parses each time once."""
    try:
        # Stored by ts(): UTC without an offset. Parsing it with one is ten times cheaper
        # than parsing and then replacing tzinfo.
        return datetime.fromisoformat(value + "+00:00")
    except (TypeError, ValueError):
        parsed = datetime.fromisoformat(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def ts(value: datetime | None) -> str | None:
    """Return a datetime as fixed-width UTC text, so that text order is time order."""
    if value is None:
        return None
    if value.tzinfo is not None and value.utcoffset():
        value = value.astimezone(UTC)
    # Fixed width ("microseconds" keeps a zero fraction); the first 26 characters leave out
    # the offset of an aware value. Twice as fast as strftime.
    return value.isoformat(" ", "microseconds")[:26]


# One lock per database file in this process, held by every write transaction on it. SQLite
# lets one writer in at a time; a writer that finds the file locked sleeps in its busy handler
# (1, 2, 5, 10, 15, 20, 25 ms ... between tries), so two threads of one process taking turns
# through SQLite lost up to 100 ms a turn. Through this lock the next writer starts as soon as
# the last one commits. Other processes still meet at SQLite's lock, under the busy timeout.
_FILE_LOCKS: dict[str, threading.RLock] = {}
_FILE_LOCKS_LOCK = threading.Lock()


def _lock_key(database: str) -> str | None:
    """Return the key of a database file's lock, or None for an in-memory database."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.realpath(os.path.expanduser(database))


def _file_lock(key: str) -> threading.RLock:
    """Return this process's write lock of the database file ``key``."""
    lock = _FILE_LOCKS.get(key)
    if lock is None:
        with _FILE_LOCKS_LOCK:
            lock = _FILE_LOCKS.setdefault(key, threading.RLock())
    return lock


def _fresh_locks_after_fork() -> None:
    # A child forked while another thread held a lock would inherit it held, for ever.
    global _FILE_LOCKS_LOCK
    _FILE_LOCKS_LOCK = threading.Lock()
    _FILE_LOCKS.clear()


os.register_at_fork(after_in_child=_fresh_locks_after_fork)


class SQLiteStorage(SqlStorage):
    """The embedded default: one file, several processes on one machine.

    Example:
        >>> storage = SQLiteStorage("sqlite:///flowpro.db")   # doctest: +SKIP
    """

    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        query = dict(parsed.query)
        synchronous = str(query.pop("synchronous", "normal")).lower()
        if synchronous not in SYNC_MODES:
            raise ConfigError(f"synchronous={synchronous!r} is not one of {sorted(SYNC_MODES)}")
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            folder = Path(database).expanduser().resolve().parent
            if not folder.is_dir():
                raise ConfigError(f"cannot open {url!r}: folder {str(folder)!r} does not exist")
        engine = create_engine(
            parsed.set(query=query),
            connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_size=8,
            max_overflow=16,
        )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            # Take over transaction control so that every write begins IMMEDIATE: a deferred
            # transaction that later writes can fail with SQLITE_BUSY without waiting.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute(f"PRAGMA synchronous={synchronous.upper()}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            read = conn.get_execution_options().get("flowpro_read")
            conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

        super().__init__(url, engine)
        self._database = database
        self._watcher: _Watcher | None = None
        self._lock_key = _lock_key(database)
        self._memory_gate = threading.RLock()  # an in-memory database is this storage's alone

    def _write_gate(self) -> threading.RLock:
        # Looked up each time, so that a forked child uses its own fresh locks.
        return self._memory_gate if self._lock_key is None else _file_lock(self._lock_key)

    # Dialect hooks

    def _ts(self, value: datetime | None) -> Any:
        return ts(value)

    def _dt(self, value: Any) -> datetime | None:
        return None if value is None else _parse_ts(value)

    def _json_out(self, value: Any) -> Any:
        # Most tags, errors and meta are empty: skip the parser for them (claims decode
        # four JSON columns per job).
        if value == "[]":
            return []
        if value == "{}":
            return {}
        return loads(value) if isinstance(value, str | bytes) else value

    def _json_append(self, column: str, name: str) -> str:
        return f"json_insert({column}, '$[#]', json(:{name}))"

    # Wake-ups: SQLite has no LISTEN/NOTIFY. PRAGMA data_version changes whenever another
    # connection (another process, or another connection of this one) commits; a watcher
    # polls it every few milliseconds, which costs microseconds, and wakes the producers,
    # so jobs inserted by other processes start within milliseconds instead of a poll period.

    def subscribe(self, wakeup: Any) -> None:
        """Call ``wakeup`` on changes; the first subscriber starts the data_version watcher."""
        super().subscribe(wakeup)
        with self._wakeup_lock:
            if self._watcher is None and self._database not in ("", ":memory:"):
                self._watcher = _Watcher(self._database, self._wake_all)
                self._watcher.start()

    def _wake_all(self) -> None:
        self._wake_local(["*"])

    def close(self) -> None:
        """Stop the watcher and dispose of the pool."""
        with self._wakeup_lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
        super().close()

    def _is_transient(self, exc: DBAPIError) -> bool:
        orig = exc.orig
        return isinstance(orig, sqlite3.OperationalError) and (
            "locked" in str(orig) or "busy" in str(orig)
        )

    # Inserting, claiming, acking

    def _reserve_ids(self, c: Connection, count: int) -> list[int]:
        with self._cursor(c) as cur:
            # Like nextval: move the AUTOINCREMENT sequence on by `count` and take those ids,
            # so an encrypted job's ciphertext can be bound to its id before it is written.
            cur.execute(ENSURE_SEQUENCE)
            last: int = cur.execute(RESERVE_IDS, (count,)).fetchone()[0]
        return list(range(last - count + 1, last + 1))

    def _write_steps(self, c: Connection, steps: Sequence[tuple[str, str, int]]) -> None:
        with self._cursor(c) as cur:
            cur.executemany(
                "INSERT INTO flowpro_steps (workflow_id, step, job_id) VALUES (?, ?, ?)", steps
            )

    def _write_deps(self, c: Connection, edges: Sequence[tuple[int, int]]) -> None:
        with self._cursor(c) as cur:
            cur.executemany("INSERT INTO flowpro_deps (job_id, dep_id) VALUES (?, ?)", edges)

    def _write_jobs(self, c: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        with self._cursor(c) as cur:
            cur.executemany(INSERT, rows)

    def _fetch(
        self,
        c: Connection,
        queue: str | None,
        demand: int,
        node: str,
        now: datetime,
        exclude: Sequence[str] = (),
    ) -> list[Job]:
        params: dict[str, Any] = {"now": ts(now), "node": node, "demand": demand, "queue": queue}
        sql = PICK_ANY if queue is None else PICK_QUEUE
        if exclude:
            names = [f":x{i}" for i in range(len(exclude))]
            params.update({f"x{i}": name for i, name in enumerate(exclude)})
            where = "" if queue is None else "AND queue = :queue "
            # A chunk worker's job without a partition (a batch callback) runs on its own.
            excluded = f"(worker NOT IN ({', '.join(names)}) OR chunk_key IS NULL)"
            sql = _PICK.format(queue=f"{where}AND {excluded}")
        # SQLite has no SKIP LOCKED; the transaction is the only writer (BEGIN IMMEDIATE).
        return self._claimed_jobs(self._claim_picked(c, sql, params), node, now)

    def _claim_picked(self, c: Connection, picked: str, params: dict[str, Any]) -> list[Any]:
        with self._cursor(c) as cur:
            rows: list[list[Any]] = loads(cur.execute(picked + PICKED_ROWS, params).fetchone()[0])
            if not rows:
                return rows
            ids = compact([row[0] for row in rows])
            cur.execute(CLAIM_IDS, {"ids": ids, "now": params["now"], "node": params["node"]})
            if cur.rowcount != len(rows):  # pragma: no cover - the transaction writes alone
                raise StorageError(f"claimed {cur.rowcount} of the {len(rows)} picked jobs")
        for row in rows:
            row[7] += 1  # the attempt this claim started
            if row[15] is not None:
                row[15] = bytes.fromhex(row[15])
        return rows

    def _rows(self, c: Connection, sql: str, params: dict[str, Any]) -> list[Any]:
        return self._driver_rows(c, sql, params)

    def _driver_rows(
        self, c: Connection, sql: str, params: Sequence[Any] | dict[str, Any]
    ) -> list[Any]:
        """Run a statement on the driver's cursor (named or positional parameters); return
        its rows."""
        with self._cursor(c) as cur:
            rows: list[Any] = cur.execute(sql, params).fetchall()
        return rows

    def _release_rows(
        self, c: Connection, ok: Sequence[int], now: datetime
    ) -> Sequence[Sequence[Any]]:
        # Every ack round of workflow steps runs this: positional parameters and a statement
        # text cached per count cost about half the Python time of named ones.
        return self._driver_rows(c, _release_sql(len(ok)), [ts(now), *ok])

    def _ack(self, c: Connection, acks: Sequence[Ack]) -> list[tuple[int, str | None, str | None]]:
        applied = []
        if len({ack.id for ack in acks}) != len(acks):
            # The same job twice: one statement each, so the first ack wins (as it would
            # have in its own transaction); UPDATE ... FROM would pick either.
            for ack in acks:
                applied += self._ack_rows(c, [ack])
            return applied
        groups, rest = split_completions(acks)
        for at, group in groups.items():
            for start in range(0, len(group), COMPLETIONS_PER_STATEMENT):
                applied += self._complete_rows(
                    c, at, group[start : start + COMPLETIONS_PER_STATEMENT]
                )
        for start in range(0, len(rest), ACKS_PER_STATEMENT):
            applied += self._ack_rows(c, rest[start : start + ACKS_PER_STATEMENT])
        return applied

    def _complete_rows(
        self, c: Connection, at: datetime, acks: Sequence[Ack]
    ) -> list[tuple[int, str | None, str | None]]:
        params: list[Any] = [ts(at)]  # before the values, as in the statement
        for ack in acks:
            params += (ack.id, ack.attempt)
        rows = ", ".join(["(?, ?)"] * len(acks))
        if has_follow_ups(acks):
            # Workflow steps or batch members: something follows, so their rows are needed.
            return self._applied(c, COMPLETE_MANY.format(rows=rows), params)
        with self._cursor(c) as cur:
            # Usually every job applies and none is in a workflow or batch: then one statement
            # that returns no rows (see the claims for why rows cost). Otherwise it is undone
            # and the statement that names what applied and what follows from it runs.
            cur.execute("SAVEPOINT flowpro_complete")
            cur.execute(COMPLETE_PLAIN.format(rows=rows), params)
            if cur.rowcount == len(acks):
                cur.execute("RELEASE flowpro_complete")
                return [(ack.id, None, None) for ack in acks]
            cur.execute("ROLLBACK TO flowpro_complete")
            cur.execute("RELEASE flowpro_complete")
        return self._applied(c, COMPLETE_MANY.format(rows=rows), params)

    def _ack_rows(
        self, c: Connection, acks: Sequence[Ack]
    ) -> list[tuple[int, str | None, str | None]]:
        params: list[Any] = []
        for ack in acks:
            params += (
                ack.id,
                ack.attempt,
                ack.state.value,
                ts(ack.at),
                ts(ack.scheduled_at),
                None if ack.errors is None else json.dumps(ack.errors),
                ack.max_attempts,
                ack.recorded,
            )
        sql = ACK_MANY.format(rows=", ".join([ACK_ROW] * len(acks)))
        return self._applied(c, sql, params)

    def _applied(
        self, c: Connection, sql: str, params: list[Any]
    ) -> list[tuple[int, str | None, str | None]]:
        """Run an ack statement on the driver's cursor; return its (id, workflow, batch) rows."""
        return [(row[0], row[1], row[2]) for row in self._driver_rows(c, sql, params)]


class _Watcher(threading.Thread):
    """Polls PRAGMA data_version on its own connection and calls back when it changes; and
    checkpoints the WAL in the background, at most every ``checkpoint_every`` seconds while
    other connections commit.

    Left to itself, SQLite checkpoints in the connection whose commit takes the WAL past 1,000
    pages: a producer then copies pages and waits for fsync in the middle of its claims. Here
    that work runs on this thread (which holds no GIL while SQLite works), and a passive
    checkpoint never blocks a writer, so the producers' commits stay short.
    """

    def __init__(
        self,
        database: str,
        callback: Any,
        interval: float = 0.005,
        checkpoint_every: float = 0.05,
    ) -> None:
        super().__init__(name="flowpro-sqlite-watcher", daemon=True)
        self._database = database
        self._callback = callback
        self._interval = interval
        self._checkpoint_every = checkpoint_every
        self._stopped = threading.Event()
        #: Set once the first data_version is read: commits after this wake the callback.
        self.watching = threading.Event()

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self._database, timeout=1.0, check_same_thread=False)
        except sqlite3.Error:
            return  # producers still poll
        try:
            last = None
            written = False  # commits since the last checkpoint
            next_checkpoint = 0.0
            while not self._stopped.wait(self._interval):
                try:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:
                    continue
                if last is not None and version != last:
                    self._callback()
                    written = True
                last = version
                self.watching.set()
                if written and time.monotonic() >= next_checkpoint:
                    written = False
                    next_checkpoint = time.monotonic() + self._checkpoint_every
                    with contextlib.suppress(sqlite3.Error):  # the writers' own checkpoints remain
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=1)


__all__ = ["JobState", "SQLiteStorage"]
