"""Workers for the batch race tests, loaded by `flowpro run -m tests.runtime.batch_race_workers`.

Every execution appends "<event> <job id> <pid> [<extra>]" to the file named in the job's args
(O_APPEND: atomic for short writes), so executions are counted outside the jobs table.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any

import flowpro


def note(path: str, event: str, job: flowpro.Job, extra: str = "") -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {job.id} {os.getpid()} {extra}\n".encode())
    finally:
        os.close(fd)


class Member(flowpro.Worker, queue="race", name="race.Member", max_attempts=3):
    """Sleeps until args["at"] (epoch seconds), so that members on different nodes finish at
    the same instant, then for args["hold"] seconds (so that one fast node cannot run a whole
    big batch before the others claim part of it), then does args["do"]: ok, flaky (fails
    attempt 1), cancel, discard, fail (always raises)."""

    def process(self, job: flowpro.Job) -> Any:
        time.sleep(max(0.0, job.args.get("at", 0) - time.time()) + job.args.get("hold", 0.0))
        do = job.args.get("do", "ok")
        note(job.args["log"], "member", job, do)
        if do == "cancel":
            return flowpro.Cancel("not needed")
        if do == "discard":
            return flowpro.Discard("bad input")
        if do == "fail" or (do == "flaky" and job.attempt == 1):
            raise RuntimeError(f"{do} on attempt {job.attempt}")
        return None

    def backoff(self, job: flowpro.Job) -> float:
        return 0


class Stall(flowpro.Worker, queue="race", name="race.Stall", max_attempts=3):
    """On its first run anywhere, does its work (writes args["marker"] with its pid), then
    blocks before returning, i.e. before its ack: the test kills the process there."""

    def process(self, job: flowpro.Job) -> Any:
        marker = pathlib.Path(job.args["marker"])
        note(job.args["log"], "member", job, "stall")
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(120)
        return None


class Done(flowpro.Worker, queue="racecb", name="race.Done"):
    """A callback worker implementing every kind; logs each run."""

    def _ran(self, job: flowpro.Job) -> None:
        note(job.args["log"], "callback", job, f"{job.meta['callback']} {job.meta['batch_id']}")

    def batch_attempted(self, job: flowpro.Job) -> None:
        self._ran(job)

    def batch_completed(self, job: flowpro.Job) -> None:
        self._ran(job)

    def batch_exhausted(self, job: flowpro.Job) -> None:
        self._ran(job)

    def batch_cancelled(self, job: flowpro.Job) -> None:
        self._ran(job)

    def batch_discarded(self, job: flowpro.Job) -> None:
        self._ran(job)

    def batch_retryable(self, job: flowpro.Job) -> None:
        self._ran(job)
