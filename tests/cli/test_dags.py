"""`flowpro dags list/show/trigger`, `flowpro graph` and `flowpro workflows status`, and
scheduled DAGs inserted once per tick, on real SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import flowpro
from flowpro import _loader
from flowpro._runtime.cron import Cron
from flowpro.app import cron_entries
from flowpro.cli import cli
from flowpro.graph import dag as dag_module
from flowpro.job import InsertPlan, JobState, utcnow
from tests.cli.conftest import Nodes
from tests.conftest import eventually
from tests.runtime.nodes import another_app, running

# Three parallel fetches joined by one step that sums their recorded outputs, a manual DAG,
# and one that runs every second (croniter's sixth field is seconds) for the node test.
DAGS = '''
import flowpro
from flowpro import Workflow


class Fetch(flowpro.Worker, queue="dagq", recorded=True):
    def process(self, job):
        return {"n": job.args["n"]}


class Join(flowpro.Worker, queue="dagq", recorded=True):
    def process(self, job):
        return sum(value["n"] for value in Workflow.all_recorded(job).values())


@flowpro.dag(schedule="0 2 * * *")
def nightly(tick):
    """Fetch three parts, then join them."""
    wf = Workflow(name="nightly").put_context({"day": tick.date().isoformat()})
    for n in range(3):
        wf.add(f"fetch:{n}", Fetch.new({"n": n + 1}))
    return wf.add("join", Join.new({}), deps=[f"fetch:{n}" for n in range(3)])


@flowpro.dag(description="Fetch one thing when asked.")
def adhoc():
    return Workflow().add("only", Fetch.new({"n": 7}))
'''

EVERY_SECOND = """
import flowpro
from flowpro import Workflow


class Tick(flowpro.Worker, queue="tickq", recorded=True):
    def process(self, job):
        return job.args["at"]


@flowpro.dag(schedule="* * * * * *")
def every_second(tick):
    wf = Workflow(name="every_second")
    wf.add("first", Tick.new({"at": tick.isoformat()}))
    return wf.add("second", Tick.new({"at": tick.isoformat()}), deps=["first"])
"""

MODULE = "nightly_dags"

DAILY = """
import flowpro
from flowpro import Workflow


class Load(flowpro.Worker, queue="q"):
    def process(self, job):
        return None


@flowpro.dag(schedule="0 3 * * *")
def daily(tick):
    return Workflow().add(f"load:{tick.isoformat()}", Load.new({}))
"""


@pytest.fixture(autouse=True)
def _forget_dags() -> Iterator[None]:
    """Tests load DAG files: forget the DAGs they declared."""
    saved = dict(dag_module._DAGS)
    yield
    dag_module._DAGS.clear()
    dag_module._DAGS.update(saved)


@pytest.fixture
def dag_dir(tmp_path: Path) -> Path:
    """A DAG folder holding the module above."""
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(DAGS)
    return folder


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    environ: dict[str, str | None] = {"FLOWPRO_DAGS": None, "FLOWPRO_DATABASE_URL": None}
    return CliRunner().invoke(cli, list(args), env={**environ, **(env or {})})


def cli_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m flowpro.cli ARGS`` in a real process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWPRO_")}
    return subprocess.run(
        [sys.executable, "-m", "flowpro.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def trigger(dag_dir: Path, url: str, *extra: str) -> dict[str, Any]:
    result = invoke(
        "dags", "trigger", "nightly", str(dag_dir), "--database-url", url, "--json", *extra
    )
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.output)
    return doc


def states(graph_json: str) -> dict[str, str]:
    return {node["name"]: node["state"] for node in json.loads(graph_json)["nodes"]}


# dags list


def test_dags_list_shows_each_dag_with_its_schedule_next_run_module_and_description(
    dag_dir: Path,
) -> None:
    result = invoke("dags", "list", str(dag_dir))

    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:] if line.strip()}
    assert rows["nightly"].split()[1:6] == ["0", "2", "*", "*", "*"]
    assert (
        f" {MODULE} " in rows["nightly"] and "Fetch three parts, then join them." in rows["nightly"]
    )
    assert "manual" in rows["adhoc"] and "Fetch one thing when asked." in rows["adhoc"]
    assert result.output.splitlines()[0].split() == [
        "NAME", "SCHEDULE", "NEXT", "RUN", "(UTC)", "MODULE", "DESCRIPTION",
    ]  # fmt: skip
    assert "2 DAG(s)" in result.output


def test_dags_list_json_gives_the_next_run_of_each_schedule(dag_dir: Path) -> None:
    before = utcnow()

    result = invoke("dags", "list", str(dag_dir), "--json")

    assert result.exit_code == 0, result.output
    found = {row["name"]: row for row in json.loads(result.output)}
    assert sorted(found) == ["adhoc", "nightly"]
    nightly = found["nightly"]
    next_run = datetime.fromisoformat(nightly["next_run"])
    assert (next_run.hour, next_run.minute, next_run.second) == (2, 0, 0)
    assert before < next_run <= before + timedelta(days=1)
    assert nightly["schedule"] == "0 2 * * *" and nightly["module"] == MODULE
    assert found["adhoc"]["schedule"] is None and found["adhoc"]["next_run"] is None


@pytest.mark.parametrize("where", ["./dags", "$FLOWPRO_DAGS", "-m"])
def test_dags_commands_read_flowpro_dags_else_the_dags_folder_and_take_modules(
    dag_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    env: dict[str, str | None] = {}
    args: list[str] = []
    if where == "./dags":
        monkeypatch.chdir(tmp_path)
    elif where == "$FLOWPRO_DAGS":
        env["FLOWPRO_DAGS"] = str(dag_dir)
    else:
        monkeypatch.chdir(dag_dir)
        args = ["-m", MODULE]

    result = invoke("dags", "list", "--json", *args, env=env)

    assert result.exit_code == 0, result.output
    assert [row["name"] for row in json.loads(result.output)] == ["adhoc", "nightly"]


def test_dags_commands_without_any_path_say_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    result = invoke("dags", "list")

    assert result.exit_code == 2
    assert "no DAG paths" in result.output and "$FLOWPRO_DAGS" in result.output


def test_dags_list_says_so_when_the_paths_hold_no_dag(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text("VALUE = 1\n")

    result = invoke("dags", "list", str(tmp_path / "plain.py"))

    assert result.exit_code == 0
    assert "no DAGs in" in result.output and "plain.py" in result.output


def test_a_dag_file_that_fails_to_import_exits_two_naming_the_file_and_the_error(
    dag_dir: Path,
) -> None:
    (dag_dir / "broken.py").write_text("import flowpro\n\nraise RuntimeError('no config')\n")

    results = [
        invoke("dags", "list", str(dag_dir)),
        invoke("dags", "show", "nightly", str(dag_dir)),
        invoke("dags", "trigger", "nightly", str(dag_dir)),
    ]

    for result in results:
        assert result.exit_code == 2
        assert "broken.py" in result.output and "RuntimeError: no config" in result.output
        assert "Traceback" not in result.output


# dags show


def test_dags_show_prints_the_definition_as_mermaid_dot_and_json(dag_dir: Path) -> None:
    module = _loader.load_file(dag_dir / f"{MODULE}.py")
    expected = module.nightly(utcnow())

    mermaid = invoke("dags", "show", "nightly", str(dag_dir))
    dot = invoke("dags", "show", "nightly", str(dag_dir), "--format", "dot")
    as_json = invoke("dags", "show", "nightly", str(dag_dir), "-f", "json")

    assert mermaid.exit_code == dot.exit_code == as_json.exit_code == 0
    assert mermaid.output == expected.to_mermaid()
    assert dot.output == expected.to_dot()
    doc = json.loads(as_json.output)
    assert doc["name"] == "nightly"
    deps = {node["name"]: node["deps"] for node in doc["nodes"]}
    assert deps == {
        "fetch:0": [],
        "fetch:1": [],
        "fetch:2": [],
        "join": ["fetch:0", "fetch:1", "fetch:2"],
    }
    assert {node["state"] for node in doc["nodes"]} == {None}


def test_dags_show_builds_the_dag_for_the_given_tick(tmp_path: Path) -> None:
    (tmp_path / "daily_dags.py").write_text(DAILY)

    result = invoke("dags", "show", "daily", str(tmp_path), "--tick", "2026-02-03T04:05:06+01:00")

    assert result.exit_code == 0, result.output
    assert '["load:2026-02-03T03:05:06+00:00"]' in result.output  # in UTC


@pytest.mark.parametrize(
    ("suffix", "looks_like"), [(".mmd", "flowchart LR"), (".dot", "digraph"), (".json", "{")]
)
def test_dags_show_writes_the_format_its_output_suffix_names(
    dag_dir: Path, tmp_path: Path, suffix: str, looks_like: str
) -> None:
    target = tmp_path / f"nightly{suffix}"

    result = invoke("dags", "show", "nightly", str(dag_dir), "--output", str(target))

    assert result.exit_code == 0, result.output
    assert target.read_text().startswith(looks_like)
    assert f"wrote {target}" in result.output


def test_dags_show_refuses_a_format_that_contradicts_the_output_suffix(
    dag_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "nightly.svg"

    result = invoke("dags", "show", "nightly", str(dag_dir), "-f", "mermaid", "-o", str(target))

    assert result.exit_code == 2
    assert "--format mermaid does not match --output" in result.output
    assert not target.exists()


def test_an_unknown_dag_name_exits_two_listing_the_known_names(
    dag_dir: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/never.db"

    show = invoke("dags", "show", "nightly-typo", str(dag_dir))
    run = invoke("dags", "trigger", "nightly-typo", str(dag_dir), "--database-url", url)

    for result in (show, run):
        assert result.exit_code == 2
        assert "no DAG named 'nightly-typo'" in result.output
        assert "known: adhoc, nightly" in result.output
    assert not (tmp_path / "never.db").exists()  # refused before opening the database


BROKEN_DAGS = """
import flowpro
from flowpro import Workflow


class Step(flowpro.Worker, queue="q"):
    def process(self, job):
        return None


@flowpro.dag
def loop():
    wf = Workflow().add("a", Step.new({}), deps=["b"])
    return wf.add("b", Step.new({}), deps=["a"])


@flowpro.dag
def crash():
    raise KeyError("region")


@flowpro.dag
def not_a_workflow():
    return [Step.new({})]
"""


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("loop", "DAG 'loop': steps form a cycle: 'a' -> 'b' -> 'a'"),
        ("crash", "DAG 'crash' failed to build: KeyError: 'region' (at "),
        ("not_a_workflow", "DAG 'not_a_workflow' returned list, not a Workflow"),
    ],
)
def test_a_dag_that_cannot_build_its_workflow_exits_two_saying_why(
    tmp_path: Path, name: str, message: str
) -> None:
    (tmp_path / "broken_dags.py").write_text(BROKEN_DAGS)
    url = f"sqlite:///{tmp_path}/never.db"

    show = invoke("dags", "show", name, str(tmp_path / "broken_dags.py"))
    run = invoke("dags", "trigger", name, str(tmp_path / "broken_dags.py"), "--database-url", url)

    for result in (show, run):
        assert result.exit_code == 2
        assert message in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "never.db").exists()


SUB_WORKFLOW_DAG = """
import flowpro
from flowpro import Workflow


class Step(flowpro.Worker, queue="q"):
    def process(self, job):
        return None


@flowpro.dag
def outer():
    inner = Workflow(name="report").add("render", Step.new({}))
    inner.add("mail", Step.new({}), deps=["render"])
    wf = Workflow(name="outer").add("load", Step.new({}))
    wf.add_workflow("report", inner, deps=["load"])
    return wf.add("done", Step.new({}), deps=["report"])
"""


def test_dags_show_draws_a_sub_workflow_as_a_subgraph_whose_mermaid_id_starts_with_a_letter(
    tmp_path: Path,
) -> None:
    (tmp_path / "outer_dags.py").write_text(SUB_WORKFLOW_DAG)

    mermaid = invoke("dags", "show", "outer", str(tmp_path / "outer_dags.py"))
    dot = invoke("dags", "show", "outer", str(tmp_path / "outer_dags.py"), "-f", "dot")

    assert mermaid.exit_code == dot.exit_code == 0
    [subgraph] = [line.split() for line in mermaid.output.splitlines() if "subgraph" in line]
    assert subgraph[1].endswith('["report"]') and subgraph[1][0].isalpha()  # not a uuid's digit
    assert 'label="report"' in dot.output and "subgraph cluster_" in dot.output


def test_calling_a_dag_by_hand_passes_the_current_time_as_its_tick(dag_dir: Path) -> None:
    module = _loader.load_file(dag_dir / f"{MODULE}.py")
    before = utcnow()

    wf = module.nightly()

    assert wf.context["day"] in {before.date().isoformat(), utcnow().date().isoformat()}


# dags trigger


def test_dags_trigger_inserts_the_workflow_and_prints_its_id_and_step_count(
    db_url: str, fp: flowpro.FlowPro, dag_dir: Path
) -> None:
    result = invoke("dags", "trigger", "nightly", str(dag_dir), "--database-url", db_url)

    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("triggered nightly: workflow ") and first.endswith(", 4 step(s)")
    workflow_id = first.split()[3].rstrip(",")
    assert f"flowpro graph {workflow_id}" in result.output
    status = fp.workflow_status(workflow_id)
    assert status.name == "nightly"
    assert status.counts == {"available": 3, "suspended": 1}
    jobs = fp.list_jobs(queue="dagq")
    assert sorted(j.meta["name"] for j in jobs) == ["fetch:0", "fetch:1", "fetch:2", "join"]
    assert {j.worker for j in jobs} == {f"{MODULE}.Fetch", f"{MODULE}.Join"}


def test_dags_trigger_json_names_the_jobs_and_passes_the_tick_to_the_dag(
    db_url: str, fp: flowpro.FlowPro, dag_dir: Path
) -> None:
    doc = trigger(dag_dir, db_url, "--tick", "2026-01-02T03:04:05Z")

    assert doc["dag"] == "nightly" and doc["steps"] == 4
    assert doc["tick"] == "2026-01-02T03:04:05+00:00"
    jobs = {job.id: job for job in fp.list_jobs(queue="dagq")}
    assert sorted(doc["job_ids"]) == sorted(jobs)
    assert {job.meta["workflow_id"] for job in jobs.values()} == {doc["workflow_id"]}
    context = fp.storage.workflow_context(doc["workflow_id"])
    assert context == {"day": "2026-01-02", "flowpro_tick": "2026-01-02T03:04:05+00:00"}


def test_dags_trigger_refuses_a_tick_that_is_not_a_time(dag_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/never.db"

    result = invoke(
        "dags", "trigger", "nightly", str(dag_dir), "--database-url", url, "--tick", "soon"
    )

    assert result.exit_code == 2
    assert "--tick 'soon' is not an ISO 8601 time" in result.output


def test_dags_trigger_on_a_database_without_the_schema_says_to_migrate(
    pg_schema_url: str, dag_dir: Path
) -> None:
    result = invoke("dags", "trigger", "nightly", str(dag_dir), "--database-url", pg_schema_url)

    assert result.exit_code == 1
    assert "run: flowpro migrate" in result.output


# graph and workflows status


def test_graph_prints_a_run_with_each_steps_state_in_every_format(
    db_url: str, fp: flowpro.FlowPro, dag_dir: Path
) -> None:
    workflow_id = trigger(dag_dir, db_url)["workflow_id"]

    mermaid = invoke("graph", workflow_id, "--database-url", db_url)
    dot = invoke("graph", workflow_id, "--database-url", db_url, "--format", "dot")
    as_json = invoke("graph", workflow_id, "--database-url", db_url, "--format", "json")

    assert mermaid.exit_code == dot.exit_code == as_json.exit_code == 0
    assert mermaid.output == fp.workflow_graph(workflow_id, format="mermaid")
    assert "join<br/>suspended" in mermaid.output and "classDef available" in mermaid.output
    assert dot.output == fp.workflow_graph(workflow_id, format="dot")
    assert states(as_json.output) == {
        "fetch:0": "available", "fetch:1": "available", "fetch:2": "available",
        "join": "suspended",
    }  # fmt: skip


def test_workflows_status_shows_the_state_counts_and_duration(
    db_url: str, fp: flowpro.FlowPro, dag_dir: Path
) -> None:
    workflow_id = trigger(dag_dir, db_url)["workflow_id"]
    before = invoke("workflows", "status", workflow_id, "--database-url", db_url, "--json")
    fp.drain("dagq")

    text = invoke("workflows", "status", workflow_id, "--database-url", db_url)
    after = invoke("workflows", "status", workflow_id, "--database-url", db_url, "--json")

    assert before.exit_code == text.exit_code == after.exit_code == 0
    running = json.loads(before.output)
    assert running["state"] == "running" and running["finished_at"] is None
    assert running["counts"] == {"available": 3, "suspended": 1} and running["total"] == 4
    done = json.loads(after.output)
    assert done["state"] == "completed" and done["counts"] == {"completed": 4}
    assert done["name"] == "nightly" and done["workflow_id"] == workflow_id
    started = datetime.fromisoformat(done["started_at"])
    finished = datetime.fromisoformat(done["finished_at"])
    assert done["duration_seconds"] == pytest.approx((finished - started).total_seconds())
    fields = dict(line.split(None, 1) for line in text.output.splitlines())
    assert fields["state"].strip() == "completed"
    assert fields["steps"].strip() == "4 (completed 4)"
    assert fields["duration"].strip().endswith("s")


def test_graph_and_status_of_an_unknown_workflow_exit_one(db_url: str, fp: flowpro.FlowPro) -> None:
    graph = invoke("graph", "no-such-id", "--database-url", db_url)
    status = invoke("workflows", "status", "no-such-id", "--database-url", db_url)

    for result in (graph, status):
        assert result.exit_code == 1
        assert result.output.strip() == "Error: no workflow with id no-such-id"


# SVG


needs_graphviz = pytest.mark.skipif(
    shutil.which("dot") is None,
    reason="Graphviz's dot is not installed (apt-get install graphviz); SVG is drawn by it",
)


@needs_graphviz
def test_dags_show_and_graph_write_svg_drawn_by_graphviz(dag_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/flowpro.db"
    workflow_id = trigger(dag_dir, url)["workflow_id"]
    definition, run = tmp_path / "nightly.svg", tmp_path / "run.svg"

    show = invoke("dags", "show", "nightly", str(dag_dir), "--output", str(definition))
    graph = invoke("graph", workflow_id, "--database-url", url, "-o", str(run))
    printed = invoke("graph", workflow_id, "--database-url", url, "--format", "svg")

    assert show.exit_code == graph.exit_code == printed.exit_code == 0, show.output + graph.output
    for svg in (definition.read_text(), run.read_text(), printed.output):
        assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
        assert ">join<" in svg and ">fetch:0<" in svg
    assert ">suspended<" in run.read_text() and ">suspended<" not in definition.read_text()


def test_svg_without_graphviz_says_to_install_it_or_use_another_format(
    dag_dir: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    target = tmp_path / "nightly.svg"

    show = invoke(
        "dags", "show", "nightly", str(dag_dir), "-o", str(target), env={"PATH": str(empty)}
    )
    graph = invoke(
        "graph", "any", "--database-url", f"sqlite:///{tmp_path}/never.db", "-f", "svg",
        env={"PATH": str(empty)},
    )  # fmt: skip

    for result in (show, graph):
        assert result.exit_code == 1
        assert "install Graphviz" in result.output
        assert "--format mermaid, dot or json" in result.output
    assert not target.exists()
    assert not (tmp_path / "never.db").exists()


# End to end, in real processes


def test_trigger_then_run_until_idle_completes_the_workflow_and_graph_shows_every_step_completed(
    db_url: str, fp: flowpro.FlowPro, dag_dir: Path, nodes: Nodes, tmp_path: Path
) -> None:
    triggered = cli_process(
        "dags", "trigger", "nightly", str(dag_dir), "--database-url", db_url, "--json", cwd=tmp_path
    )
    assert triggered.returncode == 0, triggered.stderr
    workflow_id = json.loads(triggered.stdout)["workflow_id"]

    node = nodes.start(db_url, str(dag_dir), "--until-idle")
    code = node.wait()
    graph = cli_process("graph", workflow_id, "--database-url", db_url, "-f", "json", cwd=tmp_path)

    assert code == 0, node.stderr()
    assert graph.returncode == 0, graph.stderr
    assert states(graph.stdout) == dict.fromkeys(
        ["fetch:0", "fetch:1", "fetch:2", "join"], "completed"
    )
    assert fp.workflow_status(workflow_id).state == "completed"
    module = _loader.load_file(dag_dir / f"{MODULE}.py")
    [join] = [j for j in fp.list_jobs(queue="dagq") if j.meta["name"] == "join"]
    assert module.Join.fetch_recorded(join) == 1 + 2 + 3  # recorded outputs along the edges


# Scheduled DAGs


def test_only_scheduled_dags_become_cron_entries_that_build_their_workflow_for_the_tick(
    dag_dir: Path,
) -> None:
    _loader.load_file(dag_dir / f"{MODULE}.py")
    tick = datetime(2026, 3, 4, 2, 0, tzinfo=UTC)

    entries = {e.name: e for e in cron_entries() if e.name.startswith("dag:")}
    plan = entries["dag:nightly"].build(tick)
    assert isinstance(plan, InsertPlan)

    assert sorted(entries) == ["dag:nightly"]
    assert entries["dag:nightly"].expression == "0 2 * * *"
    assert sorted(job.step or "" for job in plan.jobs) == ["fetch:0", "fetch:1", "fetch:2", "join"]
    [workflow] = plan.workflows
    assert json.loads(workflow.context_json) == {
        "day": "2026-03-04", "flowpro_tick": "2026-03-04T02:00:00+00:00",
    }  # fmt: skip


def test_two_nodes_racing_over_the_same_ticks_insert_each_scheduled_dag_run_once(
    db_url: str, fp: flowpro.FlowPro, dag_dir: Path
) -> None:
    _loader.load_file(dag_dir / f"{MODULE}.py")
    dag_module._DAGS["nightly"].schedule = "* * * * *"  # every minute: five ticks below
    entries = [e for e in cron_entries() if e.name == "dag:nightly"]
    other = another_app(db_url)
    now = utcnow()
    since = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    crons = [Cron(app.storage, entries, since=since) for app in (fp, other, fp, other)]
    barrier = threading.Barrier(len(crons))
    inserted: list[int] = []
    errors: list[BaseException] = []

    def tick(cron: Cron) -> None:
        try:
            barrier.wait()
            inserted.append(cron.tick(now))
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=tick, args=(c,)) for c in crons]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        again = crons[1].tick(now + timedelta(seconds=1))
    finally:
        other.close()

    assert errors == []
    assert sum(inserted) == 5 and again == 0
    by_workflow: dict[str, list[str]] = defaultdict(list)
    for job in fp.list_jobs(queue="dagq", limit=1_000):
        by_workflow[job.meta["workflow_id"]].append(job.meta["name"])
    assert len(by_workflow) == 5
    assert all(
        sorted(steps) == ["fetch:0", "fetch:1", "fetch:2", "join"] for steps in by_workflow.values()
    )
    ticks = sorted((fp.storage.workflow_context(w) or {})["flowpro_tick"] for w in by_workflow)
    assert ticks == [(since + timedelta(minutes=m)).isoformat() for m in range(1, 6)]


def test_a_dag_scheduled_every_second_runs_once_per_tick_on_two_nodes(
    db_url: str, fp: flowpro.FlowPro, tmp_path: Path
) -> None:
    (tmp_path / "every_second_dags.py").write_text(EVERY_SECOND)
    _loader.load_file(tmp_path / "every_second_dags.py")
    other = another_app(db_url)

    def runs() -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = defaultdict(list)
        for job in fp.list_jobs(queue="tickq", limit=1_000):
            found[job.args["at"]].append(job)
        return found

    def completed_runs() -> int:
        return sum(all(j.state == JobState.COMPLETED for j in jobs) for jobs in runs().values())

    try:
        with running(fp, queues={"tickq": 2}), running(other, queues={"tickq": 2}):
            eventually(lambda: completed_runs() >= 2, timeout=10)
    finally:
        other.close()

    found = runs()
    assert all(len(jobs) == 2 for jobs in found.values())  # one workflow (two steps) per tick
    ticks = sorted(datetime.fromisoformat(at) for at in found)
    assert {(b - a).total_seconds() for a, b in itertools.pairwise(ticks)} == {1.0}
