"""The status of a workflow run: its state, step counts per state, and timing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flowpro.job import TERMINAL_STATES, Job, JobState, utcnow


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """What ``fp.workflow_status(id)`` returns.

    ``state`` is ``running`` while any step can still run, then ``completed`` (every step
    completed), ``discarded`` (some step discarded) or ``cancelled``.

    Example:
        >>> status = fp.workflow_status(wf.workflow_id)   # doctest: +SKIP
        >>> status.state, status.counts                   # doctest: +SKIP
        ('completed', {'completed': 4})
    """

    workflow_id: str
    name: str | None
    state: str
    counts: dict[str, int]
    total: int
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def duration(self) -> timedelta | None:
        """From insert to the last step finishing (to now while running)."""
        if self.started_at is None:
            return None
        return (self.finished_at or utcnow()) - self.started_at

    @classmethod
    def of(
        cls, workflow_id: str, workflows: Sequence[dict[str, Any]], jobs: Sequence[Job]
    ) -> WorkflowStatus:
        """Summarise the rows of a workflow run."""
        counts = Counter(str(job.state) for job in jobs)
        name = next((w["name"] for w in workflows if w["id"] == workflow_id), None)
        started = min((w["inserted_at"] for w in workflows), default=None)
        finished_times = [
            t
            for job in jobs
            for t in (job.completed_at, job.cancelled_at, job.discarded_at)
            if t is not None
        ]
        done = all(job.state in TERMINAL_STATES for job in jobs)
        if not jobs:
            state = "completed"
        elif not done:
            state = "running"
        elif counts.get(JobState.DISCARDED, 0):
            state = "discarded"
        elif counts.get(JobState.CANCELLED, 0):
            state = "cancelled"
        else:
            state = "completed"
        return cls(
            workflow_id=workflow_id,
            name=name,
            state=state,
            counts=dict(counts),
            total=len(jobs),
            started_at=started,
            finished_at=max(finished_times) if done and finished_times else None,
        )
