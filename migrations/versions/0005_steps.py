"""Workflow steps get a table of their own; the jobs table loses its (workflow_id, step) index.

That unique index was on the jobs table, so every claim, release and ack of a step added an
entry to it on PostgreSQL (a state change writes a new row version, and every index whose
predicate the new version matches gets an entry) and checked it for duplicates. The steps
table is written once per step and never updated; its key keeps a step name unique per workflow
and finds a workflow's jobs.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "flowpro_steps",
        sa.Column("workflow_id", sa.String(64), primary_key=True),
        sa.Column("step", sa.String(255), primary_key=True),
        sa.Column("job_id", Id, nullable=False),
    )
    op.execute(
        "INSERT INTO flowpro_steps (workflow_id, step, job_id) SELECT workflow_id, step, id "
        "FROM flowpro_jobs WHERE workflow_id IS NOT NULL AND step IS NOT NULL"
    )
    op.drop_index("flowpro_jobs_workflow_idx", table_name="flowpro_jobs")


def downgrade() -> None:
    op.create_index(
        "flowpro_jobs_workflow_idx",
        "flowpro_jobs",
        ["workflow_id", "step"],
        unique=True,
        postgresql_where=sa.text("workflow_id IS NOT NULL"),
        sqlite_where=sa.text("workflow_id IS NOT NULL"),
    )
    op.drop_table("flowpro_steps")
