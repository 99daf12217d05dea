"""Abusive and edge input at the HTTP edge: specs over the operator's limits, JSON nested too
deep, huge integers and an out-of-range Last-Event-ID answer 422 naming what to change, never
500 and never a broken stream."""

from __future__ import annotations

import json

import pytest

from api.errors import json_nesting_over
from tests.support.api import bearer, create_user_token, tiny_spec

API = "/api/v1"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def carol(api_settings) -> dict[str, str]:
    return bearer(create_user_token(api_settings.database_url, "carol"))


def nested_kwargs(depth: int) -> bytes:
    """tiny_spec with ``model.kwargs`` nested ``depth`` objects deep, as bytes (Python's own
    encoder gives up near 1000 levels)."""
    spec = tiny_spec()
    spec["model"] = {"arch": "resnet20", "kwargs": "HOLE"}
    deep = '{"a": ' * depth + "1" + "}" * depth
    return json.dumps(spec).replace('"HOLE"', deep).encode()


def test_the_probe_of_640000_trials_is_refused_on_validate_and_submit(api_client, carol):
    spec = tiny_spec()
    spec["training"] = {"epochs": 2, "batch_size": 32, "lr": 0.001, "lr_scaling": "none"}
    spec["search"]["trials"] = {
        "seeds": list(range(64)),
        "batch_sizes": list(range(1, 65)),
        "lrs": [0.001 * i for i in range(1, 65)],
    }
    for path in ("/spec/validate", "/jobs"):
        response = api_client.post(f"{API}{path}", headers=carol, json=spec)
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["code"] == "limit_exceeded" and body["field"] == "search.trials.seeds"
        assert "NORMSEARCH_MAX_SEEDS" in body["message"]
        assert "NORMSEARCH_MAX_TRIALS" in body["message"]
    listed = api_client.get(f"{API}/jobs", headers=carol).json()
    assert listed["total"] == 0  # nothing was queued


def test_a_spec_within_the_limits_still_validates_and_submits(api_client, carol):
    assert api_client.post(f"{API}/spec/validate", headers=carol, json=tiny_spec()).json()["valid"]
    assert api_client.post(f"{API}/jobs", headers=carol, json=tiny_spec()).status_code == 201


@pytest.mark.parametrize("depth", [40, 300, 989, 5000])
@pytest.mark.parametrize("path", ["/spec/validate", "/jobs"])
def test_deeply_nested_kwargs_are_422_not_500(api_client, carol, path, depth):
    headers = {**carol, **JSON}
    response = api_client.post(f"{API}{path}", headers=headers, content=nested_kwargs(depth))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "(body)" and "nested deeper than 32 levels" in body["message"]
    assert "NORMSEARCH_MAX_JSON_DEPTH" in body["message"]


def test_nesting_within_the_body_limit_but_inside_kwargs_is_named_there(api_client, carol):
    response = api_client.post(
        f"{API}/spec/validate", headers={**carol, **JSON}, content=nested_kwargs(10)
    )
    assert response.status_code == 422
    assert response.json()["field"] == "model.kwargs"


def test_unknown_builder_argument_is_422_naming_the_key(api_client, carol):
    spec = tiny_spec()
    spec["model"] = {"arch": "resnet20", "kwargs": {"width": 8}}
    response = api_client.post(f"{API}/spec/validate", headers=carol, json=spec)
    assert response.status_code == 422
    body = response.json()
    assert body["field"] == "model.kwargs.width"
    assert "resnet20 takes no argument 'width'; it takes: zero_init_residual" in body["message"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"verify": {"epochs": 10**30}}, "verify.epochs"),
        ({"dataset": {"kind": "synthetic", "num_samples": 10**9}}, "dataset.num_samples"),
        ({"model": {"arch": "resnet20", "num_classes": 10**9}}, "model.num_classes"),
        ({"model": {"arch": "resnet20", "in_channels": 2**64}}, "model.in_channels"),
        ({"dataset": {"kind": "digits", "seed": 2**70}}, "dataset.seed"),
        ({"verify": {"baselines": ["bn"] * 10_000}}, "verify.baselines"),
    ],
)
def test_huge_integers_and_duplicate_baselines_are_422(api_client, carol, patch, field):
    response = api_client.post(f"{API}/spec/validate", headers=carol, json={**tiny_spec(), **patch})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_a_huge_last_event_id_is_422_before_the_stream_starts(api_client, carol):
    job_id = api_client.post(f"{API}/jobs", headers=carol, json=tiny_spec()).json()["id"]
    url = f"{API}/jobs/{job_id}/events"
    for value in ("2147483648", "9223372036854775808", str(10**30), "-1", "abc"):
        response = api_client.get(url, headers={**carol, "Last-Event-ID": value})
        assert response.status_code == 422, value
        assert response.json()["field"] == "Last-Event-ID"
    # The largest database id is accepted: the stream replays nothing after it and goes on.
    with api_client.stream(
        "GET", url, headers={**carol, "Last-Event-ID": str(2**31 - 1)}
    ) as response:
        assert response.status_code == 200
        first = next(line for line in response.iter_lines() if line.startswith("event:"))
    assert first == "event: progress"


def test_json_nesting_scan_skips_strings_and_escapes():
    assert not json_nesting_over(json.dumps({"s": "[[[[[[" * 10, "t": '\\"[[[['}).encode(), 2)
    assert json_nesting_over(b"[[[1]]]", 2) and not json_nesting_over(b"[[[1]]]", 3)
    assert not json_nesting_over(b"[" + b"[],[]," * 1000 + b"[]]", 2)
    assert not json_nesting_over(b"{not json", 2)  # malformed: left to the parser


def test_a_trial_no_node_can_take_is_422_once_the_capacity_is_known(api_client, carol):
    """With a worker's capacity in the runs directory, a spec whose trial fits no node is
    refused on validate and submit naming the field; unknown capacity: accepted (the worker
    decides)."""
    from service.cluster import CAPACITY_FILE, ClusterCapacity, NodeShape, publish_capacity

    settings = api_client.app.state.settings
    spec = {**tiny_spec(), "resources": {"cpus_per_trial": 1, "gpus_per_trial": 16}}
    assert api_client.post(f"{API}/spec/validate", headers=carol, json=spec).status_code == 200
    publish_capacity(settings.runs_dir, ClusterCapacity.of([NodeShape(4, 0), NodeShape(2, 0)]))
    try:
        for path in ("/spec/validate", "/jobs"):
            response = api_client.post(f"{API}{path}", headers=carol, json=spec)
            assert response.status_code == 422, response.text
            body = response.json()
            assert body["code"] == "does_not_fit_cluster"
            assert body["field"] == "resources.gpus_per_trial"
            assert "no node of the Ray cluster has more than 0 GPUs" in body["message"]
        cpus = {**tiny_spec(), "resources": {"cpus_per_trial": 6}}
        response = api_client.post(f"{API}/jobs", headers=carol, json=cpus)
        assert response.status_code == 422
        assert response.json()["field"] == "resources.cpus_per_trial"
        fits = {**tiny_spec(), "resources": {"cpus_per_trial": 4}}
        assert api_client.post(f"{API}/spec/validate", headers=carol, json=fits).status_code == 200
    finally:
        (settings.runs_dir / CAPACITY_FILE).unlink()


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [(1.5, "above 1 it must be a whole number"), (0.00001, "in steps of 0.0001")],
)
def test_gpus_per_trial_ray_cannot_place_is_422_naming_the_field(api_client, carol, gpus, expected):
    """1.5 GPUs would pend forever (Ray gives a trial a share of one GPU or whole GPUs)."""
    spec = {**tiny_spec(), "resources": {"gpus_per_trial": gpus}}
    response = api_client.post(f"{API}/spec/validate", headers=carol, json=spec)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "resources.gpus_per_trial" and expected in body["message"]


@pytest.mark.parametrize("gpus", [0.25, 0.5, 0.3333, 1, 2])
def test_gpu_shares_and_whole_gpus_are_accepted(api_client, carol, gpus):
    spec = {**tiny_spec(), "resources": {"gpus_per_trial": gpus}}
    assert api_client.post(f"{API}/spec/validate", headers=carol, json=spec).status_code == 200
