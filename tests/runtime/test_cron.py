"""Cron: one job per tick across every node, through leader handovers and racing leaders."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import datetime, timedelta

import flowpro
from flowpro._runtime.cron import Cron, CronEntry
from flowpro.app import cron_entries
from flowpro.job import JobState, utcnow
from tests.conftest import eventually
from tests.runtime.nodes import another_app, running


class Nightly(flowpro.Worker, queue="cron-q"):
    def process(self, job):
        return None


def every_second_worker() -> type[flowpro.Worker]:
    """A cron worker ticking every second (croniter's sixth field is seconds)."""

    class EverySecond(flowpro.Worker, queue="cron-q", cron="* * * * * *"):
        def process(self, job):
            return None

    return EverySecond


def ticks_of(app: flowpro.FlowPro) -> list[datetime]:
    jobs = app.list_jobs(
        queue="cron-q",
        limit=10_000,
    )
    return sorted(datetime.fromisoformat(j.meta["cron_tick"]) for j in jobs)


def test_registered_cron_workers_become_cron_entries():
    worker = every_second_worker()

    [entry] = [e for e in cron_entries() if e.name == f"worker:{worker.__flowpro_name__}"]
    tick = datetime.fromisoformat("2024-01-01T00:00:05+00:00")
    job = entry.build(tick)

    assert entry.expression == "* * * * * *"
    assert job.worker == worker.__flowpro_name__
    assert job.meta == {"cron_tick": "2024-01-01T00:00:05+00:00"}


def test_each_tick_is_inserted_once_across_two_nodes_and_a_leader_handover(db_url, fp):
    every_second_worker()
    second = another_app(db_url)
    try:
        with running(fp, queues={"cron-q": 2}):
            eventually(lambda: fp.node.leader.is_leader)
            with running(second, queues={"cron-q": 2}):
                eventually(lambda: len(ticks_of(fp)) >= 2, timeout=5)
                fp.stop()  # the leader goes; the second node takes over
                eventually(lambda: second.node.leader.is_leader, timeout=5)
                count = len(ticks_of(fp))
                eventually(lambda: len(ticks_of(fp)) >= count + 2, timeout=5)
    finally:
        second.close()

    ticks = ticks_of(fp)
    assert len(ticks) == len(set(ticks))
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(ticks)}
    assert gaps == {1.0}  # no tick lost in the handover, none doubled
    assert all(j.state is JobState.COMPLETED for j in fp.list_jobs(queue="cron-q")[3:])


def test_leaders_racing_over_the_same_ticks_insert_each_once(storage):
    start = utcnow().replace(microsecond=0) - timedelta(minutes=30)
    entries = [
        CronEntry("minutely", "* * * * *", lambda t: Nightly.new({}, meta={"cron_tick": str(t)})),
        CronEntry("every-5", "*/5 * * * *", lambda t: Nightly.new({}, meta={"cron_tick": str(t)})),
    ]
    crons = [Cron(storage, entries, since=start) for _ in range(4)]
    barrier = threading.Barrier(len(crons))
    inserted: list[int] = []
    errors: list[BaseException] = []
    now = utcnow()

    def tick(cron: Cron) -> None:
        try:
            barrier.wait()
            inserted.append(cron.tick(now))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=tick, args=(c,)) for c in crons]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    jobs = storage.list_jobs(limit=1_000)
    assert sum(inserted) == len(jobs) == 30 + 6
    assert len({j.meta["cron_tick"] for j in jobs}) == 30  # the 5-minute ticks are minutely too


def test_a_node_that_becomes_leader_late_does_not_insert_a_backlog_of_ticks(storage):
    now = utcnow()
    entry = CronEntry("minutely", "* * * * *", lambda t: Nightly.new({}))
    follower = Cron(storage, [entry], since=now - timedelta(days=3))
    started = time.monotonic()

    inserted = follower.tick(now)

    assert inserted <= 61
    assert time.monotonic() - started < 30
    assert len(storage.list_jobs(limit=10_000)) == inserted


def test_a_cron_tick_is_not_inserted_again_by_the_next_check(storage):
    now = utcnow()
    entry = CronEntry("minutely", "* * * * *", lambda t: Nightly.new({}))
    cron = Cron(storage, [entry], since=now - timedelta(minutes=5))

    first = cron.tick(now)
    again = cron.tick(now + timedelta(seconds=1))

    assert first == 5
    assert again == 0
