"""A node (``fp.run``) on real databases: processing, timeouts, concurrency, shutdown, rescue."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from datetime import timedelta

import pytest

import flowpro
from flowpro.job import JobState, utcnow
from tests.conftest import FAST, eventually
from tests.runtime.nodes import RunThread, Tally, another_app, running

TALLY = Tally()
GATE = threading.Event()  # released by a test (or its teardown) to let blocked jobs finish
STARTED = threading.Event()
SYNC_DONE = threading.Event()
ASYNC_DONE = threading.Event()


@pytest.fixture(autouse=True)
def _reset():
    global TALLY
    TALLY = Tally()
    for event in (GATE, STARTED, SYNC_DONE, ASYNC_DONE):
        event.clear()
    yield
    GATE.set()  # never leave a worker thread blocked


class Count(flowpro.Worker, queue="work"):
    def process(self, job):
        TALLY.add(job.id)


class FailOnce(flowpro.Worker, queue="work", max_attempts=3):
    def process(self, job):
        TALLY.add(job.attempt)
        if job.attempt == 1:
            raise RuntimeError("first attempt fails")

    def backoff(self, job):
        return 0


class Blocked(flowpro.Worker, queue="work", max_attempts=3):
    """Runs until the test releases GATE."""

    def process(self, job):
        STARTED.set()
        if not GATE.wait(10):
            raise TimeoutError("the test never released the gate")
        TALLY.add(job.id)
        return "released"


class Short(flowpro.Worker, queue="work"):
    def process(self, job):
        STARTED.set()
        time.sleep(0.3)
        TALLY.add(job.id)


class SyncTimeout(flowpro.Worker, queue="work", timeout=0.3, max_attempts=1):
    def process(self, job):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # interruptible between sleeps
            time.sleep(0.01)
        TALLY.add("finished")


class AsyncTimeout(flowpro.Worker, queue="work", timeout=0.3, max_attempts=1):
    async def process(self, job):
        await asyncio.sleep(10)
        TALLY.add("finished")


class SlowSync(flowpro.Worker, queue="mixed", max_attempts=1):
    """Blocks its thread until an async job has finished."""

    def process(self, job):
        if not ASYNC_DONE.wait(5):
            raise TimeoutError("the async job never ran while this sync job was running")
        TALLY.add("slow-sync")


class FastAsync(flowpro.Worker, queue="mixed", max_attempts=1):
    async def process(self, job):
        await asyncio.sleep(0.01)
        ASYNC_DONE.set()
        TALLY.add("fast-async")


class SlowAsync(flowpro.Worker, queue="mixed", max_attempts=1):
    """Awaits until a sync job has finished."""

    async def process(self, job):
        for _ in range(500):
            if SYNC_DONE.is_set():
                TALLY.add("slow-async")
                return
            await asyncio.sleep(0.01)
        raise TimeoutError("the sync job never ran while this async job was running")


class FastSync(flowpro.Worker, queue="mixed", max_attempts=1):
    def process(self, job):
        SYNC_DONE.set()
        TALLY.add("fast-sync")


class ManyAsync(flowpro.Worker, queue="mixed", max_attempts=1):
    """Each waits until all of them are running at once."""

    async def process(self, job):
        TALLY.add("started")
        for _ in range(500):
            if TALLY.counts["started"] >= job.args["of"]:
                return
            await asyncio.sleep(0.01)
        raise TimeoutError("async jobs did not run concurrently")


# Processing


def test_run_until_idle_processes_every_job_of_its_queues_once(fp):
    jobs = fp.insert_all([Count.new({"i": i}) for i in range(200)])
    elsewhere = fp.insert_all([Count.new({"i": i}, queue="second") for i in range(50)])
    untouched = fp.insert(Count.new({}, queue="not-run"))

    fp.run(queues={"work": 10, "second": 3}, until_idle=True)

    assert TALLY.counts == {j.id: 1 for j in [*jobs, *elsewhere]}
    assert fp.storage.count_jobs() == {"completed": 250, "available": 1}
    assert fp.get_job(untouched.id).state is JobState.AVAILABLE


def test_run_until_idle_reruns_a_failed_job_after_its_backoff(fp):
    job = fp.insert(FailOnce.new({}))

    fp.run(queues={"work": 2}, until_idle=True)

    done = fp.get_job(job.id)
    assert done.state is JobState.COMPLETED
    assert done.attempt == 2
    assert [e["attempt"] for e in done.errors] == [1]
    assert TALLY.counts == {1: 1, 2: 1}


def test_run_until_idle_returns_at_once_when_nothing_is_due(fp):
    later = fp.insert(Count.new({}, schedule_in=3600))
    started = time.monotonic()

    fp.run(queues={"work": 1}, until_idle=True)

    assert time.monotonic() - started < 5
    assert fp.get_job(later.id).state is JobState.SCHEDULED


def test_run_until_idle_returns_when_the_last_ack_is_written_not_at_the_next_check(db_url):
    # The node checks for idleness as soon as a producer has nothing left to write, not only
    # every idle_check_interval: before, every such run lasted at least one interval.
    app = flowpro.FlowPro(db_url, **{**FAST, "idle_check_interval": 60.0})
    app.migrate()
    try:
        jobs = app.insert_all([Count.new({"i": i}) for i in range(20)])
        started = time.monotonic()

        app.run(queues={"work": 3}, until_idle=True)

        assert time.monotonic() - started < 20  # the interval is 60 s
        assert TALLY.counts == {j.id: 1 for j in jobs}
    finally:
        app.close()


def test_stop_ends_a_run_until_idle_at_once_whatever_its_check_interval(db_url):
    app = flowpro.FlowPro(db_url, **{**FAST, "idle_check_interval": 60.0})
    app.migrate()
    try:
        job = app.insert(Blocked.new({}))
        thread = RunThread(app, queues={"work": 1}, until_idle=True)
        thread.start()
        assert STARTED.wait(10)

        app.stop()
        GATE.set()  # the graceful stop lets the running attempt finish

        thread.finish(timeout=20)
        assert app.get_job(job.id).state is JobState.COMPLETED
    finally:
        app.close()


def test_a_job_scheduled_shortly_runs_when_it_is_due(fp):
    with running(fp, queues={"work": 2}):
        job = fp.insert(Count.new({}, schedule_in=0.3))
        assert fp.get_job(job.id).state is JobState.SCHEDULED

        eventually(lambda: fp.get_job(job.id).state is JobState.COMPLETED)

    assert fp.get_job(job.id).attempted_at >= job.scheduled_at


def test_a_job_inserted_while_the_node_runs_is_picked_up(fp):
    with running(fp, queues={"work": 2}):
        job = fp.insert(Count.new({}))

        eventually(lambda: fp.get_job(job.id).state is JobState.COMPLETED)

    assert TALLY.counts == {job.id: 1}


def test_a_job_of_an_unregistered_worker_is_discarded_and_the_node_keeps_running(fp):
    stranded = fp.insert(dataclasses.replace(Count.new({}), worker="app.Gone"))

    with running(fp, queues={"work": 2}):
        eventually(lambda: fp.get_job(stranded.id).state is JobState.DISCARDED)
        later = fp.insert(Count.new({}))
        eventually(lambda: fp.get_job(later.id).state is JobState.COMPLETED)

    error = fp.get_job(stranded.id).errors[0]
    assert "worker 'app.Gone' is not registered" in error["error"]


def test_run_refuses_bad_queue_limits(fp):
    for queues in ({"work": 0}, {"work": -1}, {"work": "5"}, {"work": True}, {}):
        with pytest.raises(flowpro.ConfigError):
            fp.run(queues=queues, until_idle=True)


# Timeouts


def test_a_sync_attempt_that_outlives_its_timeout_fails_and_is_interrupted(fp):
    job = fp.insert(SyncTimeout.new({}))
    started = time.monotonic()

    fp.run(queues={"work": 2}, until_idle=True)

    read = fp.get_job(job.id)
    assert read.state is JobState.DISCARDED
    assert "attempt timed out after 0.3s" in read.errors[0]["error"]
    assert time.monotonic() - started < 5
    assert "finished" not in TALLY.counts


def test_an_async_attempt_that_outlives_its_timeout_fails(fp):
    job = fp.insert(AsyncTimeout.new({}))
    started = time.monotonic()

    fp.run(queues={"work": 2}, until_idle=True)

    read = fp.get_job(job.id)
    assert read.state is JobState.DISCARDED
    assert "timed out after 0.3s" in read.errors[0]["error"]
    assert time.monotonic() - started < 5
    assert "finished" not in TALLY.counts


# Sync and async workers side by side


def test_a_slow_sync_job_does_not_hold_up_async_jobs(fp):
    slow = fp.insert(SlowSync.new({}, priority=0))
    fast = fp.insert(FastAsync.new({}, priority=1))

    fp.run(queues={"mixed": 4}, until_idle=True)

    assert fp.get_job(slow.id).state is JobState.COMPLETED
    assert fp.get_job(fast.id).state is JobState.COMPLETED


def test_a_slow_async_job_does_not_hold_up_sync_jobs(fp):
    slow = fp.insert(SlowAsync.new({}, priority=0))
    fast = fp.insert(FastSync.new({}, priority=1))

    fp.run(queues={"mixed": 4}, until_idle=True)

    assert fp.get_job(slow.id).state is JobState.COMPLETED
    assert fp.get_job(fast.id).state is JobState.COMPLETED


def test_async_jobs_of_a_queue_run_concurrently_on_one_loop(fp):
    jobs = fp.insert_all([ManyAsync.new({"of": 5}) for _ in range(5)])

    fp.run(queues={"mixed": 5}, until_idle=True)

    assert [fp.get_job(j.id).state for j in jobs] == [JobState.COMPLETED] * 5


# Stopping


def test_stop_from_another_thread_lets_the_running_job_finish(fp):
    with running(fp, queues={"work": 2}) as thread:
        job = fp.insert(Short.new({}))
        assert STARTED.wait(5)
        node = fp.node.name

        threading.Thread(target=fp.stop).start()
        thread.finish()

    read = fp.get_job(job.id)
    assert read.state is JobState.COMPLETED
    assert TALLY.counts == {job.id: 1}
    assert fp.node is None
    assert node not in fp.storage.live_nodes(alive_since=utcnow() - timedelta(days=1))


def test_a_stop_that_arrives_before_run_starts_is_not_lost(fp):
    fp.stop()  # e.g. SIGTERM while the node is still starting up
    thread = RunThread(fp, queues={"work": 1})

    thread.start()

    thread.finish(timeout=10)
    assert fp.node is None


def test_run_can_be_started_again_after_a_stop(fp):
    with running(fp, queues={"work": 1}):
        pass

    job = fp.insert(Count.new({}))
    fp.run(queues={"work": 1}, until_idle=True)

    assert fp.get_job(job.id).state is JobState.COMPLETED


def test_a_job_still_running_after_the_grace_period_is_handed_back(db_url, fp):
    app = another_app(db_url, shutdown_grace=0.2)
    try:
        job = app.insert(Blocked.new({}))
        with running(app, queues={"work": 1}):
            assert STARTED.wait(5)

        read = app.get_job(job.id)
        assert read.state is JobState.AVAILABLE
        assert (read.attempt, read.max_attempts) == (1, 4)  # the attempt was given back
    finally:
        GATE.set()
        app.close()


def test_a_stopped_node_resigns_so_another_leads_at_once(db_url, fp):
    second = another_app(db_url)
    try:
        with running(fp, queues={"work": 1}):
            eventually(lambda: fp.node.leader.is_leader)
            with running(second, queues={"work": 1}):
                time.sleep(0.3)  # several heartbeats: the lease must stay where it is
                assert not second.node.leader.is_leader
                fp.stop()
                eventually(lambda: second.node.leader.is_leader, timeout=3)
    finally:
        second.close()


# Leadership across nodes


def test_two_nodes_elect_exactly_one_leader(db_url, fp):
    second = another_app(db_url)
    try:
        with running(fp, queues={"work": 1}), running(second, queues={"work": 1}):
            nodes = [fp.node, second.node]
            eventually(lambda: any(n.leader.is_leader for n in nodes))
            samples = []
            for _ in range(40):
                samples.append(sum(n.leader.is_leader for n in nodes))
                time.sleep(0.02)
    finally:
        second.close()

    assert samples == [1] * 40


# Cancel and retry through the facade


def test_cancel_and_retry_through_the_facade(fp):
    job = fp.insert(Count.new({}, schedule_in=3600))

    cancelled = fp.cancel_job(job.id)
    assert cancelled.state is JobState.CANCELLED
    assert fp.drain(with_scheduled=True) == {}

    retried = fp.retry_job(job.id)
    assert retried.state is JobState.AVAILABLE
    assert fp.drain() == {"completed": 1}

    assert fp.cancel_job(job.id).state is JobState.COMPLETED  # finished: unchanged
    assert fp.cancel_job(10**9) is None
    assert fp.retry_job(10**9) is None
    assert TALLY.counts == {job.id: 1}


def test_cancelling_an_executing_job_makes_its_outcome_a_no_op(fp):
    job = fp.insert(Blocked.new({}))

    with running(fp, queues={"work": 1}):
        assert STARTED.wait(5)
        assert fp.get_job(job.id).state is JobState.EXECUTING

        assert fp.cancel_job(job.id).state is JobState.CANCELLED
        GATE.set()
        eventually(lambda: TALLY.counts[job.id] == 1)
        eventually(lambda: not fp.node.busy())

    read = fp.get_job(job.id)
    assert read.state is JobState.CANCELLED
    assert read.completed_at is None and read.recorded is None


# Rescue


def test_the_jobs_of_a_dead_node_are_rescued_and_run_again(fp):
    job = fp.insert(Count.new({}))
    orphan = fp.storage.fetch_jobs("work", demand=1, node="crashed-node", now=utcnow())[0]
    assert orphan.id == job.id

    with running(fp, queues={"work": 1}):
        eventually(lambda: fp.get_job(job.id).state is JobState.COMPLETED, timeout=10)

    read = fp.get_job(job.id)
    assert read.attempt == 2
    assert [e["kind"] for e in read.errors] == ["rescued"]
    assert TALLY.counts == {job.id: 1}
    late = fp.storage.ack_jobs(
        [flowpro.job.Ack(id=job.id, attempt=1, state=JobState.DISCARDED, at=utcnow())]
    )
    assert late == []


def test_jobs_claimed_under_this_node_that_no_producer_holds_are_handed_back(fp):
    # A claim whose commit went through while its connection failed: the rows are executing
    # under this live node, which never got them. No other node rescues them (it beats), so
    # the node itself hands them back, attempt given back.
    with running(fp, queues={"work": 1}):
        name = fp.node.name
        lost = fp.insert_all([Count.new({}, queue="elsewhere") for _ in range(3)])
        claimed = fp.storage.fetch_jobs(
            "elsewhere", demand=3, node=name, now=utcnow() - timedelta(seconds=5)
        )
        assert sorted(j.id for j in claimed) == sorted(j.id for j in lost)
        recent = fp.insert(Count.new({}, queue="elsewhere"))
        fp.storage.fetch_jobs("elsewhere", demand=1, node=name, now=utcnow())

        def handed_back() -> bool:
            return all(fp.get_job(j.id).state is JobState.AVAILABLE for j in lost)

        eventually(handed_back, timeout=5)
        assert [fp.get_job(j.id).attempt for j in lost] == [0, 0, 0]
        # Claimed just now: not yet older than rescue_after, so not taken for lost.
        assert fp.get_job(recent.id).state is JobState.EXECUTING


def test_the_orphan_check_leaves_alone_what_the_node_runs_longer_than_rescue_after(fp):
    job = fp.insert(Blocked.new({}))
    with running(fp, queues={"work": 2}):
        assert STARTED.wait(5)
        time.sleep(2.0)  # rescue_after is 1 s; the check runs every 0.1 s
        read = fp.get_job(job.id)
        assert (read.state, read.attempt) == (JobState.EXECUTING, 1)
        assert fp.node.hand_back_orphans() == 0
        GATE.set()
        eventually(lambda: fp.get_job(job.id).state is JobState.COMPLETED, timeout=5)
    assert TALLY.counts == {job.id: 1}


def test_many_fast_jobs_never_look_lost_to_the_orphan_check(db_url, fp):
    # Jobs move between prefetched, running and acked while the check runs every 0.1 s with
    # a grace of 0.2 s: none may be handed back (that would run it twice).
    fast = another_app(db_url, rescue_after=0.2, heartbeat_interval=0.05, leader_ttl=0.5)
    try:
        jobs = fast.insert_all([Count.new({}) for _ in range(1_500)])
        fast.run(queues={"work": 10}, until_idle=True)
    finally:
        fast.close()
    assert TALLY.counts == {job.id: 1 for job in jobs}


class _SpyStorage:
    """The real storage, recording at every ack_and_fetch whether the producer still holds
    each job it is acking, and announces the claim in flight."""

    def __init__(self, storage, holder):
        self._storage = storage
        self.holder = holder
        self.unheld: list[int] = []
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def ack_and_fetch(self, acks, queue, **kwargs):
        self.calls += 1
        held, _since = self.holder[0].held()
        self.unheld += [ack.id for ack in acks if ack.id not in held]
        if kwargs.get("demand") and _since is None:
            self.unheld.append(-1)  # a claim in flight must be announced (calling_since)
        return self._storage.ack_and_fetch(acks, queue, **kwargs)


def test_a_producer_holds_every_job_from_claim_to_written_ack(fp):
    from flowpro._runtime.producer import Producer

    jobs = fp.insert_all([Count.new({}) for _ in range(300)])
    holder: list[Producer] = []
    spy = _SpyStorage(fp.storage, holder)
    producer = Producer(
        spy, queue="work", limit=5, node="holder-node", poll_interval=0.02, clock=utcnow
    )
    holder.append(producer)
    producer.start()
    try:
        eventually(lambda: len(TALLY.counts) == len(jobs), timeout=20)
        eventually(lambda: not producer.busy(), timeout=5)
    finally:
        producer.stop_claiming()
        producer.halt()
    assert spy.calls > 1
    assert spy.unheld == []
    assert producer.held() == (set(), None)


class _SlowClaims:
    """The real storage, whose ack_and_fetch waits for ``release`` once ``entered`` is set."""

    def __init__(self, storage):
        self._storage = storage
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def ack_and_fetch(self, acks, queue, **kwargs):
        if kwargs.get("demand"):
            self.entered.set()
            self.release.wait(10)
        return self._storage.ack_and_fetch(acks, queue, **kwargs)


def test_a_producer_with_a_claim_in_flight_is_busy_so_the_node_is_not_idle(fp):
    from flowpro._runtime.producer import Producer

    job = fp.insert(Count.new({}))
    slow = _SlowClaims(fp.storage)
    producer = Producer(
        slow, queue="work", limit=2, node="busy-node", poll_interval=0.02, clock=utcnow
    )
    producer.start()
    try:
        assert slow.entered.wait(10)
        # Nothing runs, no ack waits, nothing is prefetched: only the claim is under way.
        assert producer.busy()
        slow.release.set()
        eventually(lambda: TALLY.counts.get(job.id) == 1, timeout=10)
        eventually(lambda: not producer.busy(), timeout=10)
    finally:
        slow.release.set()
        producer.stop_claiming()
        producer.halt()


def test_a_chunk_whose_rows_cannot_be_read_is_handed_back(fp):
    import functools

    from flowpro._runtime.producer import Producer, _Running
    from flowpro.storage.base import ClaimedChunk

    jobs = fp.insert_all([Count.new({}) for _ in range(3)])
    claimed = fp.storage.fetch_jobs("work", demand=3, node="reader-node", now=utcnow())
    assert len(claimed) == 3

    def unreadable(rows):
        raise ValueError("corrupt row")

    chunk = ClaimedChunk([(job.id,) for job in claimed], unreadable)
    producer = Producer(
        fp.storage, queue="work", limit=1, node="reader-node", poll_interval=1, clock=utcnow
    )
    producer._running[chunk.ids[0]] = _Running(None, None, chunk)
    producer.executor.submit_chunk(chunk, functools.partial(producer._done_chunk, chunk))

    def back() -> bool:
        return all(fp.get_job(j.id).state is JobState.AVAILABLE for j in jobs)

    eventually(back, timeout=5)
    assert [fp.get_job(j.id).attempt for j in jobs] == [0, 0, 0]
    assert producer.held() == (set(), None)
    assert TALLY.counts == {}
    producer.executor.shutdown()


# Many nodes


@pytest.mark.parametrize("round_", range(3))
def test_every_job_completes_exactly_once_across_three_nodes(db_url, fp, round_):
    apps = [fp, another_app(db_url), another_app(db_url)]
    jobs = fp.insert_all([Count.new({"i": i}) for i in range(300)])
    threads = []
    try:
        for app in apps:
            thread = threading.Thread(
                target=app.run, kwargs=dict(queues={"work": 4}, until_idle=True), daemon=True
            )
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive()
    finally:
        for app in apps[1:]:
            app.close()

    assert TALLY.counts == {j.id: 1 for j in jobs}
    assert fp.storage.count_jobs() == {"completed": 300}
    completed = fp.list_jobs(state="completed", limit=1_000)
    assert all(j.attempt == 1 for j in completed)
