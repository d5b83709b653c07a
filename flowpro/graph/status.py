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
        finished_times = [
            t
            for job in jobs
            for t in (job.completed_at, job.cancelled_at, job.discarded_at)
            if t is not None
        ]
        return cls.from_counts(
            workflow_id,
            workflows,
            dict(Counter(str(job.state) for job in jobs)),
            max(finished_times, default=None),
        )

    @classmethod
    def from_counts(
        cls,
        workflow_id: str,
        workflows: Sequence[dict[str, Any]],
        counts: dict[str, int],
        last_finished: datetime | None,
    ) -> WorkflowStatus:
        """Summarise a workflow run from its steps' count per state and the time a step last
        finished (``workflows``: the run's and its sub-workflows' rows, with ``id``, ``name``
        and ``inserted_at``).

        Example:
            >>> from datetime import UTC, datetime
            >>> at = datetime(2026, 1, 1, tzinfo=UTC)
            >>> rows = [{"id": "w1", "name": "etl", "inserted_at": at}]
            >>> WorkflowStatus.from_counts("w1", rows, {"completed": 3}, at).state
            'completed'
        """
        name = next((w["name"] for w in workflows if w["id"] == workflow_id), None)
        started = min((w["inserted_at"] for w in workflows), default=None)
        total = sum(counts.values())
        done = all(JobState(state) in TERMINAL_STATES for state in counts)
        if not total:
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
            total=total,
            started_at=started,
            finished_at=last_finished if done and total else None,
        )
