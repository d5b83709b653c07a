"""The thread pool that runs sync attempts: threads are woken one at a time, as work needs them.

``concurrent.futures.ThreadPoolExecutor`` wakes one thread per submitted call, so a round of ten
claimed jobs wakes ten threads that then fight for the GIL even when each job takes
microseconds. Here a submission wakes a thread only if no other is already on its way to the
queue, and a thread that takes a call wakes the next one only if more calls are waiting. Short
calls are then run back to back by the few threads that are awake, and calls that block (I/O,
sleeps) still fan out to every thread: each one wakes the next before it runs its own call.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("flowpro.executor")


class WakingPool:
    """Runs callables on at most ``threads`` threads, started when first needed.

    Example:
        >>> pool = WakingPool(2, name="demo")
        >>> done = threading.Event()
        >>> pool.submit(done.set)
        >>> done.wait(5)
        True
        >>> pool.shutdown()
    """

    def __init__(self, threads: int, *, name: str) -> None:
        if threads < 1:
            raise ValueError(f"a pool needs at least one thread, got {threads}")
        self.max_threads = threads
        self.name = name
        self._work: collections.deque[Callable[[], object]] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for work
        self._waking = 0  # threads notified (or just started) that have not taken work yet
        self._closed = False

    @property
    def size(self) -> int:
        """Return how many threads have been started."""
        return len(self._threads)

    def submit(self, fn: Callable[[], object]) -> None:
        """Queue ``fn`` to run on a pool thread.

        Raises:
            RuntimeError: the pool was shut down.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot submit to a pool that was shut down")
            self._work.append(fn)
            self._wake_one()

    def _wake_one(self) -> None:
        # Under the lock. A thread already on its way takes this call (and wakes the next
        # thread if more are waiting), so wake nobody then.
        if self._waking:
            return
        if self._idle > 0:
            self._idle -= 1
            self._waking += 1
            self._cond.notify()
        elif len(self._threads) < self.max_threads:
            self._waking += 1
            thread = threading.Thread(
                target=self._serve, name=f"{self.name}_{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self) -> None:
        cond = self._cond
        work = self._work
        woken = True  # started by _wake_one, which counted this thread as waking
        while True:
            with cond:
                while not work and not self._closed:
                    if woken:
                        self._waking -= 1
                    self._idle += 1
                    cond.wait()  # no spurious wake-ups: notify() counted this thread waking
                    woken = True
                if self._closed:
                    return
                fn = work.popleft()
                if woken:
                    self._waking -= 1
                    woken = False
                if work:
                    self._wake_one()  # more calls are waiting: the next thread comes along
            try:
                fn()
            except BaseException:  # the callables report their own outcome
                log.exception("a pool thread's call raised")
            del fn

    def shutdown(self) -> None:
        """Drop calls not started yet and let the threads end after their current call."""
        with self._cond:
            self._closed = True
            self._work.clear()
            self._cond.notify_all()
