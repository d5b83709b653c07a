"""Batch callbacks are inserted exactly once when the last members finish at the same instant
in different `flowpro run` processes, and when the process running the last member is killed
(kill -9) after its work and before its ack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import flowpro
from flowpro import Batch
from flowpro.job import TERMINAL_STATES, JobState, utcnow
from tests.conftest import FAST, eventually
from tests.runtime import batch_race_workers as rw

ROOT = Path(__file__).resolve().parents[2]
NODES = 4
ROUNDS = 3
# Node timings for the subprocesses (NodeConfig fields, given as -s KEY=VALUE).
SETTINGS = {
    key: FAST[key]
    for key in ("poll_interval", "heartbeat_interval", "rescue_after", "rescue_interval")
} | {"leader_ttl": 1.0, "stage_interval": 0.05, "idle_check_interval": 0.02}


class Nodes:
    """`flowpro run` subprocesses loading the race workers; none outlives the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, url: str, queues: str = "race=8,racecb=2", **settings: float
    ) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "flowpro.cli", "run", "--database-url", url]
        command += ["-m", rw.__name__, "--queues", queues, "--log-level", "WARNING"]
        merged = {**SETTINGS, **settings}
        command += [arg for k, v in merged.items() for arg in ("-s", f"{k}={v}")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWPRO_")}
        stderr = (self.tmp_path / f"node-{len(self.procs)}.stderr").open("wb")
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
        stderr.close()
        self.procs.append(proc)
        return proc

    def stderr(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp_path.glob("node-*.stderr")))

    def stop_all(self) -> list[int | None]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(30))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    started = Nodes(tmp_path)
    yield started
    for proc in started.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for_nodes(fp: flowpro.FlowPro, count: int, nodes: Nodes) -> None:
    def live() -> bool:
        assert all(p.poll() is None for p in nodes.procs), nodes.stderr()
        alive = utcnow() - timedelta(seconds=30)
        return len(fp.storage.live_nodes(alive_since=alive)) >= count

    eventually(live, timeout=30, interval=0.05)


def wait_until_all_finished(
    fp: flowpro.FlowPro, nodes: Nodes, timeout: float = 120, *, killed: Any = None
) -> None:
    """Wait until every job is terminal: callbacks are inserted with the acks that make them
    due, so nothing more can appear. Fails early when a node (other than ``killed``) died."""

    def finished() -> bool:
        assert all(p.poll() is None for p in nodes.procs if p is not killed), nodes.stderr()
        counts = fp.storage.count_jobs()
        return bool(counts) and set(counts) <= {str(s) for s in TERMINAL_STATES}

    eventually(finished, timeout=timeout, interval=0.05)


def state(fp: flowpro.FlowPro, job_id: int) -> JobState | None:
    job = fp.get_job(job_id)
    return None if job is None else job.state


def read_log(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines()]


def callback_jobs(fp: flowpro.FlowPro) -> list[flowpro.Job]:
    return fp.list_jobs(worker="race.Done", limit=1_000_000)


def callback_rows(fp: flowpro.FlowPro) -> list[tuple[str, str, int]]:
    with fp.storage.engine.connect() as c:  # type: ignore[attr-defined]
        rows = c.execute(sa.text("SELECT batch_id, kind, job_id FROM flowpro_batch_callbacks"))
        return sorted((r[0], r[1], r[2]) for r in rows)


def due_kinds(plan: list[str]) -> set[str]:
    """The callback kinds a batch whose members do ``plan`` must fire (all members run)."""
    kinds = {"attempted", "exhausted"}
    if all(do in ("ok", "flaky") for do in plan):
        kinds.add("completed")
    if "cancel" in plan:
        kinds.add("cancelled")
    if "discard" in plan or "fail" in plan:
        kinds.add("discarded")
    if "flaky" in plan:
        kinds.add("retryable")
    return kinds


SMALL = [
    ["ok"],
    ["flaky"],
    ["cancel"],
    ["discard"],
    ["fail"],
    ["ok"],
    ["ok", "ok"],
    ["ok", "flaky"],
    ["ok", "cancel"],
    ["discard", "ok"],
    ["flaky", "flaky"],
    ["cancel", "fail"],
    ["ok", "ok"],
]


def plan_of(size: int, variant: int) -> list[str]:
    """A mostly-ok plan of ``size`` members; odd variants mix in every outcome."""
    plan = ["flaky" if i % 37 == 5 else "ok" for i in range(size)]
    if variant % 2:
        plan[size // 2] = "cancel"
        plan[size // 3] = "discard"
        plan[-1] = "fail"
    return plan


def insert_round(
    fp: flowpro.FlowPro, log: Path, round_no: int, *, big: bool
) -> dict[str, list[str]]:
    """Insert one round of batches, small ones first; return {batch id: plan}."""
    at = time.time() + 1.0  # members already claimed wait for this instant, then finish
    plans = [*SMALL, plan_of(100, round_no), plan_of(100, round_no + 1)]
    if big:
        plans.append(plan_of(1000, round_no))
    inserted: dict[str, list[str]] = {}
    for plan in plans:
        small = len(plan) <= 2
        jobs = [
            # In small batches the second member has a lower priority, so the first members
            # of all batches are claimed first: a batch's members land on different nodes.
            # Four nodes of eight slots hold every small batch at once; all wait for `at`.
            rw.Member.new(
                {"log": str(log), "do": do, "at": at, "hold": 0.0 if small else 0.005},
                priority=i if small else 2,
                max_attempts=1 if do == "fail" else 3,
            )
            for i, do in enumerate(plan)
        ]
        batch = Batch(
            jobs, callback=rw.Done, name=f"r{round_no}-{len(plan)}", callback_args={"log": str(log)}
        )
        fp.insert(batch)
        inserted[batch.batch_id] = plan
    return inserted


def test_last_completions_racing_across_four_processes_fire_each_callback_exactly_once(
    fp: flowpro.FlowPro, nodes: Nodes, tmp_path: Path
) -> None:
    log = tmp_path / "executions.log"
    for _ in range(NODES):
        # No rescues here: on a busy machine a node can miss heartbeats for a second, and a
        # rescued callback would rightly run twice (at least once), spoiling the run counts.
        nodes.start(fp.url, rescue_after=30.0, heartbeat_interval=0.5)
    wait_for_nodes(fp, NODES, nodes)

    plans: dict[str, list[str]] = {}
    for round_no in range(ROUNDS):
        plans |= insert_round(fp, log, round_no, big=round_no == 0)
        wait_until_all_finished(fp, nodes)
    codes = nodes.stop_all()

    assert codes == [0] * NODES, nodes.stderr()
    expected = Counter(
        (batch_id, kind) for batch_id, plan in plans.items() for kind in due_kinds(plan)
    )
    callbacks = callback_jobs(fp)
    inserted = Counter((j.meta["batch_id"], j.meta["callback"]) for j in callbacks)
    missing, extra = expected - inserted, inserted - expected
    assert (len(missing), len(extra)) == (0, 0), (missing, extra)
    assert callback_rows(fp) == sorted(
        (j.meta["batch_id"], j.meta["callback"], j.id) for j in callbacks
    )
    assert all(j.state == JobState.COMPLETED and j.attempt == 1 for j in callbacks)
    events = read_log(log)
    ran = Counter(int(e[1]) for e in events if e[0] == "callback")
    assert ran == Counter({j.id: 1 for j in callbacks})  # each callback ran once
    # The races happened: members of one batch finished on different nodes.
    pids_of: dict[str, set[str]] = {}
    member_batch = {
        j.id: j.meta["batch_id"] for j in fp.list_jobs(worker="race.Member", limit=10**6)
    }
    for event in events:
        if event[0] == "member":
            pids_of.setdefault(member_batch[int(event[1])], set()).add(event[2])
    spread = {b for b, pids in pids_of.items() if len(pids) > 1}
    assert {b for b, plan in plans.items() if len(plan) >= 100} <= spread
    assert any(len(plans[b]) == 2 for b in spread), "no two-member batch spanned two nodes"
    sizes = Counter(len(plan) for plan in plans.values())
    assert sizes == Counter({1: 6 * ROUNDS, 2: 7 * ROUNDS, 100: 2 * ROUNDS, 1000: 1})


@pytest.mark.parametrize("size", [1, 3])
def test_a_last_member_killed_before_its_ack_is_rescued_and_fires_each_callback_once(
    fp: flowpro.FlowPro, nodes: Nodes, tmp_path: Path, size: int
) -> None:
    log = tmp_path / "executions.log"
    marker = tmp_path / "stalled"
    # Rescue after 2 s: quick, with some margin for a survivor slowed by a busy machine.
    first, second = (nodes.start(fp.url, rescue_after=2.0) for _ in range(2))
    wait_for_nodes(fp, 2, nodes)
    ok = [rw.Member.new({"log": str(log), "do": "ok"}) for _ in range(size - 1)]
    stall = rw.Stall.new({"log": str(log), "marker": str(marker)}, priority=9)
    batch = Batch([*ok, stall], callback=rw.Done, callback_args={"log": str(log)})
    *saved_ok, saved_stall = fp.insert(batch)

    pid = int(eventually(lambda: marker.exists() and marker.read_text(), timeout=30))
    eventually(lambda: all(state(fp, j.id) == JobState.COMPLETED for j in saved_ok), timeout=30)
    before = {j.meta["callback"] for j in callback_jobs(fp)}
    victim = first if first.pid == pid else second
    assert victim.pid == pid
    victim.kill()  # SIGKILL: the work is done, the ack never written
    victim.wait()
    wait_until_all_finished(fp, nodes, timeout=60, killed=victim)
    survivor = second if victim is first else first
    survivor.send_signal(signal.SIGTERM)

    assert survivor.wait(30) == 0, nodes.stderr()
    rescued = fp.get_job(saved_stall.id)
    assert rescued is not None
    assert "completed" not in before and "exhausted" not in before
    callbacks = callback_jobs(fp)
    assert Counter(j.meta["callback"] for j in callbacks) == Counter(
        attempted=1, completed=1, exhausted=1
    )
    assert callback_rows(fp) == sorted(
        (batch.batch_id, j.meta["callback"], j.id) for j in callbacks
    )
    events = read_log(log)
    assert Counter(int(e[1]) for e in events if e[0] == "callback") == Counter(
        {j.id: 1 for j in callbacks}
    )
    runs = [e[2] for e in events if e[0] == "member" and int(e[1]) == saved_stall.id]
    assert runs == [str(pid), str(survivor.pid)]
    assert rescued.state == JobState.COMPLETED and rescued.attempt == 2
    assert rescued.errors[0]["kind"] == "rescued"
