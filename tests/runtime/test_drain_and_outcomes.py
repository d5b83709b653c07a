"""What process() returns or raises becomes the job's state, through fp.drain()."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from datetime import datetime, timedelta

import pytest

import flowpro
from flowpro.job import JobState, utcnow

RAN: list[str] = []
_lock = threading.Lock()


def ran(label: str) -> None:
    with _lock:
        RAN.append(label)


@pytest.fixture(autouse=True)
def _clear_ran():
    RAN.clear()
    yield
    RAN.clear()


class Record(flowpro.Worker, queue="drain"):
    def process(self, job):
        ran(job.args["n"])
        return {"n": job.args["n"]}


class Flaky(flowpro.Worker, queue="drain", max_attempts=3):
    """Fails until ``ok_on`` (an attempt number; 0: always)."""

    def process(self, job):
        ran(f"attempt-{job.attempt}")
        if job.attempt != job.args.get("ok_on"):
            raise ValueError(f"bad luck on attempt {job.attempt}")
        return None

    def backoff(self, job):
        return 0


class SlowBackoff(flowpro.Worker, queue="drain", max_attempts=5):
    def process(self, job):
        raise RuntimeError("nope")


class Outcome(flowpro.Worker, queue="drain", max_attempts=3):
    def process(self, job):
        kind = job.args["kind"]
        if kind == "snooze":
            return flowpro.Snooze(job.args.get("seconds", 60))
        if kind == "cancel":
            return flowpro.Cancel("account closed")
        if kind == "discard":
            return flowpro.Discard("bad input")
        return "value"


class AsyncRecord(flowpro.Worker, queue="drain"):
    async def process(self, job):
        await asyncio.sleep(0)
        ran(f"async-{job.args['n']}")


class AsyncTimeout(flowpro.Worker, queue="drain", timeout=0.2, max_attempts=1):
    async def process(self, job):
        await asyncio.sleep(10)


SYNC_STOPPED = threading.Event()


class SyncTimeout(flowpro.Worker, queue="drain", timeout=0.2, max_attempts=1):
    def process(self, job):
        try:
            for _ in range(1_000):  # ten seconds in small steps: interruptible
                time.sleep(0.01)
        finally:
            SYNC_STOPPED.set()


class SyncInTime(flowpro.Worker, queue="drain", timeout=5):
    def process(self, job):
        return threading.current_thread().name


# Order and counts


def test_drain_runs_jobs_by_priority_then_scheduled_time(fp):
    base = utcnow() - timedelta(minutes=10)
    fp.insert_all(
        [
            Record.new({"n": "p3"}, priority=3, scheduled_at=base),
            Record.new({"n": "p0-late"}, priority=0, scheduled_at=base + timedelta(minutes=2)),
            Record.new({"n": "p0-early"}, priority=0, scheduled_at=base),
            Record.new({"n": "p9"}, priority=9, scheduled_at=base - timedelta(minutes=5)),
            Record.new({"n": "p1"}, priority=1, scheduled_at=base + timedelta(minutes=1)),
        ]
    )

    counts = fp.drain()

    assert RAN == ["p0-early", "p0-late", "p1", "p3", "p9"]
    assert counts == {"completed": 5}
    assert fp.list_jobs(state="available") == []


def test_drain_runs_more_jobs_than_one_batch(fp):
    fp.insert_all([Record.new({"n": str(i)}) for i in range(250)])

    counts = fp.drain()

    assert counts == {"completed": 250}
    assert sorted(RAN, key=int) == [str(i) for i in range(250)]


def test_drain_of_a_queue_leaves_other_queues_alone(fp):
    fp.insert(Record.new({"n": "mine"}))
    other = fp.insert(Record.new({"n": "theirs"}, queue="elsewhere"))

    counts = fp.drain(queue="drain")

    assert counts == {"completed": 1}
    assert RAN == ["mine"]
    assert fp.get_job(other.id).state is JobState.AVAILABLE


def test_drain_leaves_future_jobs_unless_asked_to_run_scheduled_ones(fp):
    later = fp.insert(Record.new({"n": "later"}, schedule_in=3600))

    assert fp.drain() == {}
    assert fp.get_job(later.id).state is JobState.SCHEDULED

    assert fp.drain(with_scheduled=True) == {"completed": 1}
    assert RAN == ["later"]


def test_drain_with_nothing_to_do_returns_no_counts(fp):
    assert fp.drain() == {}


def test_drain_reruns_zero_backoff_retries_until_discarded(fp):
    job = fp.insert(Flaky.new({"ok_on": 0}))

    counts = fp.drain()

    assert counts == {"retryable": 2, "discarded": 1}
    assert RAN == ["attempt-1", "attempt-2", "attempt-3"]
    done = fp.get_job(job.id)
    assert done.state is JobState.DISCARDED
    assert done.attempt == 3
    assert [e["attempt"] for e in done.errors] == [1, 2, 3]


def test_drain_reruns_zero_backoff_retries_until_they_succeed(fp):
    job = fp.insert(Flaky.new({"ok_on": 2}))

    counts = fp.drain()

    assert counts == {"retryable": 1, "completed": 1}
    done = fp.get_job(job.id)
    assert (done.state, done.attempt, len(done.errors)) == (JobState.COMPLETED, 2, 1)


def test_drain_runs_async_workers_too(fp):
    fp.insert_all([AsyncRecord.new({"n": 1}), Record.new({"n": "sync"})])

    assert fp.drain() == {"completed": 2}
    assert sorted(RAN) == ["async-1", "sync"]


def test_drain_leaves_no_node_behind(fp):
    fp.insert(Record.new({"n": "x"}))

    fp.drain()

    assert fp.storage.live_nodes(alive_since=utcnow() - timedelta(days=1)) == []


# Outcomes


def test_a_normal_return_completes_the_job(fp):
    job = fp.insert(Record.new({"n": "ok"}))

    fp.drain()

    done = fp.get_job(job.id)
    assert done.state is JobState.COMPLETED
    assert done.attempt == 1
    assert done.completed_at is not None and done.completed_at >= done.attempted_at
    assert done.errors == []
    assert done.recorded is None  # not a recorded worker


def test_an_exception_makes_the_job_retryable_with_backoff_and_the_error_kept(fp):
    job = fp.insert(SlowBackoff.new({}))
    before = utcnow()

    assert fp.drain() == {"retryable": 1}

    read = fp.get_job(job.id)
    assert read.state is JobState.RETRYABLE
    delay = (read.scheduled_at - before).total_seconds()
    assert 15 <= delay <= 25  # the default backoff of attempt 1: ~17 s with jitter
    [error] = read.errors
    assert error["attempt"] == 1
    assert error["error"] == "RuntimeError: nope"
    assert error["kind"] == "error"
    assert abs(datetime.fromisoformat(error["at"]) - utcnow()) < timedelta(seconds=10)
    assert "Traceback" in error["traceback"] and "nope" in error["traceback"]


def test_errors_accumulate_one_per_attempt(fp):
    job = fp.insert(Flaky.new({"ok_on": 0}))

    fp.drain()

    errors = fp.get_job(job.id).errors
    assert [e["attempt"] for e in errors] == [1, 2, 3]
    assert [e["error"] for e in errors] == [
        f"ValueError: bad luck on attempt {a}" for a in (1, 2, 3)
    ]
    times = [datetime.fromisoformat(e["at"]) for e in errors]
    assert times == sorted(times)


def test_a_job_is_discarded_after_its_last_attempt_fails(fp):
    job = fp.insert(SlowBackoff.new({}, max_attempts=1))

    assert fp.drain() == {"discarded": 1}

    read = fp.get_job(job.id)
    assert read.state is JobState.DISCARDED
    assert read.discarded_at is not None
    assert read.errors[0]["error"] == "RuntimeError: nope"


def test_snooze_reschedules_without_counting_a_failure(fp):
    job = fp.insert(Outcome.new({"kind": "snooze", "seconds": 120}))
    before = utcnow()

    assert fp.drain() == {"scheduled": 1}

    read = fp.get_job(job.id)
    assert read.state is JobState.SCHEDULED
    assert timedelta(seconds=115) < read.scheduled_at - before < timedelta(seconds=130)
    assert (read.attempt, read.max_attempts) == (1, 4)
    assert read.errors == []


def test_snoozing_past_max_attempts_never_discards_the_job(fp):
    job = fp.insert(Outcome.new({"kind": "snooze", "seconds": 60}, max_attempts=1))

    for _ in range(3):
        assert fp.drain() == {"scheduled": 1}
        fp.retry_job(job.id)  # due now instead of in a minute

    read = fp.get_job(job.id)
    assert read.state is JobState.AVAILABLE
    assert (read.attempt, read.max_attempts) == (3, 4)
    assert read.errors == []


def test_cancel_stops_the_job_with_the_reason_kept(fp):
    job = fp.insert(Outcome.new({"kind": "cancel"}))

    assert fp.drain() == {"cancelled": 1}

    read = fp.get_job(job.id)
    assert read.state is JobState.CANCELLED
    assert read.cancelled_at is not None
    assert read.errors[-1]["error"] == "account closed"
    assert read.errors[-1]["kind"] == "cancel"


def test_discard_gives_up_at_once_with_the_reason_kept(fp):
    job = fp.insert(Outcome.new({"kind": "discard"}))

    assert fp.drain() == {"discarded": 1}

    read = fp.get_job(job.id)
    assert read.state is JobState.DISCARDED
    assert read.attempt == 1 < read.max_attempts
    assert read.errors[-1] == {**read.errors[-1], "kind": "discard", "error": "bad input"}


def test_a_job_of_an_unregistered_worker_is_discarded_saying_so(fp):
    stranded = dataclasses.replace(Record.new({"n": "x"}), worker="gone.Worker")
    job = fp.insert(stranded)
    fine = fp.insert(Record.new({"n": "after"}))

    counts = fp.drain()

    read = fp.get_job(job.id)
    assert counts == {"discarded": 1, "completed": 1}
    assert read.state is JobState.DISCARDED
    assert "worker 'gone.Worker' is not registered" in read.errors[0]["error"]
    assert read.errors[0]["kind"] == "worker_not_found"
    assert fp.get_job(fine.id).state is JobState.COMPLETED


def test_drain_fails_a_sync_attempt_at_its_timeout_and_stops_it(fp):
    SYNC_STOPPED.clear()
    job = fp.insert(SyncTimeout.new({}))
    fine = fp.insert(SyncInTime.new({}))
    started = time.monotonic()

    outcome = fp.drain()

    assert time.monotonic() - started < 5
    assert outcome == {"discarded": 1, "completed": 1}
    read = fp.get_job(job.id)
    assert read.state is JobState.DISCARDED
    assert "JobTimeout: attempt timed out after 0.2s" in read.errors[0]["error"]
    assert SYNC_STOPPED.wait(5)  # the attempt's thread was interrupted, not left running
    assert fp.get_job(fine.id).state is JobState.COMPLETED


def test_an_async_worker_that_runs_past_its_timeout_fails_the_attempt(fp):
    job = fp.insert(AsyncTimeout.new({}))

    assert fp.drain() == {"discarded": 1}

    read = fp.get_job(job.id)
    assert "timed out after 0.2s" in read.errors[0]["error"]
