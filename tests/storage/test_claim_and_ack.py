"""Storage contract: claiming jobs (order, demand, concurrency) and acking outcomes (fencing)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

import flowpro
from flowpro.job import JobState, utcnow
from tests.storage.helpers import Noop, Other, ack, ago, claim_one, later, new_job

# Claiming


def test_fetch_claims_a_job_for_the_node_and_starts_an_attempt(storage):
    saved = storage.insert_jobs([new_job()])[0]
    now = utcnow()

    jobs = storage.fetch_jobs("q", demand=5, node="node-a", now=now)

    assert [j.id for j in jobs] == [saved.id]
    job = jobs[0]
    assert job.state is JobState.EXECUTING
    assert job.attempt == 1
    assert job.attempted_by == "node-a"
    assert job.attempted_at == now
    assert storage.get_job(saved.id) == job


def test_fetch_takes_best_priority_first_then_oldest_scheduled_then_lowest_id(storage):
    base = ago(100)
    inserted = storage.insert_jobs(
        [
            new_job({"n": "p5-old"}, priority=5, scheduled_at=base),
            new_job({"n": "p0-new"}, priority=0, scheduled_at=base + timedelta(seconds=50)),
            new_job({"n": "p0-old"}, priority=0, scheduled_at=base),
            new_job({"n": "p9"}, priority=9, scheduled_at=base - timedelta(seconds=50)),
            new_job({"n": "p0-old-2"}, priority=0, scheduled_at=base),
            new_job({"n": "p5-new"}, priority=5, scheduled_at=base + timedelta(seconds=10)),
        ]
    )
    assert len(inserted) == 6

    first = storage.fetch_jobs("q", demand=4, node="n", now=utcnow())
    rest = storage.fetch_jobs("q", demand=4, node="n", now=utcnow())

    assert [j.args["n"] for j in first] == ["p0-old", "p0-old-2", "p0-new", "p5-old"]
    assert [j.args["n"] for j in rest] == ["p5-new", "p9"]


def test_fetch_claims_at_most_the_demand(storage):
    storage.insert_jobs([new_job({"i": i}) for i in range(5)])

    sizes = [len(storage.fetch_jobs("q", demand=3, node="n", now=utcnow())) for _ in range(3)]

    assert sizes == [3, 2, 0]


def test_fetch_skips_scheduled_executing_and_finished_jobs(storage):
    storage.insert_jobs([new_job(schedule_in=60)])
    running = storage.insert_jobs([new_job()])[0]
    claim_one(storage)
    done = storage.insert_jobs([new_job()])[0]
    storage.ack_jobs([ack(claim_one(storage), JobState.COMPLETED)])

    assert storage.fetch_jobs("q", demand=10, node="n2", now=utcnow()) == []
    assert storage.get_job(running.id).attempted_by == "n1"
    assert storage.get_job(done.id).state is JobState.COMPLETED


def test_fetch_only_claims_from_the_queue_asked_for(storage):
    storage.insert_jobs([new_job({"n": 1}), Other.new({"n": 2})])

    mine = storage.fetch_jobs("other", demand=10, node="n", now=utcnow())

    assert [j.args for j in mine] == [{"n": 2}]
    assert storage.fetch_jobs("missing", demand=10, node="n", now=utcnow()) == []


def test_fetch_without_a_queue_claims_across_queues_in_priority_order(storage):
    storage.insert_jobs(
        [
            new_job({"n": "q-low"}, priority=5),
            Other.new({"n": "other-high"}, priority=1),
            new_job({"n": "q-high"}, priority=0, queue="third"),
        ]
    )

    jobs = storage.fetch_jobs(None, demand=10, node="n", now=utcnow())

    assert [j.args["n"] for j in jobs] == ["q-high", "other-high", "q-low"]
    assert {j.queue for j in jobs} == {"q", "other", "third"}


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_claimers_never_get_the_same_job(storage, round_):
    total = 300
    storage.insert_jobs([new_job({"i": i}) for i in range(total)])
    claimed: dict[str, list[int]] = {}
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def claimer(node: str) -> None:
        got = claimed.setdefault(node, [])
        try:
            start.wait()
            while True:
                jobs = storage.fetch_jobs("q", demand=7, node=node, now=utcnow())
                if not jobs:
                    return
                got.extend(j.id for j in jobs)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"node-{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert errors == []
    every = [i for ids in claimed.values() for i in ids]
    assert len(every) == total
    assert len(set(every)) == total
    for node, ids in claimed.items():
        assert all(storage.get_job(i).attempted_by == node for i in ids[:5])


# Acking


def test_a_completed_ack_finishes_the_job_and_stores_the_recorded_bytes(storage):
    job = storage.insert_jobs([new_job()])[0]
    running = claim_one(storage)

    applied = storage.ack_jobs([ack(running, JobState.COMPLETED, recorded=b"\x00\x01out")])

    done = storage.get_job(job.id)
    assert applied == [job.id]
    assert done.state is JobState.COMPLETED
    assert done.completed_at is not None and abs(done.completed_at - utcnow()) < timedelta(5)
    assert done.recorded == b"\x00\x01out"
    assert done.errors == [] and done.attempt == 1
    assert done.discarded_at is None and done.cancelled_at is None


def test_a_retryable_ack_reschedules_the_job_and_keeps_its_errors(storage):
    job = storage.insert_jobs([new_job()])[0]
    running = claim_one(storage)
    retry_at = later(30)
    errors = [{"attempt": 1, "at": utcnow().isoformat(), "kind": "error", "error": "boom"}]

    applied = storage.ack_jobs(
        [ack(running, JobState.RETRYABLE, scheduled_at=retry_at, errors=errors)]
    )

    read = storage.get_job(job.id)
    assert applied == [job.id]
    assert read.state is JobState.RETRYABLE
    assert read.scheduled_at == retry_at
    assert read.errors == errors
    assert read.completed_at is None


def test_a_discarded_ack_gives_up_on_the_job(storage):
    job = storage.insert_jobs([new_job()])[0]
    running = claim_one(storage)
    errors = [{"attempt": 1, "at": utcnow().isoformat(), "kind": "discard", "error": "bad"}]

    storage.ack_jobs([ack(running, JobState.DISCARDED, errors=errors)])

    read = storage.get_job(job.id)
    assert read.state is JobState.DISCARDED
    assert read.discarded_at is not None
    assert read.errors == errors


def test_a_cancelled_ack_stops_the_job(storage):
    job = storage.insert_jobs([new_job()])[0]
    running = claim_one(storage)

    storage.ack_jobs([ack(running, JobState.CANCELLED)])

    read = storage.get_job(job.id)
    assert read.state is JobState.CANCELLED
    assert read.cancelled_at is not None
    assert read.errors == []


def test_a_snooze_ack_schedules_the_job_and_gives_the_attempt_back(storage):
    job = storage.insert_jobs([new_job(max_attempts=3)])[0]
    running = claim_one(storage)
    at = later(45)

    storage.ack_jobs([ack(running, JobState.SCHEDULED, scheduled_at=at, max_attempts=4)])

    read = storage.get_job(job.id)
    assert read.state is JobState.SCHEDULED
    assert read.scheduled_at == at
    assert (read.attempt, read.max_attempts) == (1, 4)


def test_many_acks_of_different_kinds_apply_in_one_call(storage):
    storage.insert_jobs([new_job({"i": i}) for i in range(4)])
    running = storage.fetch_jobs("q", demand=4, node="n", now=utcnow())
    states = [JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED, JobState.RETRYABLE]

    applied = storage.ack_jobs(
        [
            ack(job, state, scheduled_at=later(60) if state is JobState.RETRYABLE else None)
            for job, state in zip(running, states, strict=True)
        ]
    )

    assert sorted(applied) == sorted(j.id for j in running)
    assert [storage.get_job(j.id).state for j in running] == states


def test_an_ack_of_a_stale_attempt_is_not_applied(storage):
    job = storage.insert_jobs([new_job()])[0]
    first = claim_one(storage, node="a")
    storage.ack_jobs([ack(first, JobState.RETRYABLE, scheduled_at=ago(1))])
    storage.stage_jobs(now=utcnow())
    second = claim_one(storage, node="b")

    applied = storage.ack_jobs([ack(first, JobState.COMPLETED)])

    assert second.attempt == 2
    assert applied == []
    read = storage.get_job(job.id)
    assert (read.state, read.attempt, read.attempted_by) == (JobState.EXECUTING, 2, "b")


@pytest.mark.parametrize("setup", ["available", "cancelled", "completed"])
def test_an_ack_of_a_job_that_is_not_executing_is_not_applied(storage, setup):
    job = storage.insert_jobs([new_job()])[0]
    running = claim_one(storage)
    if setup == "available":
        storage.hand_back_jobs("n1", [job.id], now=utcnow())
    elif setup == "cancelled":
        storage.cancel_job(job.id, now=utcnow())
    else:
        storage.ack_jobs([ack(running, JobState.COMPLETED)])
    before = storage.get_job(job.id)

    applied = storage.ack_jobs([ack(running, JobState.DISCARDED, errors=[{"late": True}])])

    assert applied == []
    assert storage.get_job(job.id) == before


@pytest.mark.parametrize("path", ["ack_jobs", "ack_and_fetch"])
def test_a_chunk_of_completions_at_one_time_is_fenced_per_job(storage, path):
    # Ten plain completions sharing one time (a chunk's) take the grouped statement; a stale
    # attempt among them, and a job no longer executing, are still left alone.
    storage.insert_jobs([new_job({"i": i}) for i in range(10)])
    jobs = storage.fetch_jobs("q", demand=10, node="n", now=utcnow())
    stale, cancelled, rest = jobs[0], jobs[1], jobs[2:]
    storage.hand_back_jobs("n", [stale.id], now=utcnow())
    reclaimed = storage.fetch_jobs("q", demand=1, node="m", now=utcnow())[0]
    storage.cancel_job(cancelled.id, now=utcnow())
    at = utcnow()
    acks = [
        flowpro.job.Ack(id=j.id, attempt=j.attempt, state=JobState.COMPLETED, at=at) for j in jobs
    ]

    if path == "ack_jobs":
        applied = storage.ack_jobs(acks)
    else:
        applied, _ = storage.ack_and_fetch(acks, "q", demand=0, node="n", now=at)

    assert sorted(applied) == sorted(j.id for j in rest)
    for job in rest:
        read = storage.get_job(job.id)
        assert (read.state, read.completed_at) == (JobState.COMPLETED, at)
    assert storage.get_job(reclaimed.id).state is JobState.EXECUTING
    assert storage.get_job(cancelled.id).state is JobState.CANCELLED


def test_acking_nothing_applies_nothing(storage):
    assert storage.ack_jobs([]) == []


def test_ack_and_fetch_writes_outcomes_and_claims_new_jobs_together(storage):
    storage.insert_jobs([new_job({"i": i}) for i in range(3)])
    first = storage.fetch_jobs("q", demand=2, node="n", now=utcnow())

    applied, more = storage.ack_and_fetch(
        [ack(j, JobState.COMPLETED) for j in first], "q", demand=5, node="n", now=utcnow()
    )

    assert sorted(applied) == sorted(j.id for j in first)
    assert [j.args for j in more] == [{"i": 2}]
    assert more == [storage.get_job(j.id) for j in more]
    assert all(storage.get_job(j.id).state is JobState.COMPLETED for j in first)


def test_ack_and_fetch_with_no_demand_only_acks(storage):
    storage.insert_jobs([new_job(), new_job()])
    first = claim_one(storage)

    applied, more = storage.ack_and_fetch(
        [ack(first, JobState.COMPLETED)], "q", demand=0, node="n", now=utcnow()
    )

    assert applied == [first.id]
    assert more == []
    assert storage.count_jobs() == {"completed": 1, "available": 1}


def test_has_available_tells_whether_a_queue_has_runnable_jobs(storage):
    assert storage.has_available("q") is False
    storage.insert_jobs([new_job(schedule_in=60)])
    assert storage.has_available("q") is False

    storage.insert_jobs([new_job()])

    assert storage.has_available("q") is True
    assert storage.has_available("other") is False
    claim_one(storage)
    assert storage.has_available("q") is False


def test_jobs_of_a_worker_class_land_in_its_queue(storage):
    job = storage.insert_jobs([Other.new({})])[0]

    assert job.queue == "other"
    assert storage.fetch_jobs("q", demand=1, node="n", now=utcnow()) == []
    assert claim_one(storage, "other").worker == Other.__flowpro_name__
    assert Noop.queue == "q"
