"""Chunk worker benchmark on SQLite and PostgreSQL.

Drains the same number of jobs with one node at concurrency 10 (``fp.run(until_idle=True)``),
through a plain worker (one job per ``process`` call) and through a ChunkWorker of size 100
(one ``process`` call per 100 jobs, one slot per chunk), and prints jobs/s and the ratio.

Each round uses a fresh database and drains both workers in it, alternating which goes first;
the median of the rounds is reported, so that a noisy machine skews both alike. Insert time is
not counted: all jobs are available before the node starts.

By default ``process`` does nothing, which measures flowpro's own cost per job. ``--call-ms``
makes every ``process`` call wait that long, like one round trip to a database or an API
that the plain worker pays per job and the chunk worker per chunk.

    python benchmarks/bench_chunk.py [--backends sqlite,postgres] [--jobs 10000] [--size 100]
                                     [--rounds 3] [--call-ms 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from _common import fresh_url

import flowpro

PG_URL = os.environ.get("FLOWPRO_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/test")
CONCURRENCY = 10
CALL_SECONDS = [0.0]  # the wait of every process() call (--call-ms)


def call() -> None:
    if CALL_SECONDS[0]:
        time.sleep(CALL_SECONDS[0])


class Plain(flowpro.Worker, queue="plain", name="bench.Plain"):
    def process(self, job: flowpro.Job) -> None:
        call()


def chunk_worker(size: int) -> type[flowpro.ChunkWorker]:
    # A chunk worker's process(jobs) cannot match Worker.process(job) for mypy.
    class Chunked(flowpro.ChunkWorker, queue="chunked", name="bench.Chunked", size=size):
        def process(self, jobs: list[flowpro.Job]) -> None:
            call()

    return Chunked


def drain(fp: flowpro.FlowPro, worker: type[flowpro.Worker], jobs: int) -> float:
    """Insert ``jobs`` jobs, then time one node draining them; return jobs/s."""
    for start in range(0, jobs, 5_000):
        fp.insert_all([worker.new({"i": i}) for i in range(start, min(jobs, start + 5_000))])
    began = time.perf_counter()
    fp.run(queues={worker.queue: CONCURRENCY}, until_idle=True)
    elapsed = time.perf_counter() - began
    done = len(fp.list_jobs(state="completed", worker=worker, limit=jobs + 1))
    assert done == jobs, f"{worker.__flowpro_name__}: {done} of {jobs} completed"
    return jobs / elapsed


def bench(
    backend: str, jobs: int, chunked: type[flowpro.ChunkWorker], rounds: int
) -> dict[str, float]:
    rates: dict[type[flowpro.Worker], list[float]] = {Plain: [], chunked: []}
    for round_no in range(rounds):
        order: list[type[flowpro.Worker]] = [Plain, chunked]
        if round_no % 2:
            order.reverse()
        with tempfile.TemporaryDirectory() as tmp:
            url, drop = fresh_url(backend, tmp)
            fp = flowpro.FlowPro(url, idle_check_interval=0.005, poll_interval=0.05)
            fp.migrate()
            try:
                for worker in order:
                    rates[worker].append(drain(fp, worker, jobs))
            finally:
                fp.close()
                if drop:
                    drop()
    plain, chunk = statistics.median(rates[Plain]), statistics.median(rates[chunked])
    return {
        "plain worker (jobs/s)": plain,
        f"chunk worker, size {chunked.chunk_size} (jobs/s)": chunk,
        "chunk / plain": chunk / plain,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--call-ms", type=float, default=0.0)
    args = parser.parse_args()
    CALL_SECONDS[0] = args.call_ms / 1000
    chunked = chunk_worker(args.size)
    results = {b: bench(b, args.jobs, chunked, args.rounds) for b in args.backends.split(",")}
    metrics = list(next(iter(results.values())))
    work = f"{args.call_ms:g} ms per process() call" if args.call_ms else "no-op"
    print(
        f"draining {args.jobs:,} jobs ({work}), one node, concurrency {CONCURRENCY}, "
        f"median of {args.rounds} rounds"
    )
    print(f"{'metric':36}" + "".join(f"{b:>14}" for b in results))
    for m in metrics:
        print(f"{m:36}" + "".join(f"{results[b][m]:>14,.1f}" for b in results))


if __name__ == "__main__":
    main()
