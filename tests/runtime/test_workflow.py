"""Workflows end to end on real databases: waiting on deps, data along edges, context,
sub-workflows, appending, cascades, status and graphs."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import pytest
import sqlalchemy as sa

import flowpro
from flowpro import GraphError, Workflow
from flowpro.codecs import encrypted as codec
from flowpro.graph.render import COLOURS
from flowpro.job import Ack, JobState, utcnow

LOG: list[tuple[str, str]] = []
SEEN: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()
KEY = codec.generate_key()
SSN = "SSN-078-05-1120"


@pytest.fixture(autouse=True)
def _clear():
    LOG.clear()
    SEEN.clear()
    yield
    LOG.clear()
    SEEN.clear()


def note(event: str, name: str) -> None:
    with _lock:
        LOG.append((event, name))


def secret_key() -> str:
    return KEY


class Step(flowpro.Worker, queue="wf", recorded=True, max_attempts=3):
    """A workflow step; ``args["mode"]`` picks its outcome. It notes what it saw in SEEN."""

    def backoff(self, job):
        return 0

    def process(self, job):
        name = job.meta["name"]
        note("start", name)
        SEEN[name] = {
            "deps": Workflow.all_recorded(job),
            "context": Workflow.get_context(job),
            "attempt": job.attempt,
        }
        mode = job.args.get("mode", "ok")
        if mode == "cancel":
            return flowpro.Cancel("not today")
        if mode == "discard":
            return flowpro.Discard("bad input")
        if mode == "fail":
            raise RuntimeError("always fails")
        if mode == "fail-once" and job.attempt == 1:
            raise RuntimeError("fails once")
        if mode == "snooze-once" and job.attempt == 1:
            return flowpro.Snooze(0)
        note("end", name)
        return {"step": name, "value": job.args.get("value")}


class Silent(flowpro.Worker, queue="wf"):
    """Not recorded: all_recorded leaves it out."""

    def process(self, job):
        note("start", job.meta["name"])
        return {"ignored": True}


class Secret(flowpro.Worker, queue="wf", recorded=True, encrypted=dict(key=secret_key)):
    def process(self, job):
        note("start", job.meta["name"])
        return {"ssn": job.args["ssn"]}


def step(queue: str = "wf", **args: Any) -> flowpro.NewJob:
    return Step.new(args, queue=queue)


def states(fp: flowpro.FlowPro, workflow_id: str) -> dict[str, str]:
    _workflows, jobs, _edges = fp.storage.workflow_rows(workflow_id)
    return {str(job.step): str(job.state) for job in jobs}


def starts() -> list[str]:
    return [name for event, name in LOG if event == "start"]


def row_counts(fp: flowpro.FlowPro) -> dict[str, int]:
    engine: sa.Engine = fp.storage.engine  # type: ignore[attr-defined]
    with engine.connect() as c:
        return {
            table: int(c.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("flowpro_jobs", "flowpro_workflows", "flowpro_deps")
        }


def diamond(**options: Any) -> Workflow:
    """extract -> (clean, stats) -> load, each step on its own queue so tests drain them apart."""
    return (
        Workflow(name="diamond", **options)
        .add("extract", step("q-extract", value=1))
        .add("clean", step("q-clean", value=2), deps=["extract"])
        .add("stats", step("q-stats", value=3), deps=["extract"])
        .add("load", step("q-load", value=4), deps=["clean", "stats"])
    )


# Waiting on deps


def test_steps_wait_suspended_until_every_dep_completed(fp):
    wf = diamond()

    saved = fp.insert(wf)

    assert [(job.step, job.state) for job in saved] == [
        ("extract", JobState.AVAILABLE),
        ("clean", JobState.SUSPENDED),
        ("stats", JobState.SUSPENDED),
        ("load", JobState.SUSPENDED),
    ]
    assert fp.drain("q-clean") == {} and fp.drain("q-load") == {}

    fp.drain("q-extract")
    assert states(fp, wf.workflow_id) == {
        "extract": "completed",
        "clean": "available",
        "stats": "available",
        "load": "suspended",
    }

    fp.drain("q-clean")
    assert states(fp, wf.workflow_id)["load"] == "suspended"

    fp.drain("q-stats")
    assert states(fp, wf.workflow_id)["load"] == "available"

    fp.drain("q-load")
    assert starts() == ["extract", "clean", "stats", "load"]
    assert set(states(fp, wf.workflow_id).values()) == {"completed"}


def test_steps_completed_together_at_one_time_release_their_join(fp):
    # Acks sharing one time take the grouped statement of completions. These carry no graph
    # tag (as a hand-written ack would not): the store itself finds what follows from them.
    wf = Workflow(name="fan")
    for i in range(10):
        wf.add(f"s{i}", Silent.new({}))
    wf.add("join", Silent.new({}), deps=[f"s{i}" for i in range(10)])
    fp.insert(wf)
    steps = fp.storage.fetch_jobs("wf", demand=20, node="n", now=utcnow())
    at = utcnow()

    applied = fp.storage.ack_jobs(
        [Ack(id=j.id, attempt=j.attempt, state=JobState.COMPLETED, at=at) for j in steps]
    )

    assert sorted(applied) == sorted(j.id for j in steps) and len(steps) == 10
    assert states(fp, wf.workflow_id)["join"] == "available"


def test_a_retried_or_snoozed_dep_holds_its_dependents_until_it_completes(fp):
    wf = (
        Workflow()
        .add("flaky", step(mode="fail-once"))
        .add("sleepy", step(mode="snooze-once"))
        .add("join", step(), deps=["flaky", "sleepy"])
    )
    fp.insert(wf)

    while fp.drain():  # drain stops after a round of nothing but snoozes
        pass

    assert starts().count("flaky") == 2 and starts().count("sleepy") == 2
    assert starts()[-1] == "join" and starts().count("join") == 1
    assert SEEN["join"]["deps"] == {
        "flaky": {"step": "flaky", "value": None},
        "sleepy": {"step": "sleepy", "value": None},
    }


def test_each_step_carries_its_workflow_id_and_name_in_meta(fp):
    wf = diamond()

    saved = fp.insert(wf)

    for job in saved:
        stored = fp.get_job(job.id)
        assert stored is not None
        assert stored.meta["workflow_id"] == wf.workflow_id == stored.workflow_id
        assert stored.meta["name"] == job.step == stored.step
    claimed = fp.storage.fetch_jobs("q-extract", demand=1, node="t", now=utcnow())
    assert claimed[0].meta == {"workflow_id": wf.workflow_id, "name": "extract"}


def test_a_step_keeps_its_own_meta_and_its_row_keeps_the_workflow_keys_in_columns(fp):
    wf = Workflow(name="w").add("a", step(), deps=[]).add("b", Step.new({}, meta={"owner": "ops"}))
    saved = {job.step: job for job in fp.insert(wf)}
    engine: sa.Engine = fp.storage.engine  # type: ignore[attr-defined]
    with engine.connect() as c:
        raw = c.execute(
            sa.text("SELECT meta FROM flowpro_jobs WHERE id = :id"), {"id": saved["b"].id}
        ).scalar_one()

    assert (json.loads(raw) if isinstance(raw, str) else raw) == {"owner": "ops"}
    assert fp.get_job(saved["b"].id).meta == {
        "owner": "ops",
        "workflow_id": wf.workflow_id,
        "name": "b",
    }
    assert saved["b"].meta == fp.get_job(saved["b"].id).meta


def test_a_step_written_with_the_workflow_keys_in_its_stored_meta_reads_the_same(fp):
    """Rows written before the keys moved out of stored meta carry them in both places."""
    wf = Workflow(name="w").add("a", Step.new({}, meta={"owner": "ops"}))
    (saved,) = fp.insert(wf)
    engine: sa.Engine = fp.storage.engine  # type: ignore[attr-defined]
    old = json.dumps({"owner": "ops", "workflow_id": wf.workflow_id, "name": "a"})
    cast = "CAST(:meta AS jsonb)" if fp.storage.dialect == "postgresql" else ":meta"
    with engine.begin() as c:
        c.execute(
            sa.text(f"UPDATE flowpro_jobs SET meta = {cast} WHERE id = :id"),
            {"meta": old, "id": saved.id},
        )

    (claimed,) = fp.storage.fetch_jobs("wf", demand=1, node="t", now=utcnow())

    assert fp.get_job(saved.id).meta == saved.meta == claimed.meta


# Data along edges


def test_all_recorded_holds_the_outputs_of_the_deps_only_by_name(fp):
    wf = (
        diamond()
        .add("report", Silent.new({}), deps=["load"])
        .add("after", step(), deps=["report", "load"])
    )
    fp.insert(wf)

    fp.drain()

    assert SEEN["extract"]["deps"] == {}
    assert SEEN["load"]["deps"] == {
        "clean": {"step": "clean", "value": 2},
        "stats": {"step": "stats", "value": 3},
    }
    # A dep that is not recorded contributes nothing.
    assert SEEN["after"]["deps"] == {"load": {"step": "load", "value": 4}}


def test_get_recorded_reads_any_step_of_the_workflow_by_name(fp):
    class Reader(flowpro.Worker, queue="wf"):
        def process(self, job):
            SEEN["reader"] = {
                "extract": Workflow.get_recorded(job, "extract"),
                "load": Workflow.get_recorded(job, "load"),
            }
            for missing in ("nope", "silent"):
                try:
                    Workflow.get_recorded(job, missing)
                except flowpro.RecordMissing as exc:
                    SEEN[missing] = {"error": str(exc)}

    wf = (
        diamond()
        .add("silent", Silent.new({}))
        .add("reader", Reader.new({}), deps=["load", "silent"])
    )
    fp.insert(wf)

    fp.drain()

    assert SEEN["reader"] == {
        "extract": {"step": "extract", "value": 1},
        "load": {"step": "load", "value": 4},
    }
    assert "has no step 'nope'" in SEEN["nope"]["error"]
    assert "not a recorded worker" in SEEN["silent"]["error"]


def test_recorded_outputs_of_an_encrypted_step_reach_dependents_decrypted(fp):
    wf = (
        Workflow(name="pii")
        .add("lookup", Secret.new({"ssn": SSN}))
        .add("use", step(), deps=["lookup"])
    )
    saved = fp.insert(wf)

    fp.drain()

    assert SEEN["use"]["deps"] == {"lookup": {"ssn": SSN}}
    engine: sa.Engine = fp.storage.engine  # type: ignore[attr-defined]
    with engine.connect() as c:
        raw = c.execute(
            sa.text("SELECT recorded, args FROM flowpro_jobs WHERE id = :id"), {"id": saved[0].id}
        ).one()
    stored_args = raw[1] if isinstance(raw[1], str) else json.dumps(raw[1])
    assert raw[0] is not None and SSN.encode() not in bytes(raw[0])
    assert SSN not in stored_args


def test_every_step_reads_the_workflow_context(fp):
    wf = diamond(context={"run_date": "2026-11-29"}).put_context({"region": "eu"})
    fp.insert(wf)

    fp.drain()

    expected = {"run_date": "2026-11-29", "region": "eu"}
    assert {name: seen["context"] for name, seen in SEEN.items()} == dict.fromkeys(
        ["extract", "clean", "stats", "load"], expected
    )


# Sub-workflows


def test_a_sub_workflow_waits_for_its_deps_and_its_dependents_wait_for_all_of_it(fp):
    sub = (
        Workflow(name="report", context={"inner": True})
        .add("r1", step("q-r1", value="r1"))
        .add("r2", step("q-r2", value="r2"))
        .add("r3", step("q-r3", value="r3"), deps=["r1"])
    )
    wf = (
        Workflow(name="outer", context={"outer": True})
        .add("a", step("q-a", value="a"))
        .add_workflow("report", sub, deps=["a"])
        .add("z", step("q-z"), deps=["report"])
    )

    saved = fp.insert(wf)

    assert {job.step: job.state for job in saved} == {
        "a": JobState.AVAILABLE,
        "r1": JobState.SUSPENDED,
        "r2": JobState.SUSPENDED,
        "r3": JobState.SUSPENDED,
        "z": JobState.SUSPENDED,
    }
    assert fp.drain("q-r1") == {} and fp.drain("q-r2") == {}
    fp.drain("q-a")
    assert states(fp, wf.workflow_id)["r1"] == "available"
    assert states(fp, wf.workflow_id)["r2"] == "available"
    fp.drain("q-r1")
    fp.drain("q-r3")
    assert states(fp, wf.workflow_id)["z"] == "suspended"  # r2 has not run
    fp.drain("q-r2")
    assert states(fp, wf.workflow_id)["z"] == "available"
    fp.drain("q-z")

    assert SEEN["r1"]["deps"] == {"a": {"step": "a", "value": "a"}}
    assert SEEN["z"]["deps"] == {name: {"step": name, "value": name} for name in ("r1", "r2", "r3")}
    assert SEEN["r1"]["context"] == {"inner": True}
    assert SEEN["z"]["context"] == {"outer": True}
    assert fp.workflow_status(wf.workflow_id).counts == {"completed": 5}
    assert fp.workflow_status(sub.workflow_id).counts == {"completed": 3}


def test_a_cancelled_step_inside_a_sub_workflow_cancels_what_waits_on_the_sub_workflow(fp):
    sub = Workflow(name="inner").add("r1", step(mode="cancel")).add("r2", step())
    wf = Workflow().add_workflow("sub", sub).add("z", step(), deps=["sub"])
    fp.insert(wf)

    fp.drain()

    assert states(fp, wf.workflow_id) == {"r1": "cancelled", "r2": "completed", "z": "cancelled"}
    assert "z" not in starts()


# Appending to a running workflow


class Grow(flowpro.Worker, queue="wf", recorded=True):
    """Appends steps to its own workflow, then tries a duplicate name and an unknown dep."""

    def process(self, job):
        note("start", job.meta["name"])
        added = (
            Workflow.append(job)
            .add("extra", step(value="extra"), deps=["first", "grow"])
            .add("more", step(value="more"), deps=["extra"])
            .add("free", step(value="free"))
            .insert()
        )
        SEEN["grow"] = {"added": {j.step: str(j.state) for j in added}}
        for bad, message in (
            (Workflow.append(job).add("late", step()).add("first", step()), "duplicate"),
            (Workflow.append(job).add("orphan", step(), deps=["nowhere"]), "unknown"),
        ):
            try:
                bad.insert()
            except GraphError as exc:
                SEEN[message] = {"error": str(exc)}
        return {"grew": 3}


def test_a_step_appends_steps_that_may_depend_on_existing_steps_and_on_itself(fp):
    wf = (
        Workflow(name="growing")
        .add("first", step(value="first"))
        .add("grow", Grow.new({}), deps=["first"])
        .add("last", step(), deps=["grow"])
    )
    fp.insert(wf)

    fp.drain()

    assert SEEN["grow"]["added"] == {"extra": "suspended", "more": "suspended", "free": "available"}
    assert "already has step(s) 'first'" in SEEN["duplicate"]["error"]
    assert "has no step 'nowhere'" in SEEN["unknown"]["error"]
    assert states(fp, wf.workflow_id) == dict.fromkeys(
        ["first", "grow", "last", "extra", "more", "free"], "completed"
    )
    # The failed appends wrote nothing.
    assert "late" not in states(fp, wf.workflow_id) and "orphan" not in starts()
    order = starts()
    assert order.index("grow") < order.index("extra") < order.index("more")
    assert SEEN["extra"]["deps"] == {
        "first": {"step": "first", "value": "first"},
        "grow": {"grew": 3},
    }
    assert SEEN["more"]["deps"] == {"extra": {"step": "extra", "value": "extra"}}
    assert fp.workflow_status(wf.workflow_id).counts == {"completed": 6}


def test_appending_from_outside_a_step_joins_the_workflow_and_its_cascades(fp):
    wf = Workflow(name="w").add("a", step(mode="discard")).add("b", step())
    saved = fp.insert(wf)
    fp.drain()

    added = fp.insert(
        Workflow.append(saved[1])
        .add("after-a", step(), deps=["a"])
        .add("after-b", step(), deps=["b"])
    )

    assert [(job.step, job.state) for job in added] == [
        ("after-a", JobState.CANCELLED),
        ("after-b", JobState.AVAILABLE),
    ]
    fp.drain()
    assert states(fp, wf.workflow_id) == {
        "a": "discarded",
        "b": "completed",
        "after-a": "cancelled",
        "after-b": "completed",
    }


class Nest(flowpro.Worker, queue="wf", recorded=True):
    """Inside a sub-workflow, appends a sub-workflow of its own."""

    def process(self, job):
        note("start", job.meta["name"])
        more = Workflow(name="more").add("m1", step(value="m1"))
        Workflow.append(job).add_workflow("more", more, deps=[job.meta["name"]]).insert()
        return {"nested": True}


def test_a_sub_workflow_appended_from_inside_a_sub_workflow_belongs_to_the_root_run(fp):
    sub = Workflow(name="sub").add("inner", Nest.new({}))
    wf = Workflow(name="root").add_workflow("sub", sub).add("after", step(), deps=["sub"])
    fp.insert(wf)

    fp.drain()

    assert starts()[0] == "inner" and sorted(starts()) == ["after", "inner", "m1"]
    assert SEEN["m1"]["deps"] == {"inner": {"nested": True}}
    assert fp.workflow_status(wf.workflow_id).counts == {"completed": 3}
    assert set(states(fp, wf.workflow_id)) == {"inner", "after", "m1"}


def test_a_step_with_a_future_schedule_is_released_into_scheduled_not_available(fp):
    wf = Workflow().add("a", step()).add("later", Step.new({}, schedule_in=3600), deps=["a"])
    fp.insert(wf)

    fp.drain()

    assert states(fp, wf.workflow_id) == {"a": "completed", "later": "scheduled"}
    fp.drain(with_scheduled=True)
    assert states(fp, wf.workflow_id)["later"] == "completed"


def test_appending_to_a_workflow_that_does_not_exist_is_refused(fp):
    wf = Workflow().add("a", step())
    (job,) = fp.insert(wf)
    fake = flowpro.Job(**{**_fields(job), "workflow_id": "no-such-workflow", "meta": {}})

    with pytest.raises(GraphError, match="'no-such-workflow' does not exist"):
        fp.insert(Workflow.append(fake).add("b", step()))
    assert row_counts(fp)["flowpro_jobs"] == 1


def _fields(job: flowpro.Job) -> dict[str, Any]:
    return {name: getattr(job, name) for name in job.__dataclass_fields__}


# Nothing is half-written


def test_an_invalid_workflow_writes_nothing(fp):
    before = row_counts(fp)
    cycle = Workflow().add("a", step(), deps=["b"]).add("b", step(), deps=["a"])
    unknown = Workflow().add("a", step()).add("b", step(), deps=["ghost"])
    nested_bad = (
        Workflow()
        .add("a", step())
        .add_workflow(
            "sub", Workflow().add("x", step(), deps=["y"]).add("y", step(), deps=["x"]), deps=["a"]
        )
    )

    for wf in (cycle, unknown, nested_bad):
        with pytest.raises(GraphError):
            fp.insert(wf)

    assert row_counts(fp) == before


def test_a_workflow_whose_insert_fails_in_the_database_writes_nothing(fp):
    fp.insert(Workflow(workflow_id="taken").add("a", step()))
    before = row_counts(fp)

    with pytest.raises(flowpro.StorageError):
        fp.insert(Workflow(workflow_id="taken").add("b", step()).add("c", step(), deps=["b"]))

    assert row_counts(fp) == before


# Cascades


def chain(first_mode: str, **options: Any) -> Workflow:
    """a -> b -> c, plus d independent of a and e joining c and d."""
    return (
        Workflow(name="chain", **options)
        .add("a", step(mode=first_mode))
        .add("b", step(), deps=["a"])
        .add("c", step(), deps=["b"])
        .add("d", step())
        .add("e", step(), deps=["c", "d"])
    )


@pytest.mark.parametrize(("mode", "state"), [("cancel", "cancelled"), ("discard", "discarded")])
def test_a_cancelled_or_discarded_dep_cancels_everything_downstream(fp, mode, state):
    wf = chain(mode)
    fp.insert(wf)

    fp.drain()

    assert states(fp, wf.workflow_id) == {
        "a": state,
        "b": "cancelled",
        "c": "cancelled",
        "d": "completed",
        "e": "cancelled",
    }
    assert sorted(starts()) == ["a", "d"]
    b = fp.storage.find_step(wf.workflow_id, "b")
    assert b is not None and b.cancelled_at is not None
    assert b.errors[-1]["kind"] == "upstream"
    assert f"upstream step 'a' was {state}" in b.errors[-1]["error"]


def test_a_dep_discarded_after_its_last_attempt_cancels_downstream(fp):
    wf = chain("fail")
    fp.insert(wf)

    fp.drain()

    assert starts().count("a") == 3
    assert states(fp, wf.workflow_id)["a"] == "discarded"
    assert states(fp, wf.workflow_id)["e"] == "cancelled"


def test_cancelling_a_waiting_step_by_hand_cancels_its_downstream_but_not_its_deps(fp):
    wf = chain("ok")
    saved = {job.step: job for job in fp.insert(wf)}

    cancelled = fp.cancel_job(saved["b"].id)
    fp.drain()

    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    assert states(fp, wf.workflow_id) == {
        "a": "completed",
        "b": "cancelled",
        "c": "cancelled",
        "d": "completed",
        "e": "cancelled",
    }


def test_cancelling_an_available_dep_by_hand_cancels_its_downstream(fp):
    wf = chain("ok")
    saved = {job.step: job for job in fp.insert(wf)}

    fp.cancel_job(saved["a"].id)
    fp.drain()

    assert sorted(starts()) == ["d"]
    assert states(fp, wf.workflow_id)["e"] == "cancelled"


@pytest.mark.parametrize(
    ("mode", "flag"), [("cancel", "ignore_cancelled"), ("discard", "ignore_discarded")]
)
def test_an_ignored_cancel_or_discard_lets_downstream_run(fp, mode, flag):
    wf = chain(mode, **{flag: True})
    fp.insert(wf)

    fp.drain()

    assert states(fp, wf.workflow_id)["e"] == "completed"
    assert sorted(starts()) == ["a", "b", "c", "d", "e"]
    # The ignored dep recorded nothing.
    assert SEEN["b"]["deps"] == {}


def test_ignoring_cancellations_still_cascades_discards_and_vice_versa(fp):
    cancels = chain("discard", ignore_cancelled=True)
    discards = chain("cancel", ignore_discarded=True)
    fp.insert(cancels)
    fp.insert(discards)

    fp.drain()

    # b is cancelled because a failed: that cancellation cascades whatever the flags say.
    for wf, first in ((cancels, "discarded"), (discards, "cancelled")):
        assert states(fp, wf.workflow_id) == {
            "a": first,
            "b": "cancelled",
            "c": "cancelled",
            "d": "completed",
            "e": "cancelled",
        }
    assert sorted(starts()) == ["a", "a", "d", "d"]


def test_a_step_cancelled_by_hand_with_ignore_cancelled_releases_its_dependents(fp):
    wf = chain("ok", ignore_cancelled=True)
    saved = {job.step: job for job in fp.insert(wf)}

    fp.cancel_job(saved["b"].id)
    fp.drain()

    assert states(fp, wf.workflow_id) == {
        "a": "completed",
        "b": "cancelled",
        "c": "completed",
        "d": "completed",
        "e": "completed",
    }


def test_a_join_is_cancelled_when_one_dep_fails_even_if_the_other_completes_later(fp):
    wf = (
        Workflow()
        .add("bad", step("q-bad", mode="cancel"))
        .add("good", step("q-good"))
        .add("join", step(), deps=["bad", "good"])
    )
    fp.insert(wf)

    fp.drain("q-bad")
    fp.drain("q-good")
    fp.drain()

    assert states(fp, wf.workflow_id) == {
        "bad": "cancelled",
        "good": "completed",
        "join": "cancelled",
    }


@pytest.mark.parametrize(
    ("ignore_deleted", "expected"),
    [
        (False, {"b": "cancelled", "c": "cancelled"}),
        (True, {"b": "completed", "c": "completed"}),
    ],
)
def test_a_deleted_dep_cancels_downstream_at_the_repair_pass_unless_ignored(
    fp, ignore_deleted, expected
):
    wf = (
        Workflow(ignore_deleted=ignore_deleted)
        .add("a", step())
        .add("b", step(), deps=["a"])
        .add("c", step(), deps=["b"])
    )
    saved = {job.step: job for job in fp.insert(wf)}
    engine: sa.Engine = fp.storage.engine  # type: ignore[attr-defined]
    with engine.begin() as c:
        c.execute(sa.text("DELETE FROM flowpro_jobs WHERE id = :id"), {"id": saved["a"].id})

    changed = fp.storage.repair_graphs(now=utcnow())
    fp.drain()

    assert changed >= 1
    assert states(fp, wf.workflow_id) == expected


def _unfinish(fp: flowpro.FlowPro, ids: list[int]) -> None:
    """Put steps back to suspended with one unmet dep, as a crash between an ack and its
    follow-ups could leave them; the repair pass must then decide as the ack path did."""
    engine: sa.Engine = fp.storage.engine  # type: ignore[attr-defined]
    with engine.begin() as c:
        c.execute(
            sa.text(
                "UPDATE flowpro_jobs SET state = 'suspended', deps_pending = 1, "
                "cancelled_at = NULL, completed_at = NULL, attempt = 0 WHERE id IN :ids"
            ).bindparams(sa.bindparam("ids", expanding=True)),
            {"ids": ids},
        )


def test_the_repair_pass_cascades_an_upstream_cancellation_whatever_the_flags(fp):
    wf = chain("discard", ignore_cancelled=True)
    saved = {job.step: job for job in fp.insert(wf)}
    fp.drain()
    assert states(fp, wf.workflow_id)["c"] == "cancelled"
    _unfinish(fp, [saved["c"].id, saved["e"].id])
    LOG.clear()

    fp.storage.repair_graphs(now=utcnow())
    fp.drain()

    # b was cancelled because a was discarded: that cascades, as on the ack path.
    assert states(fp, wf.workflow_id) == {
        "a": "discarded",
        "b": "cancelled",
        "c": "cancelled",
        "d": "completed",
        "e": "cancelled",
    }
    assert starts() == []


def test_the_repair_pass_judges_a_failed_dep_by_its_own_workflow_flags(fp):
    # r1 is cancelled inside a sub-workflow that ignores cancellations: the ack path lets z
    # run, although z's own workflow does not ignore them. Repair must agree.
    sub = Workflow(name="inner", ignore_cancelled=True).add("r1", step(mode="cancel"))
    sub.add("r2", step())
    wf = Workflow().add_workflow("sub", sub).add("z", step(), deps=["sub"])
    saved = {job.step: job for job in fp.insert(wf)}
    fp.drain()
    assert states(fp, wf.workflow_id) == {"r1": "cancelled", "r2": "completed", "z": "completed"}
    _unfinish(fp, [saved["z"].id])
    LOG.clear()

    changed = fp.storage.repair_graphs(now=utcnow())
    fp.drain()

    assert changed == 1
    assert states(fp, wf.workflow_id)["z"] == "completed"
    assert starts() == ["z"]


# Status and graphs


def test_workflow_status_reports_state_counts_and_duration_as_the_run_goes(fp):
    wf = diamond()
    fp.insert(wf)

    running = fp.workflow_status(wf.workflow_id)
    fp.drain()
    done = fp.workflow_status(wf.workflow_id)

    assert running.state == "running" and running.name == "diamond"
    assert running.counts == {"available": 1, "suspended": 3} and running.total == 4
    assert running.finished_at is None and running.duration is not None
    assert done.state == "completed" and done.counts == {"completed": 4}
    assert done.finished_at is not None and done.started_at is not None
    assert done.duration == done.finished_at - done.started_at
    assert done.duration.total_seconds() >= 0


@pytest.mark.parametrize(
    ("mode", "state", "counts"),
    [
        ("cancel", "cancelled", {"cancelled": 4, "completed": 1}),
        ("discard", "discarded", {"discarded": 1, "cancelled": 3, "completed": 1}),
    ],
)
def test_workflow_status_of_a_failed_run_names_what_ended_it(fp, mode, state, counts):
    wf = chain(mode)
    fp.insert(wf)

    fp.drain()
    status = fp.workflow_status(wf.workflow_id)

    assert status.state == state
    assert status.counts == counts
    assert status.finished_at is not None


def test_workflow_status_counts_a_sub_workflows_steps_and_matches_a_summary_of_its_rows(fp):
    """The status is one aggregate in the database; it must say what summing up the run's
    rows says, sub-workflows included, at every stage of the run."""
    sub = Workflow(name="sub").add("inner", step(value=1)).add("bad", step(mode="discard"))
    wf = (
        Workflow(name="outer", ignore_discarded=True)
        .add("first", step(value=0))
        .add_workflow("sub", sub, deps=["first"])
        .add("last", step(), deps=["sub"])
    )
    fp.insert(wf)

    seen = []
    for _ in range(4):
        workflows, jobs, _edges = fp.storage.workflow_rows(wf.workflow_id)
        status = fp.workflow_status(wf.workflow_id)
        seen.append(status.state)
        assert status == flowpro.WorkflowStatus.of(wf.workflow_id, workflows, jobs)
        fp.storage.ack_jobs(
            [
                Ack(job.id, job.attempt, JobState.COMPLETED, utcnow(), graph=True)
                for job in fp.storage.fetch_jobs("wf", demand=1, node="t", now=utcnow())
            ]
        )
    fp.drain()
    workflows, jobs, _edges = fp.storage.workflow_rows(wf.workflow_id)
    final = fp.workflow_status(wf.workflow_id)

    assert seen[0] == "running" and final.total == 4
    assert final == flowpro.WorkflowStatus.of(wf.workflow_id, workflows, jobs)
    assert final.finished_at is not None


def test_status_and_graph_of_an_unknown_workflow_raise_graph_error(fp):
    with pytest.raises(GraphError, match="no workflow 'nope'"):
        fp.workflow_status("nope")
    with pytest.raises(GraphError, match="no workflow 'nope'"):
        fp.workflow_graph("nope")


def test_workflow_graph_shows_each_step_with_its_state_in_every_format(fp):
    wf = chain("cancel").add_workflow("sub", Workflow(name="inner").add("r1", step()), deps=["d"])
    saved = {job.step: job for job in fp.insert(wf)}
    fp.drain()
    expected = states(fp, wf.workflow_id)

    mermaid = fp.workflow_graph(wf.workflow_id, format="mermaid")
    dot = fp.workflow_graph(wf.workflow_id, format="dot")
    doc = json.loads(fp.workflow_graph(wf.workflow_id, format="json"))

    assert expected == {
        "a": "cancelled",
        "b": "cancelled",
        "c": "cancelled",
        "d": "completed",
        "e": "cancelled",
        "r1": "completed",
    }
    for name, state in expected.items():
        key = f"j{saved[name].id}"
        assert f'{key}["{name}<br/>{state}"]' in mermaid
        assert f'{key} [label="{name}\\n{state}", fillcolor="{COLOURS[state]}"' in dot
        assert re.search(rf"class [^\n]*\b{key}\b[^\n]* {state}\n", mermaid)
    assert "classDef cancelled fill:" in mermaid and "classDef completed fill:" in mermaid
    assert f"j{saved['a'].id} --> j{saved['b'].id}" in mermaid
    assert f"j{saved['d'].id} -> j{saved['r1'].id};" in dot
    assert {node["name"]: node["state"] for node in doc["nodes"]} == expected
    assert {node["name"]: node["job_id"] for node in doc["nodes"]} == {
        name: job.id for name, job in saved.items()
    }
    assert sorted(next(n for n in doc["nodes"] if n["name"] == "e")["deps"]) == ["c", "d"]
    with pytest.raises(flowpro.ConfigError, match="unknown graph format 'png'"):
        fp.workflow_graph(wf.workflow_id, format="png")
