"""Graph statements both adapters share: planned inserts, workflow progression, batch counters.

Everything that follows from a job finishing runs here, inside the transaction of the ack that
finished it, so it happens exactly once: a step leaves ``suspended`` when the counter of its
unmet deps reaches zero (row locks serialise concurrent decrements under READ COMMITTED), and
failures cascade to the steps that depended on them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, text

from flowpro.errors import GraphError
from flowpro.job import Ack, InsertPlan, Job, JobState

if TYPE_CHECKING:
    from flowpro.storage._sql import SqlStorage

TERMINAL = {JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED}

_INSERT_WORKFLOW = text(
    "INSERT INTO flowpro_workflows (id, name, root_id, parent_id, ignore_cancelled, "
    "ignore_discarded, ignore_deleted, context, inserted_at) VALUES (:id, :name, :root_id, "
    ":parent_id, :ignore_cancelled, :ignore_discarded, :ignore_deleted, {context}, :now)"
)
_INSERT_BATCH = text(
    "INSERT INTO flowpro_batches (id, name, callback_worker, callback_args, callback_queue, "
    "callbacks, total, inserted_at) VALUES (:id, :name, :callback_worker, {args}, "
    ":callback_queue, :callbacks, :total, :now)"
)
_GROW_BATCH = text("UPDATE flowpro_batches SET total = total + :n WHERE id = :id RETURNING id")
_FIND_STEP = (
    "SELECT j.id, j.state, w.ignore_cancelled, w.ignore_discarded FROM flowpro_steps s "
    "JOIN flowpro_jobs j ON j.id = s.job_id JOIN flowpro_workflows w ON w.id = j.workflow_id "
    "WHERE s.workflow_id = :workflow_id AND s.step = :step"
)
# Run on the driver's cursor where the adapter allows (``SqlStorage._rows``): both run on
# every ack round of workflow steps. ``{ids}`` and ``{ok}`` are lists of ``:name`` marks.
_POLICY = (
    "SELECT j.id, j.step, w.ignore_cancelled, w.ignore_discarded FROM flowpro_jobs j "
    "JOIN flowpro_workflows w ON w.id = j.workflow_id WHERE j.id IN ({ids})"
)
# Each waiting step loses as many unmet deps as it has among the ``ok`` ones: counted once per
# step (a grouped scan of the edges from those deps), not once per step and column.
RELEASE = (
    "UPDATE flowpro_jobs AS t SET deps_pending = t.deps_pending - c.n, "
    "state = CASE WHEN t.deps_pending - c.n > 0 THEN t.state "
    "WHEN t.scheduled_at > :now THEN 'scheduled' ELSE 'available' END "
    "FROM (SELECT job_id, count(*) AS n FROM flowpro_deps WHERE dep_id IN ({ok}) "
    "GROUP BY job_id) AS c "
    "WHERE t.id = c.job_id AND t.state = 'suspended' "
    "RETURNING state, queue"
)


def in_marks(name: str, values: Sequence[object]) -> tuple[str, dict[str, object]]:
    """Return ``:name_0, :name_1, ...`` for an IN list, and the parameters they name."""
    keys = [f"{name}_{i}" for i in range(len(values))]
    return ", ".join(f":{key}" for key in keys), dict(zip(keys, values, strict=True))


def insert_plan(st: SqlStorage, c: Connection, plan: InsertPlan, now: datetime) -> list[Job]:
    """Write a plan: workflow and batch rows, jobs (steps with deps suspended), edges."""
    count = len(plan.jobs)
    pending = [0] * count
    for dependent, _dep in plan.deps:
        pending[dependent] += 1
    external: list[tuple[int, int]] = []
    doomed: dict[int, str] = {}
    root_id = None
    if plan.append_to is not None:
        # Sub-workflows appended from inside a sub-workflow belong to the outermost root.
        root_id = _check_new_steps(c, plan)
    if plan.external_deps:
        find = text(_FIND_STEP + st._for_update())
        for index, workflow_id, step in plan.external_deps:
            row = c.execute(find, {"workflow_id": workflow_id, "step": step}).first()
            if row is None:
                raise GraphError(f"workflow {workflow_id!r} has no step {step!r} to depend on")
            external.append((index, row[0]))
            state = JobState(row[1])
            if state is JobState.COMPLETED:
                continue
            if (state is JobState.CANCELLED and not row[2]) or (
                state is JobState.DISCARDED and not row[3]
            ):
                doomed[index] = f"upstream step {step!r} is {state}"
            elif state not in TERMINAL:
                pending[index] += 1
    ts = st._ts
    if plan.workflows:
        sql = text(_INSERT_WORKFLOW.text.format(context=st._json_in("context")))
        c.execute(
            sql,
            [
                {
                    "id": w.id,
                    "name": w.name,
                    "root_id": root_id or w.root_id,
                    "parent_id": w.parent_id,
                    "ignore_cancelled": w.ignore_cancelled,
                    "ignore_discarded": w.ignore_discarded,
                    "ignore_deleted": w.ignore_deleted,
                    "context": w.context_json,
                    "now": ts(now),
                }
                for w in plan.workflows
            ],
        )
    planned_batches = {b.id for b in plan.batches}
    members: dict[str, int] = {}
    for job in plan.jobs:
        if job.batch_id is not None:
            members[job.batch_id] = members.get(job.batch_id, 0) + 1
    if plan.batches:
        sql = text(_INSERT_BATCH.text.format(args=st._json_in("callback_args")))
        c.execute(
            sql,
            [
                {
                    "id": b.id,
                    "name": b.name,
                    "callback_worker": b.callback_worker,
                    "callback_args": b.callback_args_json,
                    "callback_queue": b.callback_queue,
                    "callbacks": json.dumps(list(b.callbacks)),
                    "total": members.get(b.id, 0),
                    "now": ts(now),
                }
                for b in plan.batches
            ],
        )
    for batch_id, n in members.items():
        if (
            batch_id not in planned_batches
            and c.execute(_GROW_BATCH, {"id": batch_id, "n": n}).first() is None
        ):
            raise GraphError(f"batch {batch_id!r} does not exist")
    ids = st._reserve_ids(c, count)
    rows = []
    saved = []
    for i, job in enumerate(plan.jobs):
        at = job.resolve_scheduled_at(now)
        if pending[i] or i in doomed:
            state = JobState.SUSPENDED
        else:
            state = JobState.AVAILABLE if at <= now else JobState.SCHEDULED
        rows.append(
            (
                ids[i],
                state.value,
                job.queue,
                job.worker,
                job.stored_args(ids[i]),
                job.meta_json,
                json.dumps(job.tags) if job.tags else "[]",
                job.max_attempts,
                job.priority,
                ts(now),
                ts(at),
                job.workflow_id,
                job.step,
                pending[i],
                job.batch_id,
                job.chunk_key,
            )
        )
        saved.append(st._saved(job, ids[i], now, state))
    st._write_jobs(c, rows)
    named = [
        (job.workflow_id, job.step, ids[i])
        for i, job in enumerate(plan.jobs)
        if job.workflow_id is not None and job.step is not None
    ]
    if named:
        st._write_steps(c, named)
    edges = [{"job_id": ids[a], "dep_id": ids[b]} for a, b in plan.deps]
    edges += [{"job_id": ids[a], "dep_id": dep_id} for a, dep_id in external]
    if edges:
        st._write_deps(c, [(e["job_id"], e["dep_id"]) for e in edges])
    queues = sorted({j.queue for j in saved if j.state is JobState.AVAILABLE})
    if queues:
        st._notify_in_tx(c, queues)
    if doomed:
        cancelled: list[int] = []
        for index, reason in doomed.items():
            cancelled += _cancel_suspended(st, c, [ids[index]], reason, now, by_id=True)
        progress(
            st, c, [(job_id, JobState.CANCELLED) for job_id in cancelled], now, [], upstream=True
        )
        gone = set(cancelled)
        saved = [_with_state(j, JobState.CANCELLED) if j.id in gone else j for j in saved]
    return saved


def _check_new_steps(c: Connection, plan: InsertPlan) -> str:
    """Check the appended workflow exists and the new step names are free; return its root."""
    names = [job.step for job in plan.jobs if job.workflow_id == plan.append_to and job.step]
    root = c.execute(
        text("SELECT root_id FROM flowpro_workflows WHERE id = :id"), {"id": plan.append_to}
    ).first()
    if root is None:
        raise GraphError(f"workflow {plan.append_to!r} does not exist")
    if names:
        taken = c.execute(
            text(
                "SELECT step FROM flowpro_steps WHERE workflow_id = :id AND step IN :names"
            ).bindparams(bindparam("names", expanding=True)),
            {"id": plan.append_to, "names": names},
        ).fetchall()
        if taken:
            raise GraphError(
                f"workflow {plan.append_to!r} already has step(s) "
                + ", ".join(repr(row[0]) for row in taken)
            )
    return str(root[0])


def after_ack(
    st: SqlStorage,
    c: Connection,
    acks: Sequence[Ack],
    applied: Sequence[tuple[int, str | None, str | None]],
    released: list[str],
) -> list[int]:
    """Run what follows from the applied acks; return their ids. Adds released queues."""
    if not applied:
        return []
    by_id = {ack.id: ack for ack in acks}
    moves = [
        (job_id, by_id[job_id].state, workflow_id, batch_id, by_id[job_id].attempt == 1)
        for job_id, workflow_id, batch_id in applied
        if workflow_id is not None or batch_id is not None
    ]
    if moves:
        transitions(st, c, moves, max(ack.at for ack in acks), released)
    return [job_id for job_id, _wf, _batch in applied]


def transitions(
    st: SqlStorage,
    c: Connection,
    moves: Sequence[tuple[int, JobState, str | None, str | None, bool]],
    now: datetime,
    released: list[str],
) -> None:
    """Follow up state changes of graph jobs: (id, new state, workflow id, batch id, whether
    the job's first attempt just ended)."""
    finished = [(m[0], m[1]) for m in moves if m[2] is not None and m[1] in TERMINAL]
    if finished:
        progress(st, c, finished, now, released)
    batched = [(m[3], m[1], m[4]) for m in moves if m[3] is not None]
    if batched:
        from flowpro.storage import _batch

        _batch.count(st, c, batched, now, released)


def progress(
    st: SqlStorage,
    c: Connection,
    finished: Sequence[tuple[int, JobState]],
    now: datetime,
    released: list[str],
    *,
    upstream: bool = False,
) -> None:
    """Release or cancel the steps waiting on jobs that just reached a terminal state.

    ``upstream``: the jobs were cancelled because a dep failed. Such cancellations always
    cascade (a discard upstream must not slip through ``ignore_cancelled`` one step later).
    """
    pending = list(finished)
    if not upstream and all(state is JobState.COMPLETED for _, state in pending):
        # The usual ack round: completed steps release whatever the flags say, and nothing
        # cascades from them (ids of jobs outside workflows have no edges to follow).
        _release(st, c, [job_id for job_id, _ in pending], now, released)
        return
    forced = {job_id for job_id, _ in pending} if upstream else set()
    while pending:
        marks, params = in_marks("id", [job_id for job_id, _ in pending])
        policy = {
            row[0]: (row[1], bool(row[2]), bool(row[3]))
            for row in st._rows(c, _POLICY.format(ids=marks), params)
        }
        ok: list[int] = []
        failed: list[tuple[int, str]] = []
        for job_id, state in pending:
            if job_id not in policy:
                continue  # not a workflow step
            step, ignore_cancelled, ignore_discarded = policy[job_id]
            if job_id not in forced and (
                state is JobState.COMPLETED
                or (state is JobState.CANCELLED and ignore_cancelled)
                or (state is JobState.DISCARDED and ignore_discarded)
            ):
                ok.append(job_id)
            else:
                failed.append((job_id, f"upstream step {step!r} was {state}"))
        if ok:
            _release(st, c, ok, now, released)
        cascaded: list[int] = []
        for job_id, reason in failed:
            cascaded += _cancel_suspended(st, c, [job_id], reason, now, by_id=False)
        pending = [(job_id, JobState.CANCELLED) for job_id in cascaded]
        forced.update(cascaded)


def _release(
    st: SqlStorage, c: Connection, ok: Sequence[int], now: datetime, released: list[str]
) -> None:
    """Count ``ok`` (deps that completed, or failed in a way their workflow ignores) as met
    for the steps waiting on them; notify the queues of the steps this made available."""
    rows = st._release_rows(c, ok, now)
    queues = sorted({row[1] for row in rows if row[0] == "available"})
    if queues:
        st._notify_in_tx(c, queues)
        released.extend(queues)


def _cancel_suspended(
    st: SqlStorage, c: Connection, ids: Sequence[int], reason: str, now: datetime, *, by_id: bool
) -> list[int]:
    """Cancel suspended steps: the given ones (by_id) or those depending on them."""
    target = (
        "id IN :ids" if by_id else "id IN (SELECT job_id FROM flowpro_deps WHERE dep_id IN :ids)"
    )
    entry = json.dumps(
        {"attempt": 0, "at": now.isoformat(), "kind": "upstream", "error": f"cancelled: {reason}"}
    )
    sql = text(
        "UPDATE flowpro_jobs SET state = 'cancelled', cancelled_at = :now, "
        f"errors = {st._json_append('errors', 'entry')} "
        f"WHERE state = 'suspended' AND {target} RETURNING id"
    ).bindparams(bindparam("ids", expanding=True))
    rows = c.execute(sql, {"ids": list(ids), "now": st._ts(now), "entry": entry})
    return [row[0] for row in rows]


def _with_state(job: Job, state: JobState) -> Job:
    import dataclasses

    return dataclasses.replace(job, state=state)


def workflow_tree(c: Connection, workflow_id: str) -> list[Any]:
    """Return the rows (``id, name, parent_id, ignore_cancelled, ignore_discarded,
    ignore_deleted, inserted_at``) of the workflow and all its sub-workflows, the workflow's
    first; none when there is no such workflow. One read of its root's workflows."""
    rows = c.execute(
        text(
            "SELECT id, name, parent_id, ignore_cancelled, ignore_discarded, ignore_deleted, "
            "inserted_at FROM flowpro_workflows WHERE root_id = "
            "(SELECT root_id FROM flowpro_workflows WHERE id = :id)"
        ),
        {"id": workflow_id},
    ).fetchall()
    by_id = {row[0]: row for row in rows}
    if workflow_id not in by_id:
        return []
    children: dict[str | None, list[str]] = {}
    for row in rows:
        children.setdefault(row[2], []).append(row[0])
    out, stack = [], [workflow_id]
    while stack:
        wid = stack.pop()
        out.append(by_id[wid])
        stack.extend(children.get(wid, []))
    return out


__all__ = ["after_ack", "insert_plan", "progress", "workflow_tree"]


# The flags that judge a failed dep are its own workflow's (pw), as on the ack path; a deleted
# dep has no row left, so the dependent's workflow (w) decides whether deletions count.
_REPAIR_SCAN = text(
    "SELECT j.id, j.deps_pending, d.dep_id, p.state, pw.ignore_cancelled, pw.ignore_discarded, "
    "w.ignore_deleted, p.step, p.errors FROM flowpro_jobs j "
    "JOIN flowpro_deps d ON d.job_id = j.id "
    "LEFT JOIN flowpro_jobs p ON p.id = d.dep_id "
    "LEFT JOIN flowpro_workflows pw ON pw.id = p.workflow_id "
    "JOIN flowpro_workflows w ON w.id = j.workflow_id "
    "WHERE j.id IN (SELECT id FROM flowpro_jobs WHERE state = 'suspended' "
    "AND workflow_id IS NOT NULL AND id > :after ORDER BY id LIMIT :limit) ORDER BY j.id"
)
_RECOUNT = text(
    "UPDATE flowpro_jobs SET deps_pending = :unmet "
    "WHERE id = :id AND state = 'suspended' AND deps_pending = :old"
)
_FREE = text(
    "UPDATE flowpro_jobs SET deps_pending = 0, state = CASE WHEN scheduled_at > :now "
    "THEN 'scheduled' ELSE 'available' END WHERE id = :id AND state = 'suspended' "
    "AND deps_pending = :old RETURNING state, queue"
)


def _cancelled_upstream(st: SqlStorage, errors: Any) -> bool:
    """Return whether a cancelled step was cancelled because a dep of its own failed: such a
    cancellation cascades whatever the flags say (as ``progress`` does)."""
    entries = st._json_out(errors) if errors is not None else []
    return bool(entries) and isinstance(entries[-1], dict) and entries[-1].get("kind") == "upstream"


def repair(
    st: SqlStorage, c: Connection, *, now: datetime, after: int, limit: int
) -> tuple[int, int]:
    """Heal suspended steps that a crash, a manual edit or a deleted dep left behind.

    Recomputes each step's unmet deps from the deps' current states: releases steps with
    none left, fixes wrong counters, and cancels (cascading) steps whose dep failed or was
    deleted, per the workflow's ``ignore_*`` flags. Returns (steps changed, last id seen).
    """
    rows = c.execute(_REPAIR_SCAN, {"after": after, "limit": limit}).fetchall()
    steps: dict[int, dict[str, object]] = {}
    for job_id, pending, _dep, state, ig_c, ig_d, ig_del, step, errors in rows:
        entry = steps.setdefault(job_id, {"pending": pending, "unmet": 0, "failed": None})
        if state is None:
            if not ig_del:
                entry["failed"] = "an upstream step was deleted"
        elif (
            state == "completed"
            or (state == "cancelled" and ig_c and not _cancelled_upstream(st, errors))
            or (state == "discarded" and ig_d)
        ):
            continue
        elif state in ("cancelled", "discarded"):
            entry["failed"] = f"upstream step {step!r} was {state}"
        else:
            entry["unmet"] = int(entry["unmet"]) + 1  # type: ignore[call-overload]
    changed = 0
    released: list[str] = []
    for job_id, entry in steps.items():
        old = entry["pending"]
        if entry["failed"] is not None:
            cancelled = _cancel_suspended(st, c, [job_id], str(entry["failed"]), now, by_id=True)
            progress(
                st, c, [(i, JobState.CANCELLED) for i in cancelled], now, released, upstream=True
            )
            changed += len(cancelled)
        elif entry["unmet"] == 0:
            row = c.execute(_FREE, {"id": job_id, "old": old, "now": st._ts(now)}).first()
            if row is not None:
                changed += 1
                if row[0] == "available":
                    released.append(row[1])
        elif entry["unmet"] != old:
            result = c.execute(_RECOUNT, {"id": job_id, "old": old, "unmet": entry["unmet"]})
            changed += result.rowcount or 0
    if released:
        st._notify_in_tx(c, sorted(set(released)))
    return changed, max(steps, default=after)
