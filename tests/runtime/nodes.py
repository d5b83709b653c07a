"""Helpers for running nodes (``fp.run``) in threads during a test."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import flowpro
from tests.conftest import FAST, eventually


class RunThread(threading.Thread):
    """``fp.run(**kwargs)`` in a thread, keeping any exception it raised."""

    def __init__(self, app: flowpro.FlowPro, **kwargs: Any) -> None:
        super().__init__(name="test-run", daemon=True)
        self.app = app
        self.kwargs = kwargs
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.app.run(**self.kwargs)
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float = 15.0) -> None:
        """Wait for run() to return; fail if it did not or if it raised."""
        self.join(timeout)
        assert not self.is_alive(), f"fp.run did not return within {timeout}s"
        if self.error is not None:
            raise AssertionError(f"fp.run raised {self.error!r}") from self.error


@contextmanager
def running(app: flowpro.FlowPro, **kwargs: Any) -> Iterator[RunThread]:
    """Run a node until the block ends, then stop it gracefully and check it returned."""
    thread = RunThread(app, **kwargs)
    thread.start()
    try:
        eventually(lambda: app.node is not None or not thread.is_alive())
        yield thread
    finally:
        app.stop()
        thread.finish()


def another_app(url: str, **settings: Any) -> flowpro.FlowPro:
    """A second FlowPro on the same database, as another process would have."""
    return flowpro.FlowPro(url, **{**FAST, **settings})


class Tally:
    """A thread-safe count of executions per key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[Any] = Counter()

    def add(self, key: Any) -> None:
        with self._lock:
            self.counts[key] += 1

    def __len__(self) -> int:
        with self._lock:
            return len(self.counts)
