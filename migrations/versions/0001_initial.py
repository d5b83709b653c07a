"""Jobs, nodes, leader lease and cron ticks.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True).with_variant(sa.String(26), "sqlite")
Json = sa.Text().with_variant(JSONB(), "postgresql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "flowpro_jobs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Column("args", Json, nullable=False),
        sa.Column("meta", Json, nullable=False),
        sa.Column("tags", Json, nullable=False),
        sa.Column("errors", Json, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("attempted_by", sa.String(255)),
        sa.Column("inserted_at", Timestamp, nullable=False),
        sa.Column("scheduled_at", Timestamp, nullable=False),
        sa.Column("attempted_at", Timestamp),
        sa.Column("completed_at", Timestamp),
        sa.Column("cancelled_at", Timestamp),
        sa.Column("discarded_at", Timestamp),
        sa.Column("recorded", sa.LargeBinary),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "flowpro_jobs_claim_idx",
        "flowpro_jobs",
        ["queue", "priority", "scheduled_at", "id"],
        postgresql_where=sa.text("state = 'available'"),
        sqlite_where=sa.text("state = 'available'"),
    )
    op.create_index(
        "flowpro_jobs_stage_idx",
        "flowpro_jobs",
        ["scheduled_at"],
        postgresql_where=sa.text("state IN ('scheduled', 'retryable')"),
        sqlite_where=sa.text("state IN ('scheduled', 'retryable')"),
    )
    op.create_index(
        "flowpro_jobs_executing_idx",
        "flowpro_jobs",
        ["attempted_by"],
        postgresql_where=sa.text("state = 'executing'"),
        sqlite_where=sa.text("state = 'executing'"),
    )
    op.create_index("flowpro_jobs_state_queue_idx", "flowpro_jobs", ["state", "queue", "id"])
    op.create_table(
        "flowpro_nodes",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("queues", sa.Text, nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("heartbeat_at", Timestamp, nullable=False),
    )
    op.create_table(
        "flowpro_leader",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
    )
    op.create_table(
        "flowpro_cron_ticks",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("tick", Timestamp, primary_key=True),
        sa.Column("job_id", Id),
        sa.Column("inserted_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("flowpro_cron_ticks")
    op.drop_table("flowpro_leader")
    op.drop_table("flowpro_nodes")
    op.drop_index("flowpro_jobs_state_queue_idx", table_name="flowpro_jobs")
    op.drop_index("flowpro_jobs_executing_idx", table_name="flowpro_jobs")
    op.drop_index("flowpro_jobs_stage_idx", table_name="flowpro_jobs")
    op.drop_index("flowpro_jobs_claim_idx", table_name="flowpro_jobs")
    op.drop_table("flowpro_jobs")
