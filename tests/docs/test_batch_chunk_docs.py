"""The Batch and Chunk pages and the notify_batch example DAG run as written and print what
they say they print."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.docs.test_examples import BLOCK, ROOT, run_python

EXAMPLE = ROOT / "examples" / "dags" / "notify_batch.py"

# Lines each page's blocks must print (the comments next to their print calls).
EXPECTED = {
    "docs/batch.md": [
        "batch welcome: 3 sent to growth",
        "all finished: ['completed', 'completed', 'discarded']",
        "first failure in batch ",
        "['/', '/a', '/b']",
    ],
    "docs/chunk.md": [
        "account acme: 3 rows, 1 rejected",
        "account globex: 3 rows, 1 rejected",
        "{'stored': 5}",
        "discarded",
        "a 3",
        "b 3",
        "['completed', 'retryable', 'cancelled', 'scheduled']",
        "resized 25",
        "resized 5",
        "album ready: summer",
    ],
}


@pytest.mark.parametrize("page", sorted(EXPECTED))
def test_every_python_example_of_the_page_runs_and_prints_what_it_says(page, tmp_path):
    printed = []
    for number, code in enumerate(BLOCK.findall((ROOT / page).read_text()), 1):
        path = tmp_path / f"block_{number}.py"
        path.write_text(code)

        result = run_python([path.name], cwd=tmp_path, url=None)

        assert result.returncode == 0, f"{page}, block {number}:\n{code}\n{result.stderr}"
        printed += result.stdout.splitlines()
    for line in EXPECTED[page]:
        assert any(p.startswith(line) for p in printed), (line, printed)


def test_the_chunk_page_shows_a_partial_chunk_waiting_for_its_timeout(tmp_path):
    [code] = [c for c in BLOCK.findall((ROOT / "docs/chunk.md").read_text()) if "Export" in c]
    (tmp_path / "export.py").write_text(code)

    result = run_python(["export.py"], cwd=tmp_path, url=None)

    assert result.returncode == 0, result.stderr
    # Two chunks run at once (concurrency 2): their prints may share a line.
    found = re.findall(r"(\d+) jobs after ([\d.]+)s", result.stdout)
    runs = [(int(n), float(t)) for n, t in found]
    assert sorted(n for n, _ in runs) == [20, 50, 50]
    assert next(t for n, t in runs if n == 20) >= 0.5


def test_the_notify_example_ends_in_a_callback_summarising_the_recorded_results(db_url, tmp_path):
    result = run_python([str(EXAMPLE)], cwd=tmp_path, url=db_url)

    assert result.returncode == 0, result.stderr
    first, _, rest = result.stdout.partition("\n")
    assert first == "ran: 7 completed, 1 discarded, 1 retryable"
    assert json.loads(rest) == {
        "team": "platform",
        "subject": "Release 2.4 is out",
        "delivered": 4,
        "failed": ["edsger@bounce.example"],
        "retried": ["Barbara"],
        "channels": {"email": 2, "push": 1, "sms": 1},
    }


def test_the_notify_example_is_a_dag_that_flowpro_lists(tmp_path):
    result = run_python(
        ["-m", "flowpro.cli", "dags", "show", "notify_team", str(EXAMPLE), "--format", "json"],
        cwd=tmp_path,
        url=f"sqlite:///{tmp_path}/dags.db",
    )

    assert result.returncode == 0, result.stderr
    assert "fan_out" in result.stdout and "audience" in result.stdout


def test_the_docs_index_links_the_batch_and_chunk_pages():
    index = (ROOT / "docs" / "index.md").read_text()

    assert "(batch.md)" in index and "(chunk.md)" in index
    assert Path(ROOT / "docs" / "batch.md").is_file() and (ROOT / "docs" / "chunk.md").is_file()
