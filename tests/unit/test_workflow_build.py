"""Building workflows without a database: validation, flattening, chaining and graph export."""

from __future__ import annotations

import json
import re

import pytest

import flowpro
from flowpro import GraphError, Workflow
from flowpro.job import utcnow


class Extract(flowpro.Worker, queue="etl"):
    def process(self, job):
        return None


class Load(flowpro.Worker, queue="load"):
    def process(self, job):
        return None


def etl() -> Workflow:
    return (
        Workflow(name="nightly-etl")
        .add("extract", Extract.new({"day": 1}))
        .add("clean", Extract.new({}), deps=["extract"])
        .add("stats", Extract.new({}), deps=["extract"])
        .add("load", Load.new({}), deps=["clean", "stats"])
    )


def report() -> Workflow:
    return Workflow(name="report").add("r1", Extract.new({})).add("r2", Load.new({}), deps=["r1"])


def edges_by_name(wf: Workflow) -> set[tuple[str, str]]:
    """The planned edges as (dep step, dependent step), by step name."""
    plan = wf.plan()
    return {(plan.jobs[dep].step, plan.jobs[job].step) for job, dep in plan.deps}  # type: ignore[misc]


# Building


def test_add_and_add_workflow_return_the_workflow_so_calls_chain():
    wf = Workflow(name="x")

    first = wf.add("a", Extract.new({}))
    second = first.add_workflow("sub", report(), deps=["a"])

    assert first is wf and second is wf
    assert wf.steps == ["a", "sub"]


def test_the_workflow_id_is_known_before_insert_and_can_be_given():
    generated = Workflow(name="x")
    given = Workflow(name="x", workflow_id="wf-42")

    assert re.fullmatch(r"[0-9a-f]{32}", generated.workflow_id)
    assert Workflow().workflow_id != generated.workflow_id
    assert given.workflow_id == "wf-42"
    assert json.loads(given.add("a", Extract.new({})).to_json())["workflow_id"] == "wf-42"


def test_each_planned_step_carries_its_workflow_id_and_step_name_in_meta():
    wf = etl()

    plan = wf.plan()

    assert [job.meta["name"] for job in plan.jobs] == ["extract", "clean", "stats", "load"]
    assert {job.meta["workflow_id"] for job in plan.jobs} == {wf.workflow_id}
    assert {job.workflow_id for job in plan.jobs} == {wf.workflow_id}


def test_user_meta_is_kept_next_to_the_workflow_keys():
    wf = Workflow().add("a", Extract.new({}, meta={"owner": "ops"}))

    (job,) = wf.plan().jobs

    assert job.meta == {"owner": "ops", "workflow_id": wf.workflow_id, "name": "a"}
    # The row keeps the workflow id and step name in columns; reads add them back to meta.
    assert json.loads(job.meta_json) == {"owner": "ops"}


def test_planned_edges_follow_the_declared_deps():
    assert edges_by_name(etl()) == {
        ("extract", "clean"),
        ("extract", "stats"),
        ("clean", "load"),
        ("stats", "load"),
    }


def test_a_sub_workflow_starts_after_its_deps_and_its_dependents_wait_for_all_of_it():
    sub = report()
    wf = (
        Workflow(name="outer")
        .add("a", Extract.new({}))
        .add_workflow("rep", sub, deps=["a"])
        .add("z", Load.new({}), deps=["rep"])
    )

    plan = wf.plan()

    assert edges_by_name(wf) == {("a", "r1"), ("r1", "r2"), ("r1", "z"), ("r2", "z")}
    subs = [w for w in plan.workflows if w.id == sub.workflow_id]
    assert len(subs) == 1 and subs[0].parent_id == wf.workflow_id
    assert subs[0].root_id == wf.workflow_id
    r1 = next(job for job in plan.jobs if job.step == "r1")
    assert r1.meta["workflow_id"] == sub.workflow_id
    assert r1.meta["sup_workflow_id"] == wf.workflow_id


def test_context_is_merged_and_must_be_json():
    wf = Workflow(context={"a": 1}).put_context({"b": 2}).put_context({"a": 3})

    assert wf.context == {"a": 3, "b": 2}
    with pytest.raises(flowpro.ArgsError):
        wf.put_context({"bad": {1, 2}})
    assert wf.context == {"a": 3, "b": 2}


# Validation


def test_a_duplicate_step_name_is_refused_naming_the_step():
    wf = Workflow(name="dup").add("a", Extract.new({}))

    with pytest.raises(GraphError, match=r"already has a step named 'a'"):
        wf.add("a", Load.new({}))
    with pytest.raises(GraphError, match=r"'a'"):
        wf.add_workflow("a", report())
    assert wf.steps == ["a"]


def test_an_unknown_dep_is_refused_naming_the_step_and_the_dep():
    wf = Workflow().add("a", Extract.new({})).add("b", Load.new({}), deps=["a", "ghost"])

    with pytest.raises(GraphError, match=r"step 'b' depends on unknown step 'ghost'"):
        wf.plan()


def test_a_cycle_is_refused_naming_the_steps_on_it():
    wf = (
        Workflow()
        .add("start", Extract.new({}))
        .add("a", Extract.new({}), deps=["start", "c"])
        .add("b", Extract.new({}), deps=["a"])
        .add("c", Extract.new({}), deps=["b"])
    )

    with pytest.raises(GraphError, match="cycle") as info:
        wf.plan()

    message = str(info.value)
    assert all(f"'{name}'" in message for name in ("a", "b", "c"))
    assert "'start'" not in message


def test_a_step_depending_on_itself_is_refused():
    wf = Workflow().add("a", Extract.new({}), deps=["a"])

    with pytest.raises(GraphError, match=r"step 'a' depends on itself"):
        wf.plan()


def test_a_cycle_inside_a_sub_workflow_is_refused():
    sub = Workflow(name="bad").add("x", Extract.new({}), deps=["y"])
    sub.add("y", Extract.new({}), deps=["x"])
    wf = Workflow().add("a", Extract.new({})).add_workflow("sub", sub, deps=["a"])

    with pytest.raises(GraphError, match=r"cycle: '[xy]' -> '[xy]' -> '[xy]'"):
        wf.plan()


def test_a_sub_workflow_cannot_name_a_step_of_its_parent():
    sub = Workflow().add("x", Extract.new({}), deps=["a"])
    wf = Workflow().add("a", Extract.new({})).add_workflow("sub", sub, deps=["a"])

    with pytest.raises(GraphError, match=r"step 'x' depends on unknown step 'a'"):
        wf.plan()


@pytest.mark.parametrize(
    ("deps", "message"),
    [
        ("a", "deps must be a list of step names, not a string"),
        (["a", "a"], "step 'b' lists a dep twice"),
        ([1], "step 'b': dep 1 is not a step name"),
    ],
)
def test_malformed_deps_are_refused_when_the_step_is_added(deps, message):
    wf = Workflow().add("a", Extract.new({}))

    with pytest.raises(GraphError, match=re.escape(message)):
        wf.add("b", Load.new({}), deps=deps)
    assert wf.steps == ["a"]


@pytest.mark.parametrize("name", ["", "x" * 256, 7])
def test_a_step_name_must_be_a_short_non_empty_string(name):
    with pytest.raises(GraphError, match="step name must be a non-empty string"):
        Workflow().add(name, Extract.new({}))


def test_a_step_must_be_a_job_from_new_and_a_sub_workflow_a_workflow():
    wf = Workflow()

    with pytest.raises(GraphError, match=r"step 'a': expected a job from Worker.new\(\)"):
        wf.add("a", Extract)  # type: ignore[arg-type]
    with pytest.raises(GraphError, match=r"step 'b': expected a Workflow"):
        wf.add_workflow("b", Extract.new({}))  # type: ignore[arg-type]
    with pytest.raises(GraphError, match="cannot contain itself"):
        wf.add_workflow("c", wf)


def test_an_empty_workflow_cannot_be_planned():
    with pytest.raises(GraphError, match=r"workflow 'nothing' has no steps"):
        Workflow(name="nothing").plan()


def test_an_empty_sub_workflow_is_refused_rather_than_letting_its_dependents_skip_the_line():
    wf = (
        Workflow()
        .add("a", Extract.new({}))
        .add_workflow("empty", Workflow(name="empty"), deps=["a"])
        .add("z", Load.new({}), deps=["empty"])
    )

    with pytest.raises(GraphError, match=r"'empty' has no steps"):
        wf.plan()


def test_a_sub_workflow_added_twice_is_refused():
    sub = report()
    wf = Workflow().add_workflow("one", sub).add_workflow("two", sub)

    with pytest.raises(GraphError, match=r"added more than once"):
        wf.plan()


def test_workflows_nested_in_each_other_are_refused_not_recursed_forever():
    outer = Workflow(name="outer").add("a", Extract.new({}))
    inner = Workflow(name="inner").add("b", Extract.new({}))
    outer.add_workflow("inner", inner)
    inner.add_workflow("outer", outer)

    with pytest.raises(GraphError):
        outer.plan()


def step_job(wf: Workflow, name: str) -> flowpro.Job:
    """A running step of ``wf`` as a worker sees it (no database needed)."""
    return flowpro.Job(
        id=1,
        state=flowpro.JobState.EXECUTING,
        queue="etl",
        worker=Extract.__flowpro_name__,
        args={},
        meta={"workflow_id": wf.workflow_id, "name": name},
        tags=[],
        errors=[],
        attempt=1,
        max_attempts=20,
        priority=0,
        attempted_by="n",
        inserted_at=utcnow(),
        scheduled_at=utcnow(),
        workflow_id=wf.workflow_id,
        step=name,
    )


def test_appending_plans_deps_on_existing_steps_also_for_appended_sub_workflows():
    wf = etl()
    sub = Workflow(name="more").add("m1", Extract.new({})).add("m2", Load.new({}), deps=["m1"])

    appended = (
        Workflow.append(step_job(wf, "clean"))
        .add("extra", Extract.new({}), deps=["clean", "load"])
        .add_workflow("more", sub, deps=["stats"])
    )
    plan = appended.plan()

    assert appended.workflow_id == wf.workflow_id and plan.append_to == wf.workflow_id
    assert [w.id for w in plan.workflows] == [sub.workflow_id]
    steps = [job.step for job in plan.jobs]
    assert sorted((steps[i], wid, dep) for i, wid, dep in plan.external_deps) == [
        ("extra", wf.workflow_id, "clean"),
        ("extra", wf.workflow_id, "load"),
        ("m1", wf.workflow_id, "stats"),
    ]
    assert [(steps[a], steps[b]) for a, b in plan.deps] == [("m2", "m1")]


def test_reading_step_data_outside_a_running_job_points_to_the_app():
    job = step_job(etl(), "clean")

    for call in (
        lambda: Workflow.get_recorded(job, "extract"),
        lambda: Workflow.all_recorded(job),
        lambda: Workflow.get_context(job),
        lambda: Workflow.append(job).add("x", Extract.new({})).insert(),
    ):
        with pytest.raises(flowpro.ConfigError, match="works inside a running job"):
            call()


# Export


def test_to_dot_draws_every_step_and_edge_with_sub_workflows_as_clusters():
    sub = report()
    wf = etl().add_workflow("report", sub, deps=["load"])

    dot = wf.to_dot()

    assert dot.startswith('digraph "nightly-etl" {')
    labels = dict(re.findall(r'(s\d+) \[label="([^"]+)"', dot))
    assert sorted(labels.values()) == ["clean", "extract", "load", "r1", "r2", "stats"]
    key = {name: k for k, name in labels.items()}
    edges = set(re.findall(r"(s\d+) -> (s\d+);", dot))
    assert edges == {
        (key["extract"], key["clean"]),
        (key["extract"], key["stats"]),
        (key["clean"], key["load"]),
        (key["stats"], key["load"]),
        (key["load"], key["r1"]),
        (key["r1"], key["r2"]),
    }
    assert 'label="report"; style="rounded,dashed";' in dot
    cluster = dot[dot.index("subgraph cluster_") : dot.index("}", dot.index("subgraph cluster_"))]
    assert f'{key["r1"]} [label="r1"' in cluster and f"{key['load']} [" not in cluster


def test_to_mermaid_draws_every_step_and_edge_without_states():
    wf = etl().add_workflow("report", report(), deps=["load"])

    mermaid = wf.to_mermaid()

    assert mermaid.startswith("flowchart LR\n")
    labels = dict(re.findall(r'(s\d+)\["([^"]+)"\]', mermaid))
    key = {name: k for k, name in labels.items()}
    assert set(key) == {"extract", "clean", "stats", "load", "r1", "r2"}
    assert f"{key['clean']} --> {key['load']}" in mermaid
    assert f"{key['load']} --> {key['r1']}" in mermaid
    assert re.search(r'subgraph \S+\["report"\]', mermaid)
    assert "classDef" not in mermaid


def test_to_json_lists_nodes_with_their_deps_and_the_workflows():
    sub = report()
    wf = etl().add_workflow("report", sub, deps=["load"]).add("mail", Load.new({}), deps=["report"])

    doc = json.loads(wf.to_json())

    assert doc["workflow_id"] == wf.workflow_id and doc["name"] == "nightly-etl"
    nodes = {node["name"]: node for node in doc["nodes"]}
    assert sorted(nodes["load"]["deps"]) == ["clean", "stats"]
    assert nodes["r1"]["deps"] == ["load"]
    # A dependent of a sub-workflow waits on all of it; the picture keeps only the last step.
    assert nodes["mail"]["deps"] == ["r2"]
    assert nodes["load"]["queue"] == "load" and nodes["load"]["worker"] == Load.__flowpro_name__
    assert nodes["r1"]["workflow_id"] == sub.workflow_id
    assert all(node["state"] is None and node["job_id"] is None for node in doc["nodes"])
    assert {(w["id"], w["parent_id"]) for w in doc["workflows"]} == {
        (wf.workflow_id, None),
        (sub.workflow_id, wf.workflow_id),
    }


def test_exports_escape_quotes_in_step_names():
    wf = Workflow(name='say "hi"').add('a "quoted" step', Extract.new({}))

    assert 'label="a \\"quoted\\" step"' in wf.to_dot()
    assert "a #quot;quoted#quot; step" in wf.to_mermaid()
    assert json.loads(wf.to_json())["nodes"][0]["name"] == 'a "quoted" step'


def test_exporting_an_invalid_workflow_raises_graph_error():
    wf = Workflow().add("a", Extract.new({}), deps=["nope"])

    for export in (wf.to_dot, wf.to_mermaid, wf.to_json):
        with pytest.raises(GraphError, match="unknown step 'nope'"):
            export()
