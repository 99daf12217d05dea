"""A succeeded job's result in short: ``jobs.result`` (JSON; the verdict's configuration and its
final-epoch accuracy, written by the worker when the job succeeds, shown in the jobs list). Jobs
that finished before this migration keep null.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Batch operations, as in 0002, so the same migration runs on SQLite and on Postgres. The JSON
type is spelled out here (JSONB on Postgres) rather than imported, so the migration stays frozen.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("result", JSON_TYPE, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result")
