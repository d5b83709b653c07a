"""The pruner deletes a workflow only as a whole, once every step of it is finished."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import flowpro
from flowpro import Workflow
from flowpro._runtime.pruner import Pruner
from flowpro.job import Ack, JobState, utcnow
from tests.conftest import eventually

SEEN: dict[str, Any] = {}
GATE = threading.Event()


@pytest.fixture(autouse=True)
def _reset():
    SEEN.clear()
    GATE.clear()
    yield
    GATE.set()
    SEEN.clear()


class Early(flowpro.Worker, queue="prune-early", recorded=True):
    def process(self, job):
        return {"step": job.meta["name"]}


class Late(flowpro.Worker, queue="prune-late", recorded=True):
    def process(self, job):
        SEEN[job.meta["name"]] = Workflow.all_recorded(job)
        return {"step": job.meta["name"]}


class Held(flowpro.Worker, queue="prune-late", recorded=True):
    """Runs until the test opens the gate."""

    def process(self, job):
        SEEN["held-started"] = True
        assert GATE.wait(timeout=30)
        return {"step": job.meta["name"]}


class Nest(flowpro.Worker, queue="prune-late", recorded=True):
    """Inside a sub-workflow, appends a sub-workflow whose step waits on the 'late' queue."""

    def process(self, job):
        more = Workflow(name="more").add("m1", Late.new({}))
        Workflow.append(job).add_workflow("more", more, deps=[job.meta["name"]]).insert()
        return {"step": job.meta["name"]}


class Plain(flowpro.Worker, queue="prune-plain"):
    def process(self, job):
        return None


def engine(fp: flowpro.FlowPro) -> sa.Engine:
    return fp.storage.engine  # type: ignore[attr-defined,no-any-return]


def rows_of(fp: flowpro.FlowPro, root: Workflow) -> dict[str, int]:
    """How many rows the workflow (its sub-workflows included) has in each table. Step names
    (flowpro_steps) must come and go with their jobs."""
    with engine(fp).connect() as c:
        ids = [
            r[0]
            for r in c.execute(
                sa.text("SELECT id FROM flowpro_workflows WHERE root_id = :id"),
                {"id": root.workflow_id},
            )
        ]
        # One statement, so one snapshot: on PostgreSQL two statements of a READ COMMITTED
        # transaction may straddle the commit of a prune (3 names before it, 0 jobs after).
        named, total = c.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM flowpro_steps s LEFT JOIN flowpro_jobs j "
                "ON j.id = s.job_id WHERE j.id IS NULL OR j.workflow_id = s.workflow_id), "
                "(SELECT count(*) FROM flowpro_jobs WHERE step IS NOT NULL)"
            )
        ).one()
        assert named == total, "step names and workflow jobs differ"
        if not ids:
            return {"workflows": 0, "jobs": 0, "deps": 0}
        params = {"ids": ids}
        expanding = sa.bindparam("ids", expanding=True)
        jobs = c.execute(
            sa.text("SELECT count(*) FROM flowpro_jobs WHERE workflow_id IN :ids").bindparams(
                expanding
            ),
            params,
        ).scalar_one()
        deps = c.execute(
            sa.text(
                "SELECT count(*) FROM flowpro_deps WHERE job_id IN "
                "(SELECT id FROM flowpro_jobs WHERE workflow_id IN :ids)"
            ).bindparams(expanding),
            params,
        ).scalar_one()
    return {"workflows": len(ids), "jobs": int(jobs), "deps": int(deps)}


def backdate(fp: flowpro.FlowPro, days: int = 3) -> None:
    """Move every finish and insert time back, as if it all happened long ago."""
    past = utcnow() - timedelta(days=days)
    value = fp.storage._ts(past)  # type: ignore[attr-defined]
    with engine(fp).begin() as c:
        for column in ("completed_at", "cancelled_at", "discarded_at", "inserted_at"):
            c.execute(
                sa.text(f"UPDATE flowpro_jobs SET {column} = :t WHERE {column} IS NOT NULL"),
                {"t": value},
            )
        c.execute(sa.text("UPDATE flowpro_workflows SET inserted_at = :t"), {"t": value})


def prune(fp: flowpro.FlowPro, retention: timedelta = timedelta(0)) -> int:
    """One pruner tick (by default with no retention at all)."""
    return Pruner(fp.storage, retention=retention).tick(utcnow())


def long_workflow() -> Workflow:
    sub = Workflow(name="sub").add("s1", Early.new({})).add("s2", Early.new({}), deps=["s1"])
    return (
        Workflow(name="long")
        .add("a", Early.new({}))
        .add("b", Early.new({}), deps=["a"])
        .add_workflow("sub", sub, deps=["a"])
        .add("c", Late.new({}), deps=["b", "sub"])
        .add("d", Late.new({}), deps=["c", "a"])
    )


def test_a_running_workflow_keeps_every_row_however_old_its_finished_steps_are(fp):
    wf = long_workflow()
    fp.insert(wf)
    old_plain = fp.insert(Plain.new({}))
    fp.drain("prune-plain")
    fp.drain("prune-early")
    full = rows_of(fp, wf)
    # c is claimed (executing), d still waits on it.
    (c,) = fp.storage.fetch_jobs("prune-late", demand=1, node="n", now=utcnow())
    backdate(fp)

    deleted = prune(fp)

    assert deleted == 1 and fp.get_job(old_plain.id) is None  # the pruner did run
    assert rows_of(fp, wf) == full == {"workflows": 2, "jobs": 6, "deps": 8}
    # The run goes on: c's ack releases d, which still finds every dep's output.
    fp.storage.ack_jobs([Ack(c.id, c.attempt, JobState.COMPLETED, utcnow(), graph=True)])
    backdate(fp)
    assert prune(fp) == 0
    fp.drain("prune-late")
    # (c was acked by hand with no output, so only a's is there.)
    assert SEEN["d"] == {"a": {"step": "a"}}
    assert fp.workflow_status(wf.workflow_id).counts == {"completed": 6}


def test_a_finished_workflow_is_pruned_whole_sub_workflows_and_edges_included(fp):
    wf = long_workflow()
    other = long_workflow()
    fp.insert(wf)
    fp.insert(other)
    fp.drain()
    backdate(fp)
    recent = Workflow(name="recent").add("x", Early.new({})).add("y", Early.new({}), deps=["x"])
    fp.insert(recent)
    fp.drain()

    deleted = prune(fp, retention=timedelta(hours=1))

    assert deleted == 12
    assert rows_of(fp, wf) == rows_of(fp, other) == {"workflows": 0, "jobs": 0, "deps": 0}
    # Finished within the retention period: kept.
    assert rows_of(fp, recent) == {"workflows": 1, "jobs": 2, "deps": 1}


def test_a_workflow_ended_by_a_cascade_is_pruned_whole_once_everything_is_terminal(fp):
    wf = (
        Workflow(name="doomed")
        .add("a", Early.new({}))
        .add("b", Late.new({}), deps=["a"])
        .add("c", Late.new({}), deps=["b"])
    )
    saved = {job.step: job for job in fp.insert(wf)}
    fp.drain("prune-early")
    backdate(fp)
    assert prune(fp) == 0

    fp.cancel_job(saved["b"].id)
    backdate(fp)
    deleted = prune(fp)

    assert deleted == 3 and rows_of(fp, wf)["jobs"] == 0


def pruning_app(db_url: str, prune_interval: float) -> flowpro.FlowPro:
    """An app whose node beats, stages and prunes often, keeping finished jobs 1 ms."""
    app = flowpro.FlowPro(
        db_url,
        poll_interval=0.02,
        heartbeat_interval=0.05,
        rescue_after=5.0,
        leader_ttl=0.5,
        stage_interval=0.02,
        prune_interval=prune_interval,
        retention=timedelta(milliseconds=1),
        idle_check_interval=0.02,
    )
    app.migrate()
    return app


def test_a_node_pruning_with_a_tiny_retention_never_strands_a_running_workflow(db_url):
    app = pruning_app(db_url, prune_interval=0.02)
    wf = (
        Workflow(name="slow")
        .add("a", Early.new({}))
        .add("held", Held.new({}), deps=["a"])
        .add("z", Late.new({}), deps=["a", "held"])
    )
    app.insert(wf)
    plain = app.insert(Plain.new({}))
    runner = threading.Thread(
        target=app.run,
        kwargs={"queues": {"prune-early": 2, "prune-late": 2, "prune-plain": 1}},
        daemon=True,
    )
    runner.start()
    try:
        eventually(lambda: SEEN.get("held-started"), timeout=10)
        # The pruner has run meanwhile: the plain job, finished after 'a', is gone.
        eventually(lambda: app.get_job(plain.id) is None, timeout=10)
        assert rows_of(app, wf) == {"workflows": 1, "jobs": 3, "deps": 3}

        GATE.set()

        eventually(lambda: "z" in SEEN, timeout=10)
        assert SEEN["z"] == {"a": {"step": "a"}, "held": {"step": "held"}}
        eventually(lambda: rows_of(app, wf)["jobs"] == 0, timeout=10)
        assert rows_of(app, wf) == {"workflows": 0, "jobs": 0, "deps": 0}
    finally:
        GATE.set()
        app.stop()
        runner.join(timeout=15)
        app.close()


def test_a_sub_workflow_appended_from_a_sub_workflow_is_kept_and_pruned_with_its_root(fp):
    sub = Workflow(name="sub").add("inner", Nest.new({}))
    wf = Workflow(name="root").add("a", Early.new({})).add_workflow("sub", sub, deps=["a"])
    fp.insert(wf)
    fp.drain("prune-early")
    (inner,) = fp.storage.fetch_jobs("prune-late", demand=1, node="n", now=utcnow())
    from flowpro._runtime.executor import run_sync

    fp.storage.ack_jobs([run_sync(inner, utcnow, fp.storage)])
    backdate(fp)

    assert prune(fp) == 0  # m1, appended under the root, still waits
    assert rows_of(fp, wf) == {"workflows": 3, "jobs": 3, "deps": 2}

    fp.drain()
    backdate(fp)

    assert prune(fp) == 3
    assert rows_of(fp, wf) == {"workflows": 0, "jobs": 0, "deps": 0}


def test_a_node_prunes_first_one_interval_after_it_starts(db_url):
    # Pruning scans many rows: a node starting in a busy moment does it later, not at once.
    app = pruning_app(db_url, prune_interval=1.5)
    done = app.insert(Plain.new({}))
    app.drain("prune-plain")
    runner = threading.Thread(target=app.run, kwargs={"queues": {"prune-plain": 1}}, daemon=True)
    started = time.monotonic()
    runner.start()
    try:
        eventually(lambda: app.node is not None and app.node.leader.is_leader, timeout=10)
        time.sleep(max(0.0, started + 0.6 - time.monotonic()))
        assert app.get_job(done.id) is not None  # the node leads, but has not pruned yet

        eventually(lambda: app.get_job(done.id) is None, timeout=10)
        assert time.monotonic() - started >= 1.5
    finally:
        app.stop()
        runner.join(timeout=15)
        app.close()
