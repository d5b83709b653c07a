"""Property: random DAGs with random step behaviour run in dependency order, end terminal,
cascade per the ignore_* flags, and hand each step exactly its deps' outputs.

Checked against an execution log the worker keeps (with the deps' states it read when it
started), not the jobs table alone.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowpro
from flowpro import Workflow

BEHAVIOURS = ("ok", "raise-once", "snooze-once", "discard", "cancel")


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str  # "start" or "end"
    workflow_id: str
    name: str
    attempt: int
    # start: {dep name: state} read from the database, and all_recorded; end: the outcome
    deps: dict[str, str] | None = None
    recorded: dict[str, Any] | None = None
    outcome: str | None = None


LOG: list[Event] = []
_lock = threading.Lock()
_seq = itertools.count()


def log(**fields: Any) -> None:
    with _lock:
        LOG.append(Event(seq=next(_seq), **fields))


def output(name: str) -> dict[str, Any]:
    return {"name": name, "square": int(name[1:]) ** 2}


class PropStep(flowpro.Worker, queue="prop", recorded=True, max_attempts=3):
    def backoff(self, job):
        return 0

    def process(self, job):
        name = job.meta["name"]
        deps = {str(dep.step): str(dep.state) for dep in job_storage().dependencies(job.id)}
        log(
            kind="start",
            workflow_id=job.workflow_id,
            name=name,
            attempt=job.attempt,
            deps=deps,
            recorded=Workflow.all_recorded(job),
        )
        do = job.args["do"]
        if do == "raise-once" and job.attempt == 1:
            log(kind="end", workflow_id=job.workflow_id, name=name, attempt=1, outcome="raise")
            raise RuntimeError("first attempt fails")
        if do == "snooze-once" and job.attempt == 1:
            log(kind="end", workflow_id=job.workflow_id, name=name, attempt=1, outcome="snooze")
            return flowpro.Snooze(0)
        outcome = {"discard": "discarded", "cancel": "cancelled"}.get(do, "completed")
        log(
            kind="end", workflow_id=job.workflow_id, name=name, attempt=job.attempt, outcome=outcome
        )
        if do == "discard":
            return flowpro.Discard("random discard")
        if do == "cancel":
            return flowpro.Cancel("random cancel")
        return output(name)


def job_storage() -> Any:
    from flowpro._runtime.context import current_storage

    storage = current_storage.get()
    assert storage is not None
    return storage


@st.composite
def dags(draw: st.DrawFn) -> dict[str, Any]:
    size = draw(st.integers(min_value=1, max_value=40) | st.integers(min_value=30, max_value=40))
    deps: list[list[int]] = []
    for i in range(size):
        if i == 0:
            deps.append([])
            continue
        # Mostly near neighbours, so chains get deep; sometimes far ones, so joins get wide.
        picks = draw(
            st.lists(st.integers(min_value=0, max_value=i - 1), max_size=min(i, 4), unique=True)
        )
        deps.append(sorted(picks))
    # Mostly steps that succeed (first), so that cascades leave something to run.
    behaviour = draw(
        st.lists(st.sampled_from(("ok", "ok", *BEHAVIOURS)), min_size=size, max_size=size)
    )
    return {
        "deps": deps,
        "behaviour": behaviour,
        "ignore_cancelled": draw(st.booleans()),
        "ignore_discarded": draw(st.booleans()),
        "node": draw(st.integers(min_value=0, max_value=3)) == 0,  # a quarter run on a node
    }


def expected(dag: dict[str, Any]) -> tuple[dict[str, str], dict[str, int]]:
    """The final state of every step and how many times it starts, from the policy alone."""
    states: dict[str, str] = {}
    starts: dict[str, int] = {}
    for i, (deps, do) in enumerate(zip(dag["deps"], dag["behaviour"], strict=True)):
        name = f"s{i}"
        # A dep blocks when it failed for real, or was cancelled because its own dep failed
        # (that cancellation always cascades).
        blocked = any(
            states[f"s{d}"] == "cascaded"
            or (states[f"s{d}"] == "cancelled" and not dag["ignore_cancelled"])
            or (states[f"s{d}"] == "discarded" and not dag["ignore_discarded"])
            for d in deps
        )
        if blocked:
            states[name], starts[name] = "cascaded", 0
            continue
        states[name] = {"discard": "discarded", "cancel": "cancelled"}.get(do, "completed")
        starts[name] = 2 if do in ("raise-once", "snooze-once") else 1
    final = {name: "cancelled" if s == "cascaded" else s for name, s in states.items()}
    return final, starts


def build(dag: dict[str, Any]) -> Workflow:
    wf = Workflow(
        name="random",
        ignore_cancelled=dag["ignore_cancelled"],
        ignore_discarded=dag["ignore_discarded"],
    )
    for i, (deps, do) in enumerate(zip(dag["deps"], dag["behaviour"], strict=True)):
        wf.add(f"s{i}", PropStep.new({"do": do}), deps=[f"s{d}" for d in deps])
    return wf


def check_run(fp: flowpro.FlowPro, dag: dict[str, Any], wf: Workflow) -> None:
    events = [e for e in LOG if e.workflow_id == wf.workflow_id]
    final, start_counts = expected(dag)
    ok_dep_states = {"completed"}
    if dag["ignore_cancelled"]:
        ok_dep_states.add("cancelled")
    if dag["ignore_discarded"]:
        ok_dep_states.add("discarded")

    # Every step ends terminal, in the state the policy predicts.
    _workflows, jobs, _edges = fp.storage.workflow_rows(wf.workflow_id)
    assert {str(job.step): str(job.state) for job in jobs} == final

    # Each step started as often as its behaviour asks, cascaded steps never.
    counted = {name: 0 for name in final}
    for e in events:
        if e.kind == "start":
            counted[e.name] += 1
    assert counted == start_counts

    # No step started before all its deps completed (or ended in an ignored way): by the
    # log's order, and by the deps' states it read from the database when it started.
    last_end: dict[str, Event] = {}
    for e in events:
        if e.kind == "end":
            last_end[e.name] = e
    for e in events:
        if e.kind != "start":
            continue
        i = int(e.name[1:])
        dep_names = {f"s{d}" for d in dag["deps"][i]}
        assert e.deps is not None and set(e.deps) == dep_names
        for dep in dep_names:
            assert e.deps[dep] in ok_dep_states, (e.name, dep, e.deps[dep])
            assert dep in last_end and last_end[dep].seq < e.seq, (e.name, dep)
            assert last_end[dep].outcome in ok_dep_states
        # all_recorded is exactly the outputs of the deps that completed.
        assert e.recorded == {
            dep: output(dep) for dep in sorted(dep_names) if final[dep] == "completed"
        }

    status = fp.workflow_status(wf.workflow_id)
    assert status.state != "running" and sum(status.counts.values()) == len(final)


def run_example(fp: flowpro.FlowPro, dag: dict[str, Any]) -> None:
    wf = build(dag)
    fp.insert(wf)
    if dag["node"]:
        fp.run(queues={"prop": 4}, until_idle=True)
    else:
        drain_all(fp)
    check_run(fp, dag, wf)


def drain_all(fp: flowpro.FlowPro) -> None:
    """Drain until nothing runs (drain stops after a round of nothing but snoozes)."""
    for _ in range(50):
        if not fp.drain():
            return
    raise AssertionError("still draining after 50 rounds")


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(dag=dags())
def test_random_workflows_run_in_dependency_order_and_cascade_per_policy(fp, dag):
    run_example(fp, dag)


def test_the_model_of_the_property_test_cascades_through_ignored_flags_as_the_engine_does(fp):
    """A fixed example of the rule the model encodes: a step cancelled because its dep
    failed cascades further even when the workflow ignores cancellations."""
    dag = {
        "deps": [[], [0], [1], [], [2, 3]],
        "behaviour": ["discard", "ok", "ok", "cancel", "ok"],
        "ignore_cancelled": True,
        "ignore_discarded": False,
        "node": False,
    }

    run_example(fp, dag)

    assert expected(dag)[0] == {
        "s0": "discarded",
        "s1": "cancelled",
        "s2": "cancelled",
        "s3": "cancelled",
        "s4": "cancelled",
    }
