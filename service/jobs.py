"""Job service: start, finish, fail, cancel and retry a job run, and the worker's heartbeat and
progress (the business rules of the search task and of the job endpoints).

Functions take the ``Session`` first and keyword-only arguments after; none commits (the task or
the request commits at its edge). Nothing here imports the training stack: the worker hands in
plain paths.

Runs and attempts: ``job.run`` numbers the user's runs of a job (a retry starts ``run + 1`` in a
fresh work directory, its earlier trials deleted); ``job.attempts`` counts the starts of the
current run (a requeue after a lost worker is the next attempt of the same run, which resumes
from the run's work directory). A retry resets ``attempts``, so the limit on lost-worker
requeues (``service.reaper``) applies to each run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from service import lifecycle, repositories
from service.artifacts import sha256_file
from service.db.base import now as utc_now
from service.db.models import Artifact, Job
from service.errors import InvalidTransition, NotFound
from service.vocabulary import FINISHED_JOB_STATUSES, JobStatus

log = logging.getLogger(__name__)

# A job in one of these has a worker holding its current run.
ACTIVE_RUN_STATUSES = (JobStatus.running, JobStatus.cancelling)


@dataclass(frozen=True)
class ArtifactFile:
    """A job output: ``path`` is the file a download sends (a checkpoint is one zip), so the
    SHA-256 and size recorded for it are those of what users receive."""

    kind: str
    path: Path


def start_job(
    session: Session,
    *,
    job_id: str,
    heartbeat_timeout_s: float | None = None,
    now: datetime | None = None,
) -> Job | None:
    """Lock the job and mark it running; None when there is nothing to run (no such job, or it
    is finished: a redelivered message).

    A job already ``running`` whose last heartbeat is younger than ``heartbeat_timeout_s``
    belongs to a live worker: this (duplicate) message is dropped (None). One whose heartbeat is
    older (or any running job, when ``heartbeat_timeout_s`` is None) belongs to a worker that was
    lost (its message came back): it is requeued and started again, as the next attempt, and the
    run resumes from its work directory."""
    job = repositories.get_job(session, job_id, for_update=True)
    if job is None:
        log.warning("job %s does not exist; nothing to run", job_id)
        return None
    if job.status in FINISHED_JOB_STATUSES:
        log.info("job %s is already %s; nothing to run", job_id, job.status)
        return None
    if job.status == JobStatus.cancelling:  # its worker confirms, or the reaper once it is lost
        log.info("job %s is cancelling; nothing to run", job_id)
        return None
    if job.status == "running":
        age = heartbeat_age_s(job, now=now)
        if heartbeat_timeout_s is not None and age is not None and age < heartbeat_timeout_s:
            log.warning(
                "job %s is running (attempt %s, heartbeat %.0f s ago): another worker has it; "
                "dropping this duplicate message",
                job_id,
                job.attempts,
                age,
            )
            return None
        log.warning("job %s was running (attempt %s): resuming", job_id, job.attempts)
        lifecycle.transition(session, job, "queued", message="redelivered after a lost worker")
    lifecycle.transition(session, job, "running")
    return job


def heartbeat_age_s(job: Job, *, now: datetime | None = None) -> float | None:
    """Seconds since the job's last heartbeat (None: it has none)."""
    if job.heartbeat_at is None:
        return None
    return ((now or utc_now()) - as_utc(job.heartbeat_at)).total_seconds()


def as_utc(at: datetime) -> datetime:
    """``at`` as an aware UTC time (SQLite hands back naive times, which are stored in UTC)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def finish_job(
    session: Session,
    *,
    job_id: str,
    files: list[ArtifactFile],
    result: Mapping[str, Any] | None = None,
) -> Job:
    """Record the job's output files (one artifact per kind, replacing an earlier one) and its
    ``result`` (the short form the jobs list shows, plain JSON data) and mark it succeeded."""
    job = repositories.get_job(session, job_id, for_update=True)
    if job is None:
        raise LookupError(f"job {job_id} does not exist")
    if job.status == JobStatus.cancelling:  # cancelled while its last stage ran: honour it
        message = f"cancelled by user; run {job.run} had finished, its outputs are not kept"
        return lifecycle.transition(session, job, JobStatus.cancelled, message=message)
    existing: Mapping[str, Artifact] = {artifact.kind: artifact for artifact in job.artifacts}
    for file in files:
        path = Path(file.path).resolve()
        if not path.is_file():
            raise ValueError(f"artifact {file.kind!r}: {path} is not a file")
        values = {"path": str(path), "sha256": sha256_file(path), "size_bytes": path.stat().st_size}
        artifact = existing.get(file.kind)
        if artifact is None:
            job.artifacts.append(Artifact(kind=file.kind, **values))
        else:
            for name, value in values.items():
                setattr(artifact, name, value)
    job.result = None if result is None else dict(result)
    lifecycle.transition(session, job, "succeeded")
    return job


def fail_job(session: Session, *, job_id: str, error: str) -> Job | None:
    """Mark a running job failed with ``error`` (a ``cancelling`` one: cancelled, its run has
    ended); a job in another state is left as it is."""
    job = repositories.get_job(session, job_id, for_update=True)
    if job is None:
        log.warning("job %s does not exist; cannot record its failure: %s", job_id, error)
        return None
    if job.status == JobStatus.cancelling:
        message = f"cancelled by user; run {job.run} ended with {error}"
        return lifecycle.transition(session, job, JobStatus.cancelled, message=message)
    if not lifecycle.can_transition(job.status, "failed"):
        log.warning("job %s is %s; not marking it failed: %s", job_id, job.status, error)
        return job
    return lifecycle.transition(session, job, "failed", message=error)


def _locked_job(session: Session, job_id: str) -> Job:
    job = repositories.get_job(session, job_id, for_update=True)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def cancel(session: Session, *, job: Job) -> Job:
    """Cancel ``job``, already loaded and locked by the caller: a queued one is ``cancelled``
    at once; a running one becomes ``cancelling`` (its worker notices at its next heartbeat,
    stops the trials and confirms, ``confirm_cancelled``); a ``cancelling`` one is left as it
    is (a repeated cancel). Raises ``InvalidTransition`` when the job is finished."""
    if job.status == JobStatus.cancelling:
        return job
    if job.status == JobStatus.running:
        return lifecycle.transition(
            session, job, JobStatus.cancelling, message="cancel requested by user"
        )
    return lifecycle.transition(session, job, JobStatus.cancelled, message="cancelled by user")


def cancel_job(session: Session, *, job_id: str) -> Job:
    """``cancel`` the job ``job_id`` (locked here); raises ``NotFound`` when there is none."""
    return cancel(session, job=_locked_job(session, job_id))


def confirm_cancelled(
    session: Session, *, job_id: str, run: int, attempt: int | None = None
) -> Job | None:
    """The worker of ``run`` (attempt ``attempt``) of job ``job_id`` has stopped its Ray run:
    a ``cancelling`` job of that run and attempt becomes ``cancelled``. None (nothing changed)
    when the job is in another state or run: the stop had another cause (a requeue, a later
    attempt, a deletion)."""
    job = repositories.get_job(session, job_id, for_update=True)
    if job is None or job.status != JobStatus.cancelling or job.run != run:
        return None
    if attempt is not None and job.attempts != attempt:
        return None
    message = f"cancelled by user: the worker stopped run {run}"
    return lifecycle.transition(session, job, JobStatus.cancelled, message=message)


def retry(session: Session, *, job: Job) -> Job:
    """Queue a failed or cancelled ``job`` (loaded and locked by the caller) again as a fresh
    run: ``run + 1`` (a new work directory), ``attempts`` back to 0, its earlier trials (with
    their ratio history and metrics, by cascade) and artifacts deleted, the error and result
    cleared. Trial ids are never reused (``Trial``), and the earlier run, which has stopped
    (a ``cancelling`` job is refused), could not write any more anyway: its recorder's writes
    carry its run number (``worker.db_recorder``).
    Raises ``InvalidTransition`` unless the job is failed or cancelled. Sends nothing: the
    caller has the search task sent after its commit (``service.unit_of_work``)."""
    if job.status == JobStatus.cancelling:
        raise InvalidTransition(
            f"job {job.id} is cancelling: its run {job.run} has not stopped yet; retry it once "
            "it is cancelled"
        )
    if job.status not in ("failed", "cancelled"):  # running -> queued is a requeue, not a retry
        raise InvalidTransition(
            f"job {job.id} is {job.status}; only a failed or cancelled job can be retried"
        )
    previous_run = job.run or 1
    lifecycle.transition(session, job, "queued", message=f"retried by user: run {previous_run + 1}")
    job.run = previous_run + 1
    job.attempts = 0
    job.result = None
    repositories.delete_run_results(session, job_id=job.id)
    session.flush()
    session.expire(job, ["trials", "artifacts"])
    return job


def retry_job(session: Session, *, job_id: str) -> Job:
    """``retry`` the job ``job_id`` (locked here); raises ``NotFound`` when there is none."""
    return retry(session, job=_locked_job(session, job_id))


def touch_heartbeat(session: Session, *, job_id: str, attempt: int | None = None) -> str | None:
    """Record that the worker running ``job_id`` is alive; returns the job's status, which tells
    the worker whether to go on (``running``) or stop (anything else: cancelling, failed by the
    reaper, requeued). None: the job no longer exists, or (with ``attempt``) another attempt of
    it has taken over, so this worker must stop. Only a running or cancelling job's heartbeat
    is written (a cancelling job's worker is still stopping its trials: the reaper must not take
    it for lost), and ``updated_at`` is left as it is (a heartbeat is not a change of the job)."""
    status = repositories.touch_heartbeat(session, job_id=job_id, attempt=attempt, at=utc_now())
    if status is not None:
        return status
    row = repositories.job_status_and_attempts(session, job_id=job_id)
    if row is None:
        return None
    status, attempts = row
    if status in ACTIVE_RUN_STATUSES and attempt is not None and attempts != attempt:
        return None  # a later attempt (another worker) runs the job now
    return status


# Progress never reads as complete before the job has succeeded (lifecycle sets 1.0 then).
MAX_RUNNING_PROGRESS = 0.99


def set_progress(session: Session, *, job_id: str, progress: float) -> bool:
    """Raise a running job's progress to ``progress`` (clamped to [0, 0.99]); progress never goes
    down and a job in another state is left as it is. True when the value changed."""
    value = min(max(float(progress), 0.0), MAX_RUNNING_PROGRESS)
    return repositories.raise_progress(session, job_id=job_id, progress=value)


MAX_NOTE_CHARS = 4000


def note_event(session: Session, *, job_id: str, message: str) -> None:
    """Append an event that is not a transition (the job stays in its status: from = to), such
    as a trial restarted after losing its Ray node: the job's timeline shows what happened to
    its run, not only its status changes. A job that is gone or finished gets none."""
    job = repositories.get_job(session, job_id)
    if job is None or job.status in FINISHED_JOB_STATUSES:
        return
    repositories.add_event(
        session,
        job_id=job_id,
        from_status=job.status,
        to_status=job.status,
        message=message[:MAX_NOTE_CHARS],
    )
