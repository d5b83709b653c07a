"""`flowpro run` in real subprocesses: draining with several nodes, kill -9, SIGTERM, SIGINT."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

import flowpro
from flowpro import _loader
from flowpro.job import Ack, JobState, utcnow
from tests.cli.conftest import MODULE, Log, Nodes, elapsed_since, wait_for_nodes, wait_started
from tests.conftest import eventually


def module_path(tmp_path: Path) -> str:
    return str(tmp_path / f"{MODULE}.py")


def test_run_until_idle_runs_every_queue_of_the_loaded_workers_and_exits_zero(
    fp: flowpro.FlowPro, workers: ModuleType, log: Log, nodes: Nodes, tmp_path: Path
) -> None:
    bulk = fp.insert_all([workers.Record.new({"log": str(log.path)}) for _ in range(20)])
    slow = fp.insert(workers.Nap.new({"log": str(log.path), "sleep": 0}))

    node = nodes.start(fp.url, module_path(tmp_path), "--until-idle", script=True)

    assert node.wait() == 0, node.stderr()
    assert sorted(log.ids("end")) == sorted([job.id for job in bulk] + [slow.id])
    assert fp.storage.count_jobs() == {"completed": 21}
    assert "Traceback" not in node.stderr()


@pytest.mark.parametrize("count", [2, 3])
def test_several_nodes_draining_one_database_run_every_job_exactly_once(
    fp: flowpro.FlowPro,
    workers: ModuleType,
    log: Log,
    nodes: Nodes,
    tmp_path: Path,
    count: int,
) -> None:
    started = [
        nodes.start(fp.url, module_path(tmp_path), "--queues", "bulk=10") for _ in range(count)
    ]
    wait_for_nodes(fp, count)

    jobs = fp.insert_all(
        [workers.Record.new({"log": str(log.path), "sleep": 0.005}) for _ in range(600)]
    )
    eventually(lambda: fp.storage.count_jobs() == {"completed": 600}, timeout=60)
    codes = [node.stop() for node in started]

    assert codes == [0] * count, [node.stderr() for node in started]
    expected = sorted(job.id for job in jobs)
    assert sorted(log.ids("start")) == expected  # every job started once: none twice
    assert sorted(log.ids("end")) == expected
    per_node = Counter(log.pids("end"))
    assert set(per_node) == {node.pid for node in started}, per_node  # all of them took part


def test_a_job_of_a_killed_node_is_rescued_by_another_node_and_the_late_ack_is_rejected(
    fp: flowpro.FlowPro, workers: ModuleType, log: Log, nodes: Nodes, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    first = nodes.start(fp.url, module_path(tmp_path), "--queues", "slow=1", "--node", "first")
    wait_for_nodes(fp, 1)
    job = fp.insert(workers.Block.new({"log": str(log.path), "gate": str(gate)}))
    assert wait_started(log, job.id) == first.pid
    killed_attempt = fp.get_job(job.id)
    assert killed_attempt is not None and killed_attempt.state == JobState.EXECUTING
    second = nodes.start(fp.url, module_path(tmp_path), "--queues", "slow=1", "--node", "second")
    wait_for_nodes(fp, 2)

    first.proc.kill()  # SIGKILL: no clean shutdown, no hand-back
    first.wait()
    killed_at = time.monotonic()
    eventually(lambda: len(log.pids("start", job.id)) == 2, timeout=15)
    rescued_after = elapsed_since(killed_at)
    rerun = fp.get_job(job.id)
    late = fp.storage.ack_jobs(
        [Ack(id=job.id, attempt=killed_attempt.attempt, state=JobState.COMPLETED, at=utcnow())]
    )
    unchanged = fp.get_job(job.id)
    gate.touch()
    done = eventually(lambda: (j := fp.get_job(job.id)) and j.state == JobState.COMPLETED and j)

    assert rescued_after < 8, f"rescued only after {rescued_after:.1f}s"
    assert log.pids("start", job.id) == [first.pid, second.pid]
    assert rerun is not None and rerun.state == JobState.EXECUTING
    assert rerun.attempt == killed_attempt.attempt + 1
    assert rerun.attempted_by is not None and rerun.attempted_by.startswith("second.")
    assert late == []
    assert unchanged == rerun
    assert log.pids("end", job.id) == [second.pid]  # completed once
    assert done.attempt == rerun.attempt
    assert (
        fp.storage.ack_jobs(
            [Ack(id=job.id, attempt=killed_attempt.attempt, state=JobState.DISCARDED, at=utcnow())]
        )
        == []
    )
    assert fp.get_job(job.id) == done
    assert second.stop() == 0, second.stderr()


def test_sigterm_starts_nothing_new_finishes_short_jobs_and_hands_back_a_long_one(
    fp: flowpro.FlowPro, workers: ModuleType, log: Log, nodes: Nodes, tmp_path: Path
) -> None:
    grace = 3.0
    node = nodes.start(
        fp.url,
        module_path(tmp_path),
        "--queues",
        "slow=4,bulk=2",
        "--shutdown-grace",
        str(grace),
    )
    wait_for_nodes(fp, 1)
    short = fp.insert_all([workers.Nap.new({"log": str(log.path), "sleep": 1.5}) for _ in range(3)])
    long = fp.insert(workers.Block.new({"log": str(log.path), "gate": str(tmp_path / "never")}))
    for job in [*short, long]:
        wait_started(log, job.id)
    queued = fp.insert_all([workers.Nap.new({"log": str(log.path), "sleep": 0}) for _ in range(5)])

    node.signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    # Jobs inserted while the signal is still on its way may start; wait until it was handled.
    eventually(lambda: "SIGTERM: stopping" in node.stderr())
    after = fp.insert_all([workers.Record.new({"log": str(log.path)}) for _ in range(5)])
    code = node.wait(timeout=grace + 15)
    took = elapsed_since(signalled_at)

    assert code == 0, node.stderr()
    assert took < grace + 3, f"exited {took:.1f}s after SIGTERM (grace {grace}s)"
    assert sorted(log.ids("start")) == sorted(job.id for job in [*short, long])
    for job in short:
        finished = fp.get_job(job.id)
        assert finished is not None and finished.state == JobState.COMPLETED
    handed_back = fp.get_job(long.id)
    assert handed_back is not None
    assert handed_back.state == JobState.AVAILABLE
    assert handed_back.errors == []
    # The attempt it used is given back: as many attempts remain as before it started.
    assert handed_back.max_attempts - handed_back.attempt == long.max_attempts - long.attempt
    for job in [*queued, *after]:
        untouched = fp.get_job(job.id)
        assert untouched is not None and untouched.state == JobState.AVAILABLE
        assert untouched.attempt == 0
    assert "handed back 1 unfinished job" in node.stderr()


def test_sigint_stops_an_idle_node_cleanly(
    fp: flowpro.FlowPro, workers: ModuleType, nodes: Nodes, tmp_path: Path
) -> None:
    node = nodes.start(fp.url, module_path(tmp_path), "--queues", "bulk=2")
    wait_for_nodes(fp, 1)

    node.signal(signal.SIGINT)
    code = node.wait(timeout=10)

    assert code == 0, node.stderr()
    assert fp.storage.live_nodes(alive_since=utcnow().replace(year=2000)) == []
    assert "SIGINT: stopping" in node.stderr()
    assert "Traceback" not in node.stderr()


def test_run_exits_one_with_a_single_line_when_the_database_is_down(
    nodes: Nodes, tmp_path: Path
) -> None:
    node = nodes.start("postgresql://flowpro:secret@127.0.0.1:1/none", "--queues", "bulk=1")

    code = node.wait(timeout=20)

    errors = node.stderr().strip().splitlines()
    assert code == 1
    assert len(errors) == 1, errors
    assert errors[0].startswith("Error: ") and "127.0.0.1:1" in errors[0]
    assert "secret" not in errors[0]


def test_run_exits_two_naming_the_file_when_a_dag_file_fails_to_import(
    nodes: Nodes, tmp_path: Path
) -> None:
    broken = tmp_path / "dags" / "broken.py"
    broken.parent.mkdir()
    broken.write_text("import flowpro\n\nraise RuntimeError('no config for this DAG')\n")

    node = nodes.start(f"sqlite:///{tmp_path}/x.db", str(broken.parent))
    code = node.wait(timeout=20)

    assert code == 2
    assert "broken.py" in node.stderr()
    assert "RuntimeError: no config for this DAG" in node.stderr()
    assert "Traceback" not in node.stderr()
    assert not (tmp_path / "x.db").exists()  # nothing was written


def test_run_without_queues_or_workers_says_what_to_pass(nodes: Nodes, tmp_path: Path) -> None:
    node = nodes.start(f"sqlite:///{tmp_path}/x.db")

    code = node.wait(timeout=20)

    assert code == 2
    assert "no queues to run" in node.stderr() and "--queues" in node.stderr()


REPORTS = """
import flowpro


class Report(flowpro.Worker, queue="reports"):
    def process(self, job):
        return None
"""


@pytest.mark.parametrize("where", ["./dags", "$FLOWPRO_DAGS"])
def test_run_without_paths_loads_the_dags_folder_and_runs_its_queues(
    fp: flowpro.FlowPro, nodes: Nodes, tmp_path: Path, where: str
) -> None:
    folder = tmp_path / ("dags" if where == "./dags" else "elsewhere")
    folder.mkdir()
    (folder / "reports.py").write_text(REPORTS)
    reports = _loader.load_file(folder / "reports.py")
    job = fp.insert(reports.Report.new({}))
    env = {"FLOWPRO_DAGS": str(folder)} if where == "$FLOWPRO_DAGS" else {}

    node = nodes.start(fp.url, "--until-idle", env=env)

    assert node.wait() == 0, node.stderr()
    assert job.worker == "reports.Report"
    done = fp.get_job(job.id)
    assert done is not None and done.state == JobState.COMPLETED


def test_a_second_signal_exits_at_once_leaving_the_job_to_be_rescued(
    fp: flowpro.FlowPro, workers: ModuleType, log: Log, nodes: Nodes, tmp_path: Path
) -> None:
    node = nodes.start(
        fp.url, module_path(tmp_path), "--queues", "slow=1", "--shutdown-grace", "60"
    )
    wait_for_nodes(fp, 1)
    job = fp.insert(workers.Block.new({"log": str(log.path), "gate": str(tmp_path / "never")}))
    wait_started(log, job.id)

    node.signal(signal.SIGTERM)
    eventually(lambda: "SIGTERM: stopping" in node.stderr())
    node.signal(signal.SIGTERM)
    code = node.wait(timeout=10)

    assert code == 1
    assert "SIGTERM again: exiting now" in node.stderr()
    running = fp.get_job(job.id)
    assert running is not None and running.state == JobState.EXECUTING  # for the lifeline
