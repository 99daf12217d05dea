"""Admins: ``users.is_admin`` (an admin is exempt from the quotas per user, ``service.quotas``).
Every existing user becomes a plain user (false); ``normsearch token create --admin`` sets it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Batch operations, as in 0002 and 0003, so the same migration runs on SQLite and on Postgres.
The server default fills the column for the rows already there, so it can be NOT NULL at once.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("is_admin", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("is_admin")
