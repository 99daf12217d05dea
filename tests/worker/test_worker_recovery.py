"""Lost workers, cancellation and retry with real Celery worker processes (Redis + Postgres).

- A worker killed with ``kill -9`` mid-search (after at least one epoch's snapshots are in): the
  next worker resumes the same run from its Ray Tune checkpoints, either because Redis redelivers
  the unacknowledged message (a short visibility timeout) or because the reaper requeues the job
  once its heartbeat is stale; the job succeeds on a later attempt with a complete ratio history
  (every search trial: epochs x layers snapshots, steps 1..epochs, no duplicates).
- Cancel -> retry cycles in a row (mid-training and while the experiment is being built): a
  running job cancelled by its user reads ``cancelling`` until its worker has stopped the
  trials (within a few seconds), then ``cancelled``, with no artifacts; a retry before that is
  refused; each retry runs the job fresh (a new run, trial ids all new); no stale write (no
  trial of an earlier run, no foreign-key error or traceback in the worker's log); the last
  run succeeds with a complete history.

Redis (``NORMSEARCH_TEST_BROKER_URL``, default redis://127.0.0.1:6379/9, flushed before and after)
and Postgres unreachable are failures, never skips.
"""

from __future__ import annotations

import csv
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

import sn_core
from service import jobs, repositories
from service.celery_app import make_celery
from service.db import make_engine, make_session_factory
from service.db.models import Artifact, Job, RatioSnapshot, Trial, User
from service.dispatch import send_search
from service.errors import InvalidTransition
from service.reaper import run_reaper_once
from service.settings import Settings
from tests.support.api import tiny_spec
from tests.support.processes import (
    BROKER_URL,
    WorkerProcess,
    flushed_redis,
    start_worker,
    worker_env,
)

# End to end: real processes (Ray trials, Celery workers); not part of `make test-fast`.
pytestmark = pytest.mark.e2e

EPOCHS = 4
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TIMEOUT_S = 5.0
VISIBILITY_TIMEOUT_S = 8
JOB_TIMEOUT_S = 240
STOP_WITHIN_S = 15  # cancellation: one heartbeat, one Tune step, the trial actors' shutdown


def tiny_payload() -> dict:
    """The search only: every kill and cancel here lands in it (verification adds time, no path)."""
    return tiny_spec(epochs=EPOCHS, verify={"enabled": False})


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    yield from flushed_redis(BROKER_URL)


@pytest.fixture(scope="module")
def settings(broker) -> Settings:
    return Settings(
        broker_url=broker,
        heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
        max_attempts=3,
    )


@pytest.fixture(scope="module")
def app(settings):
    app = make_celery(settings)
    yield app
    app.close()


@pytest.fixture(scope="module")
def factory(module_postgres_url):
    engine = make_engine(module_postgres_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def workers(
    module_postgres_url, broker, app, tmp_path_factory
) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts workers that share one runs directory (a new worker resumes the old one's run);
    every worker still running at the end is stopped."""
    tmp = tmp_path_factory.mktemp("recovery")
    started: list[WorkerProcess] = []

    def start(visibility_timeout_s: int = VISIBILITY_TIMEOUT_S) -> WorkerProcess:
        env = worker_env(
            database_url=module_postgres_url,
            broker_url=broker,
            runs_dir=tmp / "runs",
            data_roots=tmp,
            NORMSEARCH_HEARTBEAT_INTERVAL_S=str(HEARTBEAT_INTERVAL_S),
            NORMSEARCH_HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_TIMEOUT_S),
            NORMSEARCH_BROKER_VISIBILITY_TIMEOUT_S=str(visibility_timeout_s),
        )
        worker = start_worker(app, env, tmp / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout=30)


# Helpers


def submit(factory, app) -> str:
    with factory() as session, session.begin():
        user = User(name=f"user-{uuid.uuid4().hex[:8]}")
        session.add(user)
        session.flush()
        job_id = repositories.create_job(session, owner_id=user.id, spec=tiny_payload()).id
    send_search(app, job_id)
    return job_id


def get_job(factory, job_id: str) -> Job:
    with factory() as session:
        return repositories.get_job(session, job_id)


def search_snapshots(factory, job_id: str) -> int:
    with factory() as session:
        return session.scalar(
            select(func.count())
            .select_from(RatioSnapshot)
            .join(Trial, Trial.id == RatioSnapshot.trial_id)
            .where(Trial.job_id == job_id, Trial.variant == "sn")
        )


def wait_for(condition: Callable[[], bool], timeout: float, what: str, worker: WorkerProcess):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{worker.tail()}", pytrace=False)
        time.sleep(0.2)


def wait_finished(factory, job_id: str, worker: WorkerProcess) -> Job:
    finished = ("succeeded", "failed", "cancelled")
    wait_for(
        lambda: get_job(factory, job_id).status in finished, JOB_TIMEOUT_S, f"job {job_id}", worker
    )
    return get_job(factory, job_id)


def layer_count() -> int:
    return len(
        sn_core.switch_layers(sn_core.convert_to_switchnorm(sn_core.build_model("resnet20")))
    )


def wait_first_epoch(factory, job_id: str, worker: WorkerProcess) -> None:
    """Wait until the search has recorded at least one epoch (fails if the job ends first)."""

    def recorded() -> bool:
        job = get_job(factory, job_id)
        if job.status != "running" and job.status != "queued":
            pytest.fail(f"job {job_id} is {job.status}: {job.error}\n{worker.tail()}")
        return search_snapshots(factory, job_id) >= layer_count()

    wait_for(recorded, JOB_TIMEOUT_S, "the first epoch's snapshots", worker)


def kill_mid_search(factory, job_id: str, worker: WorkerProcess) -> None:
    """kill -9 the worker once the search has recorded at least one epoch (and not all)."""
    wait_first_epoch(factory, job_id, worker)
    worker.kill()
    recorded = search_snapshots(factory, job_id)
    assert recorded < EPOCHS * layer_count(), "the search finished before the kill"
    assert get_job(factory, job_id).status == "running"


def assert_complete_history(factory, job_id: str) -> None:
    layers = layer_count()
    with factory() as session:
        trials = repositories.list_trials(session, job_id=job_id)
        search = [t for t in trials if t.variant == "sn"]
        assert len(search) == 1 and all(t.status == "TERMINATED" for t in trials)
        assert [t.epochs_used for t in search] == [EPOCHS]
        for trial in search:
            rows = session.execute(
                select(RatioSnapshot.step, RatioSnapshot.layer_index).where(
                    RatioSnapshot.trial_id == trial.id
                )
            ).all()
            assert len(rows) == len(set(rows)) == EPOCHS * layers
            assert sorted({step for step, _ in rows}) == list(range(1, EPOCHS + 1))
        # The report comes from the resumed driver's outcomes (not from this database): every
        # epoch of the search once, those before the kill included.
        (ratios_csv,) = session.scalars(
            select(Artifact.path).where(Artifact.job_id == job_id, Artifact.kind == "ratios_csv")
        )
        search_ids = {trial.ray_trial_id for trial in search}
    rows = list(csv.DictReader(Path(ratios_csv).read_text().splitlines()))
    assert {row["trial_id"] for row in rows} == search_ids
    assert len({(row["epoch"], row["layer"]) for row in rows}) == len(rows) == EPOCHS * layers


def events(factory, job_id: str) -> list[tuple[str | None, str, str | None]]:
    with factory() as session:
        return [
            (e.from_status, e.to_status, e.message)
            for e in repositories.get_job(session, job_id, with_children=True).events
        ]


def artifact_paths(factory, job_id: str) -> list[Path]:
    with factory() as session:
        return [
            Path(a.path) for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))
        ]


# Tests


def test_a_killed_workers_message_is_redelivered_and_the_run_resumes(factory, app, workers):
    first = workers()
    job_id = submit(factory, app)
    kill_mid_search(factory, job_id, first)
    # Past the heartbeat timeout, the redelivered message finds the job's worker lost.
    time.sleep(HEARTBEAT_TIMEOUT_S + HEARTBEAT_INTERVAL_S)
    second = workers()  # Redis hands it the unacknowledged message (visibility timeout)
    job = wait_finished(factory, job_id, second)
    assert job.status == "succeeded", f"{job.error}\n{second.tail()}"
    assert job.attempts == 2 and job.run == 1 and job.progress == 1.0
    assert ("running", "queued", "redelivered after a lost worker") in events(factory, job_id)
    assert_complete_history(factory, job_id)
    paths = artifact_paths(factory, job_id)
    assert paths and all(path.exists() and "run-1" in path.parts for path in paths)


def test_the_reaper_requeues_a_killed_workers_job(factory, app, settings, workers):
    # A long visibility timeout: only the reaper brings this job back.
    first = workers(visibility_timeout_s=3600)
    job_id = submit(factory, app)
    kill_mid_search(factory, job_id, first)
    assert run_reaper_once(factory, app, settings) == []  # its heartbeat is still fresh
    time.sleep(HEARTBEAT_TIMEOUT_S + HEARTBEAT_INTERVAL_S)
    assert run_reaper_once(factory, app, settings) == [job_id]
    second = workers(visibility_timeout_s=3600)
    job = wait_finished(factory, job_id, second)
    assert job.status == "succeeded", f"{job.error}\n{second.tail()}"
    assert job.attempts == 2 and job.run == 1
    requeued = [e for e in events(factory, job_id) if e[:2] == ("running", "queued")]
    assert len(requeued) == 1
    assert requeued[0][2].startswith("worker lost: no heartbeat for ")
    assert requeued[0][2].endswith("s; requeued (attempt 2 of 3)")
    assert_complete_history(factory, job_id)


def trial_ids(factory, job_id: str) -> dict[int, int]:
    """The job's trials in the database: id -> run."""
    with factory() as session:
        return dict(
            session.execute(select(Trial.id, Trial.run).where(Trial.job_id == job_id)).all()
        )


def cancel_and_wait_stopped(factory, job_id: str, worker: WorkerProcess) -> float:
    """Cancel the running job: it reads cancelling at once, a retry is refused, and it reads
    cancelled once the worker has stopped the run; returns how long that took."""
    with factory() as session, session.begin():
        assert jobs.cancel_job(session, job_id=job_id).status == "cancelling"
    cancelled_at = time.monotonic()
    with factory() as session, session.begin(), pytest.raises(InvalidTransition):
        jobs.retry_job(session, job_id=job_id)  # the run has not stopped yet
    wait_for(
        lambda: get_job(factory, job_id).status == "cancelled",
        STOP_WITHIN_S,
        "the worker to confirm the cancellation",
        worker,
    )
    return time.monotonic() - cancelled_at


def retry(factory, app, job_id: str) -> None:
    with factory() as session, session.begin():
        jobs.retry_job(session, job_id=job_id)
    send_search(app, job_id)


def assert_no_stale_write(worker: WorkerProcess) -> None:
    """What a stale run's write used to leave: a foreign-key error's traceback at ERROR."""
    log = worker.log_path.read_text(errors="replace")
    assert "IntegrityError" not in log and "Traceback" not in log, worker.tail()


CYCLES = 4


def assert_cancelled_mid_training(factory, job_id: str, worker: WorkerProcess) -> None:
    """The first cancellation: the worker said it stopped, no snapshot came after it, and the
    job is cancelled without an error or an artifact, its events the two of a cancel."""
    assert f"job {job_id}: stopped" in worker.log_path.read_text(errors="replace")
    recorded = search_snapshots(factory, job_id)
    assert recorded < EPOCHS * layer_count(), "the search finished before the cancellation"
    time.sleep(2 * HEARTBEAT_INTERVAL_S)
    assert search_snapshots(factory, job_id) == recorded  # the trials are gone
    job = get_job(factory, job_id)
    assert job.status == "cancelled" and job.error is None and job.progress < 1.0
    assert artifact_paths(factory, job_id) == []
    assert events(factory, job_id)[1:] == [
        ("running", "cancelling", "cancel requested by user"),
        ("cancelling", "cancelled", "cancelled by user: the worker stopped run 1"),
    ]


def test_cancel_retry_cycles_leave_no_stale_write_and_reuse_no_trial_id(factory, app, workers):
    """``CYCLES`` cancel -> retry cycles in a row on one job, cancelled alternately mid-training
    (after its first epoch) and as soon as it runs (while the experiment is being built); each
    retry runs the job fresh (a new run, new trial ids) and the last one succeeds with a
    complete history. bench/cancel_retry.py runs 50 against a whole service."""
    worker = workers()
    job_id = submit(factory, app)
    seen: dict[int, int] = {}  # trial id -> run
    for cycle in range(CYCLES):
        run = cycle + 1
        if cycle % 2 == 0:
            wait_first_epoch(factory, job_id, worker)
        else:
            wait_for(
                lambda: get_job(factory, job_id).status == "running",
                JOB_TIMEOUT_S,
                f"run {run} to start",
                worker,
            )
        stopped_after = cancel_and_wait_stopped(factory, job_id, worker)
        print(f"run {run}: cancellation stopped it in {stopped_after:.1f} s")
        if cycle == 0:
            assert_cancelled_mid_training(factory, job_id, worker)
        ids = trial_ids(factory, job_id)
        assert set(ids.values()) <= {run}, f"cycle {cycle}: a trial of another run: {ids}"
        assert not set(ids) & set(seen), f"cycle {cycle}: reused trial ids"
        seen.update(ids)
        retry(factory, app, job_id)
    job = wait_finished(factory, job_id, worker)
    assert job.status == "succeeded", f"{job.error}\n{worker.tail()}"
    assert (job.run, job.attempts, job.progress) == (CYCLES + 1, 1, 1.0)
    last = trial_ids(factory, job_id)
    assert set(last.values()) == {CYCLES + 1} and not set(last) & set(seen)
    assert_complete_history(factory, job_id)
    assert_no_stale_write(worker)
    statuses = [e[1] for e in events(factory, job_id)]
    assert statuses[:1] + statuses[-3:] == ["running", "queued", "running", "succeeded"]
    assert statuses.count("cancelling") == statuses.count("cancelled") == CYCLES
    paths = artifact_paths(factory, job_id)
    assert paths and all(path.exists() and f"run-{CYCLES + 1}" in path.parts for path in paths)
