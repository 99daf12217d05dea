"""A job's history: trials, per-layer ratio snapshots, metrics, and the live event stream.

Live views read incrementally: ``after`` is the last step they hold (``last_step`` of the previous
answer), and the event stream says when a trial has a newer step, so a view never reloads what it
has.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api.deps import (
    BearerCredentials,
    CurrentUser,
    SessionDep,
    StreamUser,
    still_authorized,
)
from api.presenters import trial_out
from api.routes.jobs import JOB_RESPONSES, JobId
from api.schemas import MetricHistory, MetricPoint, RatioHistory, RatioPoint, TrialOut, TrialRatios
from service import history, repositories, submissions
from service.ratio_columns import layer_ratios
from service.vocabulary import FINISHED_JOB_STATUSES

router = APIRouter(prefix="/jobs/{job_id}", tags=["history"])

# How often an event stream looks for news (one indexed query per look).
POLL_INTERVAL_S = 1.0

TrialFilter = Annotated[int | None, Query(alias="trial", ge=1, le=2**31 - 1)]
AfterStep = Annotated[
    int | None, Query(ge=0, le=2**31 - 1, description="Only steps after this one (a cursor).")
]


@router.get("/trials", response_model=list[TrialOut], responses=JOB_RESPONSES)
def list_trials(job_id: JobId, user: CurrentUser, session: SessionDep) -> list[TrialOut]:
    """The job's Ray Tune trials of its current run (``run``): search trials (variant ``sn``)
    and verification trials, numbered 1 to n."""
    job = submissions.owned_job(session, job_id=job_id, user=user)
    trials = repositories.list_trials(session, job_id=job_id, run=job.run)
    return [trial_out(t, number) for number, t in enumerate(trials, start=1)]


def _snapshot_point(row) -> RatioPoint:
    ratios = layer_ratios(row, keep_null_normalizers=True)
    return RatioPoint(
        step=row.step,
        epoch=row.epoch,
        layer_index=row.layer_index,
        layer=row.layer,
        mean=ratios["mean"],
        var=ratios["var"],
        output=ratios.get("output"),
        mean_fixed=row.mean_fixed,
        var_fixed=row.var_fixed,
    )


@router.get("/ratios", response_model=RatioHistory, responses=JOB_RESPONSES)
def ratio_history(
    job_id: JobId,
    user: CurrentUser,
    session: SessionDep,
    trial: TrialFilter = None,
    layer: Annotated[
        list[str] | None, Query(max_length=500, description="Only these layers (repeatable).")
    ] = None,
    after: AfterStep = None,
    max_points: Annotated[
        int, Query(ge=1, le=200_000, description="At most this many snapshots per trial.")
    ] = 5000,
) -> RatioHistory:
    """Per-layer switch ratios per step, in network order; evenly downsampled by step to at
    most ``max_points`` snapshots per trial (the newest step is always included)."""
    submissions.owned_job(session, job_id=job_id, user=user)
    trials = history.select_trials(session, job_id=job_id, trial_id=trial)
    read = history.ratio_history(
        session, trials=trials, after_step=after, layers=layer, max_points=max_points
    )
    return RatioHistory(
        job_id=job_id,
        trials=[
            TrialRatios(
                trial_id=h.trial.id,
                ray_trial_id=h.trial.ray_trial_id,
                variant=h.trial.variant,
                steps_total=h.steps_total,
                downsampled=h.downsampled,
                last_step=h.last_step,
                points=[_snapshot_point(row) for row in h.snapshots],
            )
            for h in read
        ],
    )


@router.get("/metrics", response_model=MetricHistory, responses=JOB_RESPONSES)
def metric_history(
    job_id: JobId,
    user: CurrentUser,
    session: SessionDep,
    trial: TrialFilter = None,
    name: Annotated[list[str] | None, Query(description="Only these metrics (repeatable).")] = None,
    after: AfterStep = None,
) -> MetricHistory:
    """Scalar metrics (losses, accuracy, fraction of fixed layers, ...) per trial and step."""
    submissions.owned_job(session, job_id=job_id, user=user)
    trials = history.select_trials(session, job_id=job_id, trial_id=trial)
    rows = history.metric_history(session, trials=trials, after_step=after, names=name)
    return MetricHistory(
        job_id=job_id,
        last_step=max((m.step for m in rows), default=after),
        points=[
            MetricPoint(trial_id=m.trial_id, step=m.step, epoch=m.epoch, name=m.name, value=m.value)
            for m in rows
        ],
    )


@router.get(
    "/ratios.csv",
    response_class=StreamingResponse,
    responses={
        200: {"description": "Every snapshot of every trial.", "content": {"text/csv": {}}},
        **JOB_RESPONSES,
    },
)
def ratio_history_csv(job_id: JobId, request: Request, user: CurrentUser, session: SessionDep):
    """The whole ratio history (no downsampling) as CSV, streamed; also while the job runs."""
    submissions.owned_job(session, job_id=job_id, user=user)
    factory = request.app.state.session_factory

    def chunks():
        with factory() as stream_session:
            yield from history.ratio_csv_lines(stream_session, job_id=job_id)

    return StreamingResponse(
        chunks(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{job_id}-ratios.csv"'},
    )


def _look(session_factory, job_id: str, after_event: int | None):
    """One poll: (new events, status, progress, newest step per trial)."""
    with session_factory() as session:
        job = repositories.get_job(session, job_id)
        if job is None:
            return [], "deleted", 0.0, {}
        events = [
            {
                "id": e.id,
                "at": e.at.isoformat(),
                "from_status": e.from_status,
                "to_status": e.to_status,
                "message": e.message,
            }
            for e in repositories.events_after(session, job_id=job_id, after_id=after_event)
        ]
        steps = repositories.latest_snapshot_steps(session, job_id=job_id)
        return events, job.status, float(job.progress or 0.0), steps


# Event ids are the database's INTEGER keys (32-bit in Postgres): a larger Last-Event-ID is a 422
# before the stream starts, never an overflow inside it.
MAX_EVENT_ID = 2**31 - 1


def _json_error(description: str, schema: str = "ErrorBody") -> dict:
    """An error response of the event stream route: JSON, not the route's text/event-stream
    (FastAPI documents a ``model`` response in the route's media type)."""
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _owned_job_for_stream(job_id: JobId, request: Request, user: StreamUser) -> None:
    """404/403 before the stream starts (an error raised inside the event generator, once the
    response has begun, could only end as a 500). Its own short session: no connection is held
    for the life of the stream."""
    with request.app.state.session_factory() as session:
        submissions.owned_job(session, job_id=job_id, user=user)


@router.get(
    "/events",
    response_class=EventSourceResponse,
    dependencies=[Depends(_owned_job_for_stream)],
    responses={
        200: {
            "description": "Server-Sent Events: `status` (a lifecycle event; its `id` is the "
            "event id, resumable with Last-Event-ID), `progress` ({status, progress}), `ratios` "
            "({trial_id: newest step}; read the new steps with /ratios?after=), and `end` when "
            'the job is finished; `error` ({code: "unauthorized", message}) ends a stream whose '
            "token was revoked since it opened.",
            # FastAPI documents each event (``itemSchema``); a ``schema`` here would describe
            # the whole stream as one string, which the parsed stream never is.
            "content": {"text/event-stream": {}},
        },
        401: _json_error("Missing, unknown or revoked API token."),
        403: _json_error("The job belongs to another user."),
        404: _json_error("No such job."),
        422: _json_error("The request did not validate.", "ValidationErrorBody"),
    },
)
async def job_events(
    job_id: JobId,
    request: Request,
    user: StreamUser,
    credentials: BearerCredentials,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID",
            ge=0,
            le=MAX_EVENT_ID,
            description="Resume after this event id (an id the stream sent).",
        ),
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Live updates of one job until it finishes. The token is checked again every
    NORMSEARCH_STREAM_AUTH_INTERVAL_S: once it is revoked (or its user deleted) the stream sends
    an ``error`` event ({code: "unauthorized", message}) and ends; reconnecting answers 401."""
    factory = request.app.state.session_factory
    recheck_s = request.app.state.settings.stream_auth_interval_s
    checked_at = time.monotonic()
    after_event, last_progress, last_steps = last_event_id, None, {}
    while True:
        if time.monotonic() - checked_at >= recheck_s:
            if not await run_in_threadpool(
                still_authorized, factory, credentials.credentials, user.id
            ):
                message = "the API token was revoked or its user deleted; the stream ends"
                yield ServerSentEvent(
                    event="error", data={"code": "unauthorized", "message": message}
                )
                return
            checked_at = time.monotonic()
        events, status, progress, steps = await run_in_threadpool(
            _look, factory, job_id, after_event
        )
        for event in events:
            after_event = event["id"]
            yield ServerSentEvent(event="status", id=str(event["id"]), data=event)
        if (status, progress) != last_progress:
            last_progress = (status, progress)
            yield ServerSentEvent(event="progress", data={"status": status, "progress": progress})
        newer = {str(t): s for t, s in steps.items() if last_steps.get(t) != s}
        if newer:
            last_steps = dict(steps)
            yield ServerSentEvent(event="ratios", data=newer)
        if status in FINISHED_JOB_STATUSES or status == "deleted":
            yield ServerSentEvent(event="end", data={"status": status})
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(min(POLL_INTERVAL_S, recheck_s))
