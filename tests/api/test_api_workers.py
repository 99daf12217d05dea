"""``/metrics`` and ``/readyz`` show busy and stuck workers: each running job's runtime,
heartbeat age and progress as gauges, and a running job whose heartbeat is older than the
timeout as a degraded ``workers`` check that does not fail the API's readiness."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import auth, repositories
from service.db import make_engine, make_session_factory
from service.db.base import now
from service.db.models import Job

TIMEOUT_S = 120.0  # the test app's heartbeat timeout (the default)


@pytest.fixture(scope="module")
def factory(api_settings):
    assert api_settings.heartbeat_timeout_s == TIMEOUT_S
    engine = make_engine(api_settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


def running_job(factory, *, runtime_s: float, heartbeat_age_s: float, progress: float) -> str:
    with factory() as session, session.begin():
        user = auth.get_or_create_user(session, name="worker-watcher")
        job = repositories.create_job(session, owner_id=user.id, spec={"model": {"arch": "mlp"}})
        at = now()
        job.status, job.attempts, job.progress = "running", 1, progress
        job.started_at = at - timedelta(seconds=runtime_s)
        job.heartbeat_at = at - timedelta(seconds=heartbeat_age_s)
        return job.id


def set_job(factory, job_id: str, **fields) -> None:
    with factory() as session, session.begin():
        job = session.get(Job, job_id)
        for name, value in fields.items():
            setattr(job, name, value)


def gauges(client) -> dict[tuple[str, str | None], float]:
    """Every sample of the workers' gauges: (name, job label) -> value."""
    text = client.get("/metrics").text
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("normsearch_running_job", "normsearch_stuck_jobs")):
            for sample in family.samples:
                found[(sample.name, sample.labels.get("job"))] = sample.value
    return found


def test_idle_workers_are_ok(api_client):
    ready = api_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ok",
        "checks": {"database": "ok", "broker": "ok", "workers": "ok"},
    }
    assert gauges(api_client) == {("normsearch_stuck_jobs", None): 0.0}


def test_a_busy_worker_shows_its_job_runtime_and_heartbeat(api_client, factory):
    job_id = running_job(factory, runtime_s=3600, heartbeat_age_s=5, progress=0.25)
    try:
        found = gauges(api_client)
        assert 3600 <= found[("normsearch_running_job_seconds", job_id)] < 3660
        assert 5 <= found[("normsearch_running_job_heartbeat_age_seconds", job_id)] < 65
        assert found[("normsearch_running_job_progress", job_id)] == 0.25
        assert found[("normsearch_stuck_jobs", None)] == 0
        ready = api_client.get("/readyz").json()
        assert ready["status"] == "ok" and ready["checks"]["workers"] == "ok"
    finally:
        set_job(factory, job_id, status="succeeded", finished_at=now())
    assert ("normsearch_running_job_seconds", job_id) not in gauges(api_client)


def test_a_stuck_worker_degrades_readiness_without_failing_it(api_client, factory):
    busy = running_job(factory, runtime_s=600, heartbeat_age_s=1, progress=0.5)
    stuck = running_job(factory, runtime_s=900, heartbeat_age_s=300, progress=0.1)
    try:
        ready = api_client.get("/readyz")
        assert ready.status_code == 200  # the API still serves
        body = ready.json()
        assert body["status"] == "degraded"
        assert body["checks"]["database"] == body["checks"]["broker"] == "ok"
        workers = body["checks"]["workers"]
        assert workers.startswith("degraded: 1 running job(s) with no heartbeat within 120 s: ")
        assert f"{stuck} (no heartbeat for 30" in workers and busy not in workers
        found = gauges(api_client)
        assert found[("normsearch_stuck_jobs", None)] == 1
        assert found[("normsearch_running_job_heartbeat_age_seconds", stuck)] >= 300
        assert ("normsearch_running_job_seconds", busy) in found

        # Once the reaper has failed it (MAX_ATTEMPTS used up), it no longer counts against
        # the service's health.
        set_job(factory, stuck, status="failed", finished_at=now(), error="worker lost")
        body = api_client.get("/readyz").json()
        assert body["status"] == "ok" and body["checks"]["workers"] == "ok"
        assert gauges(api_client)[("normsearch_stuck_jobs", None)] == 0
    finally:
        set_job(factory, busy, status="cancelled", finished_at=now())
