"""Chunk workers: jobs processed together in groups of up to ``size``, partitioned by ``by``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar

from flowpro.errors import ConfigError
from flowpro.job import Job, NewJob
from flowpro.worker import _REGISTRY, Worker

DEFAULT_SIZE = 100
DEFAULT_TIMEOUT = 1.0
MAX_KEY = 255


class ChunkWorker(Worker):
    """A worker whose ``process(jobs)`` gets a list of jobs at once.

    A chunk runs when ``size`` jobs of a partition are available or the oldest of them has
    waited ``timeout`` seconds, whichever comes first. ``by`` partitions chunks: ``"worker"``
    (always implied), ``"args.KEY"`` and ``"meta.KEY"``; jobs of different partitions are
    never mixed. A chunk takes one slot of its queue's concurrency, is claimed with one
    statement and acked with one. ``process`` returns None (every job completes) or a
    ``ChunkResult``.

    Options: ``size`` (default 100), ``timeout`` (seconds, default 1.0), ``by``; other Worker
    options apply too, except the per-attempt timeout.

    Example:
        >>> class Ingest(ChunkWorker, queue="ingest", size=100, timeout=1.0,
        ...              by=["args.account"]):
        ...     def process(self, jobs):
        ...         return None
    """

    is_chunk: ClassVar[bool] = True
    chunk_by: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(
        cls,
        *,
        size: int | None = None,
        timeout: float | timedelta | None = None,
        by: Iterable[str] | None = None,
        **options: Any,
    ) -> None:
        label = f"{cls.__module__}.{cls.__qualname__}"
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ConfigError(f"{label}: chunk size must be an int >= 1, got {size!r}")
            cls.chunk_size = size
        if timeout is not None:
            seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
                raise ConfigError(f"{label}: chunk timeout must be >= 0 seconds, got {timeout!r}")
            cls.chunk_timeout = float(seconds)
        if by is not None:
            cls.chunk_by = _check_by(by, label)
        encrypted = options.get("encrypted")
        if (encrypted or (encrypted is None and cls.encrypted is not None)) and any(
            part.startswith("args.") for part in cls.chunk_by
        ):
            # The partition key is stored in plain text, to be grouped by in SQL.
            raise ConfigError(
                f"{label}: an encrypted chunk worker cannot partition by args (they would be "
                "stored in plain text); partition by meta keys instead"
            )
        super().__init_subclass__(**options)

    def process(self, jobs: list[Job]) -> Any:
        """Process a chunk; return None or a ``ChunkResult``. May be ``async def``."""
        raise NotImplementedError(f"{type(self).__flowpro_name__} does not define process()")

    @classmethod
    def new(cls, args: Mapping[str, Any] | None = None, **options: Any) -> NewJob:
        """Build an unsaved job; its chunk partition is computed from ``by``."""
        job = super().new(args, **options)
        return dataclasses.replace(job, chunk_key=cls.chunk_key(job.args, job.meta))

    @classmethod
    def chunk_key(cls, args: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
        """Return the partition key of a job with these args and meta."""
        values = []
        for part in cls.chunk_by:
            source, _, key = part.partition(".")
            if source == "worker":
                continue
            values.append((args if source == "args" else meta).get(key))
        text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
        if len(text) > MAX_KEY:
            text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        return text


# The base class is not a worker of its own: keep it out of the registry, and so out of the
# queues that `fp.run()` and `flowpro run` pick by default.
_REGISTRY.pop(ChunkWorker.__flowpro_name__, None)


def _check_by(by: Iterable[str], label: str) -> tuple[str, ...]:
    if isinstance(by, str):
        raise ConfigError(f"{label}: by must be a list such as ['args.account'], not a string")
    out = tuple(by)
    for part in out:
        source, dot, key = str(part).partition(".")
        if part == "worker":
            continue
        if source not in ("args", "meta") or not dot or not key:
            raise ConfigError(
                f"{label}: chunk partition {part!r} must be 'worker', 'args.KEY' or 'meta.KEY'"
            )
    return out


def chunk_ready_before(now: datetime, timeout: float) -> datetime:
    """Return the time before which a partition's oldest job makes the chunk due."""
    return now - timedelta(seconds=timeout)
