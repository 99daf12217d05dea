"""Jobs as users see them: one function per user action (submit, list, get, cancel, retry,
delete), each checking that the user owns the job, so an HTTP handler only parses, calls and
presents.

Functions take the ``Session`` first and keyword-only arguments after; none commits and none
sends: a job to queue is recorded on the session and its task sent after the commit by
``service.unit_of_work``, which also takes the job back if the broker refuses it. Raises
``service.errors`` exceptions, which the HTTP edge renders.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from sqlalchemy.orm import Session

from service import cluster, jobs, paths, quotas, repositories, unit_of_work
from service.db.models import Artifact, Job, User
from service.errors import Conflict, Forbidden, NotFound
from service.limits import check_spec_limits
from service.settings import Settings
from service.spec import PATH_DATASETS, JobSpec
from service.vocabulary import FINISHED_JOB_STATUSES, JobStatus

RETRY_UNSENT_REASON = "retry not queued: the task broker was unavailable"


def check_spec_paths(spec: JobSpec, *, data_roots: Sequence[Path]) -> None:
    """A file dataset's path must resolve inside the data roots and exist: checked before
    queueing, so a bad path is a 422 naming ``dataset.path``, never a failed job."""
    if spec.dataset.kind in PATH_DATASETS and spec.dataset.path:
        paths.resolve_data_path(spec.dataset.path, data_roots)


def check_spec_fits_cluster(spec: JobSpec, *, settings: Settings) -> None:
    """A trial must fit on one node of the Ray cluster (``service.cluster``): 422 naming the
    resource when a worker has published the cluster's capacity lately and no node can take it;
    with the capacity unknown (or the check off) nothing is refused here, the worker decides."""
    if not settings.check_cluster_fit:
        return
    capacity = cluster.published_capacity(
        settings.runs_dir, max_age_s=settings.cluster_capacity_max_age_s
    )
    if capacity is not None:
        cluster.check_fit(spec.resources, capacity)


def check_spec(spec: JobSpec, *, settings: Settings) -> None:
    """What a submission checks beyond the spec's schema, before anything is queued: the
    operator's bounds (``service.limits``, 422 naming each limit and its variable), the dataset
    path's confinement and the fit of a trial on the Ray cluster's nodes."""
    check_spec_limits(spec, settings)
    check_spec_paths(spec, data_roots=settings.resolved_data_roots())
    check_spec_fits_cluster(spec, settings=settings)


def submit_job(
    session: Session,
    *,
    user: User,
    spec: JobSpec,
    settings: Settings,
    idempotency_key: str | None = None,
    name: str | None = None,
) -> tuple[Job, bool]:
    """Queue a job for ``user`` (``name``: its optional label): (the job, whether it was created
    now). Its search task is sent after the commit; if the broker refuses it the job is deleted
    again (``BrokerUnavailable``).
    With an ``idempotency_key`` a repeated submission returns the first job (created False, no
    task sent); the same key with a different spec is a conflict, not a silent reuse. A new job
    must fit ``user``'s quotas (``service.quotas``: 429, or 403 for a job that never can); the
    user's row is locked for the check and the insert, so concurrent submissions cannot both
    take the last free slot."""
    check_spec(spec, settings=settings)
    payload = spec.model_dump(mode="json")
    user = quotas.lock_user(session, user=user)
    if idempotency_key is None or not repositories.job_by_key(
        session, owner_id=user.id, idempotency_key=idempotency_key
    ):
        quotas.check_quota(session, user=user, trial_epochs=spec.trial_epochs, settings=settings)
    job, created = repositories.create_job_once(
        session, owner_id=user.id, spec=payload, idempotency_key=idempotency_key, name=name
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
        unit_of_work.send_after_commit(session, job_id=job.id, if_unsent="delete")
    return job, created


class JobListing(NamedTuple):
    items: list[Job]
    total: int


def list_jobs(
    session: Session,
    *,
    user: User,
    status: Sequence[str] | None = None,
    sort: str = "-created_at",
    limit: int = 50,
    offset: int = 0,
) -> JobListing:
    """One page of ``user``'s jobs and how many there are in all (of ``status``, if given);
    ``sort`` is a key of ``repositories.JOB_SORT_KEYS``, ``-key`` for descending."""
    rows = repositories.list_jobs(
        session,
        owner_id=user.id,
        status=status,
        limit=limit,
        offset=offset,
        sort=sort.lstrip("-"),
        newest_first=sort.startswith("-"),
    )
    total = repositories.count_jobs(session, owner_id=user.id, status=status)
    return JobListing(rows, total)


def get_job(session: Session, *, user: User, job_id: str) -> Job:
    """``user``'s job with its events and artifacts (a job page)."""
    return owned_job(session, job_id=job_id, user=user, with_children=True)


def cancel_job(session: Session, *, user: User, job_id: str) -> Job:
    """Cancel ``user``'s queued or running job (loaded and locked once; ``jobs.cancel``: a
    running one becomes cancelling, a cancelling one stays so)."""
    return jobs.cancel(session, job=owned_job(session, job_id=job_id, user=user, for_update=True))


def retry_job(session: Session, *, user: User, job_id: str, settings: Settings) -> Job:
    """Run ``user``'s failed or cancelled job again as a fresh run (``service.jobs.retry``); its
    search task is sent after the commit, and if the broker refuses it the job ends cancelled
    with the reason (``BrokerUnavailable``). The job is queued again, so it must fit ``user``'s
    quotas as a new submission would (checked with the user's row locked)."""
    user = quotas.lock_user(session, user=user)
    job = owned_job(session, job_id=job_id, user=user, for_update=True)
    if job.status in (JobStatus.failed, JobStatus.cancelled):  # else jobs.retry refuses (409)
        wanted = quotas.job_trial_epochs(job.spec)
        quotas.check_quota(session, user=user, trial_epochs=wanted, settings=settings)
    jobs.retry(session, job=job)
    unit_of_work.send_after_commit(
        session, job_id=job.id, if_unsent="cancel", reason=RETRY_UNSENT_REASON
    )
    return job


def delete_job(session: Session, *, user: User, job_id: str, runs_dir: Path) -> None:
    """Delete ``user``'s finished job with its history; its directory under ``runs_dir`` is
    removed after the commit. A queued or running job must be cancelled first."""
    job = owned_job(session, job_id=job_id, user=user, for_update=True)
    if job.status not in FINISHED_JOB_STATUSES:
        raise Conflict(f"job {job.id} is {job.status}; cancel it before deleting it")
    job_dir = job_directory(runs_dir, job.id)
    repositories.delete_job(session, job)
    if job_dir is not None:
        unit_of_work.remove_after_commit(session, job_dir)


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
