"""The quick commands (migrate, keygen, jobs ...) and `run`'s input checks, via CliRunner."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import flowpro
from flowpro.cli import cli, parse_queues, parse_settings
from flowpro.errors import ConfigError
from flowpro.job import JobState


class Greet(flowpro.Worker, queue="mail", max_attempts=1):
    def process(self, job: flowpro.Job) -> None:
        if job.args.get("fail"):
            raise RuntimeError(f"mailbox {job.args['to']} is full")


class Tally(flowpro.Worker, queue="stats"):
    def process(self, job: flowpro.Job) -> None:
        return None


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def lines(result: Result) -> list[str]:
    return [line.strip() for line in result.output.splitlines() if line.strip()]


# migrate


def test_migrate_creates_the_schema_and_prints_the_revision_then_reports_it_is_current(
    db_url: str,
) -> None:
    first = invoke("migrate", "--database-url", db_url)
    second = invoke("migrate", "--database-url", db_url)

    assert first.exit_code == 0, first.output
    assert "schema migrated from empty to revision" in first.output
    revision = first.output.strip().rsplit(" ", 1)[-1]
    assert second.exit_code == 0
    assert second.output.strip().endswith(f"schema already at revision {revision}")
    with flowpro.FlowPro(db_url) as app:
        assert app.storage.schema_is_current()


def test_commands_read_the_database_url_from_the_environment_else_use_flowpro_db_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWPRO_DATABASE_URL", raising=False)
    from_env = f"sqlite:///{tmp_path}/from-env.db"

    default = invoke("migrate")
    env = invoke("migrate", env={"FLOWPRO_DATABASE_URL": from_env})

    assert default.exit_code == 0 and "sqlite:///flowpro.db" in default.output
    assert (tmp_path / "flowpro.db").exists()
    assert env.exit_code == 0 and from_env in env.output
    assert (tmp_path / "from-env.db").exists()


def test_migrate_reports_an_unreachable_database_in_one_line_without_the_password() -> None:
    result = CliRunner().invoke(
        cli, ["migrate", "--database-url", "postgresql://me:hunter2@127.0.0.1:1/db"]
    )

    assert result.exit_code == 1
    assert len(lines(result)) == 1, result.output
    assert lines(result)[0].startswith("Error: ") and "127.0.0.1:1" in result.output
    assert "hunter2" not in result.output


def test_an_unsupported_database_url_is_refused_with_exit_code_one(tmp_path: Path) -> None:
    for command in (["migrate"], ["jobs", "list"], ["run", "--queues", "a=1"]):
        result = CliRunner().invoke(cli, [*command, "--database-url", "mysql://localhost/db"])

        assert result.exit_code == 1, (command, result.output)
        assert "unsupported database URL 'mysql://localhost/db'" in result.output


@pytest.mark.postgres
def test_jobs_commands_on_a_database_without_the_schema_say_to_migrate(pg_schema_url: str) -> None:
    result = CliRunner().invoke(cli, ["jobs", "list", "--database-url", pg_schema_url])

    assert result.exit_code == 1
    assert "no current flowpro schema" in result.output
    assert "flowpro migrate" in result.output


# keygen


def test_keygen_prints_a_new_base64_key_of_32_bytes_each_time() -> None:
    first = invoke("keygen").output.strip()
    second = invoke("keygen").output.strip()

    assert len(base64.b64decode(first, validate=True)) == 32
    assert len(base64.b64decode(second, validate=True)) == 32
    assert first != second


# jobs list / show


@pytest.fixture
def finished(fp: flowpro.FlowPro) -> dict[str, flowpro.Job]:
    """A completed, a discarded and an available job."""
    ok = fp.insert(Greet.new({"to": "ada"}, tags=["vip"]))
    bad = fp.insert(Greet.new({"to": "bob", "fail": True}))
    fp.drain(queue="mail")
    waiting = fp.insert(Tally.new({"day": "2024-06-01"}, priority=3))
    jobs = {"ok": fp.get_job(ok.id), "bad": fp.get_job(bad.id), "waiting": waiting}
    return {name: job for name, job in jobs.items() if job is not None}


def test_jobs_list_prints_a_table_of_jobs_newest_first(
    fp: flowpro.FlowPro, finished: dict[str, flowpro.Job]
) -> None:
    result = invoke("jobs", "list", "--database-url", fp.url)

    assert result.exit_code == 0, result.output
    rows = lines(result)
    assert rows[0].split()[:4] == ["ID", "STATE", "QUEUE", "WORKER"]
    ids = [int(row.split()[0]) for row in rows[1:-1]]
    assert ids == sorted((job.id for job in finished.values()), reverse=True)
    bad = next(row for row in rows if row.startswith(str(finished["bad"].id)))
    assert "discarded" in bad and Greet.__flowpro_name__ in bad
    assert "RuntimeError: mailbox bob is full" in bad
    assert rows[-1] == "3 job(s)"


def test_jobs_list_filters_by_state_queue_and_worker_and_limits(
    fp: flowpro.FlowPro, finished: dict[str, flowpro.Job]
) -> None:
    def ids(*args: str) -> list[int]:
        result = invoke("jobs", "list", "--database-url", fp.url, "--json", *args)
        assert result.exit_code == 0, result.output
        return [job["id"] for job in json.loads(result.output)]

    assert ids("--state", "discarded") == [finished["bad"].id]
    assert ids("--state", "completed", "--state", "available") == [
        finished["waiting"].id,
        finished["ok"].id,
    ]
    assert ids("--queue", "stats") == [finished["waiting"].id]
    assert ids("--worker", Greet.__flowpro_name__) == [finished["bad"].id, finished["ok"].id]
    assert ids("--limit", "1") == [finished["waiting"].id]
    assert ids("--queue", "nope") == []


def test_jobs_list_json_is_every_job_as_its_dict(
    fp: flowpro.FlowPro, finished: dict[str, flowpro.Job]
) -> None:
    result = invoke("jobs", "list", "--database-url", fp.url, "--json")

    listed = json.loads(result.output)
    assert listed == [job.to_dict() for job in fp.list_jobs()]
    assert {job["state"] for job in listed} == {"completed", "discarded", "available"}


def test_jobs_list_says_so_when_nothing_matches(fp: flowpro.FlowPro) -> None:
    result = invoke("jobs", "list", "--database-url", fp.url, "--state", "executing")

    assert result.exit_code == 0
    assert result.output.strip() == "no jobs match"


def test_jobs_list_refuses_an_unknown_state_or_a_zero_limit(fp: flowpro.FlowPro) -> None:
    state = CliRunner().invoke(cli, ["jobs", "list", "--database-url", fp.url, "--state", "done"])
    limit = CliRunner().invoke(cli, ["jobs", "list", "--database-url", fp.url, "--limit", "0"])

    assert state.exit_code == 2 and "'done' is not one of" in state.output
    assert limit.exit_code == 2 and "--limit" in limit.output


def test_jobs_show_prints_every_field_and_each_error(
    fp: flowpro.FlowPro, finished: dict[str, flowpro.Job]
) -> None:
    bad = finished["bad"]

    result = invoke("jobs", "show", str(bad.id), "--database-url", fp.url)

    assert result.exit_code == 0, result.output
    fields = {row.split()[0]: row.split(None, 1)[1] if " " in row else "" for row in lines(result)}
    assert fields["id"] == str(bad.id)
    assert fields["state"] == "discarded"
    assert fields["worker"] == Greet.__flowpro_name__
    assert fields["attempt"] == "1 of 1"
    assert json.loads(fields["args"]) == {"to": "bob", "fail": True}
    for name in ("queue", "meta", "tags", "inserted_at", "scheduled_at", "discarded_at"):
        assert name in fields
    assert "errors (1):" in result.output
    assert "RuntimeError: mailbox bob is full" in result.output
    assert "traceback of attempt 1:" in result.output


def test_jobs_show_json_is_the_jobs_dict(
    fp: flowpro.FlowPro, finished: dict[str, flowpro.Job]
) -> None:
    job = finished["ok"]

    result = invoke("jobs", "show", str(job.id), "--database-url", fp.url, "--json")

    assert json.loads(result.output) == job.to_dict()


@pytest.mark.parametrize("command", ["show", "retry", "cancel"])
def test_jobs_commands_on_a_missing_id_say_so_and_exit_one(
    fp: flowpro.FlowPro, command: str
) -> None:
    result = CliRunner().invoke(cli, ["jobs", command, "424242", "--database-url", fp.url])

    assert result.exit_code == 1
    assert lines(result) == ["Error: no job with id 424242"]


# jobs retry / cancel


def test_jobs_retry_makes_a_discarded_job_available_again(
    fp: flowpro.FlowPro, finished: dict[str, flowpro.Job]
) -> None:
    bad = finished["bad"]

    result = invoke("jobs", "retry", str(bad.id), "--database-url", fp.url)

    assert result.exit_code == 0
    assert result.output.strip() == f"job {bad.id} is available again (was discarded)"
    retried = fp.get_job(bad.id)
    assert retried is not None and retried.state == JobState.AVAILABLE


def test_jobs_retry_of_an_executing_job_is_refused(fp: flowpro.FlowPro) -> None:
    job = fp.insert(Tally.new({}))
    fp.storage.fetch_jobs("stats", demand=1, node="elsewhere", now=job.scheduled_at)

    result = CliRunner().invoke(cli, ["jobs", "retry", str(job.id), "--database-url", fp.url])

    assert result.exit_code == 1
    assert f"job {job.id} is executing" in result.output


def test_jobs_cancel_cancels_a_job_that_has_not_run(
    fp: flowpro.FlowPro, finished: dict[str, flowpro.Job]
) -> None:
    waiting = finished["waiting"]

    result = invoke("jobs", "cancel", str(waiting.id), "--database-url", fp.url)
    again = invoke("jobs", "cancel", str(waiting.id), "--database-url", fp.url)

    assert result.exit_code == 0
    assert result.output.strip() == f"job {waiting.id} cancelled (was available)"
    cancelled = fp.get_job(waiting.id)
    assert cancelled is not None and cancelled.state == JobState.CANCELLED
    assert again.exit_code == 0 and "already cancelled" in again.output


def test_jobs_cancel_of_a_completed_job_changes_nothing_and_exits_one(
    fp: flowpro.FlowPro, finished: dict[str, flowpro.Job]
) -> None:
    ok = finished["ok"]

    result = CliRunner().invoke(cli, ["jobs", "cancel", str(ok.id), "--database-url", fp.url])

    assert result.exit_code == 1
    assert "already finished as completed" in result.output
    assert fp.get_job(ok.id) == ok


# run: input checks (all happen before the database is touched)


@pytest.mark.parametrize(
    ("queues", "message"),
    [
        ("etl", "malformed entry 'etl': expected NAME=LIMIT"),
        ("etl=", "malformed entry 'etl='"),
        ("=5", "malformed entry '=5'"),
        ("etl=0", "queue 'etl': limit must be at least 1, got 0"),
        ("etl=-2", "limit must be at least 1"),
        ("etl=x", "queue 'etl': limit 'x' is not a whole number"),
        ("etl=1.5", "limit '1.5' is not a whole number"),
        ("etl=1,etl=2", "queue 'etl' is given twice"),
        ("etl=1,,io=2", "empty entry"),
    ],
)
def test_run_refuses_malformed_queues_with_exit_code_two(
    tmp_path: Path, queues: str, message: str
) -> None:
    url = f"sqlite:///{tmp_path}/never.db"

    result = CliRunner().invoke(cli, ["run", "--database-url", url, "--queues", queues])

    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "never.db").exists()


def test_parse_queues_accepts_spaces_and_repeated_options() -> None:
    assert parse_queues(" etl = 10 , default=5") == {"etl": 10, "default": 5}
    assert parse_queues(["etl=1", "io=2"]) == {"etl": 1, "io": 2}
    assert parse_queues(None) is None
    with pytest.raises(ConfigError, match="given twice"):
        parse_queues(["etl=1", "etl=2"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-s", "nope=1"], "unknown setting 'nope'"),
        (["-s", "rescue_after"], "malformed --setting 'rescue_after'"),
        (["--rescue-after", "0"], "rescue_after: Input should be greater than 0"),
        (["--shutdown-grace", "-1"], "shutdown_grace: Input should be greater than or equal to 0"),
        (["-s", "heartbeat_interval=5"], "must be longer than heartbeat_interval"),
    ],
)
def test_run_refuses_bad_settings_with_exit_code_two(
    tmp_path: Path, args: list[str], message: str
) -> None:
    url = f"sqlite:///{tmp_path}/never.db"

    result = CliRunner().invoke(cli, ["run", "--database-url", url, "--queues", "a=1", *args])

    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "never.db").exists()


def test_settings_merge_the_environment_then_pairs_then_options() -> None:
    env = {"FLOWPRO_SETTINGS": json.dumps({"rescue_after": 3, "shutdown_grace": 9})}

    merged = parse_settings(["shutdown_grace=4", "poll-interval=0.5"], env, shutdown_grace=2.0)

    assert merged == {"rescue_after": 3, "shutdown_grace": 2.0, "poll_interval": 0.5}


def test_a_short_rescue_after_shortens_the_heartbeat_unless_it_is_set() -> None:
    assert parse_settings([], {}, rescue_after=0.8)["heartbeat_interval"] == 0.2
    assert parse_settings(["heartbeat_interval=0.5"], {}, rescue_after=0.8) == {
        "heartbeat_interval": 0.5,
        "rescue_after": 0.8,
    }


def test_run_refuses_malformed_settings_in_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/never.db"

    result = CliRunner().invoke(
        cli,
        ["run", "--database-url", url, "--queues", "a=1"],
        env={"FLOWPRO_SETTINGS": "{rescue_after: 1}"},
    )

    assert result.exit_code == 2
    assert "$FLOWPRO_SETTINGS is not valid JSON" in result.output


def test_run_refuses_a_missing_path_or_module_with_exit_code_two(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/never.db"

    path = CliRunner().invoke(cli, ["run", "--database-url", url, str(tmp_path / "nope")])
    module = CliRunner().invoke(cli, ["run", "--database-url", url, "-m", "no_such_module_x"])

    assert path.exit_code == 2 and "no such file or folder" in path.output
    assert module.exit_code == 2
    assert "cannot import module no_such_module_x: ModuleNotFoundError" in module.output
    assert not (tmp_path / "never.db").exists()


def test_python_dash_m_flowpro_cli_shows_the_help() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "flowpro.cli", "--help"], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0
    for command in ("run", "migrate", "jobs", "keygen"):
        assert command in result.stdout
