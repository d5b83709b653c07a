"""Batches: groups of jobs with callbacks that fire exactly once when the group progresses."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from flowpro._runtime.context import require_storage
from flowpro.errors import GraphError, RecordMissing
from flowpro.job import InsertPlan, Job, NewJob, PlannedBatch, encode_json
from flowpro.worker import Worker, resolve_worker

KINDS = ("attempted", "completed", "exhausted", "cancelled", "discarded", "retryable")


def callback_kinds(cls: type[Worker]) -> tuple[str, ...]:
    """Return the callback kinds ``cls`` implements (methods named ``batch_<kind>``)."""
    return tuple(kind for kind in KINDS if callable(getattr(cls, f"batch_{kind}", None)))


class Batch:
    """A group of jobs inserted in one transaction, with callbacks on the callback worker.

    Callbacks are methods of the callback worker (default: the members' worker), each run as
    its own retryable job whose args are ``callback_args`` (a plain JSON object, stored as
    given: not validated by a structured worker's model, never encrypted), inserted exactly
    once per batch in the transaction of the ack that makes it due: ``batch_attempted``
    (every member ran at least once), ``batch_completed`` (all completed),
    ``batch_exhausted`` (all completed, cancelled or discarded), and the first-occurrence
    ``batch_cancelled``, ``batch_discarded`` and ``batch_retryable``.

    Example:
        >>> batch = Batch([Notify.new({"user": u}) for u in users], callback=NotifyDone,
        ...               name="emails")                                   # doctest: +SKIP
        >>> fp.insert(batch)                                                # doctest: +SKIP
    """

    def __init__(
        self,
        jobs: Iterable[NewJob] = (),
        *,
        callback: type[Worker] | None = None,
        name: str | None = None,
        callback_args: Mapping[str, Any] | None = None,
        batch_id: str | None = None,
    ) -> None:
        self.batch_id = batch_id or uuid.uuid4().hex
        self.name = name
        self.callback = callback
        self.callback_args = dict(callback_args or {})
        self.jobs: list[NewJob] = []
        self._appending = False
        for job in jobs:
            self.add(job)

    def add(self, job: NewJob) -> Batch:
        """Add a member; returns the batch so calls chain."""
        if not isinstance(job, NewJob):
            raise GraphError(f"batch members must come from Worker.new(), got {job!r}")
        self.jobs.append(job)
        return self

    def plan(self) -> InsertPlan:
        """Return what ``fp.insert`` writes: the batch row and its members.

        Raises:
            GraphError: the batch is empty, its members have several workers and no
                ``callback`` was given, or an encrypted callback worker was given
                ``callback_args`` (those are stored in plain text).
        """
        if not self.jobs:
            raise GraphError(f"batch {self.name or self.batch_id!r} has no jobs")
        meta_extra = {"batch_id": self.batch_id}
        if self.name:
            meta_extra["batch_name"] = self.name
        members = []
        for job in self.jobs:
            meta = {**job.meta, **meta_extra}
            members.append(
                dataclasses.replace(
                    job, meta=meta, meta_json=encode_json(meta, what="meta"), batch_id=self.batch_id
                )
            )
        if self._appending:
            return InsertPlan(jobs=tuple(members))
        cls = self._callback_class()
        if self.callback_args and cls.encrypted is not None:
            # Callback args are stored as given, like meta: never encrypted.
            raise GraphError(
                f"callback {cls.__flowpro_name__!r} is encrypted, but callback_args are "
                "stored in plain text; pass no callback_args (read members' data with "
                "Batch.all_recorded inside the callback)"
            )
        planned = PlannedBatch(
            id=self.batch_id,
            name=self.name,
            callback_worker=cls.__flowpro_name__,
            callback_args_json=encode_json(self.callback_args, what="callback args"),
            callback_queue=cls.queue,
            callbacks=callback_kinds(cls),
        )
        return InsertPlan(jobs=tuple(members), batches=(planned,))

    def _callback_class(self) -> type[Worker]:
        if self.callback is not None:
            if not (isinstance(self.callback, type) and issubclass(self.callback, Worker)):
                raise GraphError(f"callback must be a Worker class, got {self.callback!r}")
            return self.callback
        workers = {job.worker for job in self.jobs}
        if len(workers) != 1:
            raise GraphError(
                f"batch members use several workers ({', '.join(sorted(workers))}); "
                "give callback=WorkerClass"
            )
        return resolve_worker(workers.pop())

    # Inside a running member or callback

    @classmethod
    def append(cls, job: Job) -> Batch:
        """Return a batch that adds members to ``job``'s running batch; insert it with
        ``fp.insert(batch)`` or, inside a job, ``batch.insert()``.

        Example:
            >>> Batch.append(job).add(Notify.new({"user": 9})).insert()   # doctest: +SKIP
        """
        batch = cls(batch_id=_batch_id(job))
        batch._appending = True
        return batch

    def insert(self, *, conn: Any = None) -> list[Job]:
        """Insert using the node running the current job (inside ``process``)."""
        return require_storage("Batch.insert").insert_plan(self.plan(), conn=conn)

    @staticmethod
    def all_jobs(job: Job) -> list[Job]:
        """Return every member of ``job``'s batch (from a member or a callback).

        Example:
            >>> [m.state for m in Batch.all_jobs(job)]   # doctest: +SKIP
        """
        return require_storage("Batch.all_jobs").batch_jobs(_batch_id(job))

    @staticmethod
    def all_recorded(job: Job) -> dict[int, Any]:
        """Return ``{member id: recorded value}`` for members that recorded something
        (decrypted for encrypted workers).

        Example:
            >>> Batch.all_recorded(job)   # doctest: +SKIP
            {101: {'sent': True}, 102: {'sent': True}}
        """
        out: dict[int, Any] = {}
        for member in require_storage("Batch.all_recorded").batch_jobs(_batch_id(job)):
            cls = resolve_worker(member.worker)
            if cls.recorded is None or member.recorded is None:
                continue
            try:
                out[member.id] = cls.fetch_recorded(member)
            except RecordMissing:
                continue
        return out


def _batch_id(job: Job) -> str:
    batch_id = job.batch_id or (job.meta or {}).get("batch_id")
    if not isinstance(batch_id, str):
        raise GraphError(f"job {job.id} belongs to no batch")
    return batch_id
