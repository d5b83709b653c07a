"""Run one chunk: prepare every job, call ``process(jobs)`` once, and ack each job."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from flowpro._runtime.context import current_storage
from flowpro._runtime.executor import Clock, _terminal, conclude, fail, prepare
from flowpro.errors import FlowproError
from flowpro.job import Ack, ChunkResult, Job, JobState, Snooze, utcnow
from flowpro.storage.base import Storage
from flowpro.worker import Worker, resolve_worker


class ChunkError(FlowproError):
    """A ChunkWorker listed a job under ``ChunkResult(error=...)``."""


def run_chunk(
    jobs: Sequence[Job], clock: Clock = utcnow, storage: Storage | None = None
) -> list[Ack]:
    """Run a chunk in this thread; return one Ack per job."""
    token = current_storage.set(storage)
    try:
        return _run_chunk(jobs, clock)
    finally:
        current_storage.reset(token)


def _run_chunk(jobs: Sequence[Job], clock: Clock) -> list[Ack]:
    cls = resolve_worker(jobs[0].worker)
    acks: list[Ack] = []
    ready: list[Job] = []
    now = clock()
    for job in jobs:
        _cls, prepared = prepare(job, now)
        if isinstance(prepared, Ack):
            acks.append(prepared)  # bad args or a passed deadline: this job only
        else:
            ready.append(prepared)
    if not ready:
        return acks
    worker = cls()
    try:
        process: Any = worker.process
        if inspect.iscoroutinefunction(process):
            result = asyncio.run(process(ready))
        else:
            result = process(ready)
    except Exception as exc:
        return acks + [fail(cls, worker, job, exc, clock()) for job in ready]
    return acks + chunk_acks(cls, worker, ready, result, clock())


def chunk_acks(
    cls: type[Worker], worker: Worker, jobs: Sequence[Job], result: Any, now: datetime
) -> list[Ack]:
    """Turn a ChunkResult (or None) into one Ack per job; unlisted jobs complete."""
    if result is None:
        result = ChunkResult()
    if not isinstance(result, ChunkResult):
        exc = TypeError(
            f"{cls.__flowpro_name__}.process(jobs) must return None or a ChunkResult, "
            f"got {type(result).__name__}"
        )
        return [fail(cls, worker, job, exc, now) for job in jobs]
    listed: dict[int, tuple[str, Any]] = {}
    for kind in ("error", "cancel", "discard", "snooze"):
        entry = getattr(result, kind)
        if entry is None:
            continue
        detail, members = entry
        for member in members:
            listed[member.id if isinstance(member, Job) else int(member)] = (kind, detail)
    recorded = dict(result.recorded or {})
    completed = JobState.COMPLETED
    acks = []
    for job in jobs:
        entry = listed.get(job.id)
        if entry is None:
            value = recorded.get(job.id)
            # The common case, built directly: what conclude() returns for None.
            acks.append(
                Ack(job.id, job.attempt, completed, now)
                if value is None
                else conclude(cls, worker, job, value, now)
            )
            continue
        kind, detail = entry
        if kind == "error":
            acks.append(fail(cls, worker, job, ChunkError(str(detail)), now))
        elif kind == "cancel":
            acks.append(_terminal(cls, job, JobState.CANCELLED, str(detail), "cancel", now))
        elif kind == "discard":
            acks.append(_terminal(cls, job, JobState.DISCARDED, str(detail), "discard", now))
        else:
            acks.append(conclude(cls, worker, job, Snooze(float(detail)), now))
    return acks
