"""Repositories and the job lifecycle on a migrated Postgres (each test rolled back)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import repositories
from service.db.models import Job, JobEvent, RatioSnapshot, User
from service.errors import Conflict, InvalidTransition, NotFound, ServiceError
from service.lifecycle import TRANSITIONS, transition
from service.vocabulary import JobStatus
from tests.support.api import snapshot_row
from tests.support.factories import make_user

SPEC = {"model": {"arch": "resnet20"}, "dataset": {"kind": "digits"}}


def make_job(session: Session, owner: User, **fields) -> Job:
    return repositories.create_job(session, owner_id=owner.id, spec=SPEC, **fields)


def make_trial(session: Session, job: Job, ray_trial_id: str = "t0"):
    return repositories.upsert_trial(
        session,
        job_id=job.id,
        ray_trial_id=ray_trial_id,
        variant="sn",
        config={"trial": {"seed": 0}},
        status="RUNNING",
        epochs_budget=10,
    )


def test_errors_carry_status_and_code():
    assert (NotFound.status_code, Conflict.status_code, InvalidTransition.status_code) == (
        404,
        409,
        409,
    )
    error = InvalidTransition("nope")
    assert isinstance(error, ServiceError) and error.message == "nope"
    assert error.to_dict() == {"code": "invalid_transition", "message": "nope"}
    assert NotFound().message == "not found"


def test_create_job_is_idempotent_per_owner_and_key(pg_session):
    alice, bob = make_user(pg_session, "alice"), make_user(pg_session, "bob")
    first = make_job(pg_session, alice, idempotency_key="k1")
    again = repositories.create_job(
        pg_session, owner_id=alice.id, spec={"other": True}, idempotency_key="k1"
    )
    assert again.id == first.id and again.spec == SPEC and first.status == "queued"
    assert make_job(pg_session, bob, idempotency_key="k1").id != first.id  # per owner
    assert make_job(pg_session, alice, idempotency_key="k2").id != first.id
    unkeyed = {make_job(pg_session, alice).id, make_job(pg_session, alice).id}
    assert len(unkeyed) == 2  # no key: always a new job
    count = pg_session.scalar(select(func.count()).select_from(Job))
    assert count == 5
    assert repositories.get_job(pg_session, first.id) is first
    assert repositories.get_job(pg_session, "missing", for_update=True) is None


def test_list_jobs_filters_orders_and_paginates(pg_session):
    alice, bob = make_user(pg_session, "alice"), make_user(pg_session, "bob")
    jobs = [make_job(pg_session, alice) for _ in range(7)]
    start = datetime(2030, 1, 1, tzinfo=UTC)
    for i, job in enumerate(jobs):  # distinct creation times, whatever the clock resolution
        job.created_at = start + timedelta(seconds=i)
    make_job(pg_session, bob)
    for job in jobs[:3]:
        transition(pg_session, job, "running")
    newest = repositories.list_jobs(pg_session, owner_id=alice.id)
    assert [j.id for j in newest] == [j.id for j in reversed(jobs)]
    oldest = repositories.list_jobs(pg_session, owner_id=alice.id, newest_first=False)
    assert [j.id for j in oldest] == [j.id for j in jobs]
    pages = [
        repositories.list_jobs(pg_session, owner_id=alice.id, limit=3, offset=offset)
        for offset in (0, 3, 6)
    ]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [j.id for j in itertools.chain(*pages)] == [j.id for j in newest]
    running = repositories.list_jobs(pg_session, owner_id=alice.id, status="running")
    assert {j.id for j in running} == {j.id for j in jobs[:3]}
    both = repositories.list_jobs(pg_session, owner_id=alice.id, status=["running", "queued"])
    assert len(both) == 7
    assert repositories.list_jobs(pg_session, owner_id=bob.id, status="running") == []


LEGAL = [(a, b) for a, targets in TRANSITIONS.items() for b in sorted(targets)]
ILLEGAL = [(a, b) for a in JobStatus for b in JobStatus if b not in TRANSITIONS[a]] + [
    ("queued", "unknown")
]
PATH_TO = {  # from queued, how to reach each status
    "queued": [],
    "running": ["running"],
    "succeeded": ["running", "succeeded"],
    "failed": ["running", "failed"],
    "cancelling": ["running", "cancelling"],
    "cancelled": ["running", "cancelling", "cancelled"],
}


def events_of(session: Session, job: Job) -> list[JobEvent]:
    """The job's events as the API reads them (``job.events``), reloaded from the database."""
    session.flush()
    session.refresh(job, ["events"])
    return list(job.events)


def job_in(session: Session, status: str) -> Job:
    job = make_job(session, make_user(session))
    for step in PATH_TO[status]:
        transition(session, job, step)
    return job


@pytest.mark.parametrize(("from_status", "to_status"), LEGAL)
def test_every_legal_transition_records_an_event(pg_session, from_status, to_status):
    job = job_in(pg_session, from_status)
    before = len(events_of(pg_session, job))
    transition(pg_session, job, to_status, message="why")
    pg_session.expire_all()
    job = repositories.get_job(pg_session, job.id)
    assert job.status == to_status
    events = events_of(pg_session, job)
    assert len(events) == before + 1
    last = events[-1]
    assert (last.from_status, last.to_status, last.message) == (from_status, to_status, "why")
    if to_status == "running":
        assert job.started_at is not None and job.finished_at is None and job.error is None
    elif to_status == "queued":
        assert job.started_at is None and job.finished_at is None and job.error is None
    elif to_status == "cancelling":  # still running until its worker confirms
        assert job.started_at is not None and job.finished_at is None and job.error is None
    else:
        assert job.finished_at is not None
        assert job.error == ("why" if to_status == "failed" else None)


@pytest.mark.parametrize(("from_status", "to_status"), ILLEGAL)
def test_illegal_transitions_raise_and_change_nothing(pg_session, from_status, to_status):
    job = job_in(pg_session, from_status)
    before = len(events_of(pg_session, job))
    with pytest.raises(InvalidTransition) as raised:
        transition(pg_session, job, to_status)
    assert from_status in str(raised.value) and to_status in str(raised.value)
    assert raised.value.status_code == 409
    assert job.status == from_status
    assert len(events_of(pg_session, job)) == before


def test_retry_and_requeue_increment_attempts(pg_session):
    job = make_job(pg_session, make_user(pg_session))
    assert job.attempts == 0
    transition(pg_session, job, "running")
    assert job.attempts == 1
    transition(pg_session, job, "failed", message="out of memory")
    assert job.error == "out of memory"
    transition(pg_session, job, "queued", message="retry")
    assert job.error is None
    transition(pg_session, job, "running")
    assert job.attempts == 2
    transition(pg_session, job, "queued", message="worker lost")  # requeue
    transition(pg_session, job, "running")
    transition(pg_session, job, "succeeded")
    assert (job.attempts, job.status, job.progress) == (3, "succeeded", 1.0)
    events = pg_session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)
    ).all()
    assert [e.to_status for e in events] == [
        "running",
        "failed",
        "queued",
        "running",
        "queued",
        "running",
        "succeeded",
    ]
    assert events[0].from_status == "queued"


def test_upsert_trial_updates_in_place(pg_session):
    job = make_job(pg_session, make_user(pg_session))
    trial = make_trial(pg_session, job)
    repositories.update_trial(pg_session, trial.id, epochs_used=4, best_metrics={"a": 1.0})
    again = repositories.upsert_trial(
        pg_session,
        job_id=job.id,
        ray_trial_id="t0",
        variant="bn",
        config={"x": 1},
        status="RUNNING",
        epochs_budget=12,
    )
    pg_session.refresh(again)
    assert again.id == trial.id
    assert (again.variant, again.config, again.epochs_budget) == ("bn", {"x": 1}, 12)
    assert (again.epochs_used, again.best_metrics) == (4, {"a": 1.0})
    assert [t.id for t in repositories.list_trials(pg_session, job_id=job.id)] == [trial.id]


def test_insert_snapshots_ignores_duplicates_and_reads_in_order(pg_session):
    job = make_job(pg_session, make_user(pg_session))
    trial = make_trial(pg_session, job)
    rows = [snapshot_row(trial.id, step, layer) for step in (1, 2) for layer in range(3)]
    assert repositories.insert_snapshots(pg_session, rows) == 6
    assert repositories.insert_snapshots(pg_session, rows) == 0
    more = rows[3:] + [snapshot_row(trial.id, 3, layer) for layer in reversed(range(3))]
    assert repositories.insert_snapshots(pg_session, more) == 3
    assert repositories.insert_snapshots(pg_session, []) == 0
    count = pg_session.scalar(select(func.count()).select_from(RatioSnapshot))
    assert count == 9

    history = repositories.ratio_history(pg_session, trial_id=trial.id)
    assert [(s.step, s.layer_index) for s in history] == [
        (step, layer) for step in (1, 2, 3) for layer in range(3)
    ]
    after = repositories.ratio_history(pg_session, trial_id=trial.id, after_step=1, limit=4)
    assert [(s.step, s.layer_index) for s in after] == [(2, 0), (2, 1), (2, 2), (3, 0)]
    only = repositories.ratio_history(pg_session, trial_id=trial.id, layers=["layer1.bn"])
    assert [(s.step, s.layer) for s in only] == [(step, "layer1.bn") for step in (1, 2, 3)]
    assert (history[0].mean_bn, history[0].mean_gn, history[0].var_fixed) == (0.5, None, True)


def test_insert_metrics_ignores_duplicates(pg_session):
    job = make_job(pg_session, make_user(pg_session))
    trial = make_trial(pg_session, job)
    rows = [
        {"trial_id": trial.id, "epoch": e, "step": e, "name": n, "value": float(e)}
        for e in (1, 2)
        for n in ("train_loss", "val_accuracy")
    ]
    assert repositories.insert_metrics(pg_session, rows) == 4
    assert repositories.insert_metrics(pg_session, rows[1:]) == 0
    metrics = repositories.metric_history(pg_session, trial_id=trial.id, after_step=1)
    assert [(m.step, m.name) for m in metrics] == [(2, "train_loss"), (2, "val_accuracy")]


def test_bulk_insert_of_more_rows_than_one_values_statement_allows(pg_session):
    job = make_job(pg_session, make_user(pg_session))
    trial = make_trial(pg_session, job)
    rows = [snapshot_row(trial.id, step, layer) for step in range(1, 51) for layer in range(100)]
    assert repositories.insert_snapshots(pg_session, rows) == 5000  # 80,000 parameters
    assert repositories.insert_snapshots(pg_session, rows) == 0
