"""The REST API on a real Postgres database (migrations applied; a module database, since the
routes commit). No worker runs here: submitted jobs stay queued; history and outputs are seeded
through the repositories, as the worker would write them."""

from __future__ import annotations

import hashlib
import json

import pytest
import redis
import yaml

from service import jobs, repositories
from service.db import make_engine, make_session_factory
from service.db.models import Artifact, Job, Trial
from service.history import pick_steps
from service.spec import JobSpec
from tests.support.api import bearer, create_user_token, snapshot_row, tiny_spec

API = "/api/v1"


@pytest.fixture(scope="module")
def factory(api_settings):
    engine = make_engine(api_settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def alice(api_settings) -> dict[str, str]:
    return bearer(create_user_token(api_settings.database_url, "alice"))


@pytest.fixture(scope="module")
def bob(api_settings) -> dict[str, str]:
    return bearer(create_user_token(api_settings.database_url, "bob"))


def submit(client, headers, spec=None, **kwargs):
    return client.post(f"{API}/jobs", headers=headers, json=spec or tiny_spec(), **kwargs)


def set_status(factory, job_id: str, status: str, **fields) -> None:
    with factory() as session, session.begin():
        job = session.get(Job, job_id)
        job.status = status
        for name, value in fields.items():
            setattr(job, name, value)


# Health, auth


def test_health_needs_no_token_and_readiness_checks_database_and_broker(api_client):
    assert api_client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = api_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "workers": "ok"}


def test_readiness_reports_an_unreachable_broker(api_settings):
    from fastapi.testclient import TestClient

    from api.app import create_app

    down = api_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down, run_reaper=False)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["broker"].startswith("error")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer ns_wrong"}, {"Authorization": "Basic YWxpY2U6eA=="}],
    ids=["none", "unknown", "basic"],
)
def test_api_routes_need_a_valid_token(api_client, headers):
    for method, path in [("get", "/jobs"), ("post", "/jobs"), ("get", "/me"), ("get", "/tokens")]:
        response = getattr(api_client, method)(f"{API}{path}", headers=headers)
        assert response.status_code == 401, path
        assert response.json()["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


def test_tokens_are_stored_hashed_listed_by_prefix_and_revocable(api_client, alice, factory):
    created = api_client.post(f"{API}/tokens", headers=alice, json={"name": "laptop"})
    assert created.status_code == 201
    raw = created.json()["token"]
    assert raw.startswith("ns_") and created.json()["prefix"] == raw[:8]
    listed = api_client.get(f"{API}/tokens", headers=alice).json()
    assert any(t["name"] == "laptop" for t in listed) and all("token" not in t for t in listed)
    with factory() as session:
        from service.db.models import ApiToken

        stored = session.get(ApiToken, created.json()["id"])
        assert stored.token_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert api_client.get(f"{API}/me", headers=bearer(raw)).json()["name"] == "alice"
    revoked = api_client.delete(f"{API}/tokens/{created.json()['id']}", headers=alice)
    assert revoked.status_code == 204
    assert api_client.get(f"{API}/me", headers=bearer(raw)).status_code == 401


def test_users_see_and_act_on_their_own_jobs_only(api_client, alice, bob):
    job_id = submit(api_client, alice).json()["id"]
    for method, path in [
        ("get", ""),
        ("get", "/trials"),
        ("get", "/ratios"),
        ("get", "/report"),
        ("post", "/cancel"),
        ("delete", ""),
    ]:
        response = getattr(api_client, method)(f"{API}/jobs/{job_id}{path}", headers=bob)
        assert response.status_code == 403, path
        assert response.json()["code"] == "forbidden"
    assert job_id not in [
        j["id"] for j in api_client.get(f"{API}/jobs", headers=bob).json()["items"]
    ]
    missing = api_client.get(f"{API}/jobs/{'0' * 32}", headers=alice)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


# Submission


def test_submit_queues_the_job_and_sends_its_task_after_the_commit(api_client, alice, api_broker):
    queue = redis.Redis.from_url(api_broker)
    before = queue.llen("normsearch.search")
    response = submit(api_client, alice)
    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"].endswith(f"{API}/jobs/{job['id']}")
    assert job["status"] == "queued" and job["progress"] == 0
    assert job["arch"] == "resnet20" and job["dataset"] == "digits" and job["metric"] == "accuracy"
    assert job["target_batch_size"] == 128
    assert [(e["from_status"], e["to_status"]) for e in job["events"]] == [(None, "queued")]
    assert queue.llen("normsearch.search") == before + 1
    message = json.loads(queue.lindex("normsearch.search", 0))
    assert message["headers"]["task"] == "normsearch.run_search"
    assert message["headers"]["argsrepr"] == repr([job["id"]])
    queue.close()


def test_a_job_may_have_a_name_shown_in_the_list_and_its_page(api_client, alice, api_broker):
    named = submit(api_client, alice, params={"name": "  resnet20 on digits, first try "})
    assert named.status_code == 201, named.text
    assert named.json()["name"] == "resnet20 on digits, first try"
    unnamed = submit(api_client, alice)
    assert unnamed.json()["name"] is None
    listed = api_client.get(f"{API}/jobs", headers=alice).json()["items"]
    mine = (named.json()["id"], unnamed.json()["id"])
    assert {item["id"]: item["name"] for item in listed if item["id"] in mine} == {
        named.json()["id"]: "resnet20 on digits, first try",
        unnamed.json()["id"]: None,
    }
    shown = api_client.get(f"{API}/jobs/{named.json()['id']}", headers=alice).json()
    assert shown["name"] == "resnet20 on digits, first try"
    for bad in ("x" * 101, ""):
        refused = submit(api_client, alice, params={"name": bad})
        assert refused.status_code == 422 and refused.json()["field"] == "name", refused.text
    for job_id in mine:  # alice's queued jobs count against her quota in the later tests
        api_client.post(f"{API}/jobs/{job_id}/cancel", headers=alice)


def test_a_yaml_spec_is_taken_like_its_json(api_client, alice, api_broker):
    """``Content-Type: application/yaml`` on POST /spec/validate and POST /jobs: the same answer
    as the JSON; bad YAML (syntax, aliases, non-JSON values) is a 422 naming (body)."""
    text = yaml.safe_dump(tiny_spec())
    yaml_headers = {**alice, "Content-Type": "application/yaml"}
    validated = api_client.post(f"{API}/spec/validate", headers=yaml_headers, content=text)
    assert validated.status_code == 200, validated.text
    as_json = api_client.post(f"{API}/spec/validate", headers=alice, json=tiny_spec()).json()
    assert validated.json() == as_json
    created = api_client.post(f"{API}/jobs", headers=yaml_headers, content=text)
    assert created.status_code == 201 and created.json()["spec"] == as_json["spec"]
    invalid = yaml.safe_dump(tiny_spec(training={"epochs": 0}))
    refused = api_client.post(f"{API}/spec/validate", headers=yaml_headers, content=invalid)
    assert refused.status_code == 422 and refused.json()["field"] == "training.epochs"
    for bad, reason in (
        ("model: [\n", "line 2"),
        ("a: &x [1]\nb: *x\n", "aliases"),
        ("model: {arch: resnet20}\ndataset: {kind: digits}\nwhen: 2026-12-02\n", "JSON"),
    ):
        answer = api_client.post(f"{API}/jobs", headers=yaml_headers, content=bad)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "(body)" and reason in answer.json()["message"]
    api_client.post(f"{API}/jobs/{created.json()['id']}/cancel", headers=alice)  # her quota


def test_idempotency_key_returns_the_first_job(api_client, alice, api_broker):
    queue = redis.Redis.from_url(api_broker)
    headers = {**alice, "Idempotency-Key": "nightly-2026-11-21"}
    first = submit(api_client, headers)
    sent = queue.llen("normsearch.search")
    again = submit(api_client, headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert queue.llen("normsearch.search") == sent  # not sent twice
    other = submit(api_client, headers, tiny_spec(epochs=3))
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["message"]
    queue.close()


@pytest.fixture(scope="module")
def broker_down_client(api_settings):
    """The same app on the same database, with a broker nothing listens at."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    down = api_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down, run_reaper=False)) as client:
        yield client


def test_a_submission_the_broker_refuses_is_503_and_leaves_no_job(
    broker_down_client, alice, factory
):
    with factory() as session:
        before = session.query(Job).count()
    headers = {**alice, "Idempotency-Key": "refused-by-the-broker"}
    refused = submit(broker_down_client, headers)
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "broker_unavailable"
    assert "location" not in refused.headers
    with factory() as session:
        assert session.query(Job).count() == before
        assert session.query(Job).filter_by(idempotency_key="refused-by-the-broker").count() == 0


def test_a_retry_the_broker_refuses_is_503_and_ends_cancelled_with_the_reason(
    api_client, broker_down_client, alice, factory
):
    job_id = submit(api_client, alice).json()["id"]
    api_client.post(f"{API}/jobs/{job_id}/cancel", headers=alice)
    refused = broker_down_client.post(f"{API}/jobs/{job_id}/retry", headers=alice)
    assert refused.status_code == 503 and refused.json()["code"] == "broker_unavailable"
    job = api_client.get(f"{API}/jobs/{job_id}", headers=alice).json()
    assert (job["status"], job["run"], job["error"]) == ("cancelled", 2, None)
    assert [(e["from_status"], e["to_status"], e["message"]) for e in job["events"][-2:]] == [
        ("cancelled", "queued", "retried by user: run 2"),
        ("queued", "cancelled", "retry not queued: the task broker was unavailable"),
    ]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"model": {"arch": "resnet9000"}, "dataset": {"kind": "digits"}}, "model.arch"),
        (tiny_spec(training={"epochs": -3}), "training.epochs"),
        ({"dataset": {"kind": "digits"}}, "model"),
        (tiny_spec(unknown_field=1), "unknown_field"),
        (tiny_spec(dataset={"kind": "npz", "path": "../../etc/passwd"}), "dataset.path"),
        (tiny_spec(dataset={"kind": "npz", "path": "/etc/passwd"}), "dataset.path"),
        (tiny_spec(dataset={"kind": "npz", "path": "missing.npz"}), "dataset.path"),
        # lr 0.1 for batch 128, linearly scaled to batch 16384: 12.8, above the bound of 10.
        (tiny_spec(search={"trials": {"batch_sizes": [128, 16384]}}), "training.lr_scaling"),
    ],
    ids=["unknown-arch", "negative-epochs", "missing-model", "unknown-field", "dotdot", "abs",
         "missing-file", "effective-lr"],
)  # fmt: skip
def test_bad_specs_are_422_naming_the_field(api_client, alice, spec, field):
    response = submit(api_client, alice, spec)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field and field in body["message"]
    assert body["code"] in ("validation_error", "invalid_input")


def test_malformed_json_wrong_content_type_and_oversized_bodies(api_client, alice, api_settings):
    jobs = f"{API}/jobs"
    malformed = api_client.post(
        jobs, headers={**alice, "Content-Type": "application/json"}, content=b'{"model": '
    )
    assert malformed.status_code == 422 and "malformed JSON" in malformed.json()["message"]
    form = api_client.post(jobs, headers=alice, data={"model": "resnet20"})
    assert form.status_code == 415 and form.json()["code"] == "unsupported_media_type"
    big = b'{"pad": "' + b"x" * (api_settings.max_body_bytes + 1) + b'"}'
    oversized = api_client.post(
        jobs, headers={**alice, "Content-Type": "application/json"}, content=big
    )
    assert oversized.status_code == 413 and oversized.json()["code"] == "payload_too_large"

    def chunks():
        for _ in range(api_settings.max_body_bytes // 65536 + 2):
            yield b"x" * 65536

    streamed = api_client.post(
        jobs, headers={**alice, "Content-Type": "application/json"}, content=chunks()
    )
    assert streamed.status_code == 413 and streamed.json()["code"] == "payload_too_large"


def test_bad_query_parameters_are_422(api_client, alice):
    for query in ["limit=0", "limit=100000", "status=exploded", "sort=colour", "offset=-1"]:
        response = api_client.get(f"{API}/jobs?{query}", headers=alice)
        assert response.status_code == 422, query
        assert response.json()["field"].split(".")[0] == query.split("=")[0]
    bad_id = api_client.get(f"{API}/jobs/not-a-job", headers=alice)
    assert bad_id.status_code == 422 and bad_id.json()["field"] == "job_id"


# Listing, lifecycle


def test_list_paginates_filters_and_sorts(api_client, api_settings, factory):
    carol = bearer(create_user_token(api_settings.database_url))
    ids = [submit(api_client, carol).json()["id"] for _ in range(5)]
    set_status(factory, ids[0], "failed", error="boom")
    page = api_client.get(f"{API}/jobs?limit=2", headers=carol).json()
    assert page["total"] == 5 and [j["id"] for j in page["items"]] == ids[::-1][:2]
    rest = api_client.get(f"{API}/jobs?limit=2&offset=4", headers=carol).json()
    assert [j["id"] for j in rest["items"]] == [ids[0]]
    oldest = api_client.get(f"{API}/jobs?sort=created_at&limit=1", headers=carol).json()
    assert oldest["items"][0]["id"] == ids[0]
    failed = api_client.get(f"{API}/jobs?status=failed", headers=carol).json()
    assert failed["total"] == 1 and failed["items"][0]["error"] == "boom"
    both = api_client.get(f"{API}/jobs?status=failed&status=queued", headers=carol).json()
    assert both["total"] == 5


def test_the_jobs_list_carries_each_succeeded_jobs_result(api_client, api_settings, factory):
    """``result`` as the worker wrote it (``service.jobs.finish_job``); null for a job without
    one (running, failed, or finished before results were recorded) and for a stored value the
    schema cannot read, which never breaks the listing."""
    from service import jobs

    dave = bearer(create_user_token(api_settings.database_url))
    done, failed, older, odd = (submit(api_client, dave).json()["id"] for _ in range(4))
    result = {
        "configuration": "plan", "label": "plan", "verified": True, "reason": "plan_better",
        "accuracy": 0.981, "std": 0.004, "n": 4, "accuracy_kind": "final epoch",
        "metric": "validation accuracy", "text": "plan 0.981 ± 0.004 (4 seeds, final epoch)",
    }  # fmt: skip
    with factory() as session, session.begin():
        jobs.start_job(session, job_id=done)
        jobs.finish_job(session, job_id=done, files=[], result=result)
    set_status(factory, failed, "failed", error="ValueError: no trial succeeded")
    set_status(factory, older, "succeeded")
    set_status(factory, odd, "succeeded", result={"text": 3})
    items = {j["id"]: j for j in api_client.get(f"{API}/jobs", headers=dave).json()["items"]}
    shown = dict(items[done]["result"])
    assert shown.pop("text") == result["text"] and shown["accuracy_kind"] == "final epoch"
    assert shown.pop("perplexity", None) is None  # a classifier's job: accuracy only
    assert shown == {k: v for k, v in result.items() if k not in ("text", "metric")}
    assert items[failed]["result"] is None and items[failed]["error"].startswith("ValueError")
    assert items[older]["result"] is None and items[odd]["result"] is None
    detail = api_client.get(f"{API}/jobs/{done}", headers=dave).json()
    assert detail["result"]["text"] == result["text"]


def test_cancel_retry_and_delete(api_client, alice, api_settings, factory):
    job_id = submit(api_client, alice).json()["id"]
    cancelled = api_client.post(f"{API}/jobs/{job_id}/cancel", headers=alice)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = api_client.post(f"{API}/jobs/{job_id}/cancel", headers=alice)
    assert again.status_code == 409 and again.json()["code"] == "invalid_transition"
    retried = api_client.post(f"{API}/jobs/{job_id}/retry", headers=alice)
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    busy = api_client.delete(f"{API}/jobs/{job_id}", headers=alice)
    assert busy.status_code == 409 and "cancel" in busy.json()["message"]
    api_client.post(f"{API}/jobs/{job_id}/cancel", headers=alice)
    job_dir = api_settings.runs_dir / job_id
    (job_dir / "out").mkdir(parents=True)
    assert api_client.delete(f"{API}/jobs/{job_id}", headers=alice).status_code == 204
    assert api_client.get(f"{API}/jobs/{job_id}", headers=alice).status_code == 404
    assert not job_dir.exists()
    succeeded = submit(api_client, alice).json()["id"]
    set_status(factory, succeeded, "succeeded")
    refused = api_client.post(f"{API}/jobs/{succeeded}/retry", headers=alice)
    assert refused.status_code == 409


def test_cancel_of_a_running_job_reads_cancelling_until_its_worker_confirms(
    api_client, alice, factory
):
    """A running job's cancel answers cancelling (a repeated cancel: 200, the same state); a
    retry is 409 until the worker has stopped the run; then the retry starts run 2, whose trial
    list shows only its own trials, with ids never used before."""
    job_id = submit(api_client, alice).json()["id"]
    with factory() as session, session.begin():
        jobs.start_job(session, job_id=job_id)
    old_trial = seed_history(factory, job_id, layers=1, steps=2)
    url = f"{API}/jobs/{job_id}"
    cancelling = api_client.post(f"{url}/cancel", headers=alice)
    assert cancelling.status_code == 200
    body = cancelling.json()
    assert (body["status"], body["finished_at"]) == ("cancelling", None)
    again = api_client.post(f"{url}/cancel", headers=alice)
    assert again.status_code == 200 and again.json()["status"] == "cancelling"
    early = api_client.post(f"{url}/retry", headers=alice)
    assert early.status_code == 409 and early.json()["code"] == "invalid_transition"
    assert "run 1 has not stopped yet" in early.json()["message"]
    busy = api_client.delete(url, headers=alice)
    assert busy.status_code == 409  # not finished: its worker still holds it
    with factory() as session, session.begin():
        assert jobs.confirm_cancelled(session, job_id=job_id, run=1, attempt=1) is not None
    done = api_client.get(url, headers=alice).json()
    assert done["status"] == "cancelled" and done["finished_at"] is not None
    assert [e["to_status"] for e in done["events"]][-2:] == ["cancelling", "cancelled"]
    retried = api_client.post(f"{url}/retry", headers=alice)
    assert retried.status_code == 200 and retried.json()["run"] == 2
    assert api_client.get(f"{url}/trials", headers=alice).json() == []
    with factory() as session, session.begin():
        jobs.start_job(session, job_id=job_id)
        trial = repositories.upsert_trial(
            session,
            job_id=job_id,
            ray_trial_id="new",
            variant="sn",
            config={},
            status="RUNNING",
            epochs_budget=2,
            run=2,
        )
        new_id = trial.id
    (listed,) = api_client.get(f"{url}/trials", headers=alice).json()
    assert (listed["id"], listed["run"]) == (new_id, 2) and new_id > old_trial


# History


def seed_history(factory, job_id: str, *, layers: int, steps: int) -> int:
    """A search trial with ``steps`` x ``layers`` snapshots and two metrics per step."""
    with factory() as session, session.begin():
        trial = repositories.upsert_trial(
            session,
            job_id=job_id,
            ray_trial_id=f"t-{job_id[:6]}",
            variant="sn",
            config={"seed": 0},
            status="RUNNING",
            epochs_budget=steps,
        )
        rows = [
            snapshot_row(
                trial.id,
                step,
                index,
                layer=f"layer{index}.norm",
                mean_fixed=step > steps // 2,
                var_fixed=False,
            )
            for step in range(1, steps + 1)
            for index in range(layers)
        ]
        repositories.insert_snapshots(session, rows)
        metrics = [
            {"trial_id": trial.id, "epoch": s, "step": s, "name": name, "value": float(s)}
            for s in range(1, steps + 1)
            for name in ("val_accuracy", "train_loss")
        ]
        repositories.insert_metrics(session, metrics)
        return trial.id


def test_ratio_history_cursor_filters_and_downsampling(api_client, alice, factory):
    job_id = submit(api_client, alice).json()["id"]
    trial_id = seed_history(factory, job_id, layers=20, steps=60)
    url = f"{API}/jobs/{job_id}/ratios"

    full = api_client.get(url, headers=alice, params={"max_points": 100_000}).json()
    (trial,) = full["trials"]
    assert trial["trial_id"] == trial_id and trial["steps_total"] == 60
    assert not trial["downsampled"] and len(trial["points"]) == 1200 and trial["last_step"] == 60
    first = trial["points"][0]
    assert first["layer"] == "layer0.norm" and first["mean"] == {
        "in": 0.25,
        "ln": 0.25,
        "bn": 0.5,
        "gn": None,
    }
    assert [p["layer_index"] for p in trial["points"][:20]] == list(range(20))

    small = api_client.get(url, headers=alice, params={"max_points": 200}).json()["trials"][0]
    steps = sorted({p["step"] for p in small["points"]})
    assert small["downsampled"] and len(small["points"]) <= 200 and len(steps) == 10
    assert steps[0] == 1 and steps[-1] == 60  # the newest step is always there

    newer = api_client.get(url, headers=alice, params={"after": 58}).json()["trials"][0]
    assert sorted({p["step"] for p in newer["points"]}) == [59, 60]
    nothing = api_client.get(url, headers=alice, params={"after": 60}).json()["trials"][0]
    assert nothing["points"] == [] and nothing["last_step"] == 60

    one = api_client.get(
        url, headers=alice, params={"layer": ["layer3.norm", "layer7.norm"], "trial": trial_id}
    ).json()["trials"][0]
    assert {p["layer"] for p in one["points"]} == {"layer3.norm", "layer7.norm"}
    assert len(one["points"]) == 120
    wrong_trial = api_client.get(url, headers=alice, params={"trial": trial_id + 10_000})
    assert wrong_trial.status_code == 404


def test_ratio_history_has_rms_and_output_ratios_where_recorded(api_client, alice, factory):
    """mean/var gain rms when a layer has it, ``output`` when it has point-wise members (null
    otherwise); the CSV has their columns after the older ones."""
    job_id = submit(api_client, alice).json()["id"]
    with factory() as session, session.begin():
        trial = repositories.upsert_trial(
            session,
            job_id=job_id,
            ray_trial_id="t-members",
            variant="sn",
            config={},
            status="RUNNING",
            epochs_budget=1,
        )
        members = {
            "mean_ln": 0.5,
            "mean_rms": 0.5,
            "var_ln": 0.25,
            "var_rms": 0.75,
            "out_norm": 0.5,
            "out_dyt": 0.25,
            "out_none": 0.25,
        }
        nulls = {key: None for key in ("mean_in", "mean_bn", "var_in", "var_bn")}
        repositories.insert_snapshots(
            session,
            [
                snapshot_row(trial.id, 1, 0, layer="blocks.0.norm", **nulls, **members),
                snapshot_row(trial.id, 1, 1, layer="head.bn"),
            ],
        )
    answer = api_client.get(f"{API}/jobs/{job_id}/ratios", headers=alice).json()
    tokens, plain = answer["trials"][0]["points"]
    assert tokens["mean"] == {"in": None, "ln": 0.5, "bn": None, "gn": None, "rms": 0.5}
    assert tokens["var"]["rms"] == 0.75
    assert tokens["output"] == {"norm": 0.5, "dyt": 0.25, "none": 0.25}
    assert "rms" not in plain["mean"] and plain["output"] is None
    csv_text = api_client.get(f"{API}/jobs/{job_id}/ratios.csv", headers=alice).text
    header, first, second = csv_text.strip().splitlines()
    columns = header.split(",")
    assert columns[6:] == [
        "mean_in",
        "mean_ln",
        "mean_bn",
        "mean_gn",
        "var_in",
        "var_ln",
        "var_bn",
        "var_gn",
        "mean_rms",
        "var_rms",
        "out_norm",
        "out_dyt",
        "out_none",
        "mean_fixed",
        "var_fixed",
    ]
    row = dict(zip(columns, first.split(","), strict=True))
    assert (row["mean_rms"], row["out_dyt"], row["mean_bn"]) == ("0.5", "0.25", "")
    assert dict(zip(columns, second.split(","), strict=True))["out_norm"] == ""
    set_status(factory, job_id, "succeeded")  # off alice's quota of queued jobs


@pytest.mark.e2e
def test_a_real_ln_rms_trial_reaches_the_history_api_and_the_recommendation(
    api_client, alice, factory
):
    """A real SN trial over pool [ln, rms] (cnn1d on MNIST-1D, the trainable's epoch loop
    without Ray), recorded by the worker's DatabaseRecorder: the API's points carry rms ratios
    that sum to 1 with ln's, and the recommendation reads the same records."""
    from worker.data import load_dataset
    from worker.db_recorder import DatabaseRecorder
    from worker.recommend import recommend
    from worker.results import TrialOutcome
    from worker.trainable import TrialTraining

    payload = tiny_spec(
        model={"arch": "cnn1d", "kwargs": {"channels": 8, "depth": 2}},
        dataset={"kind": "mnist1d", "num_samples": 200},
        search={"pool": ["ln", "rms"], "stop_when_stable": {"enabled": False}},
        verify={"enabled": False},
    )
    job_id = submit(api_client, alice, payload).json()["id"]
    spec = JobSpec.model_validate(payload)
    training = TrialTraining(
        spec, load_dataset(spec.dataset), variant="sn", seed=0, batch_size=50, lr=0.05, epochs=2
    )
    recorder = DatabaseRecorder(factory, job_id=job_id, batch_size=1)
    recorder.trial_started("t-rms", {"variant": "sn", "epochs": 2, "trial": {"seed": 0}})
    records = list(training.epochs())
    for record in records:
        recorder.trial_result("t-rms", record)
    recorder.trial_finished("t-rms", "TERMINATED")

    (trial,) = api_client.get(f"{API}/jobs/{job_id}/ratios", headers=alice).json()["trials"]
    points = trial["points"]
    assert {p["step"] for p in points} == {1, 2} and points
    for point in points:
        assert point["mean"]["in"] is None and point["output"] is None
        assert point["mean"]["ln"] + point["mean"]["rms"] == pytest.approx(1.0, abs=1e-5)
    final = records[-1]["ratios"]
    assert [p["var"]["rms"] for p in points if p["step"] == 2] == pytest.approx(
        [r["var"]["rms"] for r in final.values()], abs=1e-6
    )
    outcome = TrialOutcome(
        trial_id="t-rms", seed=0, batch_size=50, lr=0.05, effective_lr=None,
        status="TERMINATED", epochs_used=2, epochs_budget=2, val_accuracy=None,
        history=recorder.trials()["t-rms"]["history"],
        plan=sn_core_plan(training), error=None,
    )  # fmt: skip
    rec = recommend([outcome], target_batch_size=50)
    assert {layer.mean for layer in rec.plan} <= {"ln", "rms"} and len(rec.plan) == len(final)
    set_status(factory, job_id, "succeeded")  # off alice's quota of queued jobs


def sn_core_plan(training) -> dict:
    import sn_core

    return sn_core.plan_from_model(training.model).to_dict()


def test_pick_steps_keeps_first_and_last_evenly():
    assert pick_steps(list(range(1, 11)), 20) == list(range(1, 11))
    assert pick_steps(list(range(1, 11)), 1) == [10]
    picked = pick_steps(list(range(1, 501)), 5)
    assert picked[0] == 1 and picked[-1] == 500 and len(picked) == 5


def test_trials_and_metrics(api_client, alice, factory):
    job_id = submit(api_client, alice).json()["id"]
    trial_id = seed_history(factory, job_id, layers=3, steps=4)
    trials = api_client.get(f"{API}/jobs/{job_id}/trials", headers=alice).json()
    assert [(t["id"], t["variant"], t["epochs_budget"]) for t in trials] == [(trial_id, "sn", 4)]
    metrics = api_client.get(
        f"{API}/jobs/{job_id}/metrics", headers=alice, params={"name": "val_accuracy", "after": 2}
    ).json()
    assert [(p["step"], p["value"]) for p in metrics["points"]] == [(3, 3.0), (4, 4.0)]
    assert metrics["last_step"] == 4


def test_trials_are_numbered_per_job_in_creation_order(api_client, alice, factory):
    """``number`` 1..n within each job; ``id`` is the database's (a second job's trials do not
    start at 1)."""
    jobs = [submit(api_client, alice).json()["id"] for _ in range(2)]
    with factory() as session, session.begin():
        for job_id in jobs:
            for name in ("a", "b", "c"):
                repositories.upsert_trial(
                    session, job_id=job_id, ray_trial_id=f"{job_id[:6]}-{name}", variant="sn",
                    config={}, status="PENDING", epochs_budget=1,
                )  # fmt: skip
    for job_id in jobs:
        trials = api_client.get(f"{API}/jobs/{job_id}/trials", headers=alice).json()
        assert [t["number"] for t in trials] == [1, 2, 3]
        assert [t["id"] for t in trials] == sorted(t["id"] for t in trials)
    second = api_client.get(f"{API}/jobs/{jobs[1]}/trials", headers=alice).json()
    assert second[0]["id"] != 1 and second[0]["number"] == 1
    for job_id in jobs:  # alice's quota
        api_client.post(f"{API}/jobs/{job_id}/cancel", headers=alice)


def test_trial_listing_has_each_trials_effective_lr(api_client, alice, factory):
    # The trials of a linear-scaled sweep (lr 0.1 for batch 128) as the worker records them: the
    # grid point (worker.search.grid_point) is the config's "trial"; a row from before scaling
    # existed has no effective_lr (it trained with its lr), a pending row no config at all.
    job_id = submit(api_client, alice).json()["id"]
    configs = {
        "b32": {"trial": {"seed": 0, "batch_size": 32, "lr": 0.1, "effective_lr": 0.025}},
        "b128": {"trial": {"seed": 0, "batch_size": 128, "lr": 0.1, "effective_lr": 0.1}},
        "old": {"trial": {"seed": 0, "batch_size": 32, "lr": 0.2}},
        "pending": {},
    }
    with factory() as session, session.begin():
        for name, config in configs.items():
            repositories.upsert_trial(
                session,
                job_id=job_id,
                ray_trial_id=name,
                variant="sn",
                config={"variant": "sn", "epochs": 2, **config} if config else {},
                status="RUNNING",
                epochs_budget=2,
            )
    trials = api_client.get(f"{API}/jobs/{job_id}/trials", headers=alice).json()
    assert {t["ray_trial_id"]: t["effective_lr"] for t in trials} == {
        "b32": 0.025,
        "b128": 0.1,
        "old": 0.2,
        "pending": None,
    }
    by_id = {t["ray_trial_id"]: t for t in trials}
    assert by_id["b32"]["config"]["trial"]["lr"] == 0.1  # the base lr stays the identity


def test_event_stream_replays_history_and_ends_when_finished(api_client, alice, factory):
    job_id = submit(api_client, alice).json()["id"]
    seed_history(factory, job_id, layers=2, steps=3)
    with factory() as session, session.begin():
        from service import lifecycle

        job = session.get(Job, job_id)
        lifecycle.transition(session, job, "running")
        lifecycle.transition(session, job, "failed", message="out of memory")
    events = []
    with api_client.stream("GET", f"{API}/jobs/{job_id}/events", headers=alice) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line.split(":", 1)[1])))
    kinds = [k for k, _ in events]
    assert kinds[:3] == ["status", "status", "status"] and kinds[-1] == "end"
    assert [d["to_status"] for k, d in events if k == "status"] == ["queued", "running", "failed"]
    assert events[2][1]["message"] == "out of memory"
    assert ("ratios" in kinds) and events[-1][1] == {"status": "failed"}
    # Reconnecting with Last-Event-ID replays only what came after.
    last_id = events[1][1]["id"]
    headers = {**alice, "Last-Event-ID": str(last_id)}
    with api_client.stream("GET", f"{API}/jobs/{job_id}/events", headers=headers) as response:
        text = "".join(response.iter_text())
    assert text.count("event: status") == 1 and "out of memory" in text


# Outputs


def seed_outputs(factory, job_id: str, runs_dir) -> dict:
    """Files as a succeeded job leaves them (the checkpoints as zip files), recorded by the
    worker's own calls (``service.jobs.start_job`` / ``finish_job``)."""
    import sn_core
    from service import jobs

    out = runs_dir / job_id / "run-1" / "out"
    out.mkdir(parents=True)
    model_spec = {"arch": "mlp", "num_classes": 3, "in_channels": 1, "kwargs": {"input_size": 16}}
    model = sn_core.convert_to_switchnorm(
        sn_core.build_model("mlp", num_classes=3, in_channels=1, input_size=16)
    )
    plan = sn_core.plan_from_model(model)
    plan.save(out / "plan.json")
    plan.save(out / "plan.yaml")
    plan.save(out / "search_plan.json")
    (out / "report.json").write_text(json.dumps({"recommendation": {"layers": []}}))
    final = sn_core.finalize(model, plan)
    sn_core.save_finalized(final, plan, model_spec, out / "checkpoint.zip")
    sn_core.save_finalized(final, plan, model_spec, out / "search_checkpoint.zip")
    files = {
        "plan_json": out / "plan.json",
        "plan_yaml": out / "plan.yaml",
        "search_plan_json": out / "search_plan.json",
        "report_json": out / "report.json",
        "checkpoint": out / "checkpoint.zip",
        "search_checkpoint": out / "search_checkpoint.zip",
    }
    with factory() as session, session.begin():
        jobs.start_job(session, job_id=job_id)
        artifact_files = [jobs.ArtifactFile(kind, path) for kind, path in files.items()]
        jobs.finish_job(session, job_id=job_id, files=artifact_files)
    return files


def test_outputs_download_and_load_with_sn_core(
    api_client, alice, bob, factory, api_settings, tmp_path
):
    import sn_core

    job_id = submit(api_client, alice).json()["id"]
    early = api_client.get(f"{API}/jobs/{job_id}/recommendation", headers=alice)
    assert early.status_code == 409 and "queued" in early.json()["message"]
    files = seed_outputs(factory, job_id, api_settings.runs_dir)

    plan_json = api_client.get(f"{API}/jobs/{job_id}/recommendation", headers=alice)
    assert plan_json.status_code == 200
    assert plan_json.headers["content-type"].startswith("application/json")
    assert plan_json.content == files["plan_json"].read_bytes()
    assert plan_json.headers["x-content-sha256"] == hashlib.sha256(plan_json.content).hexdigest()
    plan_yaml = api_client.get(
        f"{API}/jobs/{job_id}/recommendation", headers=alice, params={"format": "yaml"}
    )
    assert yaml.safe_load(plan_yaml.text) == yaml.safe_load(files["plan_yaml"].read_text())
    bad_format = api_client.get(
        f"{API}/jobs/{job_id}/recommendation", headers=alice, params={"format": "xml"}
    )
    assert bad_format.status_code == 422 and bad_format.json()["field"] == "format"

    # The checksum and size users are shown are those of the bytes they download: the zip.
    listed = api_client.get(f"{API}/jobs/{job_id}/artifacts", headers=alice).json()
    assert {a["kind"] for a in listed} == set(files)
    by_kind = {a["kind"]: a for a in listed}
    for route, kind in (("checkpoint", "checkpoint"), ("search-checkpoint", "search_checkpoint")):
        response = api_client.get(f"{API}/jobs/{job_id}/{route}", headers=alice)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/zip"
        assert response.content == files[kind].read_bytes()
        digest = hashlib.sha256(response.content).hexdigest()
        assert response.headers["x-content-sha256"] == digest == by_kind[kind]["sha256"]
        assert response.headers["etag"] == f'"{digest}"'
        assert by_kind[kind]["size_bytes"] == len(response.content)
        archive = tmp_path / f"{kind}.zip"
        archive.write_bytes(response.content)
        model, plan, model_spec = sn_core.load_finalized(archive)
        assert model_spec["arch"] == "mlp"
        assert plan.to_json() == sn_core.NormalizerPlan.load(files["plan_json"]).to_json()
    for kind, path in files.items():
        response = api_client.get(f"{API}/jobs/{job_id}/artifacts/{kind}", headers=alice)
        assert response.content == path.read_bytes(), kind
        assert by_kind[kind]["sha256"] == hashlib.sha256(response.content).hexdigest(), kind

    report = api_client.get(f"{API}/jobs/{job_id}/report", headers=alice)
    assert report.json() == {"recommendation": {"layers": []}}
    assert api_client.get(f"{API}/jobs/{job_id}/checkpoint", headers=bob).status_code == 403
    assert api_client.get(f"{API}/jobs/{job_id}/search-checkpoint", headers=bob).status_code == 403


def test_an_older_jobs_directory_checkpoint_downloads_as_a_zip_with_its_checksum(
    api_client, alice, factory, api_settings, tmp_path
):
    """Jobs recorded before checkpoints were zip files stored a directory (and the SHA-256 of its
    weights): it is still served, as a zip whose header carries that zip's own SHA-256."""
    import sn_core

    job_id = submit(api_client, alice).json()["id"]
    out = api_settings.runs_dir / job_id / "run-1" / "out"
    model = sn_core.build_model("mlp", num_classes=3, in_channels=1, input_size=16)
    spec = {"arch": "mlp", "num_classes": 3, "in_channels": 1, "kwargs": {"input_size": 16}}
    directory = sn_core.save_finalized(model, sn_core.NormalizerPlan(), spec, out / "checkpoint")
    weights = (directory / "model.safetensors").read_bytes()
    with factory() as session, session.begin():
        job = session.get(Job, job_id)
        job.artifacts.append(
            Artifact(
                kind="checkpoint",
                path=str(directory),
                sha256=hashlib.sha256(weights).hexdigest(),
                size_bytes=len(weights),
            )
        )
        job.status = "succeeded"
    first = api_client.get(f"{API}/jobs/{job_id}/checkpoint", headers=alice)
    again = api_client.get(f"{API}/jobs/{job_id}/checkpoint", headers=alice)
    assert first.status_code == again.status_code == 200
    assert first.content == again.content  # built once
    digest = hashlib.sha256(first.content).hexdigest()
    assert first.headers["x-content-sha256"] == again.headers["x-content-sha256"] == digest
    (tmp_path / "old.zip").write_bytes(first.content)
    loaded, _, _ = sn_core.load_finalized(tmp_path / "old.zip")
    assert set(loaded.state_dict()) == set(model.state_dict())


def test_artifact_paths_outside_the_runs_dir_are_not_served(api_client, alice, factory, tmp_path):
    job_id = submit(api_client, alice).json()["id"]
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    with factory() as session, session.begin():
        job = session.get(Job, job_id)
        job.artifacts.append(Artifact(kind="plan_json", path=str(secret), sha256="0" * 64,
                                      size_bytes=2))  # fmt: skip
        job.status = "succeeded"
    response = api_client.get(f"{API}/jobs/{job_id}/recommendation", headers=alice)
    assert response.status_code == 404


# OpenAPI, metrics


def test_openapi_documents_every_route_with_error_schemas(api_client):
    spec = api_client.get(f"{API}/openapi.json").json()
    paths = spec["paths"]
    for path in [
        "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/retry",
        "/jobs/{job_id}/trials", "/jobs/{job_id}/ratios", "/jobs/{job_id}/metrics",
        "/jobs/{job_id}/events", "/jobs/{job_id}/recommendation", "/jobs/{job_id}/checkpoint",
        "/jobs/{job_id}/search-checkpoint", "/jobs/{job_id}/report", "/tokens", "/me",
    ]:  # fmt: skip
        assert f"{API}{path}" in paths, path
    post = paths[f"{API}/jobs"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("JobSpec")
    assert {"201", "401", "409", "413", "415", "422"} <= set(post["responses"])
    assert "ErrorBody" in spec["components"]["schemas"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_vocabulary_is_what_the_ui_reads_and_is_documented(api_client, alice):
    """One answer with every name the UI shows (its only source of them), behind the token."""
    assert api_client.get(f"{API}/vocabulary").status_code == 401
    response = api_client.get(f"{API}/vocabulary", headers=alice)
    assert response.status_code == 200
    assert response.json() == {
        "statuses": ["queued", "running", "succeeded", "failed", "cancelling", "cancelled"],
        "finished_statuses": ["succeeded", "failed", "cancelled"],
        "artifact_kinds": [
            "plan_json", "plan_yaml", "report_json", "ratios_csv", "ratios_png", "checkpoint",
            "search_plan_json", "search_checkpoint",
        ],
        "normalizers": [
            {"name": "in", "label": "IN"}, {"name": "ln", "label": "LN"},
            {"name": "bn", "label": "BN"}, {"name": "gn", "label": "GN"},
            {"name": "rms", "label": "RMS"},
        ],
        "members": [
            {"name": "in", "label": "IN", "kind": "statistics"},
            {"name": "ln", "label": "LN", "kind": "statistics"},
            {"name": "bn", "label": "BN", "kind": "statistics"},
            {"name": "gn", "label": "GN", "kind": "statistics"},
            {"name": "rms", "label": "RMS", "kind": "statistics"},
            {"name": "dyt", "label": "DyT", "kind": "pointwise"},
            {"name": "none", "label": "none", "kind": "pointwise"},
        ],
        "output_choices": [
            {"name": "norm", "label": "norm"}, {"name": "dyt", "label": "DyT"},
            {"name": "none", "label": "none"},
        ],
    }  # fmt: skip
    # The names it gives are the ones the other routes speak.
    job = submit(api_client, alice).json()
    assert job["status"] in response.json()["statuses"]
    spec = api_client.get(f"{API}/openapi.json").json()
    get = spec["paths"][f"{API}/vocabulary"]["get"]
    ref = get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/Vocabulary") and "401" in get["responses"]
    schemas = spec["components"]["schemas"]
    assert schemas["JobStatus"]["enum"] == response.json()["statuses"]
    assert schemas["ArtifactKind"]["enum"] == response.json()["artifact_kinds"]


def test_prometheus_metrics(api_client, alice):
    api_client.get(f"{API}/jobs", headers=alice)
    text = api_client.get("/metrics").text
    assert 'normsearch_http_requests_total{method="GET",route="/api/v1/jobs",status="200"}' in text
    assert 'normsearch_jobs{status="queued"}' in text
    assert "normsearch_http_request_duration_seconds_bucket" in text


def test_trial_rows_are_cascade_deleted_with_the_job(api_client, alice, factory):
    job_id = submit(api_client, alice).json()["id"]
    trial_id = seed_history(factory, job_id, layers=2, steps=2)
    api_client.post(f"{API}/jobs/{job_id}/cancel", headers=alice)
    assert api_client.delete(f"{API}/jobs/{job_id}", headers=alice).status_code == 204
    with factory() as session:
        assert session.get(Trial, trial_id) is None


# What the web UI's job form uses


def test_spec_schema_examples_and_dry_run_validation(api_client, alice):
    schema = api_client.get(f"{API}/spec/schema", headers=alice).json()
    assert {"model", "dataset"} <= set(schema["required"])
    examples = api_client.get(f"{API}/spec/examples", headers=alice).json()
    digits = next(e for e in examples if e["name"] == "digits")
    assert digits["spec"]["model"]["arch"] == "resnet20" and "digits" in digits["title"]
    valid = api_client.post(f"{API}/spec/validate", headers=alice, json=digits["spec"])
    assert valid.status_code == 200
    assert JobSpec.model_validate(valid.json()["spec"]) == JobSpec.model_validate(digits["spec"])
    # the template offers only the dataset fields digits has a use for
    assert {"num_samples", "num_classes", "path"}.isdisjoint(digits["spec"]["dataset"])
    synthetic = next(e for e in examples if e["spec"]["dataset"]["kind"] == "synthetic")
    assert {"num_samples", "num_classes"} <= set(synthetic["spec"]["dataset"])
    invalid = api_client.post(
        f"{API}/spec/validate", headers=alice, json=tiny_spec(training={"epochs": 0})
    )
    assert invalid.status_code == 422 and invalid.json()["field"] == "training.epochs"
    assert api_client.get(f"{API}/spec/examples").status_code == 401
    # a validator's reason, without pydantic's "Value error, " in front of it
    mnist = tiny_spec(dataset={"kind": "mnist1d", "num_samples": 55})
    answer = api_client.post(f"{API}/spec/validate", headers=alice, json=mnist).json()
    assert answer["field"] == "dataset" and answer["errors"][0]["message"].startswith("mnist1d")
    assert "Value error" not in answer["message"]


def test_ratio_history_as_csv(api_client, alice, factory):
    job_id = submit(api_client, alice).json()["id"]
    seed_history(factory, job_id, layers=3, steps=4)
    response = api_client.get(f"{API}/jobs/{job_id}/ratios.csv", headers=alice)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    lines = response.text.strip().splitlines()
    assert lines[0].startswith("ray_trial_id,variant,step,epoch,layer_index,layer,mean_in")
    assert len(lines) == 1 + 3 * 4
    assert lines[1].split(",")[2:6] == ["1", "1", "0", "layer0.norm"]
