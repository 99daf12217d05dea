"""Prometheus metrics of the API process: request counts and latencies by route template, and,
read from the database at scrape time (correct across API replicas), jobs per status and what
the workers are doing: each running job's runtime, heartbeat age and progress, and how many are
stuck (``service.activity``)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.types import ASGIApp, Receive, Scope, Send

from service import repositories
from service.activity import worker_activity
from service.vocabulary import JobStatus


class JobsCollector:
    """``normsearch_jobs{status=...}`` from one GROUP BY query per scrape."""

    def __init__(self, session_factory) -> None:
        self.session_factory = session_factory

    def collect(self):
        gauge = GaugeMetricFamily("normsearch_jobs", "Jobs per status.", labels=["status"])
        try:
            with self.session_factory() as session:
                counts = repositories.count_jobs_by_status(session)
        except Exception:  # a scrape must not fail because the database is down
            return
        for status in JobStatus:
            gauge.add_metric([status.value], counts.get(status, 0))
        yield gauge


class WorkersCollector:
    """What each busy worker runs, per running job (one worker each): for how long, how old its
    heartbeat is, how far it got; and the running jobs whose heartbeat is older than the
    timeout (stuck: a lost or hung worker, until the reaper's next pass)."""

    def __init__(self, session_factory, heartbeat_timeout_s: float) -> None:
        self.session_factory = session_factory
        self.heartbeat_timeout_s = heartbeat_timeout_s

    def collect(self):
        try:
            with self.session_factory() as session:
                activity = worker_activity(session, heartbeat_timeout_s=self.heartbeat_timeout_s)
        except Exception:  # a scrape must not fail because the database is down
            return
        runtime = GaugeMetricFamily(
            "normsearch_running_job_seconds",
            "Seconds the running job has run (this attempt), per job.",
            labels=["job"],
        )
        heartbeat = GaugeMetricFamily(
            "normsearch_running_job_heartbeat_age_seconds",
            "Seconds since the running job's worker last recorded a heartbeat, per job.",
            labels=["job"],
        )
        progress = GaugeMetricFamily(
            "normsearch_running_job_progress",
            "Fraction of the running job's epoch budget trained, per job.",
            labels=["job"],
        )
        for job in activity.running:
            runtime.add_metric([job.job_id], job.runtime_s)
            if job.heartbeat_age_s is not None:
                heartbeat.add_metric([job.job_id], job.heartbeat_age_s)
            progress.add_metric([job.job_id], job.progress)
        yield runtime
        yield heartbeat
        yield progress
        yield GaugeMetricFamily(
            "normsearch_stuck_jobs",
            "Running jobs whose heartbeat is older than NORMSEARCH_HEARTBEAT_TIMEOUT_S.",
            value=activity.stuck_count,
        )


class Metrics:
    def __init__(self, session_factory, *, heartbeat_timeout_s: float = 120.0) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "normsearch_http_requests",
            "HTTP requests by method, route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "normsearch_http_request_duration_seconds",
            "HTTP request latency by method and route (streams excluded).",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.registry.register(JobsCollector(session_factory))
        self.registry.register(WorkersCollector(session_factory, heartbeat_timeout_s))


def route_template(scope: Scope) -> str:
    """The matched route as a template (``/api/v1/jobs/{job_id}``), so label values stay few;
    ``unmatched`` for a path no route took."""
    if scope.get("route") is None:
        return "unmatched"
    path = scope.get("path", "")
    for name, value in (scope.get("path_params") or {}).items():
        path = path.replace(f"/{value}", f"/{{{name}}}", 1)
    return path


class MetricsMiddleware:
    """Times every HTTP request (pure ASGI, so streaming responses pass through untouched)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = route_template(scope)
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, template, str(status["code"])).inc()
            if not template.endswith("/events"):
                self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
