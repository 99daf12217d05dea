"""A real multi-node Ray cluster on this machine: a head with no resources (the Celery worker's
driver joins it by ``RAY_ADDRESS``, as in docker-compose.yml) and two worker nodes, each a
`ray start --block` process of its own with a custom resource naming it (``node_a``: 1 CPU and
1 declared GPU, ``node_b``: 1 CPU), jobs submitted through the REST API:

- trials are scheduled onto both worker nodes (each trial's ``node_id``, reported by the
  trainable and shown by ``GET /jobs/{id}/trials``), every epoch of every trial recorded once;
- ``resources.gpus_per_trial: 0.25`` packs four trials onto the one declared GPU at the same time
  (`ray start --num-gpus 1` declares a GPU without one: the trials train on the CPU);
- a worker node lost mid-trial (all its processes frozen, then killed): Ray declares it dead
  (the head's health check tuned to ~1.5 s), Tune restarts the trial from its last checkpoint
  on the surviving node, the job's events say so, the history has no gap and no duplicate and
  the job succeeds;
- the driver lost (the Celery worker killed -9 mid-trial): the reaper requeues the job and a new
  worker joins the cluster and resumes the run (attempt 2, complete history). These two last,
  on the one worker node the node loss leaves.

One cluster, one Celery worker (a second for the lost driver) and one API app for the whole
module; every process is stopped by process group at the end, also on failure (never `ray stop`,
which is machine-wide).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select

from service import repositories
from service.celery_app import make_celery
from service.db import make_engine, make_session_factory
from service.db.models import RatioSnapshot
from service.reaper import run_reaper_once
from service.settings import Settings
from tests.support.api import bearer, create_user_token, tiny_spec
from tests.support.processes import (
    RayCluster,
    WorkerProcess,
    start_ray_cluster,
    start_worker,
    worker_env,
)

pytestmark = pytest.mark.e2e

API = "/api/v1"
JOB_TIMEOUT_S = 150
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TIMEOUT_S = 3.0  # the reaper's, in the driver-loss test
# Ray's node-death detection on the head: a node that misses 3 health checks 0.5 s apart is dead.
HEALTH_CHECK = {
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}
# Longer than the head needs to declare a node dead with HEALTH_CHECK (3 misses 0.5 s apart, 0.5 s
# timeout each: about 3 s), with margin for a loaded machine.
NODE_DEATH_DETECTION_S = 8.0
NODES = {
    "node_a": ["--num-cpus=1", "--num-gpus=1"],  # the only GPU (declared; there is none)
    "node_b": ["--num-cpus=1", "--num-gpus=0"],
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[RayCluster]:
    cluster = start_ray_cluster(tmp_path_factory.mktemp("ray-logs"), NODES, head_env=HEALTH_CHECK)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def node_names(cluster) -> dict[str, str]:
    """Node id -> ``head``, ``node_a`` or ``node_b``."""
    names = cluster.names
    assert sorted(names.values()) == ["head", "node_a", "node_b"]
    return names


@pytest.fixture(scope="module")
def worker_app(api_broker):
    app = make_celery(Settings(broker_url=api_broker))
    yield app
    app.close()


@pytest.fixture(scope="module")
def start_cluster_worker(cluster, api_settings, api_broker, worker_app, tmp_path_factory):
    """Starts Celery workers consuming the API's broker, each driver joining the cluster's head
    (one runs directory: a new worker resumes a lost one's run); all stopped at the end."""
    env = worker_env(
        database_url=api_settings.database_url,
        broker_url=api_broker,
        runs_dir=api_settings.runs_dir,
        data_roots=api_settings.data_roots[0],
        RAY_ADDRESS=cluster.address,
        NORMSEARCH_HEARTBEAT_INTERVAL_S=str(HEARTBEAT_INTERVAL_S),
        **cluster.env,
    )
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        log = tmp_path_factory.mktemp("worker") / "worker.log"
        started.append(start_worker(worker_app, env, log))
        return started[-1]

    try:
        yield start
    finally:
        for process in started:
            process.stop(timeout=30)


@pytest.fixture(scope="module")
def worker(start_cluster_worker) -> WorkerProcess:
    return start_cluster_worker()


@pytest.fixture(scope="module")
def headers(api_settings) -> dict[str, str]:
    return bearer(create_user_token(api_settings.database_url))


@pytest.fixture(scope="module")
def factory(api_settings):
    engine = make_engine(api_settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


# Helpers


# Small synthetic images train an epoch in a fraction of a second; digits (resnet20) take a few
# seconds per epoch on a shared core: long enough to kill a node mid-trial or to overlap trials.
QUICK = {"kind": "synthetic", "num_samples": 300, "image_size": 8}


def spec(
    *, seeds: list[int], epochs: int, cpus: float, gpus: float, dataset: dict | None = None
) -> dict:
    return tiny_spec(
        epochs=epochs,
        dataset=dataset or {"kind": "digits"},
        search={
            "sparsity": {"end": 0.5},
            "stop_when_stable": {"enabled": False},
            "trials": {"seeds": seeds},
        },
        verify={"enabled": False},
        resources={"cpus_per_trial": cpus, "gpus_per_trial": gpus},
    )


def submit(api_client, headers, payload: dict) -> str:
    response = api_client.post(f"{API}/jobs", headers=headers, json=payload)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_for(condition: Callable[[], bool], what: str, worker: WorkerProcess) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline or not worker.alive():
            pytest.fail(f"timed out waiting for {what}:\n{worker.tail()}", pytrace=False)
        time.sleep(0.2)


def finished_job(api_client, headers, job_id: str, worker: WorkerProcess) -> dict:
    def job() -> dict:
        return api_client.get(f"{API}/jobs/{job_id}", headers=headers).json()

    wait_for(lambda: job()["status"] in ("succeeded", "failed", "cancelled"), job_id, worker)
    body = job()
    assert body["status"] == "succeeded", f"{body.get('error')}\n{worker.tail()}"
    return body


def trials(api_client, headers, job_id: str) -> list[dict]:
    response = api_client.get(f"{API}/jobs/{job_id}/trials", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def assert_complete_history(factory, trials_out: list[dict], epochs: int) -> None:
    """Every epoch of every trial, each layer once (what the recorder wrote)."""
    with factory() as session:
        for trial in trials_out:
            assert trial["status"] == "TERMINATED" and trial["epochs_used"] == epochs, trial
            rows = session.execute(
                select(RatioSnapshot.step, RatioSnapshot.layer_index).where(
                    RatioSnapshot.trial_id == trial["id"]
                )
            ).all()
            layers = {layer for _, layer in rows}
            assert layers, f"trial {trial['ray_trial_id']} recorded no ratios"
            assert len(rows) == len(set(rows)) == epochs * len(layers)
            assert sorted({step for step, _ in rows}) == list(range(1, epochs + 1))


# Tests (the node loss last: it leaves one worker node)


def test_trials_run_on_both_worker_nodes_with_complete_histories(
    api_client, headers, worker, node_names, factory
):
    # 1 CPU per trial and 1 CPU per node: the two trials can only run side by side.
    job_id = submit(
        api_client, headers, spec(seeds=[0, 1], epochs=2, cpus=1, gpus=0, dataset=QUICK)
    )
    finished_job(api_client, headers, job_id, worker)
    found = trials(api_client, headers, job_id)
    assert len(found) == 2
    assert sorted(node_names[t["node_id"]] for t in found) == ["node_a", "node_b"]
    assert_complete_history(factory, found, epochs=2)


def test_a_quarter_gpu_per_trial_packs_four_trials_onto_one_gpu(
    api_client, headers, worker, node_names, factory
):
    # Three epochs each: with one, a trial finished (0.2 s) before the driver had recorded the
    # last one's start once in CI, on a machine that staggers the four trials' starts.
    job_id = submit(api_client, headers, spec(seeds=[0, 1, 2, 3], epochs=3, cpus=0.25, gpus=0.25))
    finished_job(api_client, headers, job_id, worker)
    found = trials(api_client, headers, job_id)
    assert len(found) == 4
    # The only node with a GPU took all four, and all four ran at once: each started (its
    # trial row, written when Ray started it) before any finished (its last update).
    assert {node_names[t["node_id"]] for t in found} == {"node_a"}
    with factory() as session:
        rows = repositories.list_trials(session, job_id=job_id)
        assert max(t.created_at for t in rows) < min(t.updated_at for t in rows)
    assert_complete_history(factory, found, epochs=3)


def test_a_lost_node_restarts_its_trial_from_its_checkpoint_on_the_other_node(
    api_client, headers, worker, cluster, node_names, factory
):
    epochs = 3
    job_id = submit(api_client, headers, spec(seeds=[0], epochs=epochs, cpus=1, gpus=0))

    def first_epoch() -> bool:
        found = trials(api_client, headers, job_id)
        return bool(found) and found[0]["epochs_used"] >= 1 and found[0]["node_id"] is not None

    wait_for(first_epoch, "the trial's first epoch", worker)
    (trial,) = trials(api_client, headers, job_id)
    lost_id, lost = trial["node_id"], node_names[trial["node_id"]]
    cluster.node(lost).lose(NODE_DEATH_DETECTION_S)  # frozen, declared dead, killed
    assert trial["epochs_used"] < epochs, "the trial finished before its node was killed"

    job = finished_job(api_client, headers, job_id, worker)
    (trial,) = trials(api_client, headers, job_id)
    survivor = ({"node_a", "node_b"} - {lost}).pop()
    assert node_names[trial["node_id"]] == survivor
    assert_complete_history(factory, [trial], epochs=epochs)
    notes = [e["message"] for e in job["events"] if e["from_status"] == e["to_status"]]
    assert len(notes) == 1, job["events"]
    assert re.fullmatch(
        rf"trial {trial['ray_trial_id']} lost its node {lost_id} \(.+\); restarted from its "
        r"epoch-\d checkpoint \(retry 1 of at most 3\)",
        notes[0],
        flags=re.DOTALL,
    ), notes[0]
    assert job["attempts"] == 1  # the driver's node was never lost: no redelivery


def test_a_lost_driver_is_requeued_and_its_run_resumes_on_the_cluster(
    api_client, headers, worker, start_cluster_worker, worker_app, api_broker, factory
):
    """The driver's node lost (the Celery worker and its Ray driver killed -9) while its trial
    runs on a worker node: Ray ends the driver's trial actors, the reaper requeues the job once
    its heartbeat is stale, and a new worker joins the same cluster and resumes the run from
    Tune's experiment state and the trial's checkpoint: attempt 2, complete history."""
    epochs = 3
    job_id = submit(api_client, headers, spec(seeds=[0], epochs=epochs, cpus=1, gpus=0))

    def first_epoch() -> bool:
        found = trials(api_client, headers, job_id)
        return bool(found) and found[0]["epochs_used"] >= 1

    wait_for(first_epoch, "the trial's first epoch", worker)
    worker.kill()
    assert trials(api_client, headers, job_id)[0]["epochs_used"] < epochs, "finished too soon"
    reaper = Settings(
        broker_url=api_broker, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S, max_attempts=3
    )
    deadline = time.monotonic() + 30
    while run_reaper_once(factory, worker_app, reaper) != [job_id]:
        assert time.monotonic() < deadline, "the reaper never requeued the lost driver's job"
        time.sleep(0.5)
    second = start_cluster_worker()
    job = finished_job(api_client, headers, job_id, second)
    assert job["attempts"] == 2
    requeued = [
        e for e in job["events"] if (e["from_status"], e["to_status"]) == ("running", "queued")
    ]
    assert len(requeued) == 1 and requeued[0]["message"].startswith("worker lost: no heartbeat")
    (trial,) = trials(api_client, headers, job_id)
    assert_complete_history(factory, [trial], epochs=epochs)
