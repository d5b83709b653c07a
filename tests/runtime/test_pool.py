"""The executor's thread pool: every call runs once, blocking calls fan out to every thread,
and a shut-down pool starts nothing more."""

from __future__ import annotations

import logging
import random
import threading
import time

import pytest

from flowpro._runtime.pool import WakingPool


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_a_pool_needs_a_thread():
    with pytest.raises(ValueError, match="at least one thread"):
        WakingPool(0, name="t")


def test_blocking_calls_run_side_by_side_on_every_thread():
    pool = WakingPool(6, name="t")
    barrier = threading.Barrier(6, timeout=10)
    passed = []

    for _ in range(6):
        # Each call blocks until all six are in: only six threads at once get them through.
        pool.submit(lambda: passed.append(barrier.wait()))

    assert wait_for(lambda: len(passed) == 6)
    assert pool.size == 6
    pool.shutdown()


def test_calls_queued_behind_busy_threads_run_when_a_thread_frees_up():
    pool = WakingPool(2, name="t")
    release = threading.Event()
    done = []
    pool.submit(lambda: release.wait(10))
    pool.submit(lambda: release.wait(10))

    for n in range(5):
        pool.submit(lambda n=n: done.append(n))
    time.sleep(0.05)
    assert done == [] and pool.size == 2  # never more threads than allowed

    release.set()
    assert wait_for(lambda: sorted(done) == [0, 1, 2, 3, 4])
    pool.shutdown()


@pytest.mark.parametrize("round_", range(5))
def test_every_call_runs_exactly_once_under_concurrent_submitters(round_):
    pool = WakingPool(10, name="t")
    counts = [0] * 4_000
    lock = threading.Lock()
    rng = random.Random(round_)
    naps = [rng.random() < 0.02 for _ in counts]

    def call(n):
        if naps[n]:
            time.sleep(0.002)  # some calls block, so threads are woken and go idle again
        with lock:
            counts[n] += 1

    def submitter(start):
        for n in range(start, len(counts), 4):
            pool.submit(lambda n=n: call(n))
            if n % 97 == 0:
                time.sleep(0.001)  # let the pool run dry now and then

    submitters = [threading.Thread(target=submitter, args=(s,)) for s in range(4)]
    for thread in submitters:
        thread.start()
    for thread in submitters:
        thread.join()

    assert wait_for(lambda: sum(counts) == len(counts))
    time.sleep(0.02)
    assert set(counts) == {1}
    assert pool.size <= 10
    pool.shutdown()


def test_a_raising_call_is_logged_and_its_thread_goes_on(caplog):
    pool = WakingPool(1, name="t")
    ran = threading.Event()

    with caplog.at_level(logging.ERROR, logger="flowpro.executor"):
        pool.submit(lambda: 1 / 0)
        pool.submit(ran.set)
        assert ran.wait(10)

    assert "a pool thread's call raised" in caplog.text
    assert pool.size == 1
    pool.shutdown()


def test_shutdown_drops_calls_not_started_and_refuses_new_ones():
    pool = WakingPool(1, name="t")
    release = threading.Event()
    started = threading.Event()
    ran = []

    def first():
        started.set()
        release.wait(10)
        ran.append("first")

    pool.submit(first)
    assert started.wait(10)
    pool.submit(lambda: ran.append("queued"))
    pool.shutdown()
    release.set()

    assert wait_for(lambda: ran == ["first"])
    time.sleep(0.05)
    assert ran == ["first"]  # the running call finished; the queued one never started
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)


def test_idle_threads_end_at_shutdown():
    pool = WakingPool(3, name="t-idle")
    barrier = threading.Barrier(3, timeout=10)
    for _ in range(3):
        pool.submit(barrier.wait)
    assert wait_for(lambda: barrier.n_waiting == 0 and pool.size == 3)

    pool.shutdown()

    assert wait_for(lambda: not any(t.name.startswith("t-idle_") for t in threading.enumerate()))
