"""The reaper: finds running jobs whose worker was lost (no heartbeat for longer than the
timeout) and requeues them, or fails them once they have used up their attempts; a
``cancelling`` job whose worker was lost is cancelled (there is no run left to stop).

The API process calls ``run_reaper_once`` every ``settings.reaper_interval_s``. Several API
replicas may do so at once: the stale jobs are locked with ``SELECT ... FOR UPDATE SKIP LOCKED``
on Postgres, so each is handled by one replica (and a job a worker is starting at that moment is
skipped, not waited for). The tasks of requeued jobs are sent only after the commit
(``service.unit_of_work``).

A requeued run resumes from its work directory (its Ray Tune checkpoints); if the lost worker's
own message comes back too (Redis redelivers unacknowledged messages after the visibility
timeout), the job's status and heartbeat make the second message a no-op
(``service.jobs.start_job``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy.orm import Session

from service import lifecycle, repositories, unit_of_work
from service.db.base import now as utc_now
from service.jobs import heartbeat_age_s
from service.limits import env_var
from service.settings import Settings
from service.vocabulary import JobStatus

log = logging.getLogger(__name__)


def reap_lost_jobs(
    session: Session,
    *,
    heartbeat_timeout_s: float,
    max_attempts: int,
    now: datetime | None = None,
) -> list[str]:
    """Requeue every running job whose heartbeat is older than ``heartbeat_timeout_s`` (event:
    "worker lost: no heartbeat for 130 s; requeued (attempt 2 of 3)"), or fail it (the reason in
    ``jobs.error``) once its attempts reach ``max_attempts``: a job that kills its worker every
    time (a crash, memory exhausted) ends failed with that reason instead of looping; cancel a
    stale ``cancelling`` job (event: "cancelled by user; worker lost while stopping run 1: ...").
    Returns the ids of the requeued jobs, whose search tasks are recorded on the session to be
    sent after its commit (in a ``unit_of_work``; a send the broker refuses leaves its job
    queued). Does not commit."""
    at = now or utc_now()
    stale = repositories.lock_stale_running_jobs(
        session, before=at - timedelta(seconds=heartbeat_timeout_s)
    )
    requeued = []
    for job in stale:
        age = heartbeat_age_s(job, now=at)
        silence = "no heartbeat" if age is None else f"no heartbeat for {age:.0f} s"
        attempts = job.attempts or 0
        if job.status == JobStatus.cancelling:
            message = f"cancelled by user; worker lost while stopping run {job.run}: {silence}"
            log.warning("job %s: %s", job.id, message)
            lifecycle.transition(session, job, JobStatus.cancelled, message=message)
        elif attempts >= max_attempts:
            message = (
                f"worker lost: {silence}; gave up after attempt {attempts} of {max_attempts} "
                f"({env_var('max_attempts')}): every attempt of this run lost its worker (it "
                "crashed or was killed, e.g. out of memory)"
            )
            log.error("job %s: %s", job.id, message)
            lifecycle.transition(session, job, JobStatus.failed, message=message)
        else:
            message = f"worker lost: {silence}; requeued (attempt {attempts + 1} of {max_attempts})"
            log.warning("job %s: %s", job.id, message)
            lifecycle.transition(session, job, JobStatus.queued, message=message)
            unit_of_work.send_after_commit(session, job_id=job.id, if_unsent="keep")
            requeued.append(job.id)
    return requeued


def run_reaper_once(
    session_factory: Callable[[], Session], celery_app: Celery, settings: Settings
) -> list[str]:
    """One pass of the reaper in a unit of work of its own: reap, commit, then send the search
    task of every requeued job. Returns the requeued job ids."""
    with unit_of_work.unit_of_work(session_factory, celery_app) as session:
        requeued = reap_lost_jobs(
            session,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            max_attempts=settings.max_attempts,
        )
    return requeued
