"""Jobs: submit, list, read, cancel, retry, delete. Each handler parses the request, calls the
user action in ``service.submissions`` and presents the result; the request's unit of work
(``api.deps.get_session``) commits and then sends the tasks the action queued.

A submission is committed before its Celery task is sent, so a worker never looks for a job it
cannot see; if the broker refuses the task, the job is removed again and the client gets 503
(nothing is acknowledged that was not queued). A retry the broker refuses ends cancelled, with
the reason, and answers 503 too.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response, status

from api.deps import CurrentUser, JsonBody, SessionDep, SettingsDep
from api.presenters import absolute_url, job_detail, job_summary
from api.schemas import (
    JOB_NAME_MAX_LENGTH,
    ErrorBody,
    JobDetail,
    JobPage,
    JobStatus,
    QuotaErrorBody,
)
from service import submissions
from service.spec import JobSpec

router = APIRouter(prefix="/jobs", tags=["jobs"])

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="The job's id (32 hex digits).")]

_NOT_FOUND = {404: {"model": ErrorBody, "description": "No such job."}}
_FORBIDDEN = {403: {"model": ErrorBody, "description": "The job belongs to another user."}}
_CONFLICT = {409: {"model": ErrorBody, "description": "Not allowed in the job's status."}}
JOB_RESPONSES = {**_NOT_FOUND, **_FORBIDDEN}
_RETRY_AFTER = {"description": "Seconds to wait", "schema": {"type": "integer"}}
_OVER_QUOTA = "the job alone exceeds your trial-epoch quota (no wait helps)"
QUOTA_RESPONSES = {
    429: {
        "model": QuotaErrorBody,
        "description": "Over your quota of jobs or trial-epochs in flight; see Retry-After.",
        "headers": {"Retry-After": _RETRY_AFTER},
    },
    403: {"model": QuotaErrorBody, "description": _OVER_QUOTA.capitalize() + "."},
}
_RETRY_FORBIDDEN = {
    403: {
        "model": QuotaErrorBody,
        "description": f"The job belongs to another user, or {_OVER_QUOTA}.",
    }
}

SortKey = Literal[
    "created_at", "-created_at", "updated_at", "-updated_at", "status", "-status", "progress",
    "-progress",
]  # fmt: skip


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
        **QUOTA_RESPONSES,
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
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="Repeat a submission safely: the same key returns the first job.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=JOB_NAME_MAX_LENGTH,
            description="An optional label for the job (shown in the jobs list and on its page).",
        ),
    ] = None,
) -> JobDetail:
    job, created = submissions.submit_job(
        session,
        user=user,
        spec=spec,
        settings=settings,
        idempotency_key=idempotency_key,
        name=name.strip() or None if name is not None else None,
    )
    if created:
        response.headers["Location"] = absolute_url(request, "get_job", job_id=job.id)
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
    page = submissions.list_jobs(
        session, user=user, status=status_filter, sort=sort, limit=limit, offset=offset
    )
    items = [job_summary(job) for job in page.items]
    return JobPage(items=items, total=page.total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobDetail, responses=JOB_RESPONSES, summary="Get a job")
def get_job(job_id: JobId, request: Request, user: CurrentUser, session: SessionDep) -> JobDetail:
    return job_detail(submissions.get_job(session, user=user, job_id=job_id), request)


@router.post(
    "/{job_id}/cancel",
    response_model=JobDetail,
    responses={**JOB_RESPONSES, **_CONFLICT},
    summary="Cancel a job: a queued one at once; a running one reads cancelling until its "
    "worker has stopped its Ray trials, then cancelled (a repeated cancel answers the same)",
)
def cancel_job(
    job_id: JobId, request: Request, user: CurrentUser, session: SessionDep
) -> JobDetail:
    return job_detail(submissions.cancel_job(session, user=user, job_id=job_id), request)


@router.post(
    "/{job_id}/retry",
    response_model=JobDetail,
    responses={
        **JOB_RESPONSES,
        **_CONFLICT,
        **QUOTA_RESPONSES,
        **_RETRY_FORBIDDEN,
        503: {"model": ErrorBody},
    },
    summary="Run a failed or cancelled job again, from the start (it counts like a submission); "
    "409 while it is cancelling (its previous run has not stopped yet)",
)
def retry_job(
    job_id: JobId, request: Request, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> JobDetail:
    job = submissions.retry_job(session, user=user, job_id=job_id, settings=settings)
    return job_detail(job, request)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**JOB_RESPONSES, **_CONFLICT},
    summary="Delete a finished job with its history and files",
)
def delete_job(job_id: JobId, user: CurrentUser, session: SessionDep, settings: SettingsDep):
    submissions.delete_job(session, user=user, job_id=job_id, runs_dir=settings.runs_dir)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
