"""Workflow benchmarks: fan-out/fan-in latency and throughput against plain jobs.

1. ``1 -> 100 -> 1`` on one idle node: wall time from ``fp.insert(wf)`` (issued by another
   FlowPro instance, so PostgreSQL wakes the node by NOTIFY) to the start of the join step.
2. ``1 -> 10,000 -> 1`` run time (and insert + run), relative to draining 10,002 plain jobs in
   the same run (one node, concurrency 10, ``fp.run(until_idle=True)``). Each measurement
   uses a fresh database and the order alternates, so neither runs on a table the other has
   churned; medians of ``--throughput-rounds``.

    python benchmarks/bench_workflow.py [--backends postgres,sqlite] [--width 10000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import fresh_url

import flowpro
from flowpro import Workflow

JOIN_STARTED: dict[str, float] = {}


class Step(flowpro.Worker, queue="wf", name="bench.Step"):
    def process(self, job: flowpro.Job) -> None:
        return None


class Join(flowpro.Worker, queue="wf", name="bench.Join"):
    def process(self, job: flowpro.Job) -> None:
        JOIN_STARTED[job.meta["workflow_id"]] = time.perf_counter()


class Plain(flowpro.Worker, queue="plain", name="bench.Plain"):
    def process(self, job: flowpro.Job) -> None:
        return None


def fan(width: int) -> Workflow:
    wf = Workflow(name=f"fan-{width}").add("root", Step.new({}))
    for i in range(width):
        wf.add(f"s{i}", Step.new({}), deps=["root"])
    return wf.add("join", Join.new({}), deps=[f"s{i}" for i in range(width)])


def latency(url: str, rounds: int) -> list[float]:
    fp = flowpro.FlowPro(url, poll_interval=1.0)
    other = flowpro.FlowPro(url)
    node = threading.Thread(target=fp.run, kwargs={"queues": {"wf": 10}}, daemon=True)
    node.start()
    time.sleep(0.5)
    out = []
    try:
        for _ in range(rounds):
            wf = fan(100)
            t0 = time.perf_counter()
            other.insert(wf)
            deadline = time.monotonic() + 30
            while wf.workflow_id not in JOIN_STARTED and time.monotonic() < deadline:
                time.sleep(0.0005)
            out.append((JOIN_STARTED[wf.workflow_id] - t0) * 1000)
            time.sleep(0.05)
    finally:
        fp.stop()
        node.join()
        other.close()
        fp.close()
    return out


def drain_plain(url: str, width: int) -> tuple[float, float]:
    """Drain ``width + 2`` plain jobs (inserted beforehand); return (0, seconds)."""
    fp = flowpro.FlowPro(url, idle_check_interval=0.005)
    try:
        fp.insert_all([Plain.new({}) for _ in range(width + 2)])
        t = time.perf_counter()
        fp.run(queues={"plain": 10}, until_idle=True)
        return 0.0, time.perf_counter() - t
    finally:
        fp.close()


def run_fan(url: str, width: int) -> tuple[float, float]:
    """Insert a 1 -> width -> 1 workflow, then run it; return (insert seconds, run seconds)."""
    fp = flowpro.FlowPro(url, idle_check_interval=0.005)
    try:
        wf = fan(width)
        t = time.perf_counter()
        fp.insert(wf)
        inserted = time.perf_counter() - t
        t = time.perf_counter()
        fp.run(queues={"wf": 10}, until_idle=True)
        ran = time.perf_counter() - t
        status = fp.workflow_status(wf.workflow_id)
        assert status.state == "completed", status
        return inserted, ran
    finally:
        fp.close()


def throughput(backend: str, width: int, rounds: int) -> dict[str, list[float]]:
    """Each measurement on a fresh database, the order alternating between rounds, so that
    neither side runs on a table (and indexes) the other has already churned."""
    out: dict[str, list[float]] = {"plain": [], "insert": [], "run": []}
    for number in range(rounds):
        order = ("plain", "fan") if number % 2 == 0 else ("fan", "plain")
        for kind in order:
            with tempfile.TemporaryDirectory() as tmp:
                url, drop = fresh_url(backend, tmp)
                flowpro.FlowPro(url).migrate()
                try:
                    if kind == "plain":
                        out["plain"].append(drain_plain(url, width)[1])
                    else:
                        inserted, ran = run_fan(url, width)
                        out["insert"].append(inserted)
                        out["run"].append(ran)
                finally:
                    if drop:
                        drop()  # type: ignore[operator]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--width", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--throughput-rounds", type=int, default=6)
    args = parser.parse_args()
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            url, drop = fresh_url(backend, tmp)
            flowpro.FlowPro(url).migrate()
            try:
                lat = latency(url, args.rounds)
            finally:
                if drop:
                    drop()  # type: ignore[operator]
        runs = throughput(backend, args.width, args.throughput_rounds)
        plain, insert, run = (statistics.median(runs[k]) for k in ("plain", "insert", "run"))
        print(
            f"{backend}: 1->100->1 insert-to-join-start ms: median {statistics.median(lat):.1f}"
            f", min {min(lat):.1f}, max {max(lat):.1f} ({len(lat)} rounds)"
        )
        print(
            f"{backend}: {args.width + 2} plain jobs drained in {plain:.2f}s; 1->{args.width}->1 "
            f"inserted in {insert:.2f}s and run in {run:.2f}s (medians of "
            f"{args.throughput_rounds}); run / plain {run / plain:.2f}x, "
            f"(insert + run) / plain {(insert + run) / plain:.2f}x"
        )


if __name__ == "__main__":
    main()
