"""The tables, as SQLAlchemy Core metadata shared by create_all and the alembic migrations."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

# SQLite stores times as fixed-width UTC text ('YYYY-MM-DD HH:MM:SS.ffffff') so that string
# order is time order; PostgreSQL uses timestamptz.
Timestamp = DateTime(timezone=True).with_variant(String(26), "sqlite")
# JSON is jsonb on PostgreSQL and compact JSON text on SQLite.
Json = Text().with_variant(JSONB(), "postgresql")
Id = BigInteger().with_variant(Integer(), "sqlite")

jobs = Table(
    "flowpro_jobs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("state", String(16), nullable=False),
    Column("queue", String(100), nullable=False),
    Column("worker", String(255), nullable=False),
    Column("args", Json, nullable=False),
    Column("meta", Json, nullable=False),
    Column("tags", Json, nullable=False),
    Column("errors", Json, nullable=False),
    Column("attempt", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False),
    Column("priority", SmallInteger, nullable=False, server_default=text("0")),
    Column("attempted_by", String(255)),
    Column("inserted_at", Timestamp, nullable=False),
    Column("scheduled_at", Timestamp, nullable=False),
    Column("attempted_at", Timestamp),
    Column("completed_at", Timestamp),
    Column("cancelled_at", Timestamp),
    Column("discarded_at", Timestamp),
    Column("recorded", LargeBinary),
    # Graphs: the workflow and step a job belongs to, how many of its deps are still unmet
    # (a suspended step becomes available when this reaches 0), and its batch.
    Column("workflow_id", String(64)),
    Column("step", String(255)),
    Column("deps_pending", Integer, nullable=False, server_default=text("0")),
    Column("batch_id", String(64)),
    # Chunk workers: the partition ("by" keys) the job is processed in.
    Column("chunk_key", String(255)),
    sqlite_autoincrement=True,
)

# Claiming reads only available rows, so a partial index stays small however many completed
# jobs pile up; the same holds for staging and rescuing.
Index(
    "flowpro_jobs_claim_idx",
    jobs.c.queue,
    jobs.c.priority,
    jobs.c.scheduled_at,
    jobs.c.id,
    postgresql_where=text("state = 'available'"),
    sqlite_where=text("state = 'available'"),
)
Index(
    "flowpro_jobs_stage_idx",
    jobs.c.scheduled_at,
    postgresql_where=text("state IN ('scheduled', 'retryable')"),
    sqlite_where=text("state IN ('scheduled', 'retryable')"),
)
Index(
    "flowpro_jobs_executing_idx",
    jobs.c.attempted_by,
    postgresql_where=text("state = 'executing'"),
    sqlite_where=text("state = 'executing'"),
)
# Listing and counting by state. Available and executing jobs are left out: those states move
# on every claim and ack, and the claim and executing indexes already find them.
Index(
    "flowpro_jobs_state_queue_idx",
    jobs.c.state,
    jobs.c.queue,
    jobs.c.id,
    postgresql_where=text("state NOT IN ('available', 'executing')"),
    sqlite_where=text("state NOT IN ('available', 'executing')"),
)
# Chunk claims: a partition's jobs in claim order, read in order, never sorted.
Index(
    "flowpro_jobs_chunk_idx",
    jobs.c.queue,
    jobs.c.worker,
    jobs.c.chunk_key,
    jobs.c.priority,
    jobs.c.scheduled_at,
    jobs.c.id,
    postgresql_where=text("state = 'available' AND chunk_key IS NOT NULL"),
    sqlite_where=text("state = 'available' AND chunk_key IS NOT NULL"),
)
Index(
    "flowpro_jobs_batch_idx",
    jobs.c.batch_id,
    postgresql_where=text("batch_id IS NOT NULL"),
    sqlite_where=text("batch_id IS NOT NULL"),
)

workflows = Table(
    "flowpro_workflows",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255)),
    Column("root_id", String(64), nullable=False, index=True),
    Column("parent_id", String(64)),
    Column("ignore_cancelled", Boolean, nullable=False, server_default=text("false")),
    Column("ignore_discarded", Boolean, nullable=False, server_default=text("false")),
    Column("ignore_deleted", Boolean, nullable=False, server_default=text("false")),
    Column("context", Json, nullable=False),
    Column("inserted_at", Timestamp, nullable=False),
)

# The steps of each workflow: (workflow, step name) -> job, written once and never updated. Its
# key takes a step name once per workflow, also against two appends racing each other, and finds
# a workflow's jobs. On the jobs table such an index would gain an entry at every claim, release
# and ack of a step (PostgreSQL adds one per new row version when the state changes).
steps = Table(
    "flowpro_steps",
    metadata,
    Column("workflow_id", String(64), primary_key=True),
    Column("step", String(255), primary_key=True),
    Column("job_id", Id, nullable=False),
)

# Edges of the job graph: job_id waits for dep_id.
deps = Table(
    "flowpro_deps",
    metadata,
    Column("job_id", Id, primary_key=True),
    Column("dep_id", Id, primary_key=True),
)
Index("flowpro_deps_dep_idx", deps.c.dep_id)

batches = Table(
    "flowpro_batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255)),
    Column("callback_worker", String(255), nullable=False),
    Column("callback_args", Json, nullable=False),
    Column("callback_queue", String(100)),
    Column("callbacks", Text, nullable=False, server_default=text("'[]'")),
    Column("total", Integer, nullable=False, server_default=text("0")),
    Column("attempted", Integer, nullable=False, server_default=text("0")),
    Column("completed", Integer, nullable=False, server_default=text("0")),
    Column("cancelled", Integer, nullable=False, server_default=text("0")),
    Column("discarded", Integer, nullable=False, server_default=text("0")),
    Column("retryable", Integer, nullable=False, server_default=text("0")),
    Column("inserted_at", Timestamp, nullable=False),
)

# One row per batch callback fired: its primary key makes each kind fire exactly once.
batch_callbacks = Table(
    "flowpro_batch_callbacks",
    metadata,
    Column("batch_id", String(64), primary_key=True),
    Column("kind", String(32), primary_key=True),
    Column("job_id", Id),
    Column("inserted_at", Timestamp, nullable=False),
)

nodes = Table(
    "flowpro_nodes",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("queues", Text, nullable=False),
    Column("started_at", Timestamp, nullable=False),
    Column("heartbeat_at", Timestamp, nullable=False),
)

leader = Table(
    "flowpro_leader",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("node", String(255), nullable=False),
    Column("expires_at", Timestamp, nullable=False),
)

cron_ticks = Table(
    "flowpro_cron_ticks",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("tick", Timestamp, primary_key=True),
    Column("job_id", BigInteger().with_variant(Integer(), "sqlite")),
    Column("inserted_at", Timestamp, nullable=False),
)

VERSION_TABLE = "flowpro_alembic_version"
