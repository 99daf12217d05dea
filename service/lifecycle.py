"""The job state machine.

::

    queued ----> running ----> succeeded
      |   ^        |  |------> failed    --------------------.
      |   |        |  '------> cancelling ----> cancelled ---+--> queued (retry)
      |   '--------'           (the worker      ^
      |  (requeue after a       confirms its    |
      |   lost worker)          run stopped, or |
      |                         the reaper its  |
      |                         loss)           |
      '-----------------------------------------'
        (cancelled before a worker picked it up)

``succeeded`` is final. A user's cancel of a running job only asks its worker to stop
(``cancelling``): the worker stops its Ray trials and then confirms ``cancelled``, so a job that
reads ``cancelled`` has no run left writing; a retry (``queued``) is refused until then. Every
transition appends a ``JobEvent``; nothing here commits (the caller commits at the edge).
``attempts`` counts the starts of the job's current run (a requeue after a lost worker is the
next attempt); a user's retry starts a new run (``jobs.run``) with ``attempts`` reset, see
``service.jobs.retry_job``.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from service import repositories
from service.db.base import now
from service.db.models import Job
from service.errors import InvalidTransition
from service.vocabulary import JobStatus

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.cancelled}),
    JobStatus.running: frozenset(
        {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelling, JobStatus.queued}
    ),
    JobStatus.succeeded: frozenset(),
    JobStatus.failed: frozenset({JobStatus.queued}),
    JobStatus.cancelling: frozenset({JobStatus.cancelled}),
    JobStatus.cancelled: frozenset({JobStatus.queued}),
}


def can_transition(from_status: str, to_status: str) -> bool:
    return to_status in TRANSITIONS.get(from_status, frozenset())


def transition(
    session: Session, job: Job, to_status: JobStatus | str, *, message: str | None = None
) -> Job:
    """Move ``job`` to ``to_status`` (raises ``InvalidTransition`` naming both states when the
    lifecycle does not allow it), update its timestamps, error and attempts, and record the
    event. ``message`` is the event's note; for ``failed`` it is also the job's ``error``.

    To keep two workers from moving the same job, load it with
    ``repositories.get_job(session, job_id, for_update=True)`` first.
    """
    from_status, to_status = job.status, str(to_status)  # plain strings in the database
    if not can_transition(from_status, to_status):
        raise InvalidTransition(f"job {job.id} cannot go from {from_status!r} to {to_status!r}")
    at = now()
    if to_status == JobStatus.running:
        job.attempts = (job.attempts or 0) + 1
        job.started_at, job.finished_at, job.heartbeat_at = at, None, at
        job.error = None
    elif to_status == JobStatus.queued:  # requeue or retry: a fresh run, not yet started
        job.started_at = job.finished_at = job.heartbeat_at = None
        job.error = None
        job.progress = 0.0
    elif to_status == JobStatus.cancelling:  # still running until its worker confirms the stop
        pass
    else:  # succeeded, failed, cancelled
        job.finished_at = at
        job.error = (message or "failed") if to_status == JobStatus.failed else None
        if to_status == JobStatus.succeeded:
            job.progress = 1.0
    job.status = to_status
    job.updated_at = at
    repositories.add_event(
        session, job_id=job.id, from_status=from_status, to_status=to_status, message=message
    )
    session.flush()
    return job
