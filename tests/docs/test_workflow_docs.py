"""The workflow and DAG pages: every example runs as written, and their graphs are the CLI's."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.test_examples import ROOT, run_page

BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)
MERMAID = re.compile(r"^```mermaid\n(.*?)^```", re.S | re.M)
FILE_NAME = re.compile(r"#\s*([\w-]+\.py)\s*$")
EXAMPLES = ROOT / "examples" / "dags"
IMAGES = ROOT / "docs" / "images"


def test_every_python_example_of_the_workflows_page_runs(tmp_path: Path) -> None:
    assert run_page("docs/workflows.md", cwd=tmp_path, url=None) >= 8


def test_the_dags_page_runs_in_order_and_prints_what_it_says(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWPRO_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    outputs = []

    for number, (language, code) in enumerate(BLOCK.findall((ROOT / "docs/dags.md").read_text())):
        named = FILE_NAME.fullmatch(code.splitlines()[0]) if language == "python" else None
        if named:
            (tmp_path / named.group(1)).write_text(code)
            continue
        command = ["bash", "-euo", "pipefail", "-c", code]
        if language == "python":
            command = [sys.executable, "-c", code]
        result = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"block {number + 1} failed:\n{code}\n{result.stderr}"
        outputs.append(result.stdout)

    text = "\n".join(outputs)
    assert "2 DAG(s)" in text and "nightly_orders  0 2 * * *" in text
    assert "triggered nightly_orders: workflow " in text and ", 4 step(s)" in text
    assert "105 orders in 3 shops on 2026-11-28" in text
    assert re.search(r"^state\s+running\s*$", text, re.M)
    assert re.search(r'"state": "completed"', text)
    assert (tmp_path / "run.dot").read_text().count("completed") == 4
    assert text.count('"name": "orders_now"') == 1 and "manual" in text


TICK = "2026-11-29T02:00:00Z"  # the tick docs/images/render.sh draws the definitions for


def show(name: str, path: Path, cwd: Path) -> str:
    """``flowpro dags show NAME PATH`` in a process of its own (it imports the example)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWPRO_")}
    result = subprocess.run(
        [sys.executable, "-m", "flowpro.cli", "dags", "show", name, str(path), "--tick", TICK],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("name", "file"),
    [("regional_report", "report.py"), ("customer_export", "pii.py"), ("nightly_etl", "etl.py")],
)
def test_the_committed_definition_graphs_are_what_dags_show_prints_today(
    name: str, file: str, tmp_path: Path
) -> None:
    printed = show(name, EXAMPLES / file, cwd=tmp_path)  # pii.py may write a key file there

    assert (IMAGES / f"{name}.mmd").read_text() == printed
    assert printed.strip() in [
        block.strip() for block in MERMAID.findall((ROOT / "docs/dags.md").read_text())
    ]
    svg = html.unescape((IMAGES / f"{name}.svg").read_text())  # dot writes "-" as &#45;
    steps = re.findall(r'\["([^"]+)"\]', printed)
    assert steps and all(f">{step}<" in svg for step in steps)


def test_the_pages_link_every_committed_picture_and_the_index_links_the_pages() -> None:
    pages = (ROOT / "docs/workflows.md").read_text() + (ROOT / "docs/dags.md").read_text()
    linked = set(re.findall(r"\(images/([\w.-]+\.svg)\)", pages))

    assert linked == {path.name for path in IMAGES.glob("*.svg")}
    for page in ("docs/index.md", "docs/cli.md"):
        text = (ROOT / page).read_text()
        assert re.search(r"\(workflows\.md[#)]", text) and re.search(r"\(dags\.md[#)]", text), page
