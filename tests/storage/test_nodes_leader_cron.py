"""Storage contract: node heartbeats, the leader lease, cron ticks and wake-ups."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

import flowpro
from flowpro.job import JobState, utcnow
from tests.conftest import eventually
from tests.storage.helpers import new_job


def race(count: int, fn) -> list:
    """Run ``fn(i)`` in ``count`` threads released at once; return the results in order."""
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    return results


# Nodes


def test_heartbeats_keep_a_node_alive_until_it_is_removed_or_pruned(storage):
    now = utcnow()
    storage.heartbeat("a", queues=["q"], now=now)
    storage.heartbeat("b", queues=["q"], now=now - timedelta(seconds=30))

    assert storage.live_nodes(alive_since=now - timedelta(seconds=10)) == ["a"]
    assert storage.live_nodes(alive_since=now - timedelta(seconds=60)) == ["a", "b"]

    storage.heartbeat("b", queues=["q"], now=now)
    assert storage.live_nodes(alive_since=now - timedelta(seconds=10)) == ["a", "b"]

    storage.remove_node("a")
    assert storage.live_nodes(alive_since=now - timedelta(seconds=10)) == ["b"]
    assert storage.prune_nodes(before=now + timedelta(seconds=1)) == 1
    assert storage.live_nodes(alive_since=now - timedelta(days=1)) == []


# Leadership


def test_only_one_node_holds_the_lease_until_it_expires(storage):
    now = utcnow()

    assert storage.acquire_leader("a", now=now, ttl=5) is True
    assert storage.acquire_leader("b", now=now + timedelta(seconds=1), ttl=5) is False
    assert storage.acquire_leader("a", now=now + timedelta(seconds=2), ttl=5) is True
    # a renewed at +2 s: its lease runs to +7 s.
    assert storage.acquire_leader("b", now=now + timedelta(seconds=6), ttl=5) is False
    assert storage.acquire_leader("b", now=now + timedelta(seconds=8), ttl=5) is True
    assert storage.acquire_leader("a", now=now + timedelta(seconds=9), ttl=5) is False


def test_a_resigned_lease_is_taken_at_once_by_another_node(storage):
    now = utcnow()
    storage.acquire_leader("a", now=now, ttl=60)

    storage.resign_leader("b")  # not the holder: no effect
    assert storage.acquire_leader("b", now=now, ttl=60) is False
    storage.resign_leader("a")

    assert storage.acquire_leader("b", now=now, ttl=60) is True


@pytest.mark.parametrize("round_", range(3))
def test_nodes_racing_for_the_lease_elect_exactly_one(storage, round_):
    now = utcnow()

    results = race(6, lambda i: storage.acquire_leader(f"node-{i}", now=now, ttl=30))

    assert results.count(True) == 1


# Cron ticks


TICK = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def test_a_cron_tick_inserts_its_job_once(storage):
    first = storage.insert_cron_job("nightly", TICK, new_job({"tick": 1}))
    second = storage.insert_cron_job("nightly", TICK, new_job({"tick": 1}))

    assert first is not None and first.state is JobState.AVAILABLE
    assert second is None
    assert [j.id for j in storage.list_jobs()] == [first.id]


def test_each_tick_and_each_schedule_inserts_its_own_job(storage):
    a = storage.insert_cron_job("nightly", TICK, new_job())
    b = storage.insert_cron_job("nightly", TICK + timedelta(minutes=1), new_job())
    c = storage.insert_cron_job("hourly", TICK, new_job())

    assert None not in (a, b, c)
    assert len(storage.list_jobs()) == 3


@pytest.mark.parametrize("round_", range(3))
def test_racing_threads_insert_a_cron_tick_exactly_once(storage, round_):
    tick = TICK + timedelta(minutes=round_)

    results = race(6, lambda i: storage.insert_cron_job("race", tick, new_job({"by": i})))

    inserted = [r for r in results if r is not None]
    assert len(inserted) == 1
    assert [j.id for j in storage.list_jobs()] == [inserted[0].id]


def test_pruned_cron_ticks_are_forgotten(storage):
    storage.insert_cron_job("nightly", TICK, new_job())
    storage.insert_cron_job("nightly", TICK + timedelta(days=2), new_job())

    assert storage.prune_cron_ticks(before=TICK + timedelta(days=1)) == 1
    assert storage.insert_cron_job("nightly", TICK + timedelta(days=2), new_job()) is None


# Wake-ups


def test_an_insert_wakes_the_subscribers_of_its_queue(storage):
    woken: list[str] = []
    storage.subscribe(woken.append)
    try:
        storage.insert_jobs([new_job(), new_job(queue="other"), new_job(schedule_in=60)])
        eventually(lambda: {"q", "other"} <= set(woken))
    finally:
        storage.unsubscribe(woken.append)
    woken.clear()

    storage.insert_jobs([new_job()])

    assert woken == []


def test_a_failing_subscriber_does_not_break_an_insert(storage):
    def broken(queue: str) -> None:
        raise RuntimeError("subscriber bug")

    storage.subscribe(broken)
    try:
        job = storage.insert_jobs([new_job()])[0]
    finally:
        storage.unsubscribe(broken)

    assert storage.get_job(job.id) is not None


@pytest.mark.postgres
def test_an_insert_on_one_postgresql_connection_wakes_listeners_of_another(pg_schema_url):
    sender = flowpro.FlowPro(pg_schema_url)
    sender.migrate()
    receiver = flowpro.FlowPro(pg_schema_url)
    woken: list[str] = []
    receiver.storage.subscribe(woken.append)
    try:
        eventually(receiver.storage.listener_connected)

        sender.insert(new_job(queue="remote"))

        eventually(lambda: "remote" in woken)
    finally:
        receiver.close()
        sender.close()
