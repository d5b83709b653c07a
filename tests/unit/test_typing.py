"""Worker subclasses as users write them pass mypy --strict, with no ignore comments."""

from __future__ import annotations

from pathlib import Path

from mypy import api

USER_CODE = """
import flowpro
from flowpro import ChunkResult, Job


class Each(flowpro.Worker, queue="typing-each"):
    def process(self, job: Job) -> int:
        return len(job.args)


class Group(flowpro.ChunkWorker, queue="typing-group", size=10):
    def process(self, jobs: list[Job]) -> ChunkResult | None:
        return ChunkResult(cancel=("empty", jobs[:1])) if jobs else None


class Later(flowpro.ChunkWorker, queue="typing-later"):
    async def process(self, jobs: list[Job]) -> None:
        return None
"""


def test_typed_worker_and_chunk_worker_subclasses_pass_strict_mypy(tmp_path: Path) -> None:
    # A ChunkWorker's process(jobs) used to be an "incompatible override" of
    # Worker.process(job), so every typed chunk worker needed `# type: ignore[override]`.
    source = tmp_path / "user_workers.py"
    source.write_text(USER_CODE)
    out, err, status = api.run(
        [
            str(source),
            "--strict",
            "--follow-imports=silent",  # check flowpro's types, report only the user's code
            f"--cache-dir={tmp_path / 'cache'}",
        ]
    )
    assert status == 0, out + err
