"""The whole service path: HTTP submit -> Celery (a real worker process on Redis) -> Ray search
-> database history -> HTTP poll, event stream and downloads -> load with sn_core."""

from __future__ import annotations

import hashlib
import json

import pytest

import sn_core
from service.celery_app import make_celery
from tests.support.api import bearer, create_user_token, tiny_spec
from tests.support.processes import start_worker, worker_env

# End to end: real processes (Ray trials, Celery workers); not part of `make test-fast`.
pytestmark = pytest.mark.e2e

API = "/api/v1"
JOB_TIMEOUT_S = 300
EPOCHS = 2


@pytest.fixture(scope="module")
def e2e_settings(api_settings):
    """The API test settings (a module Postgres database, a Redis database of its own): here a
    worker consumes from that broker."""
    return api_settings


@pytest.fixture(scope="module")
def service(e2e_settings, tmp_path_factory):
    """The API in process and a real Celery worker subprocess, on one database and broker."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    app = make_celery(e2e_settings)
    env = worker_env(
        database_url=e2e_settings.database_url,
        broker_url=e2e_settings.broker_url,
        runs_dir=e2e_settings.runs_dir,
        data_roots=e2e_settings.data_roots[0],
        NORMSEARCH_HEARTBEAT_INTERVAL_S="1",
    )
    worker = start_worker(app, env, tmp_path_factory.mktemp("e2e-log") / "worker.log")
    try:
        with TestClient(create_app(e2e_settings, run_reaper=False)) as client:
            yield client, worker
    finally:
        worker.stop()
        app.close()


def read_events(client, url: str, headers: dict) -> list[tuple[str, dict]]:
    events, kind = [], None
    with client.stream("GET", url, headers=headers) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line.split(":", 1)[1])))
    return events


def test_submit_run_watch_download_and_load(service, e2e_settings, tmp_path):
    client, worker = service
    headers = bearer(create_user_token(e2e_settings.database_url, "e2e"))
    submitted = client.post(f"{API}/jobs", headers=headers, json=tiny_spec(epochs=EPOCHS))
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]

    # Follow the live stream to the end: status changes, progress, new ratio steps.
    events = read_events(client, f"{API}/jobs/{job_id}/events", headers)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "end", f"{events}\n{worker.tail()}"
    assert events[-1][1]["status"] == "succeeded", worker.tail()
    statuses = [data["to_status"] for kind, data in events if kind == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    progress = [data["progress"] for kind, data in events if kind == "progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert "ratios" in kinds

    job = client.get(f"{API}/jobs/{job_id}", headers=headers).json()
    assert job["status"] == "succeeded" and job["attempts"] == 1 and job["error"] is None
    assert {a["kind"] for a in job["artifacts"]} >= {"plan_json", "plan_yaml", "checkpoint"}

    # Every SN layer's history: one snapshot per layer per epoch, in network order.
    model = sn_core.convert_to_switchnorm(sn_core.build_model("resnet20"))
    layers = [name for name, _layer in sn_core.switch_layers(model)]
    trials = client.get(f"{API}/jobs/{job_id}/trials", headers=headers).json()
    (search,) = [t for t in trials if t["variant"] == "sn"]
    assert search["epochs_used"] == EPOCHS and search["status"] == "TERMINATED"
    ratios = client.get(
        f"{API}/jobs/{job_id}/ratios", headers=headers, params={"trial": search["id"]}
    ).json()["trials"][0]
    assert ratios["steps_total"] == EPOCHS and len(ratios["points"]) == EPOCHS * len(layers)
    assert [p["layer"] for p in ratios["points"][: len(layers)]] == layers
    for point in ratios["points"]:
        total = sum(v for v in point["mean"].values() if v is not None)
        assert total == pytest.approx(1.0, abs=1e-4)

    # Downloads: the plan in both formats and the checkpoint, loaded with sn_core.
    plan_json = client.get(f"{API}/jobs/{job_id}/recommendation", headers=headers)
    (tmp_path / "plan.json").write_bytes(plan_json.content)
    plan = sn_core.NormalizerPlan.load(tmp_path / "plan.json")
    assert list(plan.names) == layers
    plan_yaml = client.get(
        f"{API}/jobs/{job_id}/recommendation", headers=headers, params={"format": "yaml"}
    )
    (tmp_path / "plan.yaml").write_bytes(plan_yaml.content)
    assert sn_core.NormalizerPlan.load(tmp_path / "plan.yaml").to_json() == plan.to_json()
    checkpoint = client.get(f"{API}/jobs/{job_id}/checkpoint", headers=headers)
    assert checkpoint.status_code == 200
    archive = tmp_path / "checkpoint.zip"
    archive.write_bytes(checkpoint.content)
    # The digest the job lists and the header carry is that of the downloaded zip itself.
    digest = hashlib.sha256(checkpoint.content).hexdigest()
    listed = {a["kind"]: a for a in job["artifacts"]}
    assert digest == checkpoint.headers["x-content-sha256"] == listed["checkpoint"]["sha256"]
    assert listed["checkpoint"]["size_bytes"] == len(checkpoint.content)
    model, best_plan, model_spec = sn_core.load_finalized(archive)
    assert model_spec["arch"] == "resnet20" and list(best_plan.names) == layers
    assert [(x.mean, x.var) for x in best_plan] == [(x.mean, x.var) for x in plan]
    assert not list(sn_core.switch_layers(model))  # plain torch layers only
    report = client.get(f"{API}/jobs/{job_id}/report", headers=headers).json()
    assert report["recommendation"]


def test_a_bad_dataset_is_refused_before_queueing(service, e2e_settings):
    client, _worker = service
    headers = bearer(create_user_token(e2e_settings.database_url))
    response = client.post(
        f"{API}/jobs",
        headers=headers,
        json=tiny_spec(dataset={"kind": "image_folder", "path": "/etc"}),
    )
    assert response.status_code == 422 and response.json()["field"] == "dataset.path"
    assert client.get(f"{API}/jobs", headers=headers).json()["total"] == 0
