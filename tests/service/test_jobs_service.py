"""The job service against Postgres and SQLite: start_job's guard against stealing a live
worker's job, cancel and retry (transitions, errors, a retry's fresh run), the heartbeat and the
progress. Each test runs in a transaction (Postgres) or a scratch file (SQLite)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import jobs, repositories
from service.db.base import now
from service.db.models import Artifact, Job, Metric, RatioSnapshot, Trial, User
from service.errors import InvalidTransition, NotFound

TIMEOUT_S = 120.0


def make_job(session: Session, **fields) -> Job:
    user = User(name=f"user-{session.scalar(select(func.count()).select_from(User))}")
    session.add(user)
    session.flush()
    job = repositories.create_job(session, owner_id=user.id, spec={"model": {"arch": "mlp"}})
    for name, value in fields.items():
        setattr(job, name, value)
    session.flush()
    return job


def running_job(session: Session, *, heartbeat_age_s: float) -> Job:
    job = make_job(session)
    jobs.start_job(session, job_id=job.id)
    job.heartbeat_at = now() - timedelta(seconds=heartbeat_age_s)
    session.flush()
    return job


def add_trial_with_history(session: Session, job: Job) -> int:
    trial = Trial(job_id=job.id, ray_trial_id="t0", config={}, status="ERROR", epochs_budget=3)
    session.add(trial)
    session.flush()
    snap = dict(layer_index=0, layer="bn", epoch=1, step=1, mean_fixed=False, var_fixed=False)
    session.add(RatioSnapshot(trial_id=trial.id, **snap))
    session.add(Metric(trial_id=trial.id, epoch=1, step=1, name="val_accuracy", value=0.5))
    session.add(Artifact(job_id=job.id, kind="plan_json", path="p", sha256="0" * 64, size_bytes=1))
    session.flush()
    return trial.id


def transitions(session: Session, job_id: str) -> list[tuple[str | None, str, str | None]]:
    """The job's events as the API reads them (``job.events``), reloaded from the database."""
    session.flush()
    job = repositories.get_job(session, job_id)
    session.refresh(job, ["events"])
    return [(e.from_status, e.to_status, e.message) for e in job.events]


def count(session: Session, model, **where) -> int:
    return session.scalar(select(func.count()).select_from(model).filter_by(**where))


# start_job


def test_start_job_marks_a_queued_job_running(session):
    job = make_job(session)
    started = jobs.start_job(session, job_id=job.id, heartbeat_timeout_s=TIMEOUT_S)
    assert started is job and job.status == "running" and job.attempts == 1
    assert job.heartbeat_at is not None


def test_start_job_drops_a_duplicate_message_of_a_live_workers_job(session):
    job = running_job(session, heartbeat_age_s=10)
    events = transitions(session, job.id)
    assert jobs.start_job(session, job_id=job.id, heartbeat_timeout_s=TIMEOUT_S) is None
    assert job.status == "running" and job.attempts == 1
    assert transitions(session, job.id) == events


def test_start_job_resumes_the_job_of_a_lost_worker(session):
    job = running_job(session, heartbeat_age_s=TIMEOUT_S + 10)
    started = jobs.start_job(session, job_id=job.id, heartbeat_timeout_s=TIMEOUT_S)
    assert started is job and job.status == "running" and job.attempts == 2
    assert transitions(session, job.id)[-2:] == [
        ("running", "queued", "redelivered after a lost worker"),
        ("queued", "running", None),
    ]


def test_start_job_without_a_timeout_always_resumes(session):
    job = running_job(session, heartbeat_age_s=1)
    assert jobs.start_job(session, job_id=job.id) is job and job.attempts == 2


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_start_job_leaves_a_finished_job(session, status):
    job = make_job(session, status=status)
    assert jobs.start_job(session, job_id=job.id, heartbeat_timeout_s=TIMEOUT_S) is None
    assert job.status == status


def test_start_job_of_a_missing_job(session):
    assert jobs.start_job(session, job_id="0" * 32, heartbeat_timeout_s=TIMEOUT_S) is None


# cancel_job


def test_cancel_a_queued_job_cancels_it_at_once(session):
    job = make_job(session)
    assert jobs.cancel_job(session, job_id=job.id) is job
    assert job.status == "cancelled" and job.error is None and job.finished_at is not None
    assert transitions(session, job.id)[-1] == ("queued", "cancelled", "cancelled by user")


def test_cancel_a_running_job_waits_for_its_worker_to_confirm(session):
    """running -> cancelling (not finished: no finished_at); a repeated cancel changes nothing;
    the worker of that run and attempt confirms cancelled, no other one can."""
    job = running_job(session, heartbeat_age_s=0)
    assert jobs.cancel_job(session, job_id=job.id) is job
    assert job.status == "cancelling" and job.finished_at is None
    assert transitions(session, job.id)[-1] == ("running", "cancelling", "cancel requested by user")
    events = len(transitions(session, job.id))
    assert jobs.cancel_job(session, job_id=job.id).status == "cancelling"  # idempotent
    assert len(transitions(session, job.id)) == events
    assert jobs.confirm_cancelled(session, job_id=job.id, run=2) is None  # not its run
    assert jobs.confirm_cancelled(session, job_id=job.id, run=1, attempt=2) is None
    assert job.status == "cancelling"
    assert jobs.confirm_cancelled(session, job_id=job.id, run=1, attempt=1) is job
    assert job.status == "cancelled" and job.finished_at is not None
    assert transitions(session, job.id)[-1] == (
        "cancelling",
        "cancelled",
        "cancelled by user: the worker stopped run 1",
    )
    assert jobs.confirm_cancelled(session, job_id=job.id, run=1) is None  # already done


def test_a_cancelling_job_whose_run_ends_otherwise_ends_cancelled(session):
    """Whatever way the run ends (its last stage finished, or it failed), a cancelling job ends
    cancelled: no artifacts, no failure."""
    finished = running_job(session, heartbeat_age_s=0)
    jobs.cancel_job(session, job_id=finished.id)
    jobs.finish_job(session, job_id=finished.id, files=[], result={"text": "x"})
    assert finished.status == "cancelled" and finished.result is None
    assert finished.artifacts == []
    failed = running_job(session, heartbeat_age_s=0)
    jobs.cancel_job(session, job_id=failed.id)
    jobs.fail_job(session, job_id=failed.id, error="RuntimeError: stopped")
    assert failed.status == "cancelled" and failed.error is None
    assert "RuntimeError: stopped" in transitions(session, failed.id)[-1][2]


def test_a_cancelling_job_is_not_started_again(session):
    """A redelivered message of a cancelling job runs nothing (its worker, or the reaper once
    that worker is lost, ends it)."""
    job = running_job(session, heartbeat_age_s=3600)
    jobs.cancel_job(session, job_id=job.id)
    assert jobs.start_job(session, job_id=job.id, heartbeat_timeout_s=TIMEOUT_S) is None
    assert job.status == "cancelling" and job.attempts == 1


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancel_a_finished_job_is_an_invalid_transition(session, status):
    job = make_job(session, status=status)
    with pytest.raises(InvalidTransition):
        jobs.cancel_job(session, job_id=job.id)
    assert job.status == status


def test_cancel_or_retry_a_missing_job(session):
    with pytest.raises(NotFound):
        jobs.cancel_job(session, job_id="0" * 32)
    with pytest.raises(NotFound):
        jobs.retry_job(session, job_id="0" * 32)


# retry_job


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
def test_retry_starts_a_fresh_run(session, outcome):
    job = make_job(session)
    jobs.start_job(session, job_id=job.id)
    trial_id = add_trial_with_history(session, job)
    if outcome == "failed":
        jobs.fail_job(session, job_id=job.id, error="RuntimeError: boom")
    else:
        jobs.cancel_job(session, job_id=job.id)
        jobs.confirm_cancelled(session, job_id=job.id, run=1)
    assert job.run == 1

    assert jobs.retry_job(session, job_id=job.id) is job
    assert (job.status, job.run, job.attempts, job.error, job.progress) == ("queued", 2, 0, None, 0)
    assert transitions(session, job.id)[-1] == (outcome, "queued", "retried by user: run 2")
    assert job.trials == [] and job.artifacts == []
    assert count(session, Trial, job_id=job.id) == 0
    assert count(session, RatioSnapshot, trial_id=trial_id) == 0  # the database cascaded
    assert count(session, Metric, trial_id=trial_id) == 0

    started = jobs.start_job(session, job_id=job.id, heartbeat_timeout_s=TIMEOUT_S)
    assert started is job and job.run == 2 and job.attempts == 1


def test_retry_of_a_cancelling_job_is_refused_until_the_run_has_stopped(session):
    job = running_job(session, heartbeat_age_s=0)
    add_trial_with_history(session, job)
    jobs.cancel_job(session, job_id=job.id)
    with pytest.raises(InvalidTransition, match="cancelling: its run 1 has not stopped yet"):
        jobs.retry_job(session, job_id=job.id)
    assert (job.status, job.run) == ("cancelling", 1)
    assert count(session, Trial, job_id=job.id) == 1  # nothing deleted under the old run
    jobs.confirm_cancelled(session, job_id=job.id, run=1)
    assert jobs.retry_job(session, job_id=job.id).run == 2


def test_trial_ids_of_a_retried_job_are_never_reused(session):
    """The retry deletes run 1's trials; run 2's new trial gets a new id (Postgres: a sequence;
    SQLite: AUTOINCREMENT, which would otherwise hand out the deleted highest id again)."""
    job = make_job(session, status="failed")
    first = add_trial_with_history(session, job)
    jobs.retry_job(session, job_id=job.id)
    again = repositories.upsert_trial(
        session,
        job_id=job.id,
        ray_trial_id="t0",
        variant="sn",
        config={},
        status="RUNNING",
        epochs_budget=3,
        run=job.run,
    )
    assert again.id > first and again.run == 2
    assert [t.id for t in repositories.list_trials(session, job_id=job.id, run=2)] == [again.id]
    assert repositories.list_trials(session, job_id=job.id, run=1) == []


@pytest.mark.parametrize("status", ["queued", "running", "succeeded"])
def test_retry_needs_a_failed_or_cancelled_job(session, status):
    job = make_job(session)
    if status != "queued":
        jobs.start_job(session, job_id=job.id)
    if status == "succeeded":
        jobs.finish_job(session, job_id=job.id, files=[])
    with pytest.raises(InvalidTransition):
        jobs.retry_job(session, job_id=job.id)
    assert job.status == status and job.run == 1


def test_finish_job_stores_the_short_result_and_a_retry_clears_it(session):
    result = {
        "configuration": "plan",
        "accuracy": 0.981,
        "std": 0.004,
        "n": 4,
        "accuracy_kind": "final epoch",
        "text": "plan 0.981 ± 0.004 (4 seeds, final epoch)",
    }
    job = make_job(session)
    assert job.result is None  # a job has no result before it succeeds
    jobs.start_job(session, job_id=job.id)
    jobs.finish_job(session, job_id=job.id, files=[], result=result)
    session.expire_all()
    stored = repositories.get_job(session, job.id)
    assert stored.status == "succeeded" and stored.result == result  # JSON, read back whole
    other = make_job(session, result={"text": "stale"}, status="failed")
    jobs.retry_job(session, job_id=other.id)
    assert other.result is None


# Heartbeat and progress


def test_touch_heartbeat_of_a_running_job(session):
    job = running_job(session, heartbeat_age_s=60)
    before, updated_at = job.heartbeat_at, job.updated_at
    assert jobs.touch_heartbeat(session, job_id=job.id, attempt=1) == "running"
    session.refresh(job)
    assert job.heartbeat_at > before and job.updated_at == updated_at
    # Another attempt (a worker that took the job over) runs it now: this one must stop.
    assert jobs.touch_heartbeat(session, job_id=job.id, attempt=7) is None


def test_touch_heartbeat_tells_the_worker_the_job_is_cancelling(session):
    """A cancelling job's worker keeps beating (it is still stopping its trials, the reaper
    must not take it for lost) and reads that it must stop; once cancelled, nothing is
    written."""
    job = running_job(session, heartbeat_age_s=60)
    jobs.cancel_job(session, job_id=job.id)
    before = job.heartbeat_at
    assert jobs.touch_heartbeat(session, job_id=job.id, attempt=1) == "cancelling"
    session.refresh(job)
    assert job.heartbeat_at > before
    assert jobs.touch_heartbeat(session, job_id=job.id, attempt=2) is None  # not its attempt
    jobs.confirm_cancelled(session, job_id=job.id, run=1)
    beat = job.heartbeat_at
    assert jobs.touch_heartbeat(session, job_id=job.id, attempt=1) == "cancelled"
    session.refresh(job)
    assert job.heartbeat_at == beat
    assert jobs.touch_heartbeat(session, job_id="0" * 32) is None


def test_progress_is_monotone_and_below_one_until_success(session):
    job = running_job(session, heartbeat_age_s=0)
    assert jobs.set_progress(session, job_id=job.id, progress=0.25)
    assert not jobs.set_progress(session, job_id=job.id, progress=0.1)  # never goes down
    session.refresh(job)
    assert job.progress == 0.25
    jobs.set_progress(session, job_id=job.id, progress=1.0)
    session.refresh(job)
    assert job.progress == jobs.MAX_RUNNING_PROGRESS
    jobs.finish_job(session, job_id=job.id, files=[])
    assert job.progress == 1.0
    assert not jobs.set_progress(session, job_id=job.id, progress=0.5)  # not running any more
