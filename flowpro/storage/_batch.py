"""Batch counters and callbacks, run inside the transaction of the acks that move them.

Each batch row keeps counters of its members' outcomes. An ack increments them with one
``UPDATE ... RETURNING`` (the row lock serialises concurrent acks, so every transaction sees
exact totals), and a callback kind whose condition holds is claimed in
``flowpro_batch_callbacks``, whose primary key lets it be inserted exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text

from flowpro.job import JobState

if TYPE_CHECKING:
    from flowpro.storage._sql import SqlStorage

KINDS = ("attempted", "completed", "exhausted", "cancelled", "discarded", "retryable")
CALLBACK_MAX_ATTEMPTS = 20

_BUMP = text(
    "UPDATE flowpro_batches SET attempted = attempted + :attempted, "
    "completed = completed + :completed, cancelled = cancelled + :cancelled, "
    "discarded = discarded + :discarded, retryable = retryable + :retryable "
    "WHERE id = :id RETURNING total, attempted, completed, cancelled, discarded, retryable, "
    "callback_worker, callback_args, callback_queue, name, callbacks"
)
_CLAIM = text(
    "INSERT INTO flowpro_batch_callbacks (batch_id, kind, inserted_at) "
    "VALUES (:batch_id, :kind, :now) ON CONFLICT DO NOTHING RETURNING kind"
)
_MARK = text(
    "UPDATE flowpro_batch_callbacks SET job_id = :job_id "
    "WHERE batch_id = :batch_id AND kind = :kind"
)


def count(
    st: SqlStorage,
    c: Connection,
    outcomes: Sequence[tuple[str, JobState, bool]],
    now: datetime,
    released: list[str],
) -> None:
    """Add member outcomes, as (batch id, new state, first attempt just ended), to their
    batches and fire due callbacks."""
    deltas: dict[str, dict[str, int]] = {}
    for batch_id, state, first in outcomes:
        delta = deltas.setdefault(batch_id, dict.fromkeys(KINDS, 0))
        if first:
            delta["attempted"] += 1
        if state is JobState.COMPLETED:
            delta["completed"] += 1
        elif state is JobState.CANCELLED:
            delta["cancelled"] += 1
        elif state is JobState.DISCARDED:
            delta["discarded"] += 1
        elif state is JobState.RETRYABLE:
            delta["retryable"] += 1
    for batch_id in sorted(deltas):  # a fixed order avoids deadlocks between nodes
        bump(st, c, batch_id, deltas[batch_id], now, released)


def bump(
    st: SqlStorage,
    c: Connection,
    batch_id: str,
    delta: dict[str, int],
    now: datetime,
    released: list[str],
) -> None:
    """Apply counter deltas to one batch and insert the callbacks that became due."""
    params = {kind: delta.get(kind, 0) for kind in KINDS if kind != "exhausted"}
    row = c.execute(_BUMP, {**params, "id": batch_id}).first()
    if row is None:
        return
    total, attempted, completed, cancelled, discarded, retryable = row[:6]
    worker, args, queue, name = row[6], row[7], row[8], row[9]
    wanted = set(json.loads(row[10] or "[]"))
    due = []
    if total and attempted >= total:
        due.append("attempted")
    if total and completed >= total:
        due.append("completed")
    if total and completed + cancelled + discarded >= total:
        due.append("exhausted")
    if cancelled:
        due.append("cancelled")
    if discarded:
        due.append("discarded")
    if retryable:
        due.append("retryable")
    for kind in (k for k in due if k in wanted):
        if c.execute(_CLAIM, {"batch_id": batch_id, "kind": kind, "now": st._ts(now)}).first():
            job_id = _insert_callback(st, c, batch_id, name, kind, worker, args, queue, now)
            c.execute(_MARK, {"job_id": job_id, "batch_id": batch_id, "kind": kind})
            released.append(queue or "default")


def _insert_callback(
    st: SqlStorage,
    c: Connection,
    batch_id: str,
    name: str | None,
    kind: str,
    worker: str,
    args: object,
    queue: str | None,
    now: datetime,
) -> int:
    args_json = args if isinstance(args, str) else json.dumps(args)
    meta = json.dumps({"batch_id": batch_id, "batch_name": name, "callback": kind})
    job_id = st._reserve_ids(c, 1)[0]
    st._write_jobs(
        c,
        [
            (
                job_id,
                "available",
                queue or "default",
                worker,
                args_json,
                meta,
                "[]",
                CALLBACK_MAX_ATTEMPTS,
                0,
                st._ts(now),
                st._ts(now),
                None,
                None,
                0,
                None,
                None,
            )
        ],
    )
    st._notify_in_tx(c, [queue or "default"])
    return job_id
