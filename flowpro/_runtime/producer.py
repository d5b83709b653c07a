"""A producer runs a queue (or its share of a queue's slots, see Node): claims jobs up to its
limit, runs them, acks in bulk."""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from flowpro._runtime.executor import Executor, JobTimeout, fail
from flowpro.errors import WorkerNotFound
from flowpro.job import Ack, Job
from flowpro.storage.base import ClaimedChunk, Storage
from flowpro.worker import chunk_workers, resolve_worker

log = logging.getLogger("flowpro.producer")


def _tag(ack: Ack, job: Job) -> Ack:
    """Mark the ack of a workflow step or batch member: it has follow-ups when written."""
    if job.workflow_id is None and job.batch_id is None:
        return ack
    # Positional construction: dataclasses.replace costs several times more per job.
    return Ack(
        ack.id,
        ack.attempt,
        ack.state,
        ack.at,
        ack.scheduled_at,
        ack.errors,
        ack.max_attempts,
        ack.recorded,
        True,
        job.batch_id is not None,
    )


@dataclass(slots=True)
class _Running:
    job: Job | None  # None for a chunk
    deadline: float | None  # time.monotonic() after which a sync attempt is timed out
    chunk: ClaimedChunk | None = None  # a chunk takes one slot for all its jobs
    started: float = 0.0

    def ids(self) -> list[int]:
        if self.chunk is not None:
            return self.chunk.ids
        assert self.job is not None  # noqa: S101 - a single attempt always has its job
        return [self.job.id]


# Prefetching: when attempts are this short on average, a producer also claims up to `limit`
# jobs ahead, so the next round's claim overlaps this round's work. A prefetched job waits
# locally (claimed, not started) at most READY_MAX_WAIT seconds before it is handed back.
PREFETCH_BELOW = 0.005
READY_MAX_WAIT = 1.0


class Producer:
    """Claims and runs the jobs of one queue on one node, at most ``limit`` at a time.

    Finished attempts are acked together with the next claim, in one transaction and one
    round trip, so a busy queue costs one commit per round rather than one per job. When only
    some slots are free and attempts are still running, the producer lingers a moment
    (``linger`` seconds) so that rounds stay large.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        queue: str,
        limit: int,
        node: str,
        poll_interval: float,
        clock: Callable[[], datetime],
        linger: float = 0.001,
        lane: int = 1,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        self.storage = storage
        # Called when a database call ends with nothing running, waiting or unwritten: the
        # node's `run(until_idle=True)` checks at once whether the whole node is idle.
        self.on_settled = on_settled
        self.queue = queue
        self.limit = limit
        self.node = node
        self.poll_interval = poll_interval
        self.clock = clock
        self.linger = linger
        self.executor = Executor(threads=limit, on_done=self._done, clock=clock, storage=storage)
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._running: dict[int, _Running] = {}
        self._ready: collections.deque[tuple[Job, float]] = collections.deque()
        self._duration: float | None = None  # moving average of attempt durations
        self._acks: list[Ack] = []
        # Acks being written now, and the claim time of a database call in flight: the node's
        # orphan check must not take these jobs for lost ones.
        self._writing: set[int] = set()
        self._calling_since: datetime | None = None
        self._abandoned: set[int] = set()
        self._fetch_wanted = True
        self._poll_now = False
        self._stopping = False
        self._halted = False
        # A node may run a queue with more than one producer (see Node): lane 2 and up are
        # named apart, so that logs and stack dumps tell them apart.
        name = f"flowpro-{queue}" if lane == 1 else f"flowpro-{queue}-{lane}"
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        # Chunk workers of this queue are claimed a chunk at a time, not by the plain claim.
        self.chunk_workers = chunk_workers(queue)
        self._exclude = [c.__flowpro_name__ for c in self.chunk_workers]
        self._chunk_wanted = bool(self.chunk_workers)
        if self.chunk_workers:
            soonest = min(c.chunk_timeout for c in self.chunk_workers)
            self.poll_interval = min(poll_interval, max(0.01, soonest / 4))

    # Control

    def start(self) -> None:
        """Start the producer thread."""
        self._thread.start()

    def wake(self, queue: str) -> None:
        """Note that jobs of ``queue`` may be available (called by wake-ups)."""
        if queue == self.queue:
            self._fetch_wanted = True
            self._chunk_wanted = bool(self.chunk_workers)
            self._event.set()
        elif queue == "*":
            # Something changed somewhere: look (a cheap read) rather than claim.
            self._poll_now = True
            self._event.set()

    def stop_claiming(self) -> None:
        """Claim nothing more; running attempts go on and are acked."""
        self._stopping = True
        self._event.set()

    def held(self) -> tuple[set[int], datetime | None]:
        """Return the ids of every job this producer knows to be executing under its node
        (running, prefetched, or with an ack not yet written), and the claim time of a
        database call in flight (jobs it claims are not known yet), if any."""
        with self._lock:
            ids = {job_id for running in self._running.values() for job_id in running.ids()}
            ids.update(job.id for job, _claimed in self._ready)
            ids.update(ack.id for ack in self._acks)
            ids.update(self._writing)
            return ids, self._calling_since

    def busy(self) -> bool:
        """Return whether attempts are running, acks are waiting to be written, or a claim
        or an ack is in flight (its jobs are not known to be done yet)."""
        with self._lock:
            # Acks are written only during a call, so _calling_since covers _writing too.
            return bool(self._running or self._acks or self._ready) or (
                self._calling_since is not None
            )

    def halt(self) -> list[int]:
        """Stop the loop after a last flush; return the ids of attempts still running."""
        self._halted = True
        self._event.set()
        self._thread.join(timeout=10)
        with self._lock:
            keys = [i for i in self._running if i not in self._abandoned]
            self._abandoned.update(keys)
            ids = [job_id for key in keys for job_id in self._running[key].ids()]
            never_started = [job.id for job, _claimed in self._ready]
            self._ready.clear()
        if never_started:
            try:
                self.storage.unclaim_jobs(self.node, never_started)
            except Exception as exc:  # the lifeline rescues them
                log.warning("queue %s: handing back prefetched jobs failed (%s)", self.queue, exc)
        self.executor.shutdown()
        return ids

    # Attempts

    def _done(self, job: Job, ack: Ack) -> None:
        with self._lock:
            entry = self._running.pop(job.id, None)
            if entry is not None:
                took = time.monotonic() - entry.started
                previous = self._duration
                self._duration = took if previous is None else previous * 0.9 + took * 0.1
            abandoned = job.id in self._abandoned
            self._abandoned.discard(job.id)
            if not abandoned:
                self._acks.append(_tag(ack, job))
            # Otherwise it was acked as timed out (or handed back): this result changes nothing.
        self._event.set()

    def _done_chunk(self, chunk: ClaimedChunk, jobs: list[Job] | None, acks: list[Ack]) -> None:
        """Take a chunk's acks; ``jobs`` is None when its rows could not be read back."""
        key = chunk.ids[0]
        with self._lock:
            self._running.pop(key, None)
            abandoned = key in self._abandoned
            self._abandoned.discard(key)
            if not abandoned and jobs is not None:
                by_id = {j.id: j for j in jobs}
                self._acks.extend(_tag(ack, by_id[ack.id]) for ack in acks)
        if jobs is None and not abandoned:
            try:
                self.storage.unclaim_jobs(self.node, chunk.ids)
            except Exception as exc:  # the lifeline rescues them
                log.warning("queue %s: handing back a chunk failed (%s)", self.queue, exc)
        self._chunk_wanted = True
        self._event.set()

    def _begin_call(self, now: datetime) -> list[Ack]:
        """Take the waiting acks for a database call made at ``now``; until ``_end_call``,
        ``held()`` counts them and anything the call claims as this node's."""
        with self._lock:
            acks, self._acks = self._acks, []
            self._writing = {ack.id for ack in acks}
            self._calling_since = now
        return acks

    def _end_call(self, unwritten: list[Ack] | None = None) -> None:
        """End a database call; ``unwritten`` acks (the call failed) wait again, in order."""
        with self._lock:
            if unwritten:
                self._acks[:0] = unwritten
            self._writing = set()
            self._calling_since = None
            settled = not (self._running or self._acks or self._ready)
        if settled and self.on_settled is not None:
            self.on_settled()

    def _claim_chunks(self, demand: int) -> int:
        """Claim ready chunks into free slots, writing the acks waiting so far in the same
        transaction (one commit a round); return how many slots the chunks took. A failed
        call writes nothing: its acks wait for the next round."""
        taken = 0
        for cls in self.chunk_workers:
            if taken >= demand:
                break
            now = self.clock()
            acks = self._begin_call(now)
            try:
                # Every free slot at once: one transaction, one statement per chunk.
                chunks = self.storage.fetch_chunk_many(
                    self.queue,
                    cls.__flowpro_name__,
                    size=cls.chunk_size,
                    ready_before=now - timedelta(seconds=cls.chunk_timeout),
                    node=self.node,
                    now=now,
                    count=demand - taken,
                    acks=acks,
                )
            except BaseException:
                self._end_call(unwritten=acks)
                raise
            with self._lock:
                for chunk in chunks:
                    self._running[chunk.ids[0]] = _Running(None, None, chunk)
            self._end_call()
            for chunk in chunks:
                self.executor.submit_chunk(chunk, functools.partial(self._done_chunk, chunk))
            taken += len(chunks)
        if taken < demand:
            self._chunk_wanted = False
        return taken

    def _deadline(self, job: Job) -> float | None:
        try:
            cls = resolve_worker(job.worker)
        except WorkerNotFound:
            return None
        if cls.timeout is None or cls.is_async:  # async attempts time out on their loop
            return None
        return time.monotonic() + cls.timeout

    def _expire(self) -> float | None:
        """Ack attempts past their deadline as timed out; return the next deadline."""
        now = time.monotonic()
        upcoming = None
        with self._lock:
            for job_id, running in self._running.items():
                if running.deadline is None or job_id in self._abandoned:
                    continue
                if running.deadline <= now and running.job is not None:
                    cls = resolve_worker(running.job.worker)
                    exc = JobTimeout(f"attempt timed out after {cls.timeout:g}s")
                    ack = fail(cls, cls(), running.job, exc, self.clock())
                    self._acks.append(_tag(ack, running.job))
                    self._abandoned.add(job_id)
                    self.executor.interrupt(job_id)
                elif upcoming is None or running.deadline < upcoming:
                    upcoming = running.deadline
        return upcoming

    # The loop

    def _start(self, jobs: list[Job]) -> None:
        with self._lock:
            self._register(jobs)
        self._submit(jobs)

    def _submit(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.executor.submit(job)

    def _register(self, jobs: list[Job]) -> None:
        # Under the lock: a job is always in _ready, _running or _acks for held().
        now = time.monotonic()
        for job in jobs:
            self._running[job.id] = _Running(job, self._deadline(job), started=now)

    def _start_ready(self) -> int:
        """Start prefetched jobs in free slots (hand back stale ones); return how many run."""
        if self._stopping or self._halted:
            stale = [job for job, _claimed in self._ready]
            self._ready.clear()
        else:
            cutoff = time.monotonic() - READY_MAX_WAIT
            stale = [job for job, claimed in self._ready if claimed < cutoff]
            if stale:
                self._ready = collections.deque(
                    (job, claimed) for job, claimed in self._ready if claimed >= cutoff
                )
        if stale:
            try:
                self.storage.unclaim_jobs(self.node, [j.id for j in stale])
            except Exception as exc:  # the lifeline rescues them if this node dies
                log.warning("queue %s: handing back prefetched jobs failed (%s)", self.queue, exc)
        start = []
        with self._lock:
            free = self.limit - len(self._running)
            while free > 0 and self._ready:
                start.append(self._ready.popleft()[0])
                free -= 1
            self._register(start)
        self._submit(start)
        return len(start)

    def _prefetch(self) -> int:
        """Return how many jobs to claim beyond the free slots."""
        fast = self._duration is not None and self._duration < PREFETCH_BELOW
        return self.limit if fast and not self._chunk_wanted else 0

    def _loop(self) -> None:
        try:
            self._rounds()
        finally:
            try:
                # This thread's own connection goes to the next run's producers.
                self.storage.release_thread()
            except Exception as exc:
                log.warning("queue %s: releasing the connection failed (%s)", self.queue, exc)

    def _rounds(self) -> None:
        failures = 0
        last_poll = time.monotonic()
        linger_until: float | None = None
        while True:
            self._event.clear()
            upcoming = self._expire()
            if self._ready:
                self._start_ready()
            with self._lock:
                running = len(self._running)
                pending = len(self._acks)
            free = 0 if (self._stopping or self._halted) else self.limit - running
            if free > 0 and self._chunk_wanted:
                try:
                    taken = self._claim_chunks(free)
                except Exception as exc:
                    log.warning("queue %s: claiming a chunk failed (%s)", self.queue, exc)
                    taken = 0
                    self._event.wait(0.1)
                free -= taken
                running += taken
            demand = 0
            if free > 0:
                demand = max(0, free + self._prefetch() - len(self._ready))
            fetch = demand > 0 and self._fetch_wanted
            if running and pending and free < self.limit // 2 and not self._halted:
                # Most slots are still busy: give them a moment so that this round is larger.
                if linger_until is None:
                    linger_until = time.monotonic() + self.linger
                remaining = linger_until - time.monotonic()
                if remaining > 0:
                    self._event.wait(remaining)
                    continue
            linger_until = None
            if pending or fetch:
                now = self.clock()
                acks = self._begin_call(now)
                try:
                    _applied, jobs = self.storage.ack_and_fetch(
                        acks,
                        self.queue,
                        demand=demand if fetch else 0,
                        node=self.node,
                        now=now,
                        exclude=self._exclude,
                    )
                except Exception as exc:
                    self._end_call(unwritten=acks)
                    failures += 1
                    delay = min(0.1 * 2**failures, 5.0)
                    log.warning(
                        "queue %s: database call failed (%s); retrying in %.1fs",
                        self.queue,
                        exc,
                        delay,
                    )
                    if self._halted and failures > 5:
                        log.error(
                            "queue %s: giving up on %d outcome(s); their jobs will be rescued",
                            self.queue,
                            len(acks),
                        )
                        return
                    self._event.wait(delay)
                    continue
                failures = 0
                if fetch:
                    self._fetch_wanted = len(jobs) == demand
                if jobs:
                    now_ready = time.monotonic()
                    self._start(jobs[:free])
                    self._ready.extend((job, now_ready) for job in jobs[free:])
                self._end_call()
                continue
            if self._halted:
                return
            next_poll = last_poll + self.poll_interval
            wake_at = next_poll if upcoming is None else min(next_poll, upcoming)
            self._event.wait(max(0.0, wake_at - time.monotonic()))
            if self._poll_now or time.monotonic() >= next_poll:
                self._poll_now = False
                last_poll = time.monotonic()
                if not self._stopping:
                    self._poll()

    def _poll(self) -> None:
        try:
            # Only ever raise the flags here: a wake-up may have raised them meanwhile.
            if self.chunk_workers and not self._chunk_wanted:
                # A partial chunk becomes ready when its timeout passes, which nothing
                # announces, so polls try the chunk claims again; but only when the queue has
                # an available job at all (one index probe). Trying them on an empty queue
                # cost a write transaction per chunk worker every poll, and kept the producer
                # so busy that `run(until_idle=True)` could not see it idle.
                if not self.storage.has_available(self.queue):
                    return  # no chunk and no plain job either
                self._chunk_wanted = True
            # Already wanted (the slots are merely full): the query could tell nothing new.
            if not self._fetch_wanted and self.storage.has_available(self.queue, self._exclude):
                self._fetch_wanted = True
        except Exception as exc:
            log.warning("queue %s: poll failed (%s)", self.queue, exc)
