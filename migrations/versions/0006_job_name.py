"""Job names: ``jobs.name``, an optional label its owner gives a job on submission (at most
``JOB_NAME_MAX_LENGTH`` = 100 characters), shown in the jobs list and on the job page. Existing
jobs have none (NULL).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Batch operations, as in 0002 to 0004, so the same migration runs on SQLite and on Postgres.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("name", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("name")
