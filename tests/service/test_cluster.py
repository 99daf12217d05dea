"""The cluster fit check (``service.cluster``): a trial must fit on ONE alive node, and the
capacity a worker publishes counts only while it is fresh."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from service.cluster import (
    CAPACITY_FILE,
    ClusterCapacity,
    ClusterFitError,
    NodeShape,
    check_fit,
    fit_problem,
    publish_capacity,
    published_capacity,
)
from service.spec import ResourcesSpec

CPU_ONLY = ClusterCapacity.of([NodeShape(8, 0), NodeShape(2, 0)])
MIXED = ClusterCapacity.of([NodeShape(32, 0), NodeShape(4, 2)])


def resources(cpus: float = 1.0, gpus: float | None = None) -> ResourcesSpec:
    return ResourcesSpec(cpus_per_trial=cpus, gpus_per_trial=gpus)


@pytest.mark.parametrize(
    ("capacity", "cpus", "gpus"),
    [
        (CPU_ONLY, 8, None),  # the largest node, exactly
        (CPU_ONLY, 0.5, 0),
        (MIXED, 32, 0),  # the CPU node
        (MIXED, 4, 2),  # the GPU node
        (MIXED, 2, 0.5),  # a fraction of a GPU
        (MIXED, 4, None),  # the default asks for one GPU: the GPU node has 4 CPUs
    ],
)
def test_a_trial_that_fits_one_node_passes(capacity, cpus, gpus):
    assert fit_problem(resources(cpus, gpus), capacity) is None
    check_fit(resources(cpus, gpus), capacity)


def test_more_gpus_than_any_node_names_gpus_per_trial_and_what_exists():
    problem = fit_problem(resources(1, 16), CPU_ONLY)
    assert isinstance(problem, ClusterFitError) and problem.status_code == 422
    assert problem.field == "resources.gpus_per_trial"
    assert str(problem).startswith(
        "resources.gpus_per_trial: 16 GPUs per trial, but no node of the Ray cluster has more "
        "than 0 GPUs (alive node shapes: 8 CPUs + 0 GPUs, 2 CPUs + 0 GPUs)"
    )


def test_more_cpus_than_any_node_names_cpus_per_trial_not_the_sum():
    # 10 CPUs exist in all, but no node has more than 8: a trial of 9 can never be placed.
    problem = fit_problem(resources(9, 0), CPU_ONLY)
    assert problem.field == "resources.cpus_per_trial"
    assert "9 CPUs per trial, but no node of the Ray cluster has more than 8 CPUs" in str(problem)


def test_cpus_and_gpus_that_exist_only_on_different_nodes_name_resources():
    problem = fit_problem(resources(16, 1), MIXED)
    assert problem.field == "resources"
    assert "16 CPUs and 1 GPU per trial, but no node of the Ray cluster has both" in str(problem)
    # The default GPU (the cluster has some) counts too.
    assert fit_problem(resources(16, None), MIXED).field == "resources"
    with pytest.raises(ClusterFitError):
        check_fit(resources(16, None), MIXED)


def test_a_cluster_with_no_alive_node_fits_nothing():
    problem = fit_problem(resources(1, 0), ClusterCapacity.of([]))
    assert problem.field == "resources" and "no alive node" in str(problem)


def test_the_api_body_names_the_field_once():
    body = fit_problem(resources(1, 16), CPU_ONLY).to_dict()
    assert body["code"] == "does_not_fit_cluster" and body["field"] == "resources.gpus_per_trial"
    assert body["message"].startswith("resources.gpus_per_trial: 16 GPUs per trial")


def test_published_capacity_round_trips_while_fresh(tmp_path):
    observed = datetime(2026, 1, 1, tzinfo=UTC)
    publish_capacity(tmp_path, ClusterCapacity.of(MIXED.nodes, observed))
    read = published_capacity(tmp_path, max_age_s=60, now=observed + timedelta(seconds=59))
    assert read == ClusterCapacity.of(MIXED.nodes, observed)
    assert read.max_cpus == 32 and read.max_gpus == 2
    assert [p.name for p in tmp_path.iterdir()] == [CAPACITY_FILE]  # no temporary left


def test_stale_missing_or_corrupt_capacity_is_unknown(tmp_path):
    observed = datetime(2026, 1, 1, tzinfo=UTC)
    assert published_capacity(tmp_path, max_age_s=60) is None
    publish_capacity(tmp_path, ClusterCapacity.of(MIXED.nodes, observed))
    assert published_capacity(tmp_path, max_age_s=60, now=observed + timedelta(seconds=61)) is None
    (tmp_path / CAPACITY_FILE).write_text("{not json")
    assert published_capacity(tmp_path, max_age_s=60) is None
    (tmp_path / CAPACITY_FILE).write_text(json.dumps({"nodes": [{"cpus": 1}]}))
    assert published_capacity(tmp_path, max_age_s=60) is None


def test_node_shapes_are_deduplicated_and_bounded():
    capacity = ClusterCapacity.of([NodeShape(4, 0)] * 500 + [NodeShape(i, 0) for i in range(200)])
    assert len(capacity.nodes) == 64 and capacity.max_cpus == 199


def test_gpu_shares_fit_a_node_with_one_gpu():
    one_gpu = ClusterCapacity.of([NodeShape(1, 1)])
    assert fit_problem(resources(0.25, 0.25), one_gpu) is None
    assert fit_problem(resources(0.25, 2), one_gpu).field == "resources.gpus_per_trial"
