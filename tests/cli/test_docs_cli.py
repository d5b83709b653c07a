"""Every example in docs/cli.md runs as written, in order, in an empty folder on SQLite."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "cli.md"
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)
FILE_NAME = re.compile(r"#\s*([\w-]+\.py)\s*$")


def test_the_examples_in_the_cli_page_run_in_order_and_say_what_the_page_says(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWPRO_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    outputs = []

    for number, (language, code) in enumerate(BLOCK.findall(PAGE.read_text()), 1):
        if language == "python":
            named = FILE_NAME.fullmatch(code.splitlines()[0])
            assert named, f"block {number}: a Python block must start with '# name.py'"
            (tmp_path / named.group(1)).write_text(code)
            continue
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"block {number} failed:\n{code}\n{result.stderr}"
        outputs.append(result.stdout)

    text = "\n".join(outputs)
    assert "sqlite:///flowpro.db: schema migrated from empty to revision" in text
    assert "ValueError: not a PNG: notes.txt" in text
    assert "job 3 is available again (was discarded)" in text
    assert "job 4 cancelled (was scheduled)" in text
    assert "schema already at revision" in text
