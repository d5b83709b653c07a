"""SQLite only: how one process's writers take turns, and who checkpoints the WAL."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import flowpro
from flowpro.job import Ack, JobState, utcnow
from flowpro.storage.sqlite import SQLiteStorage, _Watcher
from tests.storage.helpers import new_job


def test_storages_of_one_file_share_a_write_lock_and_other_files_have_their_own(tmp_path):
    first = SQLiteStorage(f"sqlite:///{tmp_path}/a.db")
    same = SQLiteStorage(f"sqlite:///{tmp_path}/../{tmp_path.name}/a.db")
    other = SQLiteStorage(f"sqlite:///{tmp_path}/b.db")
    try:
        assert first._write_gate() is same._write_gate()
        assert first._write_gate() is not other._write_gate()
    finally:
        for storage in (first, same, other):
            storage.close()


def test_a_child_forked_while_a_thread_writes_gets_a_free_write_lock(tmp_path):
    storage = SQLiteStorage(f"sqlite:///{tmp_path}/fork.db")
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with storage._write_gate():
            held.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait(5)
    try:
        pid = os.fork()
        if pid == 0:  # the child: the lock its parent's thread holds must not be held here
            got = storage._write_gate().acquire(timeout=2)
            os._exit(0 if got else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join()
        storage.close()

    assert os.waitstatus_to_exitcode(status) == 0


def test_writers_of_two_storages_on_one_file_take_turns_without_losing_a_write(tmp_path):
    url = f"sqlite:///{tmp_path}/turns.db"
    apps = [flowpro.FlowPro(url), flowpro.FlowPro(url)]
    apps[0].migrate()
    errors: list[BaseException] = []

    def insert(app: flowpro.FlowPro, start: int) -> None:
        try:
            for i in range(start, start + 100):
                app.storage.insert_jobs([new_job({"i": i})])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=insert, args=(apps[n % 2], n * 100)) for n in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seen = sorted(j.args["i"] for j in apps[1].list_jobs(limit=1_000))
    finally:
        for app in apps:
            app.close()

    assert errors == []
    assert seen == list(range(600))


def _wal_size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def _write_pages(conn: sqlite3.Connection, rows: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO t (x) VALUES (?)", [(os.urandom(500),) for _ in range(rows)])
    conn.execute("COMMIT")


def test_the_watcher_checkpoints_the_wal_so_writers_reuse_it_instead_of_growing_it(tmp_path):
    # The writer never checkpoints itself (wal_autocheckpoint=0). A WAL that was checkpointed
    # is written again from its start, so a second batch of writes leaves its size as it was;
    # without a checkpoint the second batch is appended and the file grows.
    path = tmp_path / "wal.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (x BLOB)")
    wakes: list[int] = []
    watcher = _Watcher(str(path), lambda: wakes.append(1), checkpoint_every=0.01)
    watcher.start()
    try:
        # Commits before the watcher's first look are its baseline, not a change: wait for it.
        assert watcher.watching.wait(5), "the watcher never read the database"
        _write_pages(writer, 400)
        before = _wal_size(path)
        deadline = time.monotonic() + 5
        while not wakes and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # a few watcher rounds: the checkpoint follows the wake-up
        _write_pages(writer, 400)
        after = _wal_size(path)
    finally:
        watcher.stop()
        writer.close()

    assert wakes, "the watcher saw no commit"
    assert before > 200_000
    assert after <= before * 1.1


def test_without_the_watcher_the_same_writes_grow_the_wal(tmp_path):
    # The control for the test above: the size check can fail.
    path = tmp_path / "wal.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (x BLOB)")
    try:
        _write_pages(writer, 400)
        before = _wal_size(path)
        time.sleep(0.2)
        _write_pages(writer, 400)
        after = _wal_size(path)
    finally:
        writer.close()

    assert after > before * 1.5


def test_a_chunks_plain_completions_take_one_statement_that_returns_no_rows(tmp_path, monkeypatch):
    # The statement that returns (id, workflow, batch) rows is the fallback for completions
    # where something follows; plain ones must not reach it (its row count decides).
    storage = SQLiteStorage(f"sqlite:///{tmp_path}/complete.db")
    storage.migrate()
    fallbacks: list[str] = []
    applied = SQLiteStorage._applied

    def spy(self: SQLiteStorage, c: object, sql: str, params: list[object]) -> object:
        fallbacks.append(sql)
        return applied(self, c, sql, params)  # type: ignore[arg-type]

    monkeypatch.setattr(SQLiteStorage, "_applied", spy)
    try:
        storage.insert_jobs([new_job({"i": i}) for i in range(20)])
        now = utcnow()
        jobs = storage.fetch_jobs("q", demand=20, node="n1", now=now)
        done = storage.ack_jobs([Ack(j.id, j.attempt, JobState.COMPLETED, now) for j in jobs])
        states = {j.state for j in storage.list_jobs(limit=100)}
    finally:
        storage.close()

    assert sorted(done) == sorted(j.id for j in jobs)
    assert states == {JobState.COMPLETED}
    assert fallbacks == []


def test_a_chunk_claim_reads_its_partition_in_claim_order_from_the_partition_index(tmp_path):
    # SQLite's side of the PostgreSQL plan test: the partition's jobs through the chunk index
    # (queue, worker, chunk_key, then claim order), the queue's head through the claim index.
    from flowpro.storage.sqlite import PICKED_ROWS

    storage = SQLiteStorage(f"sqlite:///{tmp_path}/plan.db")
    storage.migrate()
    try:
        picked, params = storage._chunk_pick("chunked", "w.Chunked", 100, None, "n1", utcnow())
        with storage.engine.connect() as conn:
            raw = conn.connection.driver_connection
            plan = [
                row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + picked + PICKED_ROWS, params)
            ]
    finally:
        storage.close()

    assert any(
        "flowpro_jobs_chunk_idx (queue=? AND worker=? AND chunk_key=?)" in line for line in plan
    ), plan
    assert any("flowpro_jobs_claim_idx (queue=?)" in line for line in plan), plan
