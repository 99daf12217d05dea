"""The reaper against Postgres and SQLite: stale running jobs are requeued (and their ids
returned for re-sending), or failed once their attempts are used up; fresh heartbeats and jobs in
other states are left alone; on Postgres a job locked by another transaction is skipped; and
``run_reaper_once`` commits before it sends the tasks (to a real Redis)."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy.orm import Session
from test_jobs_service import make_job, running_job, transitions

from service import jobs, repositories
from service.celery_app import SEARCH_QUEUE, SEARCH_TASK, make_celery
from service.db import make_engine, make_session_factory
from service.db.base import now as utc_now
from service.reaper import reap_lost_jobs, run_reaper_once
from service.settings import Settings
from tests.support.processes import BROKER_URL

TIMEOUT_S = 120.0


def reap(session: Session, **kwargs) -> list[str]:
    kwargs.setdefault("heartbeat_timeout_s", TIMEOUT_S)
    kwargs.setdefault("max_attempts", 3)
    return reap_lost_jobs(session, **kwargs)


def test_a_lost_workers_job_is_requeued(session):
    job = running_job(session, heartbeat_age_s=0)
    at = jobs.as_utc(job.heartbeat_at) + timedelta(seconds=130)
    assert reap(session, now=at) == [job.id]
    assert job.status == "queued" and job.heartbeat_at is None and job.error is None
    assert transitions(session, job.id)[-1] == (
        "running",
        "queued",
        "worker lost: no heartbeat for 130 s; requeued (attempt 2 of 3)",
    )
    # The next start is attempt 2 of the same run.
    assert jobs.start_job(session, job_id=job.id, heartbeat_timeout_s=TIMEOUT_S) is job
    assert (job.status, job.attempts, job.run) == ("running", 2, 1)


def test_a_job_out_of_attempts_is_failed(session):
    job = running_job(session, heartbeat_age_s=TIMEOUT_S + 30)
    job.attempts = 3
    session.flush()
    assert reap(session) == []
    assert job.status == "failed" and job.finished_at is not None
    assert job.error.startswith("worker lost: no heartbeat for 15") and "3 of 3" in job.error
    assert transitions(session, job.id)[-1] == ("running", "failed", job.error)
    assert reap(session) == []  # failed jobs are not reaped again


def test_a_job_that_kills_its_worker_every_time_fails_after_max_attempts(session):
    """Each start of the run loses its worker (the heartbeat stops as a crash or the OOM killer
    ends the process): requeued until attempt ``max_attempts``, then failed with that reason,
    never requeued again."""
    job = make_job(session)
    reasons = []
    for attempt in (1, 2, 3):
        assert jobs.start_job(session, job_id=job.id, heartbeat_timeout_s=TIMEOUT_S) is job
        assert (job.status, job.attempts) == ("running", attempt)
        job.heartbeat_at = utc_now()  # its worker beat once, then died
        session.flush()
        dies_at = jobs.as_utc(job.heartbeat_at) + timedelta(seconds=TIMEOUT_S + 10)
        requeued = reap(session, now=dies_at)
        reasons.append(transitions(session, job.id)[-1])
        assert requeued == ([job.id] if attempt < 3 else [])
    assert [to for _, to, _ in reasons] == ["queued", "queued", "failed"]
    assert job.status == "failed" and job.finished_at is not None
    assert job.error == (
        "worker lost: no heartbeat for 130 s; gave up after attempt 3 of 3 "
        "(NORMSEARCH_MAX_ATTEMPTS): every attempt of this run lost its worker (it crashed or "
        "was killed, e.g. out of memory)"
    )
    # A redelivered message of the failed job is not run again.
    assert jobs.start_job(session, job_id=job.id, heartbeat_timeout_s=TIMEOUT_S) is None


def test_fresh_heartbeats_and_other_states_are_left_alone(session):
    fresh = running_job(session, heartbeat_age_s=TIMEOUT_S - 30)
    queued = make_job(session)
    cancelled = make_job(session, status="cancelled")
    stale = running_job(session, heartbeat_age_s=TIMEOUT_S + 1)
    events = transitions(session, fresh.id)
    assert reap(session) == [stale.id]
    assert (fresh.status, queued.status, cancelled.status) == ("running", "queued", "cancelled")
    assert transitions(session, fresh.id) == events
    assert fresh.attempts == 1


def test_a_cancelling_job_whose_worker_was_lost_is_cancelled(session):
    """Nobody is left to confirm the stop: the reaper cancels it (not requeued, not failed,
    whatever its attempts); a cancelling job whose worker still beats is left to it."""
    lost = running_job(session, heartbeat_age_s=TIMEOUT_S + 40)
    lost.attempts = 3
    stopping = running_job(session, heartbeat_age_s=TIMEOUT_S - 30)
    for job in (lost, stopping):
        jobs.cancel_job(session, job_id=job.id)
    assert reap(session) == []  # nothing to send
    assert (lost.status, lost.error, stopping.status) == ("cancelled", None, "cancelling")
    assert lost.finished_at is not None
    assert transitions(session, lost.id)[-1] == (
        "cancelling",
        "cancelled",
        "cancelled by user; worker lost while stopping run 1: no heartbeat for 160 s",
    )


def test_postgres_skips_jobs_locked_by_another_transaction(module_postgres_url):
    """Two reapers (API replicas) never handle the same job: one holding the row's lock makes
    the other skip it instead of waiting."""
    engine = make_engine(module_postgres_url)
    factory = make_session_factory(engine)
    try:
        with factory() as session, session.begin():
            job_id = running_job(session, heartbeat_age_s=TIMEOUT_S + 60).id
        with factory() as holder, holder.begin():
            assert repositories.get_job(holder, job_id, for_update=True) is not None
            with factory() as other, other.begin():
                assert reap(other) == []
        with factory() as session, session.begin():
            assert reap(session) == [job_id]
        with factory() as session:
            assert repositories.get_job(session, job_id).status == "queued"
    finally:
        engine.dispose()


def test_run_reaper_once_commits_then_sends_the_tasks(sqlite_url, broker):
    engine = make_engine(sqlite_url)
    factory = make_session_factory(engine)
    settings = Settings(broker_url=BROKER_URL, heartbeat_timeout_s=TIMEOUT_S, max_attempts=2)
    app = make_celery(settings)
    try:
        with factory() as session, session.begin():
            lost = running_job(session, heartbeat_age_s=TIMEOUT_S + 5).id
            done = running_job(session, heartbeat_age_s=TIMEOUT_S + 5)
            done.attempts = 2
            alive = running_job(session, heartbeat_age_s=1).id
            done = done.id
        assert run_reaper_once(factory, app, settings) == [lost]
        with factory() as session:
            statuses = {
                job_id: repositories.get_job(session, job_id).status
                for job_id in (lost, done, alive)
            }
        assert statuses == {lost: "queued", done: "failed", alive: "running"}
        messages = [json.loads(raw) for raw in broker.lrange(SEARCH_QUEUE, 0, -1)]
        assert [(m["headers"]["task"], m["headers"]["argsrepr"]) for m in messages] == [
            (SEARCH_TASK, repr([lost]))
        ]
        assert run_reaper_once(factory, app, settings) == []  # nothing left to reap
    finally:
        app.close()
        engine.dispose()
