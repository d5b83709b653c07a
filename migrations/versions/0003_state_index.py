"""The state index leaves out available and executing jobs.

Those two states change on every claim and every ack; in a full (state, queue, id) index each
change moved an entry, and on PostgreSQL every claimed row added one. Available jobs are found
through the claim index and executing ones through the executing index, so the state index now
holds only the other states (finished, waiting and scheduled jobs), which it lists and counts.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NOT_MOVING = "state NOT IN ('available', 'executing')"


def upgrade() -> None:
    op.drop_index("flowpro_jobs_state_queue_idx", table_name="flowpro_jobs")
    op.create_index(
        "flowpro_jobs_state_queue_idx",
        "flowpro_jobs",
        ["state", "queue", "id"],
        postgresql_where=sa.text(NOT_MOVING),
        sqlite_where=sa.text(NOT_MOVING),
    )


def downgrade() -> None:
    op.drop_index("flowpro_jobs_state_queue_idx", table_name="flowpro_jobs")
    op.create_index("flowpro_jobs_state_queue_idx", "flowpro_jobs", ["state", "queue", "id"])
