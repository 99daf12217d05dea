"""Trial nodes: ``trials.node_id``, the Ray node a trial last trained on (its last reported
epoch's ``node_id``; a trial restarted on another node after losing its own shows the new one).
Existing trials, and trials of ``normsearch demo`` (no Ray), have none (NULL).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Batch operations, as in 0002 to 0006, so the same migration runs on SQLite and on Postgres.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("node_id", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("node_id")
