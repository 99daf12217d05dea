"""The FastAPI application: ``create_app(settings)`` builds one (uvicorn: ``api.app:create_app``
with ``--factory``).

Everything under ``/api/v1`` needs a bearer token; ``/healthz``, ``/readyz`` and ``/metrics`` do
not. While the app runs, a background thread looks for jobs whose worker stopped sending
heartbeats and requeues (or fails) them: several API replicas may do so at once safely.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import ERROR_RESPONSES, BodySizeLimit, JsonDepthLimit, install_error_handlers
from api.observability import Metrics, MetricsMiddleware
from api.routes import health, history, jobs, outputs, specs, tokens, vocabulary
from api.ui import mount_ui
from api.yaml_body import YamlBodies
from service.celery_app import make_celery
from service.db import make_engine, make_session_factory
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
VERSION = "0.1.0"


class Reaper:
    """Runs ``service.reaper.run_reaper_once`` every ``interval_s`` in a daemon thread."""

    def __init__(self, app: FastAPI, interval_s: float) -> None:
        self.app = app
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="normsearch-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        from service.reaper import run_reaper_once

        state = self.app.state
        while not self._stop.wait(self.interval_s):
            try:
                requeued = run_reaper_once(state.session_factory, state.celery, state.settings)
                if requeued:
                    log.warning("requeued jobs of lost workers: %s", ", ".join(requeued))
            except Exception:
                log.exception("the reaper failed; trying again in %s s", self.interval_s)


def create_app(settings: Settings | None = None, *, run_reaper: bool = True) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        reaper = Reaper(app, settings.reaper_interval_s) if run_reaper else None
        if reaper is not None:
            reaper.start()
        try:
            yield
        finally:
            if reaper is not None:
                reaper.stop()
            app.state.celery.close()
            engine.dispose()

    app = FastAPI(
        title="normsearch",
        version=VERSION,
        summary="Which normalizer should each layer of your network use? Switchable-"
        "Normalization searches as a service.",
        lifespan=lifespan,
        openapi_url=f"{API_PREFIX}/openapi.json",
        # FastAPI's Swagger page loads its scripts from a CDN, which deployments behind firewalls
        # cannot reach: the document itself is served, for any OpenAPI tool.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = session_factory
    app.state.celery = make_celery(settings)
    app.state.metrics = Metrics(session_factory, heartbeat_timeout_s=settings.heartbeat_timeout_s)

    install_error_handlers(app)
    routers = (jobs, history, outputs, specs, tokens, vocabulary)
    for router in (module.router for module in routers):
        app.include_router(router, prefix=API_PREFIX, responses=ERROR_RESPONSES)
    app.include_router(health.router)
    # Added first, so inside BodySizeLimit: the body it buffers is already bounded.
    app.add_middleware(JsonDepthLimit, max_depth=settings.max_json_depth)
    # Between the two: a YAML spec becomes JSON, bounded before and depth-checked after.
    app.add_middleware(YamlBodies, paths=(f"{API_PREFIX}/jobs", f"{API_PREFIX}/spec/validate"))
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    mount_ui(app)
    return app
