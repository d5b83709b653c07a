"""Graphs: workflow, batch and chunk columns on jobs; workflows, deps, batches, callbacks.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True).with_variant(sa.String(26), "sqlite")
Json = sa.Text().with_variant(JSONB(), "postgresql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("flowpro_jobs") as batch:
        batch.add_column(sa.Column("workflow_id", sa.String(64)))
        batch.add_column(sa.Column("step", sa.String(255)))
        batch.add_column(
            sa.Column("deps_pending", sa.Integer, nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("batch_id", sa.String(64)))
        batch.add_column(sa.Column("chunk_key", sa.String(255)))
    op.create_index(
        "flowpro_jobs_workflow_idx",
        "flowpro_jobs",
        ["workflow_id", "step"],
        unique=True,
        postgresql_where=sa.text("workflow_id IS NOT NULL"),
        sqlite_where=sa.text("workflow_id IS NOT NULL"),
    )
    op.create_index(
        "flowpro_jobs_chunk_idx",
        "flowpro_jobs",
        ["queue", "worker", "chunk_key"],
        postgresql_where=sa.text("state = 'available' AND chunk_key IS NOT NULL"),
        sqlite_where=sa.text("state = 'available' AND chunk_key IS NOT NULL"),
    )
    op.create_index(
        "flowpro_jobs_batch_idx",
        "flowpro_jobs",
        ["batch_id"],
        postgresql_where=sa.text("batch_id IS NOT NULL"),
        sqlite_where=sa.text("batch_id IS NOT NULL"),
    )
    op.create_table(
        "flowpro_workflows",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(255)),
        sa.Column("root_id", sa.String(64), nullable=False),
        sa.Column("parent_id", sa.String(64)),
        sa.Column("ignore_cancelled", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("ignore_discarded", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("ignore_deleted", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("context", Json, nullable=False),
        sa.Column("inserted_at", Timestamp, nullable=False),
    )
    op.create_index("ix_flowpro_workflows_root_id", "flowpro_workflows", ["root_id"])
    op.create_table(
        "flowpro_deps",
        sa.Column("job_id", Id, primary_key=True),
        sa.Column("dep_id", Id, primary_key=True),
    )
    op.create_index("flowpro_deps_dep_idx", "flowpro_deps", ["dep_id"])
    op.create_table(
        "flowpro_batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(255)),
        sa.Column("callback_worker", sa.String(255), nullable=False),
        sa.Column("callback_args", Json, nullable=False),
        sa.Column("callback_queue", sa.String(100)),
        sa.Column("callbacks", sa.Text, nullable=False, server_default=sa.text("'[]'")),
        *(
            sa.Column(name, sa.Integer, nullable=False, server_default=sa.text("0"))
            for name in ("total", "attempted", "completed", "cancelled", "discarded", "retryable")
        ),
        sa.Column("inserted_at", Timestamp, nullable=False),
    )
    op.create_table(
        "flowpro_batch_callbacks",
        sa.Column("batch_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("job_id", Id),
        sa.Column("inserted_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("flowpro_batch_callbacks")
    op.drop_table("flowpro_batches")
    op.drop_index("flowpro_deps_dep_idx", table_name="flowpro_deps")
    op.drop_table("flowpro_deps")
    op.drop_index("ix_flowpro_workflows_root_id", table_name="flowpro_workflows")
    op.drop_table("flowpro_workflows")
    op.drop_index("flowpro_jobs_batch_idx", table_name="flowpro_jobs")
    op.drop_index("flowpro_jobs_chunk_idx", table_name="flowpro_jobs")
    op.drop_index("flowpro_jobs_workflow_idx", table_name="flowpro_jobs")
    with op.batch_alter_table("flowpro_jobs") as batch:
        batch.drop_column("chunk_key")
        batch.drop_column("batch_id")
        batch.drop_column("deps_pending")
        batch.drop_column("step")
        batch.drop_column("workflow_id")
