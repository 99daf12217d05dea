"""Liveness, readiness and metrics: no token needed (for orchestrators and Prometheus)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api.schemas import Health
from service.activity import worker_activity

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (no dependencies checked)."""
    return Health(status="ok")


def _check_database(request: Request) -> str:
    try:
        with request.app.state.session_factory() as session:
            session.execute(text("SELECT 1"))
        return "ok"
    except Exception as error:
        log.warning("readiness: database check failed: %s", error)
        return f"error: {type(error).__name__}"


def _check_broker(request: Request) -> str:
    try:
        with request.app.state.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as error:
        log.warning("readiness: broker check failed: %s", error)
        return f"error: {type(error).__name__}"


# Stuck jobs named in the workers check (the count covers them all).
SHOWN_STUCK = 5


def _check_workers(request: Request) -> str:
    """``ok``, or ``degraded: ...`` naming the running jobs whose heartbeat is older than the
    timeout (their workers are lost or hung; the reaper requeues or fails them)."""
    timeout = request.app.state.settings.heartbeat_timeout_s
    try:
        with request.app.state.session_factory() as session:
            activity = worker_activity(session, heartbeat_timeout_s=timeout)
    except Exception as error:
        return f"error: {type(error).__name__}"
    if not activity.stuck_count:
        return "ok"
    shown = ", ".join(
        f"{job.job_id} (no heartbeat for {job.heartbeat_age_s:.0f} s)"
        if job.heartbeat_age_s is not None
        else f"{job.job_id} (no heartbeat)"
        for job in activity.stuck[:SHOWN_STUCK]
    )
    return (
        f"degraded: {activity.stuck_count} running job(s) with no heartbeat within "
        f"{timeout:g} s: {shown}"
    )


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database or the broker is down."}},
)
async def readyz(request: Request):
    """Ready to serve: the database answers and the task broker accepts connections (else 503).
    A stuck worker (a running job whose heartbeat is older than the timeout) is reported as
    ``checks.workers`` ``degraded: ...`` and ``status`` ``degraded``, with 200: this API can
    still serve, and taking every replica out of rotation over one lost worker would stop the
    service over a job."""
    checks = {
        "database": await run_in_threadpool(_check_database, request),
        "broker": await run_in_threadpool(_check_broker, request),
    }
    ready = all(value == "ok" for value in checks.values())
    checks["workers"] = await run_in_threadpool(_check_workers, request)
    status = "unavailable" if not ready else "ok" if checks["workers"] == "ok" else "degraded"
    body = Health(status=status, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:
    """Prometheus exposition format."""
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
