"""The ETL example and every Python example in the README and docs/ run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "jobs.py"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# A block whose first line is a comment naming a file ("# tasks.py") is saved under that name,
# so that later blocks of the same page can import it.
FILE_NAME = re.compile(r"#\s*([\w-]+\.py)\s*$")

SQLITE_PAGES = [
    "README.md",
    "docs/index.md",
    "docs/getting-started.md",
    "docs/concepts.md",
    "docs/workers.md",
    "docs/sqlite.md",
]


def run_python(args: list[str], *, cwd: Path, url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLOWPRO_DATABASE_URL"}
    if url is not None:
        env["FLOWPRO_DATABASE_URL"] = url
    env["COLUMNS"] = "120"
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=90
    )


def run_page(page: str, *, cwd: Path, url: str | None) -> int:
    """Run every Python block of a page in order, in ``cwd``; return how many ran."""
    blocks = BLOCK.findall((ROOT / page).read_text())
    assert blocks, f"{page} has no Python example"
    for number, code in enumerate(blocks, 1):
        first = code.splitlines()[0] if code.strip() else ""
        named = FILE_NAME.fullmatch(first)
        path = cwd / (named.group(1) if named else f"block_{number}.py")
        path.write_text(code)
        if path.name.startswith("test_"):
            args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", path.name]
        else:
            args = [path.name]
        result = run_python(args, cwd=cwd, url=url)
        assert result.returncode == 0, (
            f"{page}, Python block {number} failed:\n{code}\n--- stdout\n{result.stdout}"
            f"\n--- stderr\n{result.stderr}"
        )
    return len(blocks)


def test_the_etl_example_finishes_every_job_and_prints_what_happened(db_url, tmp_path):
    result = run_python([str(EXAMPLE)], cwd=tmp_path, url=db_url)

    assert result.returncode == 0, result.stderr
    assert "1 cancelled, 6 completed" in result.stdout
    assert "ConnectionError" in result.stdout  # the failed first attempt, kept in errors
    assert "(holiday)" in result.stdout  # the cancel reason


DAG_EXAMPLE = ROOT / "examples" / "dags" / "etl.py"


def test_the_etl_dag_example_completes_its_workflow_and_shows_the_graph_with_states(
    db_url, tmp_path
):
    result = run_python([str(DAG_EXAMPLE)], cwd=tmp_path, url=db_url)

    assert result.returncode == 0, result.stderr
    assert "nightly_etl: completed" in result.stdout
    assert "flowchart LR" in result.stdout
    assert result.stdout.count("<br/>completed") == 9  # every step, with its state
    assert "replaces" not in result.stderr


def test_the_etl_example_uses_flowpro_db_in_the_current_folder_by_default(tmp_path):
    result = run_python([str(EXAMPLE)], cwd=tmp_path, url=None)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "flowpro.db").is_file()


@pytest.mark.parametrize("page", SQLITE_PAGES)
def test_every_python_example_of_the_page_runs_on_sqlite(page, tmp_path):
    assert run_page(page, cwd=tmp_path, url=None) >= 1


@pytest.mark.postgres
def test_every_python_example_of_the_postgres_page_runs_on_postgres(pg_schema_url, tmp_path):
    assert run_page("docs/postgres.md", cwd=tmp_path, url=pg_schema_url) >= 1
