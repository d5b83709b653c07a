"""Storage contract: staging, rescuing, handing back, pruning, cancelling, retrying, counting."""

from __future__ import annotations

from datetime import timedelta

from flowpro.job import JobState, utcnow
from tests.storage.helpers import Other, ack, ago, claim_one, later, new_job

# Staging


def test_stage_makes_due_scheduled_and_retryable_jobs_available(storage):
    due = storage.insert_jobs([new_job(schedule_in=1)])[0]
    other_due = storage.insert_jobs([Other.new({}, schedule_in=1)])[0]
    future = storage.insert_jobs([new_job(schedule_in=3600)])[0]
    storage.insert_jobs([new_job()])
    retried = claim_one(storage)
    storage.ack_jobs([ack(retried, JobState.RETRYABLE, scheduled_at=later(1))])

    queues = storage.stage_jobs(now=later(2))

    assert queues == ["other", "q"]
    assert storage.get_job(due.id).state is JobState.AVAILABLE
    assert storage.get_job(other_due.id).state is JobState.AVAILABLE
    assert storage.get_job(retried.id).state is JobState.AVAILABLE
    assert storage.get_job(future.id).state is JobState.SCHEDULED


def test_stage_with_nothing_due_touches_nothing(storage):
    storage.insert_jobs([new_job(schedule_in=60)])

    assert storage.stage_jobs(now=utcnow()) == []
    assert storage.count_jobs() == {"scheduled": 1}


def test_stage_moves_at_most_limit_jobs_oldest_first(storage):
    jobs = storage.insert_jobs([new_job({"i": i}, schedule_in=1 + i) for i in range(5)])

    storage.stage_jobs(now=later(60), limit=2)

    states = [storage.get_job(j.id).state for j in jobs]
    assert states == [JobState.AVAILABLE] * 2 + [JobState.SCHEDULED] * 3


# Rescuing


def test_rescue_returns_a_dead_nodes_jobs_to_the_queue_with_a_note(storage):
    now = utcnow()
    storage.heartbeat("dead", queues=["q"], now=now - timedelta(seconds=60))
    storage.insert_jobs([new_job()])
    orphan = claim_one(storage, node="dead")

    rescued = storage.rescue_jobs(now=now, alive_since=now - timedelta(seconds=10))

    read = storage.get_job(orphan.id)
    assert rescued == 1
    assert read.state is JobState.AVAILABLE
    assert read.attempt == 1
    assert [e["kind"] for e in read.errors] == ["rescued"]
    assert "stopped responding" in read.errors[0]["error"]


def test_rescue_discards_an_orphan_that_used_its_last_attempt(storage):
    now = utcnow()
    storage.insert_jobs([new_job(max_attempts=1)])
    orphan = claim_one(storage, node="gone")  # never beat at all

    rescued = storage.rescue_jobs(now=now, alive_since=now - timedelta(seconds=10))

    read = storage.get_job(orphan.id)
    assert rescued == 1
    assert read.state is JobState.DISCARDED
    assert read.discarded_at is not None
    assert read.errors[-1]["kind"] == "rescued"


def test_rescue_leaves_the_jobs_of_live_nodes_alone(storage):
    now = utcnow()
    storage.heartbeat("alive", queues=["q"], now=now)
    storage.insert_jobs([new_job()])
    running = claim_one(storage, node="alive")

    rescued = storage.rescue_jobs(now=now, alive_since=now - timedelta(seconds=10))

    assert rescued == 0
    assert storage.get_job(running.id) == running


def test_the_late_ack_of_a_rescued_attempt_changes_nothing(storage):
    now = utcnow()
    storage.insert_jobs([new_job()])
    orphan = claim_one(storage, node="dead")
    storage.rescue_jobs(now=now, alive_since=now)
    again = claim_one(storage, node="alive")

    late = storage.ack_jobs([ack(orphan, JobState.COMPLETED)])
    current = storage.ack_jobs([ack(again, JobState.COMPLETED)])

    assert late == []
    assert current == [again.id]
    assert storage.get_job(again.id).attempt == 2


# Handing back


def test_hand_back_returns_a_stopping_nodes_jobs_without_using_an_attempt(storage):
    storage.insert_jobs([new_job(max_attempts=3), new_job(max_attempts=3)])
    mine = claim_one(storage, node="me")
    theirs = claim_one(storage, node="them")

    handed = storage.hand_back_jobs("me", [mine.id, theirs.id], now=utcnow())

    read = storage.get_job(mine.id)
    assert handed == 1
    assert read.state is JobState.AVAILABLE
    assert (read.attempt, read.max_attempts) == (1, 4)
    assert storage.get_job(theirs.id).state is JobState.EXECUTING


def test_hand_back_ignores_finished_jobs_and_empty_lists(storage):
    storage.insert_jobs([new_job()])
    job = claim_one(storage, node="me")
    storage.ack_jobs([ack(job, JobState.COMPLETED)])

    assert storage.hand_back_jobs("me", [job.id], now=utcnow()) == 0
    assert storage.hand_back_jobs("me", [], now=utcnow()) == 0
    assert storage.get_job(job.id).state is JobState.COMPLETED


# Pruning


def test_prune_deletes_only_terminal_jobs_finished_before_the_cutoff(storage):
    storage.insert_jobs([new_job({"i": i}) for i in range(6)])
    jobs = storage.fetch_jobs("q", demand=6, node="n", now=utcnow())
    storage.ack_jobs(
        [
            ack(jobs[0], JobState.COMPLETED),
            ack(jobs[1], JobState.CANCELLED),
            ack(jobs[2], JobState.DISCARDED),
            ack(jobs[3], JobState.RETRYABLE, scheduled_at=later(60)),
        ]
    )
    storage.insert_jobs([new_job(), new_job(schedule_in=60)])

    assert storage.prune_jobs(before=ago(60)) == 0
    deleted = storage.prune_jobs(before=later(1))

    assert deleted == 3
    assert {j.id for j in jobs[:3]}.isdisjoint(j.id for j in storage.list_jobs())
    assert storage.count_jobs() == {
        "retryable": 1,
        "executing": 2,
        "available": 1,
        "scheduled": 1,
    }


def test_prune_deletes_at_most_limit_jobs(storage):
    storage.insert_jobs([new_job({"i": i}) for i in range(5)])
    jobs = storage.fetch_jobs("q", demand=5, node="n", now=utcnow())
    storage.ack_jobs([ack(j, JobState.COMPLETED) for j in jobs])

    assert storage.prune_jobs(before=later(1), limit=2) == 2
    assert storage.prune_jobs(before=later(1), limit=10) == 3
    assert storage.count_jobs() == {}


# Cancelling and retrying


def test_cancel_stops_a_job_that_has_not_started(storage):
    job = storage.insert_jobs([new_job(schedule_in=60)])[0]

    cancelled = storage.cancel_job(job.id, now=utcnow())

    assert cancelled.state is JobState.CANCELLED
    assert cancelled.cancelled_at is not None
    assert storage.get_job(job.id) == cancelled
    assert storage.stage_jobs(now=later(120)) == []


def test_cancel_of_an_executing_job_makes_its_ack_a_no_op(storage):
    storage.insert_jobs([new_job()])
    running = claim_one(storage)

    cancelled = storage.cancel_job(running.id, now=utcnow())
    applied = storage.ack_jobs([ack(running, JobState.COMPLETED, recorded=b"x")])

    read = storage.get_job(running.id)
    assert cancelled.state is JobState.CANCELLED
    assert applied == []
    assert read.state is JobState.CANCELLED
    assert read.completed_at is None and read.recorded is None


def test_cancel_leaves_a_finished_job_as_it_is(storage):
    storage.insert_jobs([new_job()])
    job = claim_one(storage)
    storage.ack_jobs([ack(job, JobState.COMPLETED)])
    before = storage.get_job(job.id)

    after = storage.cancel_job(job.id, now=utcnow())

    assert after == before
    assert after.state is JobState.COMPLETED and after.cancelled_at is None


def test_cancel_and_retry_of_a_missing_job_return_none(storage):
    assert storage.cancel_job(424242, now=utcnow()) is None
    assert storage.retry_job(424242, now=utcnow()) is None


def test_retry_makes_a_discarded_job_available_with_one_more_attempt(storage):
    storage.insert_jobs([new_job(max_attempts=1)])
    job = claim_one(storage)
    errors = [{"attempt": 1, "at": utcnow().isoformat(), "kind": "error", "error": "x"}]
    storage.ack_jobs([ack(job, JobState.DISCARDED, errors=errors)])
    now = utcnow()

    retried = storage.retry_job(job.id, now=now)

    assert retried.state is JobState.AVAILABLE
    assert retried.scheduled_at == now
    assert retried.discarded_at is None
    assert (retried.attempt, retried.max_attempts) == (1, 2)
    assert retried.errors == errors
    assert claim_one(storage).attempt == 2


def test_retry_runs_a_completed_or_cancelled_job_again(storage):
    storage.insert_jobs([new_job(), new_job()])
    done = claim_one(storage)
    storage.ack_jobs([ack(done, JobState.COMPLETED)])
    other = storage.insert_jobs([new_job(schedule_in=60)])[0]
    storage.cancel_job(other.id, now=utcnow())

    again = storage.retry_job(done.id, now=utcnow())
    uncancelled = storage.retry_job(other.id, now=utcnow())

    assert again.state is JobState.AVAILABLE and again.completed_at is None
    assert again.max_attempts == done.max_attempts
    assert uncancelled.state is JobState.AVAILABLE and uncancelled.cancelled_at is None


def test_retry_makes_a_scheduled_job_available_now(storage):
    job = storage.insert_jobs([new_job(schedule_in=3600)])[0]

    retried = storage.retry_job(job.id, now=utcnow())

    assert retried.state is JobState.AVAILABLE
    assert retried.scheduled_at < job.scheduled_at


def test_retry_leaves_executing_and_available_jobs_alone(storage):
    storage.insert_jobs([new_job(), new_job()])
    running = claim_one(storage)
    waiting = storage.list_jobs(states=["available"])[0]

    assert storage.retry_job(running.id, now=utcnow()) == running
    assert storage.retry_job(waiting.id, now=utcnow()) == waiting


# Counting


def test_count_pending_counts_runnable_and_executing_jobs_of_the_queues(storage):
    storage.insert_jobs([new_job(), new_job(), new_job(schedule_in=3600), Other.new({})])
    storage.insert_jobs([new_job(schedule_in=1)])
    running = claim_one(storage)
    finished = claim_one(storage)
    storage.ack_jobs([ack(finished, JobState.COMPLETED)])
    assert running.id != finished.id

    assert storage.count_pending(["q"], now=utcnow()) == 1  # the executing one
    assert storage.count_pending(["q"], now=later(2)) == 2  # + the one due in 1 s
    assert storage.count_pending(["q", "other"], now=later(2)) == 3
    assert storage.count_pending(["missing"], now=later(2)) == 0


def test_has_pending_finds_what_count_pending_counts(storage):
    storage.insert_jobs([new_job(schedule_in=1), Other.new({})])
    assert storage.has_pending(["q"], now=utcnow()) is False  # only a job due in 1 s
    assert storage.has_pending(["q"], now=later(2)) is True
    assert storage.has_pending(["other"], now=utcnow()) is True
    assert storage.has_pending(["missing", "q"], now=utcnow()) is False

    storage.insert_jobs([new_job()])
    job = claim_one(storage)
    assert storage.has_pending(["q"], now=utcnow()) is True  # executing
    storage.ack_jobs([ack(job, JobState.RETRYABLE, scheduled_at=later(5))])
    assert storage.has_pending(["q"], now=utcnow()) is False
    assert storage.has_pending(["q"], now=later(6)) is True  # the retry is due


def test_count_pending_counts_due_retryable_jobs(storage):
    storage.insert_jobs([new_job()])
    job = claim_one(storage)
    storage.ack_jobs([ack(job, JobState.RETRYABLE, scheduled_at=later(5))])

    assert storage.count_pending(["q"], now=utcnow()) == 0
    assert storage.count_pending(["q"], now=later(6)) == 1
