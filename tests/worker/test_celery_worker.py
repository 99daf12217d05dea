"""The search task through a real Celery worker process (not eager mode): Redis broker, a fresh
migrated Postgres database, the task sent by name after the job is committed.

Redis (``NORMSEARCH_TEST_BROKER_URL``, default redis://127.0.0.1:6379/9, flushed before and after)
and Postgres unreachable are failures, never skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

import sn_core
from service import repositories
from service.celery_app import SEARCH_QUEUE, SEARCH_TASK, make_celery
from service.db import make_engine, make_session_factory
from service.db.models import Artifact, RatioSnapshot, User
from service.settings import Settings
from tests.support.api import tiny_spec
from tests.support.processes import BROKER_URL, flushed_redis, start_worker, tail, worker_env

# End to end: real processes (Ray trials, Celery workers); not part of `make test-fast`.
pytestmark = pytest.mark.e2e

JOB_TIMEOUT_S = 180
EPOCHS = 2


def tiny_payload(**overrides) -> dict:
    return tiny_spec(epochs=EPOCHS, **overrides)


@pytest.fixture(scope="module")
def database_url(module_postgres_url: str) -> str:
    """A database of its own (jobs here are committed, unlike the rolled-back tests')."""
    return module_postgres_url


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    yield from flushed_redis(BROKER_URL)


@pytest.fixture(scope="module")
def worker(database_url, broker, tmp_path_factory):
    """A Celery worker subprocess on the search queue; yields (app, session factory, log)."""
    tmp = tmp_path_factory.mktemp("celery")
    env = worker_env(
        database_url=database_url, broker_url=broker, runs_dir=tmp / "runs", data_roots=tmp
    )
    app = make_celery(Settings(broker_url=broker))
    engine = make_engine(database_url)
    process = None
    try:
        process = start_worker(app, env, tmp / "worker.log")
        yield app, make_session_factory(engine), process.log_path
    finally:
        if process is not None:
            process.stop()
        engine.dispose()
        app.close()


def _submit(factory, payload: dict, app) -> str:
    """Create a user and a queued job, commit, then send the task by name."""
    with factory() as session, session.begin():
        user = User(name=f"user-{uuid.uuid4().hex[:8]}")
        session.add(user)
        session.flush()
        job_id = repositories.create_job(session, owner_id=user.id, spec=payload).id
    app.send_task(SEARCH_TASK, args=[job_id])
    return job_id


def _wait_finished(factory, job_id: str, log_path: Path):
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        with factory() as session:
            job = repositories.get_job(session, job_id)
            if job.status in ("succeeded", "failed", "cancelled"):
                return job
        time.sleep(0.5)
    pytest.fail(f"job {job_id} did not finish in {JOB_TIMEOUT_S}s:\n{tail(log_path)}")


def _events(factory, job_id: str) -> list[tuple[str | None, str]]:
    with factory() as session:
        return [
            (e.from_status, e.to_status)
            for e in repositories.get_job(session, job_id, with_children=True).events
        ]


def test_search_job_runs_in_a_real_worker(worker):
    app, factory, log_path = worker
    job_id = _submit(factory, tiny_payload(), app)
    job = _wait_finished(factory, job_id, log_path)
    assert job.status == "succeeded", f"{job.error}\n{tail(log_path)}"
    assert job.progress == 1.0 and job.attempts == 1 and job.error is None
    assert _events(factory, job_id) == [("queued", "running"), ("running", "succeeded")]

    with factory() as session:
        trials = repositories.list_trials(session, job_id=job_id)
        search = [t for t in trials if t.variant == "sn"]
        verify = [t for t in trials if t.variant != "sn"]
        assert len(search) == 1 and sorted(t.variant for t in verify) == ["bn", "plan"]
        assert all(t.status == "TERMINATED" for t in trials)
        assert [t.epochs_used for t in search] == [EPOCHS]
        assert all(t.epochs_used == 1 for t in verify)

        layers = sn_core.switch_layers(
            sn_core.convert_to_switchnorm(sn_core.build_model("resnet20"))
        )
        search_ids = [t.id for t in search]
        total = session.scalar(select(func.count()).where(RatioSnapshot.trial_id.in_(search_ids)))
        distinct = session.execute(
            select(RatioSnapshot.trial_id, RatioSnapshot.step, RatioSnapshot.layer_index)
            .where(RatioSnapshot.trial_id.in_(search_ids))
            .distinct()
        ).all()
        assert total == len(distinct) == len(search) * EPOCHS * len(layers)
        steps = session.scalars(
            select(RatioSnapshot.step).where(RatioSnapshot.trial_id.in_(search_ids)).distinct()
        ).all()
        assert sorted(steps) == list(range(1, EPOCHS + 1))

        artifacts = {
            a.kind: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))
        }
    kinds = {
        "plan_json",
        "plan_yaml",
        "report_json",
        "ratios_csv",
        "ratios_png",
        "checkpoint",
        "search_plan_json",
        "search_checkpoint",
    }
    assert set(artifacts) == kinds
    # Every artifact is the one file a download sends, with that file's SHA-256 and size.
    for artifact in artifacts.values():
        path = Path(artifact.path)
        assert path.is_file() and artifact.size_bytes == path.stat().st_size > 0, artifact.kind
        assert artifact.sha256 == hashlib.sha256(path.read_bytes()).hexdigest(), artifact.kind
    plan = sn_core.NormalizerPlan.load(Path(artifacts["plan_json"].path))
    report = json.loads(Path(artifacts["report_json"].path).read_text())
    chosen = report["verification"]["verdict"]["chosen"]
    assert plan.metadata["configuration"] == chosen
    # The jobs list's result is the verdict's configuration with its final-epoch accuracy.
    stats = report["verification"]["verdict"]["configs"][chosen]
    assert job.result["configuration"] == chosen and job.result["n"] == stats["n"] == 1
    assert job.result["accuracy"] == stats["mean"] and job.result["accuracy_kind"] == "final epoch"
    assert job.result["text"].endswith("(1 seed: no interval, final epoch)"), job.result
    # The checkpoint is the verdict's configuration: its layers are plan.json's.
    model, ckpt_plan, model_spec = sn_core.load_finalized(Path(artifacts["checkpoint"].path))
    assert model_spec["arch"] == "resnet20"
    assert [(x.name, x.mean, x.var) for x in ckpt_plan] == [(x.name, x.mean, x.var) for x in plan]
    assert ckpt_plan.metadata["checkpoint"]["configuration"] == chosen
    # The search checkpoint carries the best trial's own choices, one per SN layer.
    _, own, _ = sn_core.load_finalized(Path(artifacts["search_checkpoint"].path))
    assert list(own.names) == [name for name, _ in layers]


def test_model_with_nothing_to_search_fails_the_job_before_training(worker):
    app, factory, log_path = worker
    # Every norm of the MLP sees one element per channel, where IN (the whole pool) is undefined.
    payload = tiny_payload(model={"arch": "mlp"})
    payload["search"] = {**payload["search"], "pool": ["in"]}
    job_id = _submit(factory, payload, app)
    job = _wait_finished(factory, job_id, log_path)
    assert job.status == "failed", tail(log_path)
    assert job.error.startswith("ModelSpecError: model 'mlp' has no layer to search with ")
    assert "Traceback" not in job.error and "\n" not in job.error
    with factory() as session:
        assert repositories.list_trials(session, job_id=job_id) == []


def test_dataset_outside_the_data_roots_fails_the_job_once(worker):
    app, factory, log_path = worker
    payload = tiny_payload(dataset={"kind": "npz", "path": "/etc/passwd"})
    job_id = _submit(factory, payload, app)
    job = _wait_finished(factory, job_id, log_path)
    assert job.status == "failed", tail(log_path)
    assert job.error.startswith("DatasetError: ") and "data roots" in job.error
    assert job.attempts == 1
    assert _events(factory, job_id) == [("queued", "running"), ("running", "failed")]
    # No retry loop: the message was acknowledged and the job stays failed.
    time.sleep(2)
    with factory() as session:
        assert repositories.get_job(session, job_id).status == "failed"
        assert repositories.list_trials(session, job_id=job_id) == []
    assert redis.Redis.from_url(BROKER_URL).llen(SEARCH_QUEUE) == 0


@pytest.mark.parametrize(
    "build",
    [
        "from worker.main import app",  # celery -A worker.main:app worker
        "from service.celery_app import make_celery\n"  # normsearch worker
        "from service.settings import get_settings\n"
        "app = make_celery(get_settings())",
    ],
    ids=["celery-cli", "normsearch-worker"],
)
def test_the_worker_entry_points_find_the_search_task_by_name(build):
    """A worker process's app, built from settings at its entry point, registers the search
    task by name once it loads its modules (as a starting worker does)."""
    code = f"{build}\napp.loader.import_default_modules()\nprint({SEARCH_TASK!r} in app.tasks)\n"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


@pytest.mark.parametrize(
    ("resources", "field", "reason"),
    [
        ({"gpus_per_trial": 16}, "resources.gpus_per_trial", "16 GPUs per trial, but no node"),
        # The worker's local Ray has 2 CPUs (NORMSEARCH_RAY_NUM_CPUS).
        (
            {"cpus_per_trial": 3},
            "resources.cpus_per_trial",
            "3 CPUs per trial, but no node of the Ray cluster has more than 2 CPUs",
        ),
    ],
)
def test_a_trial_no_node_can_take_fails_the_job_at_once(worker, resources, field, reason):
    """Ray would keep such a trial pending forever (and the heartbeat the reaper away): the
    worker fails the job before the experiment starts, with the field in the reason, and
    publishes the cluster's capacity for the API's own check."""
    from service.cluster import published_capacity

    app, factory, log_path = worker
    job_id = _submit(factory, tiny_payload(resources=resources), app)
    job = _wait_finished(factory, job_id, log_path)
    assert job.status == "failed", tail(log_path)
    assert job.error.startswith(f"ClusterFitError: {field}: {reason}"), job.error
    assert "Traceback" not in job.error and "\n" not in job.error
    # Fast: from running to failed without a trial, the worker's grace for a node to join
    # (FIT_GRACE_S) included, and a cold start of Ray on a loaded test machine.
    assert (job.finished_at - job.started_at).total_seconds() < 60
    with factory() as session:
        assert repositories.list_trials(session, job_id=job_id) == []
    runs_dir = log_path.parent / "runs"  # the fixture's NORMSEARCH_RUNS_DIR
    capacity = published_capacity(runs_dir, max_age_s=600)
    assert capacity is not None and capacity.max_cpus == 2
