"""Liveness, readiness and metrics: no token needed (for orchestrators and Prometheus)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api.schemas import Health

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


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database or the broker is down."}},
)
async def readyz(request: Request):
    """Ready to serve: the database answers and the task broker accepts connections."""
    checks = {
        "database": await run_in_threadpool(_check_database, request),
        "broker": await run_in_threadpool(_check_broker, request),
    }
    ready = all(value == "ok" for value in checks.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
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
