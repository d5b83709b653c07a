"""Run one job and turn its outcome into an Ack (sync in a thread, async on the node's loop)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import inspect
import logging
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Any

from flowpro._runtime.context import current_storage
from flowpro._runtime.pool import WakingPool
from flowpro.errors import ArgsError, CodecError, ConfigError, FlowproError, WorkerNotFound
from flowpro.job import Ack, Cancel, Discard, Job, JobState, Snooze, error_entry, utcnow
from flowpro.storage.base import ClaimedChunk, Storage
from flowpro.worker import Worker, resolve_worker

log = logging.getLogger("flowpro.executor")

MAX_TRACEBACK = 4_000

Clock = Callable[[], datetime]


class JobTimeout(FlowproError, TimeoutError):
    """An attempt ran longer than its worker's ``timeout``."""


# Preparing and concluding an attempt


def prepare(job: Job, now: datetime) -> tuple[type[Worker] | None, Job | Ack]:
    """Return the worker class and the job as ``process`` sees it, or the Ack ending it now."""
    try:
        cls = resolve_worker(job.worker)
    except WorkerNotFound as exc:
        return None, _terminal(None, job, JobState.DISCARDED, str(exc), "worker_not_found", now)
    deadline = _deadline(job)
    if deadline is not None and now > deadline:
        message = f"deadline {deadline.isoformat()} passed before the job could start"
        # flowpro's own message quotes no job data: stored plain even for encrypted workers.
        return cls, _terminal(None, job, JobState.CANCELLED, message, "deadline", now)
    if _is_batch_callback(cls, job):
        # A callback's args are the batch's callback_args, stored as given (like meta): the
        # worker's model and encryption describe its members' args, not these.
        return cls, job
    try:
        args = cls.load_args(job)
    except ArgsError as exc:
        # Args that no longer validate cannot succeed on a retry. The message may name keys
        # of decrypted args, so an encrypted worker seals it.
        message = f"args are no longer valid: {exc}"
        return cls, _terminal(cls, job, JobState.DISCARDED, message, "args", now)
    except CodecError as exc:
        # Tampered or wrong-key args; DecryptError messages hold no plaintext or key.
        kind = type(exc).__name__
        return cls, _terminal(None, job, JobState.DISCARDED, _describe(exc), kind, now)
    except ConfigError as exc:
        # The key source failed (unset variable, secret store down): retry once it is back.
        # Its messages never contain a key, and no key is at hand to seal them.
        try:
            worker = cls()  # for its backoff()
        except Exception:
            worker = None
        return cls, fail(None, worker, job, exc, now)
    except Exception as exc:
        # A custom validator of the args model raised something other than ValueError.
        return cls, fail(cls, None, job, exc, now)
    if args is job.args and cls.encrypted is None:
        return cls, job
    return cls, job.with_args(args, redacted=cls.encrypted is not None)


def conclude(cls: type[Worker], worker: Worker, job: Job, result: Any, now: datetime) -> Ack:
    """Return the Ack for a ``process`` call that returned ``result``."""
    if isinstance(result, Snooze):
        return Ack(
            id=job.id,
            attempt=job.attempt,
            state=JobState.SCHEDULED,
            at=now,
            scheduled_at=now + timedelta(seconds=max(0.0, float(result.seconds))),
            # A snooze is not a failure: give the attempt back.
            max_attempts=job.max_attempts + 1,
        )
    if isinstance(result, Cancel):
        return _terminal(cls, job, JobState.CANCELLED, result.reason, "cancel", now)
    if isinstance(result, Discard):
        return _terminal(cls, job, JobState.DISCARDED, result.reason, "discard", now)
    try:
        recorded = cls.pack_output(job, result)
    except CodecError as exc:
        return fail(cls, worker, job, exc, now)
    return Ack(id=job.id, attempt=job.attempt, state=JobState.COMPLETED, at=now, recorded=recorded)


def fail(
    cls: type[Worker] | None, worker: Worker | None, job: Job, exc: BaseException, now: datetime
) -> Ack:
    """Return the Ack for an attempt that raised ``exc``: retryable with backoff, or discarded."""
    details = None
    if not isinstance(exc, CodecError | JobTimeout):
        details = "".join(traceback.format_exception(exc))[-MAX_TRACEBACK:]
    entry = _entry(cls, job, now, _describe(exc), "error", details)
    errors = [*job.errors, entry]
    if job.attempt >= job.max_attempts:
        return Ack(id=job.id, attempt=job.attempt, state=JobState.DISCARDED, at=now, errors=errors)
    try:
        delay = float(worker.backoff(job)) if worker is not None else 15.0
    except Exception:
        log.warning("backoff() of %s failed; retrying in 15 s", job.worker)
        delay = 15.0
    return Ack(
        id=job.id,
        attempt=job.attempt,
        state=JobState.RETRYABLE,
        at=now,
        scheduled_at=now + timedelta(seconds=max(0.0, delay)),
        errors=errors,
    )


def _terminal(
    cls: type[Worker] | None, job: Job, state: JobState, message: str, kind: str, now: datetime
) -> Ack:
    errors = [*job.errors, _entry(cls, job, now, message, kind, None)]
    return Ack(id=job.id, attempt=job.attempt, state=state, at=now, errors=errors)


def _entry(
    cls: type[Worker] | None,
    job: Job,
    now: datetime,
    message: str,
    kind: str,
    details: str | None,
) -> dict[str, Any]:
    message = _storable(message)
    details = None if details is None else _storable(details)
    entry = error_entry(job.attempt, now, message, kind=kind)
    if cls is not None:
        entry.update(cls.describe_error(job, message, details, kind=kind))
    elif details is not None:
        entry["traceback"] = details
    return entry


def _worker_class(job: Job) -> type[Worker] | None:
    try:
        return resolve_worker(job.worker)
    except WorkerNotFound:
        return None


def _deadline(job: Job) -> datetime | None:
    value = job.meta.get("deadline_at") if isinstance(job.meta, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _storable(text: str) -> str:
    """Return ``text`` without NUL or unpaired surrogates, which PostgreSQL's JSON refuses
    (an error entry holding one would make the ack fail and strand the job)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _run_hooks(cls: type[Worker], worker: Worker | None, ack: Ack, job: Job, result: Any) -> None:
    """Call after_process and on_cancelled / on_discarded; their errors change nothing."""
    if worker is None:
        try:
            worker = cls()
        except Exception:
            log.warning("cannot build %s to run its hooks", cls.__flowpro_name__)
            return
    if isinstance(result, Cancel | Discard):
        reason = result.reason
    elif isinstance(result, BaseException):
        reason = _describe(result)
    else:
        reason = str(ack.errors[-1].get("error", "")) if ack.errors else ""
    try:
        worker.after_process(ack.state, job, result)
        if ack.state is JobState.CANCELLED:
            worker.on_cancelled(job, reason)
        elif ack.state is JobState.DISCARDED:
            worker.on_discarded(job, reason)
    except Exception as exc:
        # The message may quote decrypted args: name the type only for encrypted workers.
        detail = type(exc).__name__ if cls.encrypted is not None else _describe(exc)
        log.warning("a hook of %s failed: %s", cls.__flowpro_name__, detail)


# Running


def run_sync(job: Job, clock: Clock = utcnow, storage: Storage | None = None) -> Ack:
    """Run one job in this thread (sync workers; async ones get a private loop)."""
    token = current_storage.set(storage)
    try:
        return _run_sync(job, clock)
    finally:
        current_storage.reset(token)


def _run_sync(job: Job, clock: Clock) -> Ack:
    cls, prepared = prepare(job, clock())
    if isinstance(prepared, Ack):
        if cls is not None:
            _run_hooks(cls, None, prepared, job, None)
        return prepared
    assert cls is not None  # noqa: S101 - prepare returns a class with every Job
    worker: Worker | None = None
    result: Any = None
    try:
        worker = cls()
        worker.before_process(prepared)
        entry = entry_point(worker, prepared)
        if inspect.iscoroutinefunction(entry):
            result = asyncio.run(_call_async(entry, prepared, cls.timeout))
        else:
            result = entry(prepared)
        ack = conclude(cls, worker, prepared, result, clock())
    except Exception as exc:
        result = exc
        ack = fail(cls, worker, prepared, exc, clock())
    _run_hooks(cls, worker, ack, prepared, result)
    return ack


def _raise_timeout_in(ident: int) -> bool:
    """Raise JobTimeout inside thread ``ident`` at its next Python instruction."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(JobTimeout)
    )
    return bool(done == 1)


def run_sync_bounded(job: Job, clock: Clock = utcnow, storage: Storage | None = None) -> Ack:
    """Run one job as ``run_sync`` does, enforcing a sync worker's ``timeout``: the attempt
    runs in a helper thread; past its timeout it is failed with ``JobTimeout``, which is also
    raised inside that thread (at its next Python instruction) so that it stops.

    Example:
        >>> ack = run_sync_bounded(job)   # doctest: +SKIP
    """
    cls = _worker_class(job)
    if cls is None or cls.timeout is None or is_async(cls, job):
        return run_sync(job, clock, storage)  # async attempts time out on their own loop
    done: list[Ack] = []

    def attempt() -> None:
        # JobTimeout raised into this thread after the deadline ends it quietly: the caller
        # has already failed the attempt.
        with contextlib.suppress(BaseException):
            done.append(run_sync(job, clock, storage))

    thread = threading.Thread(target=attempt, name=f"flowpro-drain-{job.id}", daemon=True)
    thread.start()
    thread.join(cls.timeout)
    if done:
        return done[0]
    if thread.ident is not None:
        _raise_timeout_in(thread.ident)
    exc = JobTimeout(f"attempt timed out after {cls.timeout:g}s")
    return fail(cls, cls(), job, exc, clock())


async def run_async(job: Job, clock: Clock = utcnow, storage: Storage | None = None) -> Ack:
    """Run one job of an ``async def`` worker on the current loop, with its timeout."""
    token = current_storage.set(storage)
    try:
        return await _run_async(job, clock)
    finally:
        current_storage.reset(token)


async def _run_async(job: Job, clock: Clock) -> Ack:
    cls, prepared = prepare(job, clock())
    if isinstance(prepared, Ack):
        if cls is not None:
            _run_hooks(cls, None, prepared, job, None)
        return prepared
    assert cls is not None  # noqa: S101
    worker: Worker | None = None
    result: Any = None
    try:
        worker = cls()
        worker.before_process(prepared)
        result = await _call_async(entry_point(worker, prepared), prepared, cls.timeout)
        ack = conclude(cls, worker, prepared, result, clock())
    except Exception as exc:
        result = exc
        ack = fail(cls, worker, prepared, exc, clock())
    _run_hooks(cls, worker, ack, prepared, result)
    return ack


def entry_point(worker: Worker, job: Job) -> Callable[[Job], Any]:
    """Return what runs ``job``: ``process``, or a batch callback method for callback jobs."""
    kind = job.meta.get("callback") if isinstance(job.meta, dict) else None
    if isinstance(kind, str) and "batch_id" in job.meta:
        method = getattr(worker, f"batch_{kind}", None)
        if callable(method):
            return method  # type: ignore[no-any-return]
    return worker.process


def _is_batch_callback(cls: type[Worker], job: Job) -> bool:
    kind = job.meta.get("callback") if isinstance(job.meta, dict) else None
    return (
        isinstance(kind, str)
        and "batch_id" in job.meta
        and callable(getattr(cls, f"batch_{kind}", None))
    )


def is_async(cls: type[Worker], job: Job) -> bool:
    """Return whether ``job`` runs as a coroutine (its entry point is ``async def``)."""
    kind = job.meta.get("callback") if isinstance(job.meta, dict) else None
    if isinstance(kind, str) and "batch_id" in job.meta:
        method = getattr(cls, f"batch_{kind}", None)
        if callable(method):
            return inspect.iscoroutinefunction(method)
    return cls.is_async


async def _call_async(entry: Callable[[Job], Any], job: Job, timeout: float | None) -> Any:
    if timeout is None:
        return await entry(job)
    try:
        return await asyncio.wait_for(entry(job), timeout)
    except TimeoutError:
        raise JobTimeout(f"attempt timed out after {timeout:g}s") from None


class Executor:
    """Runs sync workers in a thread pool (``WakingPool``: threads are woken as work needs
    them) and async workers on one event-loop thread.

    ``on_done(job, ack)`` is called from the running thread when an attempt ends.
    """

    def __init__(
        self,
        *,
        threads: int,
        on_done: Callable[[Job, Ack], None],
        clock: Clock,
        storage: Storage | None = None,
    ) -> None:
        self._storage = storage
        self._pool = WakingPool(max(1, threads), name="flowpro")
        self._on_done = on_done
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        self.threads: dict[int, int] = {}  # job id -> thread ident, to interrupt on timeout

    def submit(self, job: Job) -> None:
        """Start one attempt."""
        try:
            run_async_ = is_async(resolve_worker(job.worker), job)
        except WorkerNotFound:
            run_async_ = False
        if run_async_:
            future = asyncio.run_coroutine_threadsafe(
                run_async(job, self._clock, self._storage), self._event_loop()
            )
            future.add_done_callback(lambda f: self._finish(job, f))
        else:
            self._pool.submit(functools.partial(self._run_in_thread, job))

    def submit_chunk(
        self, chunk: ClaimedChunk, on_done: Callable[[list[Job] | None, list[Ack]], None]
    ) -> None:
        """Start one chunk (one slot): its rows become Jobs in the worker thread, then
        ``on_done(jobs, acks)`` gets an Ack per job (``jobs`` None: the rows were unreadable)."""
        from flowpro._runtime.chunks import run_chunk

        def run() -> None:
            try:
                jobs = chunk.jobs()
            except Exception:
                log.exception("cannot read back the %d claimed jobs of a chunk", len(chunk.ids))
                on_done(None, [])
                return
            try:
                acks = run_chunk(jobs, self._clock, self._storage)
            except BaseException as exc:
                error = exc if isinstance(exc, Exception) else JobTimeout(type(exc).__name__)
                acks = [fail(_worker_class(j), None, j, error, self._clock()) for j in jobs]
            on_done(jobs, acks)

        self._pool.submit(run)

    def _run_in_thread(self, job: Job) -> None:
        self.threads[job.id] = threading.get_ident()
        try:
            ack = run_sync(job, self._clock, self._storage)
        except BaseException as exc:  # JobTimeout injected by interrupt(), or worse
            error = exc if isinstance(exc, Exception) else JobTimeout(type(exc).__name__)
            ack = fail(_worker_class(job), None, job, error, self._clock())
        finally:
            self.threads.pop(job.id, None)
        self._on_done(job, ack)

    def _finish(self, job: Job, future: Future[Ack]) -> None:
        try:
            ack = future.result()
        except BaseException as exc:
            ack = fail(_worker_class(job), None, job, exc, self._clock())
        self._on_done(job, ack)

    def interrupt(self, job_id: int) -> bool:
        """Raise JobTimeout inside the thread running ``job_id`` (takes effect at the next
        Python bytecode; a blocking C call finishes first)."""
        ident = self.threads.get(job_id)
        return ident is not None and _raise_timeout_in(ident)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_serve_loop, args=(loop,), name="flowpro-async", daemon=True
                )
                thread.start()
                self._loop = loop
            return self._loop

    def shutdown(self) -> None:
        """Stop accepting attempts; sync ones go on in their threads, async ones are cancelled."""
        self._pool.shutdown()
        with self._loop_lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)


def _serve_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Run the async workers' loop until stopped, then cancel what is left and close it."""
    try:
        loop.run_forever()
    finally:
        # Attempts still running at shutdown were handed back: cancel them so that the loop
        # can be closed (an unclosed loop leaks its self-pipe sockets).
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
