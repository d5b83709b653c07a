"""Core engine benchmarks on SQLite and PostgreSQL.

Measures, per backend: single and bulk enqueue (jobs/s), draining 10,000 no-op jobs with one
node at concurrency 10 (jobs/s), and enqueue -> start latency (p50/p99) with an idle node,
where the insert comes from another FlowPro instance (so PostgreSQL wakes the node by
LISTEN/NOTIFY, as a separate process would).

    python benchmarks/bench_core.py [--backends sqlite,postgres] [--jobs 10000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

from _common import fresh_url

import flowpro

PG_URL = os.environ.get("FLOWPRO_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/test")

STARTS: dict[int, float] = {}


class Noop(flowpro.Worker, queue="bench", name="bench.Noop"):
    def process(self, job: flowpro.Job) -> None:
        return None


class Ping(flowpro.Worker, queue="ping", name="bench.Ping"):
    def process(self, job: flowpro.Job) -> None:
        STARTS[job.args["n"]] = time.perf_counter()


def bench(backend: str, jobs: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = fresh_url(backend, tmp)
        fp = flowpro.FlowPro(url, idle_check_interval=0.005, poll_interval=0.05)
        fp.migrate()
        try:
            # Single enqueue
            n_single = 1_000
            t = time.perf_counter()
            for i in range(n_single):
                fp.insert(Noop.new({"i": i}))
            out["single enqueue (jobs/s)"] = n_single / (time.perf_counter() - t)
            fp.drain()

            # Bulk enqueue
            batch = [Noop.new({"i": i}) for i in range(jobs)]
            t = time.perf_counter()
            fp.insert_all(batch)
            out["bulk enqueue (jobs/s)"] = jobs / (time.perf_counter() - t)

            # Drain with one node at concurrency 10
            t = time.perf_counter()
            fp.run(queues={"bench": 10}, until_idle=True)
            elapsed = time.perf_counter() - t
            done = fp.storage.count_jobs().get("completed", 0)
            assert done == jobs + n_single, done
            out["drain 10 concurrent (jobs/s)"] = jobs / elapsed

            # Latency with an idle node, inserts from another instance
            other = flowpro.FlowPro(url)
            node = threading.Thread(target=fp.run, kwargs={"queues": {"ping": 10}}, daemon=True)
            node.start()
            time.sleep(0.5)
            lat = []
            for n in range(300):
                t0 = time.perf_counter()
                other.insert(Ping.new({"n": n}))
                deadline = time.monotonic() + 5
                while n not in STARTS and time.monotonic() < deadline:
                    time.sleep(0.0001)
                lat.append((STARTS[n] - t0) * 1000)
                time.sleep(0.005)
            fp.stop()
            node.join()
            other.close()
            lat.sort()
            out["latency p50 (ms)"] = statistics.median(lat)
            out["latency p99 (ms)"] = lat[int(len(lat) * 0.99) - 1]
            STARTS.clear()
        finally:
            fp.close()
            if drop:
                drop()  # type: ignore[operator]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    results = {b: bench(b, args.jobs) for b in args.backends.split(",")}
    metrics = list(next(iter(results.values())))
    print(f"{'metric':32}" + "".join(f"{b:>14}" for b in results))
    for m in metrics:
        print(f"{m:32}" + "".join(f"{results[b][m]:>14,.1f}" for b in results))


if __name__ == "__main__":
    main()
