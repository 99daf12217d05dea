"""``model.dyt_alpha0``: DyT's initial alpha, a job setting. It must reach every DyT a job builds
(the searched model's dyt members, the all-DyT baseline, a recommended plan's DyT layers) and
what the downloads record (plan.json's ``dyt_alpha``), and be refused out of range at its field."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

import sn_core
from service.spec import DYT_ALPHA0_MAX, DYT_ALPHA0_MIN, JobSpec
from sn_core.vocabulary import DEFAULT_DYT_ALPHA0
from worker.data import load_dataset
from worker.export import Choice, deliverable_plan
from worker.models import baseline_plan, build_for_data, build_variant
from worker.recommend import recommend
from worker.results import TrialOutcome

ALPHA0 = 1.7  # not the default, and not a float32-exact value
assert ALPHA0 != DEFAULT_DYT_ALPHA0


def vit_spec(**model) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {
                "arch": "vit",
                "kwargs": {"input_size": 8, "patch_size": 4, "dim": 8, "depth": 1, "heads": 2},
                **model,
            },
            "dataset": {"kind": "digits"},
            "search": {"pool": ["ln", "rms", "dyt"]},
            "verify": {"baselines": ["ln", "dyt"]},
        }
    )


SPEC = vit_spec(dyt_alpha0=ALPHA0)
SHAPE = {"num_classes": 10, "in_channels": 1, "example_input": torch.randn(4, 1, 8, 8)}


def _token_layers(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, sn_core.SwitchNormTokens)]


def test_the_default_is_sn_cores():
    assert vit_spec().model.dyt_alpha0 == DEFAULT_DYT_ALPHA0
    schema = JobSpec.model_json_schema()["$defs"]["ModelSpec"]["properties"]["dyt_alpha0"]
    assert schema["default"] == DEFAULT_DYT_ALPHA0
    assert (schema["minimum"], schema["maximum"]) == (DYT_ALPHA0_MIN, DYT_ALPHA0_MAX)
    assert "DyT" in schema["description"]


@pytest.mark.parametrize("value", [0.0, 0.009, 10.5, -1.0, 1e300, float("nan"), float("inf")])
def test_out_of_range_is_refused_at_the_field(value):
    with pytest.raises(ValidationError) as error:
        vit_spec(dyt_alpha0=value)
    assert [item["loc"] for item in error.value.errors()] == [("model", "dyt_alpha0")]


@pytest.mark.parametrize("value", [DYT_ALPHA0_MIN, DYT_ALPHA0_MAX, 1])
def test_the_bounds_are_inclusive(value):
    assert vit_spec(dyt_alpha0=value).model.dyt_alpha0 == value


def test_the_searched_models_dyt_members_start_at_it():
    layers = _token_layers(build_variant(SPEC, "sn", **SHAPE))
    assert layers and all("dyt" in layer.pointwise for layer in layers)
    for layer in layers:
        assert layer.dyt_alpha0 == pytest.approx(ALPHA0)
        assert float(layer.dyt_alpha.detach()[0]) == pytest.approx(ALPHA0)
    default = _token_layers(build_variant(vit_spec(), "sn", **SHAPE))
    assert {float(layer.dyt_alpha.detach()[0]) for layer in default} == {DEFAULT_DYT_ALPHA0}


def test_the_all_dyt_baseline_starts_at_it():
    plan = baseline_plan(SPEC, "dyt", **SHAPE)
    assert {layer.output for layer in plan} == {"dyt"}
    assert [layer.dyt_alpha for layer in plan] == [pytest.approx(ALPHA0)] * len(plan)
    assert plan.metadata["dyt_alpha0"] == pytest.approx(ALPHA0)
    model = build_variant(SPEC, "dyt", **SHAPE)
    tanhs = [m for m in model.modules() if isinstance(m, sn_core.DynamicTanh)]
    assert len(tanhs) == len(plan)
    assert all(float(m.alpha.detach()[0]) == pytest.approx(ALPHA0) for m in tanhs)
    # a statistics baseline has no DyT to start anywhere
    assert "dyt_alpha0" not in baseline_plan(SPEC, "rms", **SHAPE).metadata


def _trial(seed: int) -> TrialOutcome:
    """A searched model whose every output mixture prefers dyt (its trained alpha elsewhere)."""
    model = build_variant(SPEC, "sn", **SHAPE)
    with torch.no_grad():
        for layer in _token_layers(model):
            layer.output_weight.copy_(torch.tensor([-4.0, 4.0]))
            layer.dyt_alpha.fill_(3.0)  # learned: not what a retrained plan starts from
    return TrialOutcome(
        trial_id=f"t{seed}", seed=seed, batch_size=32, lr=0.002, status="TERMINATED",
        epochs_used=1, epochs_budget=1, val_accuracy=0.5,
        plan=sn_core.plan_from_model(model).to_dict(),
    )  # fmt: skip


def test_a_recommended_dyt_layer_and_its_plan_json_start_at_it():
    recommendation = recommend(
        [_trial(0), _trial(1)], target_batch_size=32, dyt_alpha0=SPEC.model.dyt_alpha0
    )
    plan = recommendation.plan
    assert {layer.output for layer in plan} == {"dyt"}
    assert [layer.dyt_alpha for layer in plan] == [pytest.approx(ALPHA0)] * len(plan)
    assert plan.metadata["dyt_alpha0"] == pytest.approx(ALPHA0)
    # plan.json (the deliverable) records it, and the plan variant built from it starts there
    data = load_dataset(SPEC.dataset)
    for config in ("plan", "dyt"):
        choice = Choice(config=config, verified=True, reason="best", text="chosen")
        written = sn_core.NormalizerPlan.from_dict(
            deliverable_plan(SPEC, data, recommendation, choice).to_dict()
        )
        assert [layer.dyt_alpha for layer in written] == [pytest.approx(ALPHA0)] * len(written)
        assert written.metadata["dyt_alpha0"] == pytest.approx(ALPHA0)
    built = build_for_data(SPEC, "plan", data, plan=plan.to_dict())
    tanhs = [m for m in built.modules() if isinstance(m, sn_core.DynamicTanh)]
    assert tanhs and all(float(m.alpha.detach()[0]) == pytest.approx(ALPHA0) for m in tanhs)
    # without the setting, recommend keeps sn_core's default
    default = recommend([_trial(0)], target_batch_size=32).plan
    assert {layer.dyt_alpha for layer in default} == {DEFAULT_DYT_ALPHA0}
