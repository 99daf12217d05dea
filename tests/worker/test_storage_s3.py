"""Ray Tune's experiments in an S3 bucket (NORMSEARCH_STORAGE_URI=s3://...), against a local
S3-compatible server (moto's): a whole job keeps its checkpoints and experiment state in the
bucket and its artifacts in the runs directory, the experiment of a killed driver resumes from
the URI, and a bad URI fails the CLI and the worker in one line naming the setting."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
import ray
from typer.testing import CliRunner

import sn_core
from cli.main import app as cli_app
from service import repositories
from service.celery_app import SEARCH_TASK, make_celery
from service.db import make_engine, make_session_factory
from service.db.models import User
from service.settings import Settings, get_settings
from service.storage import SETTING, open_storage
from tests.support.api import tiny_spec as api_spec
from tests.support.processes import BROKER_URL, ROOT, flushed_redis, start_worker, worker_env
from tests.support.s3 import BUCKET, s3_server
from tests.worker.test_search import tiny_spec
from worker.data import load_dataset
from worker.job import run_job, write_job_report
from worker.recorder import MemoryRecorder
from worker.search import run_trials, trial_grid
from worker.trainable import META_FILE, PLAN_FILE, STATE_FILE

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def s3():
    """The server, then a local Ray started with its AWS variables (the trials write through
    them)."""
    with s3_server() as server:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield server
        finally:
            ray.shutdown()


def small_spec(training=None, **overrides):
    return tiny_spec(
        training={"epochs": 2, "batch_size": 128, **(training or {})},
        search={"trials": {"seeds": [0]}},
        **overrides,
    )


def test_a_job_keeps_its_experiments_in_the_bucket_and_its_artifacts_in_the_runs_dir(s3, tmp_path):
    spec = small_spec()
    storage = open_storage(s3.uri("experiments"))
    work, out = tmp_path / "runs" / "job" / "state", tmp_path / "runs" / "job" / "out"
    result = run_job(
        spec,
        data_roots=[tmp_path],
        work_dir=work,
        recorder=MemoryRecorder(),
        out_dir=out,
        storage=storage,
        storage_key="job-1/run-1",
    )
    files = write_job_report(result, out)

    stored = s3.files("experiments/job-1/run-1")
    for experiment in ("search", "verify"):
        assert any(f.startswith(f"{experiment}/experiment_state-") for f in stored), stored
        assert any(f.startswith(f"{experiment}/tuner.pkl") for f in stored)
    # every epoch's checkpoint of every trial, then its result log, is in the bucket
    trials = {o.trial_id: o for o in [*result.outcomes, *result.verification_outcomes]}
    assert len(trials) == 3  # one search trial; plan and bn verified with one seed
    for outcome in trials.values():
        assert outcome.checkpoint_dir.startswith(f"s3://{BUCKET}/experiments/job-1/run-1/")
        checkpoint = outcome.checkpoint_dir.removeprefix(f"s3://{BUCKET}/experiments/job-1/run-1/")
        assert f"{checkpoint}/state.pt" in stored and f"{checkpoint}/meta.json" in stored
    search = result.outcomes[0]
    assert search.plan is not None  # read back from the checkpoint in the bucket
    assert [r["epoch"] for r in search.history] == [1, 2]

    # Nothing of Ray's in the runs directory: only the work dir's marker and the artifacts.
    assert sorted(p.name for p in work.iterdir()) == ["spec.json"]
    assert {"checkpoint.zip", "search_checkpoint.zip", "report.json", "plan.json"} <= {
        p.name for p in out.iterdir()
    }
    model, plan, _ = sn_core.load_finalized(result.checkpoint)
    assert plan.metadata["checkpoint"]["trial_id"] in trials
    report = json.loads(files["report_json"].read_text())
    assert report["verification"]["verdict"]["chosen"] in {"plan", "bn"}


# A second driver, joined to the test's Ray (kill -9 of it ends its trials with it, as a killed
# worker's would end on a cluster).
DRIVER = """
import sys, ray
from service.storage import open_storage
from tests.worker.test_storage_s3 import killable_spec
from worker.data import load_dataset
from worker.recorder import MemoryRecorder
from worker.search import run_trials, trial_grid
ray.init(address=sys.argv[3], log_to_driver=False)
spec = killable_spec()
data = load_dataset(spec.dataset, data_roots=[sys.argv[2]])
run_trials(spec, data, name="s", storage_dir=open_storage(sys.argv[1]), recorder=MemoryRecorder(),
           grid=trial_grid(spec))
"""
KILL_EPOCHS = 3


def killable_spec():
    return small_spec(training={"epochs": KILL_EPOCHS, "batch_size": 128})


def _state_knows(s3, prefix: str, text: str) -> bool:
    """Whether the experiment state Tune synced to ``BUCKET/prefix`` mentions ``text``."""
    filesystem = s3.filesystem()
    for name in s3.files(prefix):
        if name.startswith("experiment_state-"):
            with filesystem.open_input_stream(f"{BUCKET}/{prefix}/{name}") as stream:
                if text.encode() in stream.read():
                    return True
    return False


def test_a_killed_drivers_experiment_resumes_from_the_uri(s3, tmp_path):
    uri = s3.uri("killed")
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, uri, str(tmp_path), ray.get_runtime_context().gcs_address],
        cwd=ROOT,
        # an experiment snapshot on every step of Tune's loop: the kill comes right after one
        env={**os.environ, "PYTHONPATH": str(ROOT), "TUNE_GLOBAL_CHECKPOINT_S": "0"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    # Kill it once the experiment state in the bucket knows the trial's first checkpoint and
    # every file of that checkpoint is there (one file uploaded of three raced the kill in CI:
    # the resumed trial then started over).
    first = {f"/checkpoint_000000/{name}" for name in (STATE_FILE, META_FILE, PLAN_FILE)}
    try:
        deadline = time.monotonic() + 120
        while not (
            _state_knows(s3, "killed/s", "checkpoint_000000")
            and all(any(f.endswith(end) for f in s3.files("killed/s")) for end in first)
        ):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, s3.files("killed/s")
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        log.close()
    assert not any(f"checkpoint_{KILL_EPOCHS - 1:06d}" in f for f in s3.files("killed/s"))
    (trial_dir,) = {f.split("/", 1)[0] for f in s3.files("killed/s") if "/" in f}

    spec = killable_spec()
    data = load_dataset(spec.dataset, data_roots=[tmp_path])
    fresh = MemoryRecorder()
    resumed = run_trials(
        spec, data, name="s", storage_dir=open_storage(uri), recorder=fresh, grid=trial_grid(spec)
    )
    (outcome,) = resumed.outcomes
    # It went on from the checkpoint in the bucket: the first epoch was not trained again.
    assert 1 not in [r["epoch"] for r in fresh.trials()[outcome.trial_id]["history"]]
    # The same trial, finished, with every epoch once: those of the killed driver come back
    # from the trial's result log in the bucket.
    assert trial_dir.startswith(f"train_trial_{outcome.trial_id}_")
    assert outcome.status == "TERMINATED" and outcome.plan is not None
    assert [r["epoch"] for r in outcome.history] == list(range(1, KILL_EPOCHS + 1))
    assert outcome.checkpoint_dir.startswith(f"s3://{BUCKET}/killed/s/{trial_dir}/checkpoint_")


def _normsearch(args: list[str], tmp_path, **env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NORMSEARCH_RUNS_DIR": str(tmp_path / "runs"),
        "NORMSEARCH_DATA_ROOTS": str(tmp_path),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_bucket_fails_the_run_and_the_worker_in_one_line(s3, tmp_path, monkeypatch):
    uri = s3.uri("p", bucket="no-such-bucket")
    expected = f"{SETTING} s3://no-such-bucket/p: bucket 'no-such-bucket' does not exist"
    # the worker, at its start (a process of its own: before Celery, one line and exit 2)
    done = _normsearch(["worker"], tmp_path, NORMSEARCH_STORAGE_URI=uri)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: {expected}", done.stderr
    # a run, before Ray starts: its own key under the storage root
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(small_spec().model_dump(mode="json")))
    monkeypatch.setenv("NORMSEARCH_STORAGE_URI", uri)
    monkeypatch.setenv("NORMSEARCH_DATA_ROOTS", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli_app, ["run", str(spec), "--out", str(tmp_path / "out")])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    assert re.fullmatch(
        rf"error: {SETTING} s3://no-such-bucket/p/cli-[0-9a-f]+: "
        "bucket 'no-such-bucket' does not exist",
        result.stderr.strip(),
    ), result.stderr
    assert "Traceback" not in result.output


def test_an_unknown_scheme_fails_in_one_line_naming_the_setting(tmp_path):
    done = _normsearch(["worker"], tmp_path, NORMSEARCH_STORAGE_URI="ftp://host/runs")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: invalid setting {SETTING}: unknown scheme 'ftp://'; use a filesystem path every "
        "Ray node mounts, file://PATH or s3://BUCKET/PREFIX"
    )


@pytest.fixture(scope="module")
def broker():
    yield from flushed_redis(BROKER_URL)


def test_a_service_job_on_a_missing_bucket_fails_once_in_one_line(
    s3, module_postgres_url, broker, tmp_path
):
    """Through a real Celery worker (``celery -A worker.main:app``, which skips the start-up
    probe of ``normsearch worker``): the job fails before Ray starts, naming the setting and the
    run's own place in the storage, ``<job id>/run-1``; no traceback in the job or the log."""
    env = worker_env(
        database_url=module_postgres_url,
        broker_url=broker,
        runs_dir=tmp_path / "runs",
        data_roots=tmp_path,
        NORMSEARCH_STORAGE_URI=s3.uri("p", bucket="no-such-bucket"),
    )
    app = make_celery(Settings(broker_url=broker))
    engine = make_engine(module_postgres_url)
    factory = make_session_factory(engine)
    worker = start_worker(app, env, tmp_path / "worker.log")
    try:
        with factory() as session, session.begin():
            user = User(name=f"storage-{uuid.uuid4().hex[:8]}")
            session.add(user)
            session.flush()
            job_id = repositories.create_job(session, owner_id=user.id, spec=api_spec()).id
        app.send_task(SEARCH_TASK, args=[job_id])
        deadline = time.monotonic() + 60
        while True:
            with factory() as session:
                job = repositories.get_job(session, job_id)
            if job.status in ("succeeded", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    finally:
        worker.stop()
        engine.dispose()
        app.close()
    assert job.status == "failed" and job.attempts == 1, worker.tail()
    assert job.error == (
        f"StorageError: {SETTING} s3://no-such-bucket/p/{job_id}/run-1: "
        "bucket 'no-such-bucket' does not exist"
    )
    assert "Traceback" not in (tmp_path / "worker.log").read_text()
