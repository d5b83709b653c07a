"""Pro worker overhead: drain throughput of structured + recorded + encrypted no-op jobs
relative to plain no-op jobs, in the same run, on SQLite and PostgreSQL.

Each round inserts ``--jobs`` plain and ``--jobs`` Pro jobs (bulk), then drains each queue with
one node at concurrency 10 (``fp.run(queues=..., until_idle=True)``); the order of the two
queues alternates between rounds. Prints jobs/s for each, and pro/plain (target >= 0.7).

    python benchmarks/bench_pro.py [--backends sqlite,postgres] [--jobs 8000] [--rounds 5]

Five rounds by default: on a shared machine single rounds of this ratio spread by +-0.1.
    python benchmarks/bench_pro.py --profile pro --backends sqlite   # cProfile one drain
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from typing import Any

from _common import fresh_url
from pydantic import BaseModel

import flowpro
from flowpro.codecs.encrypted import generate_key

PG_URL = os.environ.get("FLOWPRO_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/test")
KEY = generate_key()
CONCURRENCY = 10


def bench_key() -> str:
    """The benchmark's key source (asked on every seal and open, as in production)."""
    return KEY


class NoopArgs(BaseModel):
    n: int
    name: str


class PlainNoop(flowpro.Worker, queue="plain", name="bench.PlainNoop"):
    def process(self, job: flowpro.Job) -> Any:
        return {"ok": True, "n": job.args["n"]}  # not recorded: dropped


class ProNoop(
    flowpro.Worker,
    queue="pro",
    name="bench.ProNoop",
    structured=NoopArgs,
    recorded=True,
    encrypted=dict(key=bench_key),
):
    def process(self, job: flowpro.Job) -> Any:
        return {"ok": True, "n": job.args.n}  # recorded: packed, compressed, sealed


WORKERS = {"plain": PlainNoop, "pro": ProNoop}


def insert(fp: flowpro.FlowPro, kind: str, jobs: int) -> float:
    """Bulk-insert ``jobs`` jobs of one kind; return jobs/s (building + inserting)."""
    worker = WORKERS[kind]
    started = time.perf_counter()
    for start in range(0, jobs, 1_000):
        fp.insert_all(
            worker.new({"n": i, "name": f"user-{i}"})
            for i in range(start, min(jobs, start + 1_000))
        )
    return jobs / (time.perf_counter() - started)


def drain(fp: flowpro.FlowPro, kind: str, jobs: int) -> float:
    """Run one node on the kind's queue until idle; return jobs/s."""
    started = time.perf_counter()
    fp.run(queues={kind: CONCURRENCY}, until_idle=True)
    elapsed = time.perf_counter() - started
    done = len(fp.list_jobs(state="completed", queue=kind, limit=10 * jobs))
    assert done >= jobs, (kind, done)
    return jobs / elapsed


def bench(backend: str, jobs: int, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = fresh_url(backend, tmp)
        fp = flowpro.FlowPro(url, idle_check_interval=0.005, poll_interval=0.05)
        fp.migrate()
        try:
            for number in range(rounds):
                order = ("plain", "pro") if number % 2 == 0 else ("pro", "plain")
                for kind in order:
                    out.setdefault(f"insert {kind} (jobs/s)", []).append(insert(fp, kind, jobs))
                for kind in order:
                    out.setdefault(f"drain {kind} (jobs/s)", []).append(drain(fp, kind, jobs))
                out.setdefault("drain pro / plain", []).append(
                    out["drain pro (jobs/s)"][-1] / out["drain plain (jobs/s)"][-1]
                )
            # Spot-check that the Pro jobs really were encrypted and recorded.
            job = fp.list_jobs(queue="pro", state="completed", limit=1)[0]
            assert list(job.args) == ["__flowpro_sealed__"], job.args
            assert ProNoop.fetch_recorded(job)["ok"] is True
        finally:
            fp.close()
            if drop:
                drop()
    return out


def profile(backend: str, kind: str, jobs: int) -> None:
    """cProfile one drain of ``kind`` (the node's threads included) and print the top."""
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = fresh_url(backend, tmp)
        fp = flowpro.FlowPro(url, idle_check_interval=0.005, poll_interval=0.05)
        fp.migrate()
        try:
            insert(fp, kind, jobs)
            profiler = cProfile.Profile()
            # Threads are profiled through threading.setprofile_all_threads (3.12+), else only
            # the executor path run in this thread by fp.drain() is.
            if sys.version_info >= (3, 12):
                import threading

                threading.setprofile_all_threads(profiler.dispatcher)  # type: ignore[attr-defined]
                drain(fp, kind, jobs)
                threading.setprofile_all_threads(None)  # type: ignore[attr-defined]
            else:
                profiler.enable()
                fp.drain(kind)
                profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        finally:
            fp.close()
            if drop:
                drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--jobs", type=int, default=8_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", choices=["plain", "pro"], default=None)
    args = parser.parse_args()
    if args.profile:
        for backend in args.backends.split(","):
            profile(backend, args.profile, args.jobs)
        return
    results = {b: bench(b, args.jobs, args.rounds) for b in args.backends.split(",")}
    metrics = list(next(iter(results.values())))
    print(f"{args.jobs:,} jobs of each kind, {args.rounds} round(s); median (min-max) per backend")
    print(f"{'metric':24}" + "".join(f"{b:>28}" for b in results))
    for m in metrics:
        cells = []
        for b in results:
            values = results[b][m]
            fmt = ".2f" if "/" in m and "jobs" not in m else ",.0f"
            cells.append(
                f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
            )
        print(f"{m:24}" + "".join(f"{c:>28}" for c in cells))


if __name__ == "__main__":
    main()
