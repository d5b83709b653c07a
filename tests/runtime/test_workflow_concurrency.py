"""Workflow progress under concurrency: joins whose deps finish at the same instant on two
storages, and a 1 -> 40 -> 1 fan-in drained by two `flowpro run` processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import flowpro
from flowpro import Workflow
from flowpro.job import Ack, JobState, utcnow
from tests.conftest import FAST, eventually

# Joins released by racing acks


class Side(flowpro.Worker, queue="race-deps"):
    def process(self, job):
        return None


class Join(flowpro.Worker, queue="race-join"):
    def process(self, job):
        return None


def join_rows(fp: flowpro.FlowPro, ids: list[int]) -> dict[int, tuple[str, int]]:
    engine: sa.Engine = fp.storage.engine  # type: ignore[attr-defined]
    sql = sa.text("SELECT id, state, deps_pending FROM flowpro_jobs WHERE id IN :ids").bindparams(
        sa.bindparam("ids", expanding=True)
    )
    with engine.connect() as c:
        return {row[0]: (row[1], row[2]) for row in c.execute(sql, {"ids": ids})}


def ack_by(storage: Any, how: str, acks: list[Ack]) -> None:
    """Ack through the general path, or the producers' ack-and-claim round trip."""
    if how == "ack_jobs":
        storage.ack_jobs(acks)
    else:
        storage.ack_and_fetch(acks, "race-deps", demand=1, node="racer", now=utcnow())


def at_once(*calls: Callable[[], object]) -> None:
    """Run the calls in threads released together by a barrier; re-raise the first error."""
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout=10)
            call()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("how", ["ack_jobs", "ack_and_fetch"])
def test_a_join_whose_two_deps_are_acked_at_the_same_instant_becomes_available_exactly_once(
    fp, db_url, how
):
    other = flowpro.FlowPro(db_url, **FAST)
    joins_per_round, rounds = 4, 40
    try:
        for _ in range(rounds):
            joins: list[int] = []
            left: list[Ack] = []
            right: list[Ack] = []
            for _ in range(joins_per_round):
                wf = (
                    Workflow(name="race")
                    .add("left", Side.new({}))
                    .add("right", Side.new({}))
                    .add("join", Join.new({}), deps=["left", "right"])
                )
                saved = {job.step: job for job in fp.insert(wf)}
                joins.append(saved["join"].id)
            claimed = fp.storage.fetch_jobs(
                "race-deps", demand=2 * joins_per_round, node="racer", now=utcnow()
            )
            assert len(claimed) == 2 * joins_per_round
            for job in claimed:
                ack = Ack(job.id, job.attempt, JobState.COMPLETED, utcnow(), graph=True)
                (left if job.step == "left" else right).append(ack)
            assert {state for state, _ in join_rows(fp, joins).values()} == {"suspended"}

            at_once(
                lambda: ack_by(fp.storage, how, left),  # noqa: B023 - called before the loop moves on
                lambda: ack_by(other.storage, how, right),  # noqa: B023
            )

            assert join_rows(fp, joins) == dict.fromkeys(joins, ("available", 0))
            fetched = fp.storage.fetch_jobs("race-join", demand=100, node="j", now=utcnow())
            assert sorted(job.id for job in fetched) == sorted(joins)
            assert fp.storage.fetch_jobs("race-join", demand=100, node="j", now=utcnow()) == []
            fp.storage.ack_jobs(
                [Ack(j.id, j.attempt, JobState.COMPLETED, utcnow(), graph=True) for j in fetched]
            )
    finally:
        other.close()
    assert fp.storage.count_jobs() == {"completed": 3 * joins_per_round * rounds}


@pytest.mark.parametrize("how", ["ack_jobs", "ack_and_fetch"])
def test_a_join_is_cancelled_exactly_once_when_one_dep_completes_as_the_other_is_cancelled(
    fp, db_url, how
):
    other = flowpro.FlowPro(db_url, **FAST)
    try:
        for _ in range(20):
            wf = (
                Workflow(name="race")
                .add("left", Side.new({}))
                .add("right", Side.new({}))
                .add("join", Join.new({}), deps=["left", "right"])
                .add("after", Join.new({}), deps=["join"])
            )
            saved = {job.step: job for job in fp.insert(wf)}
            claimed = {
                job.step: job
                for job in fp.storage.fetch_jobs("race-deps", demand=2, node="r", now=utcnow())
            }
            done = Ack(claimed["left"].id, 1, JobState.COMPLETED, utcnow(), graph=True)
            at_once(
                lambda: ack_by(fp.storage, how, [done]),  # noqa: B023 - called before the loop moves on
                lambda: other.cancel_job(saved["right"].id),  # noqa: B023
            )

            rows = join_rows(fp, [saved["join"].id, saved["after"].id])
            assert rows[saved["join"].id][0] == "cancelled"
            assert rows[saved["after"].id][0] == "cancelled"
            assert fp.storage.fetch_jobs("race-join", demand=10, node="j", now=utcnow()) == []
    finally:
        other.close()


@pytest.mark.parametrize("how", ["ack_jobs", "ack_and_fetch"])
def test_a_step_appended_while_its_dep_is_being_acked_is_released_exactly_once(
    fp, db_url, how, request
):
    """The append holds its dep's row while the dep's ack waits on it: the ack, once through,
    must see the new edge (and an append after the ack must see the dep completed)."""
    other = flowpro.FlowPro(db_url, **FAST)
    engine: sa.Engine = other.storage.engine  # type: ignore[attr-defined]
    pg = other.storage.dialect == "postgresql"
    try:
        for _ in range(5):
            wf = Workflow(name="append-race").add("x", Side.new({}))
            fp.insert(wf)
            (x,) = fp.storage.fetch_jobs("race-deps", demand=1, node="r", now=utcnow())
            with engine.begin() as c:
                (new,) = other.insert(
                    Workflow.append(x).add("new", Join.new({}), deps=["x"]), conn=c
                )
                assert new.state is JobState.SUSPENDED
                done = Ack(x.id, x.attempt, JobState.COMPLETED, utcnow(), graph=True)
                acker = threading.Thread(target=ack_by, args=(fp.storage, how, [done]))
                acker.start()
                if pg:
                    xid = c.execute(sa.text("SELECT pg_current_xact_id()::text")).scalar_one()
                    eventually(lambda: waiting_on(fp, xid), timeout=10)  # noqa: B023
                else:
                    acker.join(timeout=0.2)  # SQLite: the ack waits for the write lock
                assert acker.is_alive()
            acker.join(timeout=30)

            assert join_rows(fp, [new.id]) == {new.id: ("available", 0)}
    finally:
        other.close()


def waiting_on(fp: flowpro.FlowPro, xid: str) -> bool:
    """Whether some transaction waits for transaction ``xid`` (a row lock it holds)."""
    engine: sa.Engine = fp.storage.engine  # type: ignore[attr-defined]
    with engine.connect() as c:
        return bool(
            c.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' "
                    "AND transactionid::text = :xid AND NOT granted"
                ),
                {"xid": xid},
            ).scalar_one()
        )


# Fan-in drained by two `flowpro run` processes

WIDTH = 40
FANIN_MODULE = """
import os
import time

import flowpro
from flowpro import Workflow


def note(job, event, extra=""):
    line = f"{event} {job.workflow_id} {job.meta['name']} {os.getpid()} {extra}".rstrip()
    fd = os.open(job.args["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


class Fan(flowpro.Worker, name="wf_fanin.Fan", queue="fan", recorded=True):
    def process(self, job):
        note(job, "start")
        name = job.meta["name"]
        if name == "root":
            # Hold the fan-out until the test saw both nodes register.
            while not os.path.exists(job.args["gate"]):
                time.sleep(0.01)
        elif name == "join":
            seen = Workflow.all_recorded(job)
            ok = sorted(seen) == sorted(f"m{i}" for i in range(__WIDTH__))
            note(job, "deps", str(len(seen)) + ("" if ok else "-wrong"))
        else:
            time.sleep(0.02)
        note(job, "end")
        return {"name": name}
""".replace("__WIDTH__", str(WIDTH))


class Fan(flowpro.Worker, name="wf_fanin.Fan", queue="fan", recorded=True):
    """The same stored name as the subprocess worker: builds its jobs here."""

    def process(self, job):
        raise AssertionError("runs only in the `flowpro run` subprocesses")


def fan_in(log: Path, gate: Path) -> Workflow:
    args = {"log": str(log), "gate": str(gate)}
    wf = Workflow(name="fan-in").add("root", Fan.new(args))
    for i in range(WIDTH):
        wf.add(f"m{i}", Fan.new(args), deps=["root"])
    return wf.add("join", Fan.new(args), deps=[f"m{i}" for i in range(WIDTH)])


def start_node(url: str, module: Path, stderr: Path) -> subprocess.Popen[bytes]:
    settings = {
        "poll_interval": 0.02,
        "heartbeat_interval": 0.1,
        "rescue_after": 5.0,
        "leader_ttl": 1.0,
        "stage_interval": 0.05,
        "idle_check_interval": 0.02,
    }
    command = [sys.executable, "-m", "flowpro.cli", "run", str(module)]
    command += ["--database-url", url, "--queues", "fan=8", "--until-idle"]
    command += [arg for k, v in settings.items() for arg in ("-s", f"{k}={v}")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWPRO_")}
    with stderr.open("w") as err:
        return subprocess.Popen(
            command, cwd=module.parent, stdout=subprocess.DEVNULL, stderr=err, env=env
        )


def both_up(fp: flowpro.FlowPro, procs: list[subprocess.Popen[bytes]]) -> bool:
    live = fp.storage.live_nodes(alive_since=utcnow() - timedelta(seconds=5))
    return len(live) >= 2 or any(p.poll() is not None for p in procs)


def test_a_fan_in_drained_by_two_run_processes_joins_exactly_once_after_all_forty(fp, tmp_path):
    module = tmp_path / "wf_fanin.py"
    module.write_text(FANIN_MODULE)
    runs, per_run = 3, 3
    for run in range(runs):
        log = tmp_path / f"run-{run}.log"
        gate = tmp_path / f"gate-{run}"
        workflows = [fan_in(log, gate) for _ in range(per_run)]
        for wf in workflows:
            fp.insert(wf)
        stderr = [tmp_path / f"node-{run}-{i}.stderr" for i in range(2)]
        procs = [start_node(fp.url, module, path) for path in stderr]
        try:
            # Open the gate once both nodes are up (or one died: its exit code tells why).
            eventually(lambda: both_up(fp, procs), timeout=30)  # noqa: B023
            gate.touch()
            codes = [p.wait(timeout=90) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert codes == [0, 0], [path.read_text()[-3000:] for path in stderr]

        lines = [line.split() for line in log.read_text().splitlines()]
        for wf in workflows:
            mine = [(i, line) for i, line in enumerate(lines) if line[1] == wf.workflow_id]
            starts = Counter(line[2] for _, line in mine if line[0] == "start")
            assert starts == Counter({"root": 1, "join": 1, **{f"m{i}": 1 for i in range(WIDTH)}})
            join_at = next(i for i, line in mine if line[0] == "start" and line[2] == "join")
            ends = {line[2]: i for i, line in mine if line[0] == "end"}
            assert all(ends[f"m{i}"] < join_at for i in range(WIDTH))
            assert [line[4] for _, line in mine if line[0] == "deps"] == [str(WIDTH)]
            status = fp.workflow_status(wf.workflow_id)
            assert status.state == "completed" and status.counts == {"completed": WIDTH + 2}
            join = fp.storage.find_step(wf.workflow_id, "join")
            assert join is not None and join.attempt == 1
        # Both processes took part (the gate opened once both were up).
        assert len({line[3] for line in lines}) == 2
