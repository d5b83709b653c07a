"""flowpro: durable background jobs and workflows on SQLite and PostgreSQL.

Example:
    >>> import flowpro
    >>> class Hello(flowpro.Worker, queue="default"):
    ...     def process(self, job):
    ...         return {"hello": job.args["name"]}
"""

from flowpro.app import FlowPro
from flowpro.errors import (
    ArgsError,
    CodecError,
    ConfigError,
    DecryptError,
    FlowproError,
    GraphError,
    RecordMissing,
    RecordTooLarge,
    StorageError,
    WorkerNotFound,
)
from flowpro.graph.batch import Batch
from flowpro.graph.chunk import ChunkWorker
from flowpro.graph.dag import Dag, dag
from flowpro.graph.status import WorkflowStatus
from flowpro.graph.workflow import Workflow
from flowpro.job import Cancel, ChunkResult, Discard, Job, JobState, NewJob, Snooze
from flowpro.worker import Worker, worker

__version__ = "0.1.0"

__all__ = [
    "ArgsError",
    "Batch",
    "Cancel",
    "ChunkResult",
    "ChunkWorker",
    "CodecError",
    "ConfigError",
    "Dag",
    "DecryptError",
    "Discard",
    "FlowPro",
    "FlowproError",
    "GraphError",
    "Job",
    "JobState",
    "NewJob",
    "RecordMissing",
    "RecordTooLarge",
    "Snooze",
    "StorageError",
    "Worker",
    "WorkerNotFound",
    "Workflow",
    "WorkflowStatus",
    "dag",
    "worker",
]
