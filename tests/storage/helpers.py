"""Builders shared by the storage contract tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import flowpro
from flowpro.job import Ack, Job, JobState, NewJob, utcnow


class Noop(flowpro.Worker, queue="q"):
    def process(self, job: Job) -> None:
        return None


class Other(flowpro.Worker, queue="other"):
    def process(self, job: Job) -> None:
        return None


def new_job(args: dict[str, Any] | None = None, **options: Any) -> NewJob:
    return Noop.new(args or {}, **options)


def ago(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


def later(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


def claim_one(storage: Any, queue: str | None = "q", node: str = "n1") -> Job:
    jobs = storage.fetch_jobs(queue, demand=1, node=node, now=utcnow())
    assert len(jobs) == 1
    return jobs[0]  # type: ignore[no-any-return]


def ack(job: Job, state: JobState, **fields: Any) -> Ack:
    return Ack(id=job.id, attempt=job.attempt, state=state, at=utcnow(), **fields)
