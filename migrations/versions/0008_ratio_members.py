"""New pool members in the ratio history: ``ratio_snapshots.mean_rms`` / ``var_rms`` (RMSNorm's
uncentred statistic) and the output ratios ``out_norm``, ``out_dyt``, ``out_none`` of layers with
point-wise members (sn_core.vocabulary.OUTPUT_CHOICES). All nullable: existing snapshots, and
layers whose pool lacks a member, have none (NULL), as the other ratio columns do.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

Batch operations, as in 0002 to 0007, so the same migration runs on SQLite and on Postgres.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("mean_rms", "var_rms", "out_norm", "out_dyt", "out_none")


def upgrade() -> None:
    with op.batch_alter_table("ratio_snapshots") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.REAL(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ratio_snapshots") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
