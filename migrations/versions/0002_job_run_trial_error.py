"""Job run numbers and trial errors: ``jobs.run`` (a user retry starts run + 1) and
``trials.error`` (a failed trial's error text, formerly kept under ``best_metrics["error"]``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Batch operations, so the same migration runs on SQLite (which recreates the table where it must,
e.g. to drop a column on downgrade) and on Postgres (plain ``ALTER TABLE``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("run", sa.Integer(), server_default="1", nullable=False))
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("error")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("run")
