"""Workflow benchmarks: fan-out/fan-in latency and throughput against plain jobs.

1. ``1 -> 100 -> 1`` on one idle node: wall time from ``fp.insert(wf)`` (issued by another
   FlowPro instance, so PostgreSQL wakes the node by NOTIFY) to the start of the join step.
2. ``1 -> 10,000 -> 1`` total time, relative to draining 10,002 plain jobs in the same run
   (one node, concurrency 10, ``fp.run(until_idle=True)``).

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


def throughput(url: str, width: int) -> tuple[float, float]:
    fp = flowpro.FlowPro(url, idle_check_interval=0.005)
    try:
        fp.insert_all([Plain.new({}) for _ in range(width + 2)])
        t = time.perf_counter()
        fp.run(queues={"plain": 10}, until_idle=True)
        plain = time.perf_counter() - t
        wf = fan(width)
        t = time.perf_counter()
        fp.insert(wf)
        fp.run(queues={"wf": 10}, until_idle=True)
        graph = time.perf_counter() - t
        status = fp.workflow_status(wf.workflow_id)
        assert status.state == "completed", status
    finally:
        fp.close()
    return plain, graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--width", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            url, drop = fresh_url(backend, tmp)
            flowpro.FlowPro(url).migrate()
            try:
                lat = latency(url, args.rounds)
                plain, graph = throughput(url, args.width)
            finally:
                if drop:
                    drop()  # type: ignore[operator]
        print(
            f"{backend}: 1->100->1 insert-to-join-start ms: median {statistics.median(lat):.1f}"
            f", min {min(lat):.1f}, max {max(lat):.1f} ({len(lat)} rounds)"
        )
        print(
            f"{backend}: {args.width + 2} plain jobs {plain:.2f}s; 1->{args.width}->1 "
            f"workflow {graph:.2f}s (insert + run); ratio {graph / plain:.2f}x"
        )


if __name__ == "__main__":
    main()
