"""A cancel that stops: the job status ``cancelling`` (a running job's cancel waits for its
worker to confirm that its Ray run has stopped) and ``trials.run`` (the job run that recorded a
trial: the recorder refuses the writes of a run that is no longer the job's). On SQLite the
trials table is rebuilt with ``AUTOINCREMENT``, so the ids of a retried job's deleted trials are
never handed out again (Postgres sequences never reuse ids).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Batch operations, as in 0002..0004, so the same migration runs on SQLite (which recreates the
tables) and on Postgres. The CHECK constraint is spelled out here (frozen history); a test
checks that it equals ``service.vocabulary.JobStatus``. Downgrading moves ``cancelling`` jobs
to ``cancelled`` first (the old constraint has no ``cancelling``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')"
NEW_STATUSES = (
    "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelling', 'cancelled')"
)


def _replace_status_check(condition: str) -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_status"), condition)


def upgrade() -> None:
    _replace_status_check(NEW_STATUSES)
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table(  # AUTOINCREMENT needs the SQLite table rebuilt
        "trials",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch:
        batch.add_column(sa.Column("run", sa.Integer(), server_default="1", nullable=False))
    # The trials there are of each job's current run (a retry deleted the earlier runs' ones).
    op.execute("UPDATE trials SET run = (SELECT jobs.run FROM jobs WHERE jobs.id = trials.job_id)")


def downgrade() -> None:
    op.execute(
        "INSERT INTO job_events (job_id, at, from_status, to_status, message) "
        "SELECT id, CURRENT_TIMESTAMP, 'cancelling', 'cancelled', "
        "'cancelled by a database downgrade' FROM jobs WHERE status = 'cancelling'"
    )
    op.execute("UPDATE jobs SET status = 'cancelled' WHERE status = 'cancelling'")
    with op.batch_alter_table("trials", recreate="auto") as batch:
        batch.drop_column("run")
    _replace_status_check(OLD_STATUSES)
