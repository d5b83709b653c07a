"""Helpers for CLI tests: a worker module on disk, and `flowpro run` in real subprocesses."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import flowpro
from flowpro import _loader
from flowpro.job import utcnow
from tests.conftest import eventually

worker_module = importlib.import_module("flowpro.worker")

# Every execution appends "<event> <job id> <pid>" to the file named in the job's args, with
# O_APPEND (atomic for short writes), so executions are counted outside the jobs table.
WORKERS = '''
import os
import pathlib
import time

import flowpro


def note(job, event):
    fd = os.open(job.args["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {job.id} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)


class Record(flowpro.Worker, queue="bulk"):
    def process(self, job):
        note(job, "start")
        time.sleep(job.args.get("sleep", 0))
        note(job, "end")


class Block(flowpro.Worker, queue="slow"):
    """Runs until the file named in args["gate"] exists."""

    def process(self, job):
        note(job, "start")
        gate = pathlib.Path(job.args["gate"])
        while not gate.exists():
            time.sleep(0.02)
        note(job, "end")


class Nap(flowpro.Worker, queue="slow"):
    def process(self, job):
        note(job, "start")
        time.sleep(job.args["sleep"])
        note(job, "end")
'''

MODULE = "cliwork"

# Short node timings for subprocess nodes (see NodeConfig); the CLI takes them as -s KEY=VALUE.
FAST_SETTINGS = {
    "poll_interval": 0.02,
    "heartbeat_interval": 0.1,
    "rescue_after": 1.0,
    "rescue_interval": 0.1,
    "leader_ttl": 1.0,
    "stage_interval": 0.05,
    "idle_check_interval": 0.02,
}


@pytest.fixture(autouse=True)
def _forget_workers() -> Iterator[None]:
    """Tests import worker modules: forget their workers, modules and sys.path entries."""
    saved_registry = dict(worker_module._REGISTRY)
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    yield
    worker_module._REGISTRY.clear()
    worker_module._REGISTRY.update(saved_registry)
    added = [Path(entry).resolve() for entry in sys.path if entry and entry not in saved_path]
    sys.path[:] = saved_path
    # Forget only modules imported from the folders the test put on sys.path (library modules
    # imported meanwhile must stay: dropping them breaks their packages).
    for name in set(sys.modules) - saved_modules:
        origin = getattr(sys.modules[name], "__file__", None)
        if origin and any(Path(origin).resolve().is_relative_to(root) for root in added):
            del sys.modules[name]


@pytest.fixture
def workers(tmp_path: Path) -> ModuleType:
    """The worker module, written to tmp_path and imported the way `flowpro run` imports it."""
    path = tmp_path / f"{MODULE}.py"
    path.write_text(WORKERS)
    return _loader.load_file(path)


class Log:
    """The execution log the workers append to."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self) -> list[tuple[str, int, int]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            event, job_id, pid = line.split()
            out.append((event, int(job_id), int(pid)))
        return out

    def ids(self, event: str) -> list[int]:
        return [job_id for e, job_id, _ in self.events() if e == event]

    def pids(self, event: str, job_id: int | None = None) -> list[int]:
        return [p for e, i, p in self.events() if e == event and job_id in (None, i)]


@pytest.fixture
def log(tmp_path: Path) -> Log:
    return Log(tmp_path / "executions.log")


def settings_args(settings: dict[str, Any]) -> list[str]:
    return [arg for key, value in settings.items() for arg in ("-s", f"{key}={value}")]


class Node:
    """One `flowpro run` subprocess."""

    def __init__(self, proc: subprocess.Popen[str], stderr: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"flowpro run did not exit within {timeout}s; stderr:\n{self.stderr()}"
            ) from None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)


class Nodes:
    """Starts `flowpro run` subprocesses and makes sure none outlives the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Node] = []

    def start(
        self,
        url: str,
        *args: str,
        settings: dict[str, Any] | None = None,
        script: bool = False,
        env: dict[str, str] | None = None,
    ) -> Node:
        command = [flowpro_script()] if script else [sys.executable, "-m", "flowpro.cli"]
        command += ["run", "--database-url", url, *args]
        command += settings_args({**FAST_SETTINGS, **(settings or {})})
        stderr = self.tmp_path / f"node-{len(self.started)}.stderr"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FLOWPRO_")}
        environ.update(env or {})
        with stderr.open("w") as err:
            proc = subprocess.Popen(
                command,
                cwd=self.tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
                env=environ,
            )
        node = Node(proc, stderr)
        self.started.append(node)
        return node

    def close(self) -> None:
        for node in self.started:
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    started = Nodes(tmp_path)
    yield started
    started.close()


def flowpro_script() -> str:
    """The installed `flowpro` console script next to this interpreter."""
    script = Path(sys.executable).with_name("flowpro")
    assert script.exists(), f"the flowpro console script is not installed at {script}"
    return str(script)


def wait_for_nodes(app: flowpro.FlowPro, count: int, timeout: float = 20.0) -> list[str]:
    """Wait until ``count`` nodes have registered in the database; return their names."""

    def live() -> list[str] | None:
        names = app.storage.live_nodes(alive_since=utcnow() - timedelta(seconds=30))
        return names if len(names) >= count else None

    return list(eventually(live, timeout=timeout, interval=0.05))


def wait_started(log: Log, job_id: int, timeout: float = 20.0) -> int:
    """Wait until the job has started; return the pid of the process running it."""
    return int(eventually(lambda: log.pids("start", job_id), timeout=timeout)[-1])


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
