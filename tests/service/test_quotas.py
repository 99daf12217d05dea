"""Quotas per user on Postgres and SQLite: queued and running jobs and their trial-epochs are
bounded per user (429 with Retry-After; 403 for a job alone over the trial-epoch quota), a
cancelled or finished job frees its share, a retry counts like a submission, admins are exempt,
and concurrent submissions (threads, committed transactions) never exceed the quota."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import func, select

from service import jobs, lifecycle, quotas, submissions
from service.db import make_engine, make_session_factory
from service.db.models import Job, User
from service.settings import Settings
from service.spec import JobSpec
from tests.support.api import tiny_spec

# tiny_spec: 1 seed x 1 batch size x 1 lr, 2 epochs, plus verification (plan + bn) x 1 seed,
# 1 epoch: 1 * 2 + 2 * 1 = 4 trial-epochs.
TINY = JobSpec.model_validate(tiny_spec())
TINY_EPOCHS = 4


def new_user(session, *, admin: bool = False) -> User:
    user = User(name=f"quota-{uuid.uuid4().hex[:8]}", is_admin=admin)
    session.add(user)
    session.flush()
    return user


def submit(session, user, settings, spec=TINY, **kwargs):
    return submissions.submit_job(session, user=user, spec=spec, settings=settings, **kwargs)[0]


def test_the_tiny_spec_weighs_what_the_comment_says():
    assert TINY.trial_epochs == TINY_EPOCHS


def test_the_jobs_quota_is_429_with_retry_after_naming_the_limit(session, tmp_path):
    settings = Settings(data_roots=[tmp_path], max_jobs_per_user=2, quota_retry_after_s=17)
    user = new_user(session)
    submit(session, user, settings)
    submit(session, user, settings)
    with pytest.raises(quotas.QuotaExceeded) as caught:
        submit(session, user, settings)
    error = caught.value
    assert type(error) is quotas.QuotaExceeded and error.status_code == 429
    assert error.headers == {"Retry-After": "17"}
    body = error.to_dict()
    assert body["code"] == "quota_exceeded" and body["limit"] == "max_jobs_per_user"
    assert body["variable"] == "NORMSEARCH_MAX_JOBS_PER_USER" in body["message"]
    assert (body["quota"], body["in_use"], body["requested"]) == (2, 2, 1)
    owned = select(func.count()).select_from(Job).where(Job.owner_id == user.id)
    assert session.scalar(owned) == 2  # nothing was inserted
    # Another user has a quota of their own.
    assert submit(session, new_user(session), settings).status == "queued"


def test_a_cancelled_or_finished_job_frees_its_slot(session, tmp_path):
    settings = Settings(data_roots=[tmp_path], max_jobs_per_user=2)
    user = new_user(session)
    first, second = submit(session, user, settings), submit(session, user, settings)
    with pytest.raises(quotas.QuotaExceeded):
        submit(session, user, settings)
    submissions.cancel_job(session, user=user, job_id=first.id)
    third = submit(session, user, settings)
    with pytest.raises(quotas.QuotaExceeded):
        submit(session, user, settings)
    lifecycle.transition(session, second, "running")  # running still counts
    with pytest.raises(quotas.QuotaExceeded):
        submit(session, user, settings)
    lifecycle.transition(session, second, "succeeded")
    submit(session, user, settings)
    lifecycle.transition(session, third, "running")
    lifecycle.transition(session, third, "failed", message="boom")
    assert quotas.usage(session, owner_id=user.id).jobs == 1
    submit(session, user, settings)


def test_a_cancelling_job_holds_its_slot_until_its_worker_confirms(session, tmp_path):
    """Its worker is still stopping its trials: it counts, jobs and trial-epochs, until it is
    cancelled."""
    settings = Settings(data_roots=[tmp_path], max_jobs_per_user=1)
    user = new_user(session)
    job = submit(session, user, settings)
    jobs.start_job(session, job_id=job.id)
    assert submissions.cancel_job(session, user=user, job_id=job.id).status == "cancelling"
    assert quotas.usage(session, owner_id=user.id) == quotas.Usage(1, TINY_EPOCHS)
    with pytest.raises(quotas.QuotaExceeded, match="queued, running or cancelling"):
        submit(session, user, settings)
    jobs.confirm_cancelled(session, job_id=job.id, run=1)
    assert quotas.usage(session, owner_id=user.id).jobs == 0
    assert submit(session, user, settings).status == "queued"


def test_the_trial_epoch_quota_sums_the_jobs_in_flight(session, tmp_path):
    settings = Settings(data_roots=[tmp_path], max_trial_epochs_per_user=3 * TINY_EPOCHS + 1)
    user = new_user(session)
    jobs_ = [submit(session, user, settings) for _ in range(3)]
    assert quotas.usage(session, owner_id=user.id) == quotas.Usage(3, 3 * TINY_EPOCHS)
    with pytest.raises(quotas.QuotaExceeded) as caught:
        submit(session, user, settings)
    body = caught.value.to_dict()
    assert caught.value.status_code == 429 and caught.value.headers["Retry-After"] == "60"
    assert body["limit"] == "max_trial_epochs_per_user"
    assert "NORMSEARCH_MAX_TRIAL_EPOCHS_PER_USER" in body["message"]
    assert (body["quota"], body["in_use"], body["requested"]) == (13, 12, TINY_EPOCHS)
    submissions.cancel_job(session, user=user, job_id=jobs_[0].id)
    submit(session, user, settings)


def test_a_job_alone_over_the_trial_epoch_quota_is_403(session, tmp_path):
    settings = Settings(data_roots=[tmp_path], max_trial_epochs_per_user=TINY_EPOCHS - 1)
    with pytest.raises(quotas.QuotaNeverMet) as caught:
        submit(session, new_user(session), settings)  # the user has nothing in flight
    error = caught.value
    assert error.status_code == 403 and error.headers is None
    body = error.to_dict()
    assert body["code"] == "over_quota" and body["variable"] in body["message"]
    assert "can never be queued" in body["message"] and body["requested"] == TINY_EPOCHS


def test_a_retry_counts_like_a_submission(session, tmp_path):
    settings = Settings(data_roots=[tmp_path], max_jobs_per_user=1)
    user = new_user(session)
    first = submit(session, user, settings)
    submissions.cancel_job(session, user=user, job_id=first.id)
    second = submit(session, user, settings)
    with pytest.raises(quotas.QuotaExceeded):
        submissions.retry_job(session, user=user, job_id=first.id, settings=settings)
    assert session.get(Job, first.id).status == "cancelled"  # left as it was
    submissions.cancel_job(session, user=user, job_id=second.id)
    retried = submissions.retry_job(session, user=user, job_id=first.id, settings=settings)
    assert retried.status == "queued" and retried.run == 2


def test_a_retry_of_a_job_that_is_not_retryable_is_still_a_conflict(session, tmp_path):
    settings = Settings(data_roots=[tmp_path], max_jobs_per_user=1)
    user = new_user(session)
    queued = submit(session, user, settings)
    with pytest.raises(jobs.InvalidTransition):  # not a 429: the job itself is the one in flight
        submissions.retry_job(session, user=user, job_id=queued.id, settings=settings)


def test_an_idempotent_repeat_is_answered_even_at_the_quota(session, tmp_path):
    settings = Settings(data_roots=[tmp_path], max_jobs_per_user=1)
    user = new_user(session)
    first = submit(session, user, settings, idempotency_key="k")
    assert submit(session, user, settings, idempotency_key="k").id == first.id
    with pytest.raises(quotas.QuotaExceeded):
        submit(session, user, settings, idempotency_key="other")


def test_admins_are_exempt(session, tmp_path):
    settings = Settings(
        data_roots=[tmp_path], max_jobs_per_user=1, max_trial_epochs_per_user=TINY_EPOCHS - 1
    )
    admin = new_user(session, admin=True)
    made = [submit(session, admin, settings) for _ in range(3)]
    assert all(job.status == "queued" for job in made)
    submissions.cancel_job(session, user=admin, job_id=made[0].id)
    submissions.retry_job(session, user=admin, job_id=made[0].id, settings=settings)


def test_the_admin_flag_is_read_from_the_locked_row(session, tmp_path):
    """A user made admin (or not) by another transaction is seen at the next submission."""
    settings = Settings(data_roots=[tmp_path], max_jobs_per_user=1)
    user = new_user(session)
    submit(session, user, settings)
    session.execute(User.__table__.update().where(User.id == user.id).values(is_admin=True))
    assert submit(session, user, settings).status == "queued"  # `user` in memory still says no


def test_an_unreadable_stored_spec_weighs_nothing():
    assert quotas.job_trial_epochs({"version": 999}) == 0
    assert quotas.job_trial_epochs(TINY.model_dump(mode="json")) == TINY_EPOCHS


# Concurrency: committed transactions in threads, each its own connection.


@pytest.fixture(params=["postgres", "sqlite"])
def factory(request):
    url = request.getfixturevalue(
        "module_postgres_url" if request.param == "postgres" else "sqlite_url"
    )
    engine = make_engine(url, pool_size=12) if request.param == "postgres" else make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def race(factory, user_id: int, settings: Settings, threads: int) -> list[str]:
    """``threads`` submissions for ``user_id`` released at once; what each ended with."""
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        with factory() as session:
            user = session.get(User, user_id)
            session.commit()  # read the user outside the race, as the API's auth does
            barrier.wait()
            try:
                submit(session, user, settings)
                session.commit()
                outcome = "created"
            except quotas.QuotaExceeded:
                session.rollback()
                outcome = "429"
        with lock:
            outcomes.append(outcome)

    workers = [threading.Thread(target=one) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers)
    return outcomes


@pytest.mark.parametrize("quota", [1, 3])
def test_concurrent_submissions_never_exceed_the_quota(factory, tmp_path, quota):
    settings = Settings(data_roots=[tmp_path], max_jobs_per_user=quota)
    with factory() as session:
        user = new_user(session)
        session.commit()
        user_id = user.id
    outcomes = race(factory, user_id, settings, threads=8)
    assert sorted(outcomes) == sorted(["created"] * quota + ["429"] * (8 - quota))
    with factory() as session:
        owned = select(func.count()).select_from(Job).where(Job.owner_id == user_id)
        assert session.scalar(owned) == quota
