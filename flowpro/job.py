"""The job data model: states, saved jobs, unsaved jobs, outcomes and acks. No I/O."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from flowpro._json import compact
from flowpro.errors import ArgsError


class JobState(StrEnum):
    """Every state a job can be in.

    Example:
        >>> JobState("completed") is JobState.COMPLETED
        True
    """

    SCHEDULED = "scheduled"
    AVAILABLE = "available"
    EXECUTING = "executing"
    RETRYABLE = "retryable"
    COMPLETED = "completed"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"
    SUSPENDED = "suspended"


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED})


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def seconds(value: float | timedelta) -> float:
    """Return a duration given as seconds or a timedelta, in seconds."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


_T = TypeVar("_T")


def _fast_init(cls: type[_T]) -> type[_T]:
    """Give a frozen slots dataclass an ``__init__`` that sets each slot through its
    descriptor: the same object, frozen as before, built in about half the time (the
    generated frozen ``__init__`` goes through ``object.__setattr__`` per field). Jobs and
    acks are built for every attempt, so this is on the hot path.
    """
    params: list[str] = []
    body: list[str] = []
    namespace: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: default_factory is not supported")
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            namespace[f"_d_{f.name}"] = f.default
            params.append(f"{f.name}=_d_{f.name}")
        namespace[f"_s_{f.name}"] = cls.__dict__[f.name].__set__
        body.append(f"    _s_{f.name}(self, {f.name})")
    source = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body) + "\n"
    exec(source, namespace)  # noqa: S102 - generated from the class's own field names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


@_fast_init
@dataclass(frozen=True, slots=True)
class Job:
    """A saved job: one row of the jobs table.

    During ``process`` the ``args`` of a structured worker are its model instance; everywhere
    else they are the stored JSON object.

    Example:
        >>> job = fp.get_job(7)          # doctest: +SKIP
        >>> job.state, job.attempt       # doctest: +SKIP
        ('completed', 1)
    """

    id: int
    state: JobState
    queue: str
    worker: str
    args: Any
    meta: dict[str, Any]
    tags: list[str]
    errors: list[dict[str, Any]]
    attempt: int
    max_attempts: int
    priority: int
    attempted_by: str | None
    inserted_at: datetime
    scheduled_at: datetime
    attempted_at: datetime | None = None
    completed_at: datetime | None = None
    cancelled_at: datetime | None = None
    discarded_at: datetime | None = None
    recorded: bytes | None = field(default=None, repr=False)
    workflow_id: str | None = None
    step: str | None = None
    batch_id: str | None = None
    # True while args hold decrypted data: repr() then hides them.
    redacted: bool = field(default=False, repr=False, compare=False)

    def __repr__(self) -> str:
        args = "<encrypted>" if self.redacted else repr(self.args)
        return (
            f"Job(id={self.id!r}, state={str(self.state)!r}, queue={self.queue!r}, "
            f"worker={self.worker!r}, args={args}, meta={self.meta!r}, tags={self.tags!r}, "
            f"attempt={self.attempt}/{self.max_attempts}, priority={self.priority}, "
            f"errors={len(self.errors)})"
        )

    def with_args(self, args: Any, *, redacted: bool) -> Job:
        """Return this job with other args (what ``process`` sees); a hand-written copy, as
        ``dataclasses.replace`` costs several microseconds on the hot path."""
        return Job(
            self.id,
            self.state,
            self.queue,
            self.worker,
            args,
            self.meta,
            self.tags,
            self.errors,
            self.attempt,
            self.max_attempts,
            self.priority,
            self.attempted_by,
            self.inserted_at,
            self.scheduled_at,
            self.attempted_at,
            self.completed_at,
            self.cancelled_at,
            self.discarded_at,
            self.recorded,
            self.workflow_id,
            self.step,
            self.batch_id,
            redacted,
        )

    def at_once(self) -> bool:
        """Return whether the job was saved ready to run."""
        return self.state is JobState.AVAILABLE

    def to_dict(self) -> dict[str, Any]:
        """Return the job as a JSON-friendly dict (times as ISO-8601 strings).

        Example:
            >>> fp.get_job(7).to_dict()["state"]   # doctest: +SKIP
            'completed'
        """
        out: dict[str, Any] = {}
        for name in _JOB_FIELDS:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif name == "args" and self.redacted:
                value = "<encrypted>"
            elif name == "args" and hasattr(value, "model_dump"):
                value = value.model_dump(mode="json")
            out[name] = value
        out["state"] = str(self.state)
        return out


_JOB_FIELDS = tuple(f for f in Job.__dataclass_fields__ if f not in ("recorded", "redacted"))


@dataclass(frozen=True, slots=True)
class NewJob:
    """An unsaved job built by ``Worker.new``; ``fp.insert`` saves it.

    ``args_json`` is the canonical encoding, computed once when the job is built so that bad
    args fail in the caller's stack and bulk inserts pay for encoding only once.

    Example:
        >>> new = Fetch.new({"url": "https://x"}, schedule_in=60)   # doctest: +SKIP
        >>> fp.insert(new).state                                     # doctest: +SKIP
        'scheduled'
    """

    worker: str
    queue: str
    args: dict[str, Any]
    args_json: str
    meta: dict[str, Any]
    meta_json: str
    tags: list[str]
    priority: int
    max_attempts: int
    schedule_in: float | None = None
    scheduled_at: datetime | None = None
    # Given the job's id, returns the stored args (an encrypted worker binds its ciphertext to
    # the id); storage reserves ids before writing when a job has one.
    seal: Callable[[int], str] | None = field(default=None, repr=False, compare=False)
    # Set by graphs (Workflow, Batch) when they plan their jobs.
    workflow_id: str | None = None
    step: str | None = None
    batch_id: str | None = None
    chunk_key: str | None = None

    def __repr__(self) -> str:
        # An encrypted worker's args are plaintext until insert: keep them out of logs.
        hidden = self.seal is not None
        args = "<encrypted>" if hidden else repr(self.args)
        return (
            f"NewJob(worker={self.worker!r}, queue={self.queue!r}, args={args}, "
            f"meta={self.meta!r}, tags={self.tags!r}, priority={self.priority}, "
            f"max_attempts={self.max_attempts}, schedule_in={self.schedule_in!r}, "
            f"scheduled_at={self.scheduled_at!r})"
        )

    def stored_args(self, job_id: int) -> str:
        """Return the args as stored for the job with this id."""
        return self.args_json if self.seal is None else self.seal(job_id)

    def resolve_scheduled_at(self, now: datetime) -> datetime:
        """Return when the job becomes available, given the insert time."""
        if self.scheduled_at is not None:
            return self.scheduled_at
        if self.schedule_in:
            return now + timedelta(seconds=self.schedule_in)
        return now


@dataclass(frozen=True, slots=True)
class PlannedWorkflow:
    """One workflow row of an insert plan (a sub-workflow has a parent and shares the root)."""

    id: str
    name: str | None
    root_id: str
    parent_id: str | None = None
    ignore_cancelled: bool = False
    ignore_discarded: bool = False
    ignore_deleted: bool = False
    context_json: str = "{}"


@dataclass(frozen=True, slots=True)
class PlannedBatch:
    """One batch row of an insert plan."""

    id: str
    name: str | None
    callback_worker: str
    callback_args_json: str = "{}"
    callback_queue: str | None = None
    # The callback kinds the callback worker implements (only those are inserted).
    callbacks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InsertPlan:
    """Everything one ``fp.insert`` writes in one transaction.

    ``deps`` are edges between planned jobs as (dependent index, dependency index);
    ``external_deps`` are edges from a planned job to a step already in the database, as
    (dependent index, workflow id, step name), used when a running workflow is appended to.
    """

    jobs: tuple[NewJob, ...]
    deps: tuple[tuple[int, int], ...] = ()
    external_deps: tuple[tuple[int, str, str], ...] = ()
    workflows: tuple[PlannedWorkflow, ...] = ()
    batches: tuple[PlannedBatch, ...] = ()
    # A running workflow that the plan's steps join (their names must be new in it).
    append_to: str | None = None


@dataclass(frozen=True, slots=True)
class Snooze:
    """Return from ``process`` to run the job again later without counting a failure.

    Example:
        >>> Snooze(30)
        Snooze(seconds=30)
    """

    seconds: float


@dataclass(frozen=True, slots=True)
class Cancel:
    """Return from ``process`` to stop the job for good, in state ``cancelled``.

    Example:
        >>> Cancel("account closed")
        Cancel(reason='account closed')
    """

    reason: str = "cancelled"


@dataclass(frozen=True, slots=True)
class Discard:
    """Return from ``process`` to give up on the job, in state ``discarded``.

    Example:
        >>> Discard("bad input")
        Discard(reason='bad input')
    """

    reason: str = "discarded"


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """Return from a ChunkWorker's ``process(jobs)`` to give some jobs other outcomes.

    Each field is optional; listed jobs (``Job``s or ids) get that outcome and every unlisted
    job completes.
    ``recorded`` maps a job id to the value recorded for that job (recorded workers).

    Example:
        >>> ChunkResult(error=("timeout", [jobs[3]]), recorded={jobs[0].id: 1})  # doctest: +SKIP
    """

    error: tuple[str, Sequence[Job | int]] | None = None
    cancel: tuple[str, Sequence[Job | int]] | None = None
    discard: tuple[str, Sequence[Job | int]] | None = None
    snooze: tuple[float, Sequence[Job | int]] | None = None
    recorded: Mapping[int, Any] | None = None


@_fast_init
@dataclass(frozen=True, slots=True)
class Ack:
    """The outcome of one attempt, written back fenced by ``(id, attempt)``.

    An ack applies only while the row is still ``executing`` with the same attempt, so the
    late ack of an attempt that was rescued (or cancelled) changes nothing.
    """

    id: int
    attempt: int
    state: JobState
    at: datetime
    scheduled_at: datetime | None = None
    errors: list[dict[str, Any]] | None = None
    max_attempts: int | None = None
    recorded: bytes | None = None
    # The job belongs to a workflow or batch: its ack has follow-ups in the same transaction.
    graph: bool = False
    batch: bool = False


def has_follow_ups(acks: Iterable[Ack]) -> bool:
    """Return whether any of ``acks`` is of a workflow step or batch member, whose ack is
    followed up (releases, cascades, batch counts) in its transaction.

    Example:
        >>> now = utcnow()
        >>> has_follow_ups([Ack(1, 1, JobState.COMPLETED, now)])
        False
        >>> has_follow_ups([Ack(1, 1, JobState.COMPLETED, now, graph=True)])
        True
    """
    return any(ack.graph or ack.batch for ack in acks)


# JSON codec for args and meta


def encode_json(value: Any, *, what: str = "args") -> str:
    """Encode ``value`` as strict JSON, or raise ArgsError naming what is wrong.

    NaN and infinities, non-string keys, sets, bytes and other non-JSON values are refused,
    and so are the NUL character and unpaired surrogates (PostgreSQL's JSON cannot store
    them), so both backends accept exactly the same args.

    Example:
        >>> encode_json({"a": 1})
        '{"a":1}'
    """
    try:
        text = compact(value, default=_refuser(what))
        # json.dumps turns int, float, bool and None keys into strings silently.
        _check_keys(value, what)
    except ArgsError:
        raise
    except (TypeError, ValueError) as exc:
        raise ArgsError(f"{what} are not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise ArgsError(f"{what} are nested too deeply (more than {MAX_DEPTH} levels)") from None
    # Escapes are only looked for when the cheap test hits; an escaped backslash before
    # 'u0000' is a literal, not a NUL.
    if "\\u0000" in text and _NUL.search(text):
        raise ArgsError(f"{what} contain the NUL character (\\u0000), which cannot be stored")
    if "\\ud" in text and not _is_valid_unicode(value):
        raise ArgsError(
            f"{what} contain an unpaired surrogate character (\\ud800-\\udfff), "
            "which is not valid Unicode"
        )
    return text


# A \u0000 escape preceded by an even number of backslashes (an odd one is a literal).
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _is_valid_unicode(value: Any) -> bool:
    # Paired surrogates are one code point in a Python str; only unpaired ones fail UTF-8.
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Deeper JSON encodes, but json.loads recurses in C and fails reading it back (a row that
# no query could load); PostgreSQL and SQLite would store it.
MAX_DEPTH = 200


def _check_keys(value: Any, what: str) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ArgsError(f"{what} are nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ArgsError(f"{what} keys must be strings, got {key!r}")
                if isinstance(child, dict | list | tuple):
                    stack.append((child, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend(
                (child, depth + 1) for child in item if isinstance(child, dict | list | tuple)
            )


@functools.lru_cache(maxsize=16)
def _refuser(what: str) -> Callable[[Any], Any]:
    return functools.partial(_refuse, what=what)


def _refuse(value: Any, what: str = "args") -> Any:
    raise ArgsError(
        f"{what} are not JSON-serialisable: a value of type {type(value).__name__} "
        "(use str, int, float, bool, None, list or dict)"
    )


def error_entry(attempt: int, at: datetime, message: str, *, kind: str = "error") -> dict[str, Any]:
    """Build one entry of ``job.errors``."""
    return {"attempt": attempt, "at": at.isoformat(), "kind": kind, "error": message}
