"""Jobs as users see them: submit, look up with ownership, list, delete.

Functions take the ``Session`` first and keyword-only arguments after; none commits (the request
commits at its edge, then sends the Celery task). Raises ``service.errors`` exceptions, which the
HTTP edge renders.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session

from service import lifecycle, paths, repositories
from service.db.models import Artifact, Job, User
from service.errors import Conflict, Forbidden, NotFound
from service.spec import FILE_DATASETS, JobSpec
from service.vocabulary import FINISHED_JOB_STATUSES, JobStatus


def check_spec_paths(spec: JobSpec, *, data_roots: Sequence[Path]) -> None:
    """A file dataset's path must resolve inside the data roots and exist: checked before
    queueing, so a bad path is a 422 naming ``dataset.path``, never a failed job."""
    if spec.dataset.kind in FILE_DATASETS and spec.dataset.path:
        paths.resolve_data_path(spec.dataset.path, data_roots)


def submit_job(
    session: Session,
    *,
    owner: User,
    spec: JobSpec,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Queue a job: (the job, whether it was created now). With an ``idempotency_key`` a repeated
    submission returns the first job (created False); the same key with a different spec is a
    conflict, not a silent reuse."""
    payload = spec.model_dump(mode="json")
    job, created = repositories.create_job_once(
        session, owner_id=owner.id, spec=payload, idempotency_key=idempotency_key
    )
    if idempotency_key is not None and job.spec != payload:
        raise Conflict(
            f"Idempotency-Key {idempotency_key!r} was already used for job {job.id} with a "
            "different spec"
        )
    if created:
        repositories.add_event(
            session,
            job_id=job.id,
            from_status=None,
            to_status=JobStatus.queued,
            message="submitted",
        )
        session.flush()
    return job, created


def owned_job(
    session: Session,
    *,
    job_id: str,
    user: User,
    for_update: bool = False,
    with_children: bool = False,
) -> Job:
    """The job if ``user`` owns it: 404 when it does not exist, 403 when it is someone else's.
    ``with_children`` loads its events and artifacts in the same query (a job page)."""
    job = repositories.get_job(session, job_id, for_update=for_update, with_children=with_children)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if job.owner_id != user.id:
        raise Forbidden(f"job {job_id} belongs to another user")
    return job


def delete_job(session: Session, *, job: Job, runs_dir: Path) -> Path | None:
    """Delete a finished job with its history; returns its directory under ``runs_dir`` for the
    caller to remove after the commit. A queued or running job must be cancelled first."""
    if job.status not in FINISHED_JOB_STATUSES:
        raise Conflict(f"job {job.id} is {job.status}; cancel it before deleting it")
    job_dir = job_directory(runs_dir, job.id)
    repositories.delete_job(session, job)
    return job_dir


def remove_job_files(job_dir: Path | None) -> None:
    if job_dir is not None and job_dir.is_dir():
        shutil.rmtree(job_dir, ignore_errors=True)


def abandon_queued(session: Session, *, job_id: str, reason: str) -> None:
    """Take back a queued job whose task could not be sent (it ends cancelled, with why)."""
    job = repositories.get_job(session, job_id, for_update=True)
    if job is not None and job.status == JobStatus.queued:
        lifecycle.transition(session, job, JobStatus.cancelled, message=reason)


def job_directory(runs_dir: Path, job_id: str) -> Path | None:
    """``runs_dir/<job_id>`` when the id is a plain name (never a path out of the runs dir)."""
    if not job_id.isalnum():
        return None
    return Path(runs_dir).resolve() / job_id


def artifact_file(job: Job, kind: str, *, runs_dir: Path) -> tuple[Artifact, Path]:
    """A job's artifact and its file or directory, confined to ``runs_dir``."""
    artifact = next((a for a in job.artifacts if a.kind == kind), None)
    if artifact is None:
        if job.status != JobStatus.succeeded:
            raise Conflict(f"job {job.id} is {job.status}; its {kind} is ready when it succeeds")
        raise NotFound(f"job {job.id} has no {kind}")
    path = Path(artifact.path).resolve()
    if not path.is_relative_to(Path(runs_dir).resolve()):
        raise NotFound(f"the {kind} of job {job.id} is not in the runs directory")
    if not path.exists():
        raise NotFound(f"the {kind} of job {job.id} is no longer on disk")
    return artifact, path
