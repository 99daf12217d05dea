"""Uniform baselines of pool members the zoo has no norm_layer for (rms; dyt, none)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import sn_core
from service.spec import JobSpec
from worker.job import uniform_normalizer
from worker.models import baseline_plan, build_variant

SPEC = JobSpec.model_validate(
    {
        "model": {"arch": "cnn1d", "kwargs": {"channels": 8, "depth": 2}},
        "dataset": {"kind": "mnist1d", "num_samples": 100},
        "search": {"pool": ["ln", "rms"]},
        "verify": {"baselines": ["rms", "bn"]},
    }
)
X = torch.randn(4, 1, 40)
SHAPE = {"num_classes": 10, "in_channels": 1, "example_input": X}


def test_the_rms_baseline_is_rms_in_every_layer_the_search_converts():
    plan = baseline_plan(SPEC, "rms", **SHAPE)
    searched = build_variant(SPEC, "sn", **SHAPE)
    assert plan.names == [name for name, _ in sn_core.switch_layers(searched)]
    assert {layer.choice for layer in plan} == {"rms/rms"} and uniform_normalizer(plan) == "rms"
    model = build_variant(SPEC, "rms", **SHAPE)
    norms = [m for m in model.modules() if isinstance(m, sn_core.SelectedNorm)]
    assert len(norms) == len(plan) and {(m.mean, m.var) for m in norms} == {("rms", "rms")}
    assert torch.isfinite(model(X)).all()
    # bn stays the zoo's own layer
    assert any(
        isinstance(m, torch.nn.BatchNorm1d) for m in build_variant(SPEC, "bn", **SHAPE).modules()
    )


def test_point_wise_baselines_need_a_plan_output():
    if "output" in {f.name for f in dataclasses.fields(sn_core.LayerChoice)}:
        plan = baseline_plan(SPEC, "dyt", **SHAPE)
        assert {layer.output for layer in plan} == {"dyt"} and uniform_normalizer(plan) == "dyt"
    else:
        with pytest.raises(ValueError, match="baseline 'dyt' needs sn_core's point-wise members"):
            baseline_plan(SPEC, "dyt", **SHAPE)
    with pytest.raises(ValueError, match="unknown baseline 'xn'"):
        baseline_plan(SPEC, "xn", **SHAPE)
