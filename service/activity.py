"""What the workers are doing, read from the database: the running jobs, how long each has run
and how old its heartbeat is, and which are stuck (a heartbeat older than the timeout: its worker
is lost or hung, and the reaper will requeue or fail the job at its next pass).

One row per running job is one busy worker (a worker runs one search at a time). The API's
``/metrics`` and ``/readyz`` read this at request time, so every API replica tells the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from service import repositories
from service.db.base import now as utc_now
from service.jobs import as_utc, heartbeat_age_s

# Running jobs reported one by one (label values of the gauges, details of /readyz): as many as
# there are workers; the count of stuck jobs covers them all.
MAX_REPORTED_JOBS = 100


@dataclass(frozen=True)
class RunningJob:
    job_id: str
    attempt: int
    progress: float
    runtime_s: float  # since this attempt started
    heartbeat_age_s: float | None  # None: no heartbeat recorded
    stuck: bool  # heartbeat older than the timeout (or missing)


@dataclass(frozen=True)
class WorkerActivity:
    running: list[RunningJob]  # the longest-running first, at most MAX_REPORTED_JOBS
    stuck_count: int  # over every running job, not only those listed
    heartbeat_timeout_s: float

    @property
    def stuck(self) -> list[RunningJob]:
        return [job for job in self.running if job.stuck]


def worker_activity(
    session: Session, *, heartbeat_timeout_s: float, now: datetime | None = None
) -> WorkerActivity:
    """The running jobs with their runtime and heartbeat age, and how many are stuck."""
    at = now or utc_now()
    running = []
    for job in repositories.running_jobs(session, limit=MAX_REPORTED_JOBS):
        age = heartbeat_age_s(job, now=at)
        started = as_utc(job.started_at) if job.started_at is not None else at
        running.append(
            RunningJob(
                job_id=job.id,
                attempt=job.attempts or 0,
                progress=job.progress or 0.0,
                runtime_s=max((at - started).total_seconds(), 0.0),
                heartbeat_age_s=age,
                stuck=age is None or age > heartbeat_timeout_s,
            )
        )
    stuck_count = repositories.count_stale_running_jobs(
        session, before=at - timedelta(seconds=heartbeat_timeout_s)
    )
    return WorkerActivity(running, stuck_count, heartbeat_timeout_s)
