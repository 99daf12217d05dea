"""Jobs: submit, list, read, cancel, retry, delete.

A submission commits the queued job first and sends the Celery task after the commit, so a worker
never looks for a job it cannot see; if the broker refuses the task, the job is removed again and
the client gets 503 (nothing is acknowledged that was not queued).
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response, status

from api.deps import CeleryDep, CurrentUser, JsonBody, SessionDep, SettingsDep
from api.presenters import job_detail, job_summary
from api.schemas import ErrorBody, JobDetail, JobPage, JobStatus
from service import dispatch, jobs, repositories, submissions
from service.errors import ServiceError
from service.spec import JobSpec

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"])

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="The job's id (32 hex digits).")]

_NOT_FOUND = {404: {"model": ErrorBody, "description": "No such job."}}
_FORBIDDEN = {403: {"model": ErrorBody, "description": "The job belongs to another user."}}
_CONFLICT = {409: {"model": ErrorBody, "description": "Not allowed in the job's status."}}
JOB_RESPONSES = {**_NOT_FOUND, **_FORBIDDEN}

SortKey = Literal[
    "created_at", "-created_at", "updated_at", "-updated_at", "status", "-status", "progress",
    "-progress",
]  # fmt: skip


class BrokerUnavailable(ServiceError):
    status_code = 503
    code = "broker_unavailable"
    default_message = "the task broker is unavailable; the job was not queued, try again"


def _send_or_undo(celery, session, job_id: str, *, undo) -> None:
    """Send the job's task (after the commit); on failure run ``undo`` and answer 503."""
    try:
        dispatch.send_search(celery, job_id)
    except Exception as error:  # kombu raises a variety of connection errors
        log.error("job %s: could not send the search task: %s", job_id, error)
        undo()
        session.commit()
        raise BrokerUnavailable() from None


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobDetail,
    responses={
        200: {"model": JobDetail, "description": "An earlier submission with this key."},
        400: {"model": ErrorBody, "description": "The body could not be read (not UTF-8)."},
        409: {"model": ErrorBody, "description": "Idempotency-Key reused with another spec."},
        413: {"model": ErrorBody, "description": "Request body too large."},
        415: {"model": ErrorBody, "description": "Body is not JSON."},
        503: {"model": ErrorBody, "description": "Broker unavailable; nothing was queued."},
    },
    summary="Submit a search job",
)
def submit_job(
    spec: JobSpec,
    request: Request,
    response: Response,
    user: CurrentUser,
    _json: JsonBody,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="Repeat a submission safely: the same key returns the first job.",
        ),
    ] = None,
) -> JobDetail:
    submissions.check_spec_paths(spec, data_roots=settings.resolved_data_roots())
    job, created = submissions.submit_job(
        session, owner=user, spec=spec, idempotency_key=idempotency_key
    )
    session.commit()
    if created:
        job_id = job.id

        def undo() -> None:
            repositories.delete_job(session, repositories.get_job(session, job_id))

        _send_or_undo(celery, session, job_id, undo=undo)
        response.headers["Location"] = str(request.url_for("get_job", job_id=job_id))
    else:
        response.status_code = status.HTTP_200_OK
    return job_detail(job, request)


@router.get("", response_model=JobPage, summary="List your jobs")
def list_jobs(
    user: CurrentUser,
    session: SessionDep,
    status_filter: Annotated[
        list[JobStatus] | None, Query(alias="status", description="Only jobs in these statuses.")
    ] = None,
    sort: Annotated[SortKey, Query(description="Sort key; '-' for descending.")] = "-created_at",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> JobPage:
    key = sort.lstrip("-")
    rows = repositories.list_jobs(
        session,
        owner_id=user.id,
        status=status_filter,
        limit=limit,
        offset=offset,
        sort=key,
        newest_first=sort.startswith("-"),
    )
    total = repositories.count_jobs(session, owner_id=user.id, status=status_filter)
    return JobPage(items=[job_summary(j) for j in rows], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobDetail, responses=JOB_RESPONSES, summary="Get a job")
def get_job(job_id: JobId, request: Request, user: CurrentUser, session: SessionDep) -> JobDetail:
    job = submissions.owned_job(session, job_id=job_id, user=user, with_children=True)
    return job_detail(job, request)


@router.post(
    "/{job_id}/cancel",
    response_model=JobDetail,
    responses={**JOB_RESPONSES, **_CONFLICT},
    summary="Cancel a queued or running job (its Ray trials are stopped)",
)
def cancel_job(
    job_id: JobId, request: Request, user: CurrentUser, session: SessionDep
) -> JobDetail:
    submissions.owned_job(session, job_id=job_id, user=user, for_update=True)
    job = jobs.cancel_job(session, job_id=job_id)
    session.commit()
    return job_detail(job, request)


@router.post(
    "/{job_id}/retry",
    response_model=JobDetail,
    responses={**JOB_RESPONSES, **_CONFLICT, 503: {"model": ErrorBody}},
    summary="Run a failed or cancelled job again, from the start",
)
def retry_job(
    job_id: JobId, request: Request, user: CurrentUser, session: SessionDep, celery: CeleryDep
) -> JobDetail:
    submissions.owned_job(session, job_id=job_id, user=user, for_update=True)
    job = jobs.retry_job(session, job_id=job_id)
    session.commit()

    def undo() -> None:
        reason = "retry not queued: the task broker was unavailable"
        submissions.abandon_queued(session, job_id=job_id, reason=reason)

    _send_or_undo(celery, session, job_id, undo=undo)
    return job_detail(job, request)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**JOB_RESPONSES, **_CONFLICT},
    summary="Delete a finished job with its history and files",
)
def delete_job(job_id: JobId, user: CurrentUser, session: SessionDep, settings: SettingsDep):
    job = submissions.owned_job(session, job_id=job_id, user=user, for_update=True)
    job_dir = submissions.delete_job(session, job=job, runs_dir=settings.runs_dir)
    session.commit()
    submissions.remove_job_files(job_dir)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
