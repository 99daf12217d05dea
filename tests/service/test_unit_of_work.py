"""The unit of work against Postgres and SQLite and a real Redis broker: a task is sent only after
its transaction committed (the job is visible to another connection when the broker gets it),
nothing is sent or removed for a transaction that rolled back, and a send the broker refuses
(a closed port) is handled in one place, as the pending send says: the new job deleted, the
retried job cancelled with the reason, the reaper's job left queued. Also the user actions of
``service.submissions`` that queue work, and cancel locking its job once.
"""

from __future__ import annotations

import ast
import json
import os

import pytest
import redis
from celery.signals import before_task_publish
from sqlalchemy import event
from test_jobs_service import make_job, transitions

from service import jobs, repositories, submissions, unit_of_work
from service.celery_app import SEARCH_QUEUE, SEARCH_TASK, make_celery
from service.db import make_engine, make_session_factory
from service.db.models import Job, User
from service.errors import BrokerUnavailable, Forbidden
from service.settings import Settings
from service.spec import JobSpec
from service.unit_of_work import PendingSend
from tests.support.api import tiny_spec
from tests.support.processes import BROKER_URL

DOWN_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens there: every send is refused


@pytest.fixture(params=["postgres", "sqlite"])
def factory(request):
    """A session factory on a committed database (the unit of work commits for real)."""
    url = request.getfixturevalue(
        "module_postgres_url" if request.param == "postgres" else "sqlite_url"
    )
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def celery():
    app = make_celery(Settings(broker_url=BROKER_URL))
    yield app
    app.close()


@pytest.fixture
def celery_down():
    app = make_celery(Settings(broker_url=DOWN_BROKER_URL))
    yield app
    app.close()


def sent_job_ids(broker: redis.Redis) -> list[str]:
    messages = [json.loads(raw) for raw in broker.lrange(SEARCH_QUEUE, 0, -1)]
    assert all(m["headers"]["task"] == SEARCH_TASK for m in messages)
    return [ast.literal_eval(m["headers"]["argsrepr"])[0] for m in messages]


def new_user(session) -> User:
    user = User(name=f"user-{os.urandom(4).hex()}")
    session.add(user)
    session.flush()
    return user


def job_status(factory, job_id: str) -> str | None:
    with factory() as session:
        job = repositories.get_job(session, job_id)
        return None if job is None else job.status


def test_the_task_is_sent_after_the_commit(factory, celery, broker):
    seen_by_the_broker: list[str | None] = []

    def on_publish(sender=None, headers=None, **_):
        # What a worker receiving the message would find, read on a connection of its own.
        seen_by_the_broker.append(job_status(factory, ast.literal_eval(headers["argsrepr"])[0]))

    before_task_publish.connect(on_publish, weak=False)
    try:
        with unit_of_work.unit_of_work(factory, celery) as session:
            job_id = make_job(session).id
            unit_of_work.send_after_commit(session, job_id=job_id, if_unsent="delete")
            assert unit_of_work.pending_sends(session) == [
                PendingSend(job_id, SEARCH_TASK, "delete")
            ]
            assert sent_job_ids(broker) == []  # nothing is sent inside the transaction
    finally:
        before_task_publish.disconnect(on_publish)
    assert seen_by_the_broker == ["queued"]
    assert sent_job_ids(broker) == [job_id]


def test_a_rolled_back_transaction_sends_and_removes_nothing(factory, celery, broker, tmp_path):
    doomed = tmp_path / "job-dir"
    doomed.mkdir()
    with (
        pytest.raises(RuntimeError, match="handler failed"),
        unit_of_work.unit_of_work(factory, celery) as session,
    ):
        job_id = make_job(session).id
        unit_of_work.send_after_commit(session, job_id=job_id, if_unsent="delete")
        unit_of_work.remove_after_commit(session, doomed)
        raise RuntimeError("handler failed")
    assert sent_job_ids(broker) == []
    assert doomed.is_dir()
    assert job_status(factory, job_id) is None


def test_directories_are_removed_after_the_commit(factory, celery, tmp_path):
    freed = tmp_path / "job-dir"
    (freed / "out").mkdir(parents=True)
    with unit_of_work.unit_of_work(factory, celery) as session:
        unit_of_work.remove_after_commit(session, freed)
        assert freed.is_dir()
    assert not freed.exists()


def test_a_refused_send_deletes_a_new_job(factory, celery_down):
    with (
        pytest.raises(BrokerUnavailable) as raised,
        unit_of_work.unit_of_work(factory, celery_down) as session,
    ):
        job_id = make_job(session).id
        unit_of_work.send_after_commit(session, job_id=job_id, if_unsent="delete")
    assert raised.value.status_code == 503 and raised.value.code == "broker_unavailable"
    assert job_status(factory, job_id) is None


def test_a_refused_send_cancels_a_retried_job_with_the_reason(factory, celery_down):
    with factory() as session, session.begin():
        job = make_job(session)
        jobs.cancel_job(session, job_id=job.id)
        job_id = job.id
    with (
        pytest.raises(BrokerUnavailable),
        unit_of_work.unit_of_work(factory, celery_down) as session,
    ):
        jobs.retry_job(session, job_id=job_id)
        unit_of_work.send_after_commit(
            session, job_id=job_id, if_unsent="cancel", reason="retry not queued: why"
        )
    with factory() as session:
        job = repositories.get_job(session, job_id)
        assert (job.status, job.run, job.error) == ("cancelled", 2, None)
        assert transitions(session, job_id)[-2:] == [
            ("cancelled", "queued", "retried by user: run 2"),
            ("queued", "cancelled", "retry not queued: why"),
        ]


def test_a_refused_send_can_leave_the_job_queued(factory, celery_down):
    with (
        pytest.raises(BrokerUnavailable),
        unit_of_work.unit_of_work(factory, celery_down) as session,
    ):
        job_id = make_job(session).id
        unit_of_work.send_after_commit(session, job_id=job_id, if_unsent="keep")
    assert job_status(factory, job_id) == "queued"


def test_send_after_commit_checks_its_arguments(session):
    with pytest.raises(ValueError, match="if_unsent"):
        unit_of_work.send_after_commit(session, job_id="0" * 32, if_unsent="drop")
    with pytest.raises(ValueError, match="unknown task"):
        unit_of_work.send_after_commit(session, job_id="0" * 32, if_unsent="keep", task="x")
    assert unit_of_work.pending_sends(session) == []


# The user actions that queue work record their sends; none commits or sends.


def test_submit_and_retry_record_their_sends(session, tmp_path):
    user = new_user(session)
    spec = JobSpec.model_validate(tiny_spec())
    job, created = submissions.submit_job(
        session, user=user, spec=spec, settings=Settings(data_roots=[tmp_path])
    )
    assert created and job.status == "queued"
    again, created = submissions.submit_job(
        session,
        user=user,
        spec=spec,
        settings=Settings(data_roots=[tmp_path]),
        idempotency_key=None,
    )
    assert created and again.id != job.id
    submissions.cancel_job(session, user=user, job_id=job.id)
    submissions.retry_job(session, user=user, job_id=job.id, settings=Settings())
    assert unit_of_work.pending_sends(session) == [
        PendingSend(job.id, SEARCH_TASK, "delete"),
        PendingSend(again.id, SEARCH_TASK, "delete"),
        PendingSend(job.id, SEARCH_TASK, "cancel", submissions.RETRY_UNSENT_REASON),
    ]


def test_an_idempotent_repeat_sends_nothing(session, tmp_path):
    user = new_user(session)
    spec = JobSpec.model_validate(tiny_spec())
    first, _ = submissions.submit_job(
        session, user=user, spec=spec, settings=Settings(data_roots=[tmp_path]), idempotency_key="k"
    )
    again, created = submissions.submit_job(
        session, user=user, spec=spec, settings=Settings(data_roots=[tmp_path]), idempotency_key="k"
    )
    assert again.id == first.id and not created
    assert [send.job_id for send in unit_of_work.pending_sends(session)] == [first.id]


def test_cancel_loads_and_locks_the_job_once(pg_session):
    user = new_user(pg_session)
    job = make_job(pg_session, owner_id=user.id)
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    connection = pg_session.connection()
    event.listen(connection, "before_cursor_execute", record)
    try:
        assert submissions.cancel_job(pg_session, user=user, job_id=job.id) is job
    finally:
        event.remove(connection, "before_cursor_execute", record)
    job_selects = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "jobs" in s]
    assert len(job_selects) == 1 and "FOR UPDATE" in job_selects[0]
    assert job.status == "cancelled"


def test_the_user_actions_check_ownership(session, tmp_path):
    owner, other = new_user(session), new_user(session)
    job = make_job(session, owner_id=owner.id, status="failed")
    for action in (submissions.get_job, submissions.cancel_job):
        with pytest.raises(Forbidden):
            action(session, user=other, job_id=job.id)
    with pytest.raises(Forbidden):
        submissions.retry_job(session, user=other, job_id=job.id, settings=Settings())
    with pytest.raises(Forbidden):
        submissions.delete_job(session, user=other, job_id=job.id, runs_dir=tmp_path)
    assert session.get(Job, job.id).status == "failed"
    assert unit_of_work.pending_sends(session) == []
