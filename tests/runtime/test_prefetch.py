"""Prefetching: producers of fast jobs claim ahead; nothing claimed ahead is run late or lost."""

from __future__ import annotations

import threading
import time

import flowpro
from flowpro import JobState
from flowpro._runtime import producer
from tests.conftest import eventually
from tests.runtime.nodes import running

RUNS: list[int] = []
RUNS_LOCK = threading.Lock()
GATE = threading.Event()


class Quick(flowpro.Worker, queue="prefetch", name="tests.prefetch.Quick"):
    def process(self, job: flowpro.Job) -> None:
        with RUNS_LOCK:
            RUNS.append(job.id)


class Gated(flowpro.Worker, queue="prefetch-gated", name="tests.prefetch.Gated"):
    def process(self, job: flowpro.Job) -> None:
        with RUNS_LOCK:
            RUNS.append(job.id)
        if job.args.get("block"):
            GATE.wait(10)


def test_a_node_with_fast_jobs_claims_ahead_and_runs_every_job_exactly_once(fp):
    RUNS.clear()
    jobs = fp.insert_all([Quick.new({"i": i}) for i in range(600)])

    fp.run(queues={"prefetch": 4}, until_idle=True)

    assert sorted(RUNS) == sorted(j.id for j in jobs)
    assert fp.storage.count_jobs() == {"completed": 600}


def test_jobs_claimed_ahead_are_handed_back_at_shutdown_and_never_started_after_it(fp):
    RUNS.clear()
    GATE.clear()
    with running(fp, queues={"prefetch-gated": 2}) as thread:
        # Teach the producer that jobs are fast, so that it prefetches.
        fp.insert_all([Gated.new({}) for _ in range(40)])
        eventually(lambda: fp.storage.count_jobs().get("completed") == 40)
        node = fp.node
        assert node is not None
        blockers = fp.insert_all([Gated.new({"block": True}) for _ in range(2)])
        waiting = fp.insert_all([Gated.new({}) for _ in range(20)])
        # Started, not only claimed: a job claimed ahead is executing in the table too.
        eventually(lambda: {b.id for b in blockers} <= set(RUNS))
        started_before_stop = len(RUNS)
        fp.stop()
        time.sleep(0.2)
        GATE.set()
        thread.finish()

    ran_after = RUNS[started_before_stop:]
    assert ran_after == []
    states = {fp.get_job(j.id).state for j in waiting}
    assert states <= {JobState.AVAILABLE, JobState.COMPLETED}
    assert fp.storage.count_jobs().get("executing", 0) == 0


def test_a_job_claimed_ahead_that_waits_too_long_is_handed_back(fp, monkeypatch):
    RUNS.clear()
    GATE.clear()
    monkeypatch.setattr(producer, "READY_MAX_WAIT", 0.2)
    with running(fp, queues={"prefetch-gated": 1}):
        fp.insert_all([Gated.new({}) for _ in range(30)])
        eventually(lambda: fp.storage.count_jobs().get("completed") == 30)
        blocker, *queued = fp.insert_all(
            [Gated.new({"block": True})] + [Gated.new({}) for _ in range(3)]
        )
        eventually(lambda: fp.get_job(blocker.id).state is JobState.EXECUTING)
        time.sleep(0.6)
        # The single slot is busy: the job claimed ahead of it went back to the queue as if
        # never claimed (its attempt given back, so batch and retry counts are untouched).
        rows = [fp.get_job(j.id) for j in queued]
        handed_back = [r for r in rows if r.attempted_by is not None]
        assert len(handed_back) == 1
        assert handed_back[0].state is JobState.AVAILABLE
        assert handed_back[0].attempt == 0
        assert handed_back[0].max_attempts == Gated.max_attempts
        assert all(r.state is JobState.AVAILABLE for r in rows)
        GATE.set()
        eventually(lambda: all(fp.get_job(j.id).state is JobState.COMPLETED for j in queued))
