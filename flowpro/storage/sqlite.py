"""The SQLite adapter: WAL, busy timeout, BEGIN IMMEDIATE writes, UPDATE ... RETURNING claims."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from flowpro.errors import ConfigError
from flowpro.job import Ack, Job, JobState
from flowpro.storage._sql import ACK_SET, JOB_COLUMNS, SqlStorage

BUSY_TIMEOUT_MS = 30_000
SYNC_MODES = {"off", "normal", "full", "extra"}

_CLAIM = (
    "UPDATE flowpro_jobs SET state = 'executing', attempt = attempt + 1, "
    "attempted_at = :now, attempted_by = :node WHERE id IN ("
    "SELECT id FROM flowpro_jobs WHERE state = 'available' {queue} "
    "ORDER BY priority, scheduled_at, id LIMIT :demand) "
    f"RETURNING {JOB_COLUMNS}"
)
CLAIM_QUEUE = _CLAIM.format(queue="AND queue = :queue")
CLAIM_ANY = _CLAIM.format(queue="")
ACK = (
    f"UPDATE flowpro_jobs SET {ACK_SET.format(v=':', t='', errors=':errors')} "
    "WHERE id = :id AND attempt = :attempt AND state = 'executing' "
    "RETURNING id, workflow_id, batch_id"
)
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


def ts(value: datetime | None) -> str | None:
    """Return a datetime as fixed-width UTC text, so that text order is time order."""
    if value is None:
        return None
    if value.tzinfo is not None and value.utcoffset():
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


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

    # Dialect hooks

    def _ts(self, value: datetime | None) -> Any:
        return ts(value)

    def _dt(self, value: Any) -> datetime | None:
        if value is None:
            return None
        return datetime.fromisoformat(value).replace(tzinfo=UTC)

    def _json_out(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str | bytes) else value

    def _json_append(self, column: str, name: str) -> str:
        return f"json_insert({column}, '$[#]', json(:{name}))"

    def _is_transient(self, exc: DBAPIError) -> bool:
        orig = exc.orig
        return isinstance(orig, sqlite3.OperationalError) and (
            "locked" in str(orig) or "busy" in str(orig)
        )

    # Inserting, claiming, acking

    def _reserve_ids(self, c: Connection, count: int) -> list[int]:
        cur = c.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            # Like nextval: move the AUTOINCREMENT sequence on by `count` and take those ids,
            # so an encrypted job's ciphertext can be bound to its id before it is written.
            cur.execute(ENSURE_SEQUENCE)
            last: int = cur.execute(RESERVE_IDS, (count,)).fetchone()[0]
        finally:
            cur.close()
        return list(range(last - count + 1, last + 1))

    def _write_jobs(self, c: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        cur = c.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cur.executemany(INSERT, rows)
        finally:
            cur.close()

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
        sql = CLAIM_ANY if queue is None else CLAIM_QUEUE
        if exclude:
            names = [f":x{i}" for i in range(len(exclude))]
            params.update({f"x{i}": name for i, name in enumerate(exclude)})
            where = "" if queue is None else "AND queue = :queue "
            sql = _CLAIM.format(queue=f"{where}AND worker NOT IN ({', '.join(names)})")
        cur = c.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            # SQLite has no SKIP LOCKED; one UPDATE ... RETURNING is atomic (single writer).
            rows = cur.execute(sql, params).fetchall()
        finally:
            cur.close()
        jobs = [self._job(row) for row in rows]
        jobs.sort(key=lambda j: (j.priority, j.scheduled_at, j.id))
        return jobs

    def _ack(self, c: Connection, acks: Sequence[Ack]) -> list[tuple[int, str | None, str | None]]:
        applied = []
        cur = c.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            for ack in acks:
                row = cur.execute(
                    ACK,
                    {
                        "id": ack.id,
                        "attempt": ack.attempt,
                        "state": ack.state.value,
                        "at": ts(ack.at),
                        "scheduled_at": ts(ack.scheduled_at),
                        "errors": None if ack.errors is None else json.dumps(ack.errors),
                        "max_attempts": ack.max_attempts,
                        "recorded": ack.recorded,
                    },
                ).fetchone()
                if row is not None:
                    applied.append((row[0], row[1], row[2]))
        finally:
            cur.close()
        return applied


__all__ = ["JobState", "SQLiteStorage"]
