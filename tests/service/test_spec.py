"""Job spec: defaults, validation messages that name the field, schema export, settings."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

import sn_core
from service.settings import Settings
from service.spec import (
    BUILTIN_ARCHS,
    DatasetSpec,
    JobSpec,
    format_validation_error,
    job_spec_schema,
    scaled_lr,
)

MINIMAL = {"model": {"arch": "resnet20"}, "dataset": {"kind": "digits"}}


def errors_of(payload: dict) -> list[str]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(payload)
    return format_validation_error(info.value)


def test_minimal_spec_gets_sensible_defaults():
    spec = JobSpec.model_validate(MINIMAL)
    assert spec.version == 1
    assert spec.search.pool == ["in", "ln", "bn"]
    assert spec.search.sparsity.method == "sparsestmax"
    assert spec.training.ratio_weight_decay == 0.0
    assert spec.verify.baselines == ["bn", "gn"]
    assert spec.batch_sizes == [spec.training.batch_size]
    assert spec.target_batch_size == spec.training.batch_size
    assert spec.verify_epochs == spec.training.epochs
    assert spec.training.lr_scaling == "linear"


def test_generated_datasets_default_sample_counts():
    def dataset(**fields) -> DatasetSpec:
        return JobSpec.model_validate({**MINIMAL, "dataset": fields}).dataset

    assert dataset(kind="synthetic").samples == 2000
    assert dataset(kind="mnist1d").samples == 5000  # the published MNIST-1D size
    assert dataset(kind="mnist1d", num_samples=300).samples == 300
    assert errors_of({**MINIMAL, "dataset": {"kind": "mnist1d", "num_samples": 55}}) == [
        "dataset: mnist1d num_samples must be a multiple of 10 (the same number "
        "per class) and at most 100000, got 55"
    ]


@pytest.mark.parametrize(
    ("patch", "field", "reason"),
    [
        ({"model": {"arch": "resnet999"}}, "model.arch", "unknown arch"),
        ({"training": {"epochs": -1}}, "training.epochs", "greater than or equal to 1"),
        ({"training": {"optimizer": "lion"}}, "training.optimizer", "'sgd' or 'adamw'"),
        ({"dataset": {"kind": "npz"}}, "dataset", "needs a path"),
        ({"dataset": {"kind": "digits", "path": "x"}}, "dataset", "takes no path"),
        ({"dataset": {"kind": "mnist"}}, "dataset.kind", "digits"),
        ({"search": {"pool": ["in", "in"]}}, "search.pool", "twice"),
        ({"search": {"pool": ["xn"]}}, "search.pool.0", "'in'"),
        ({"search": {"sparsity": {"start": 0.5, "end": 0.4}}}, "search.sparsity", "after start"),
        ({"search": {"trials": {"lrs": [0.1, -1]}}}, "search.trials.lrs", "> 0"),
        ({"search": {"target_batch_size": 64}}, "(spec)", "not among the trial batch sizes"),
        ({"surprise": 1}, "surprise", "Extra inputs are not permitted"),
        ({"model": {"arch": "resnet20", "kwargs": {"norm_layer": "bn"}}}, "model.kwargs", "set by"),
    ],
)
def test_validation_errors_name_field_and_reason(patch, field, reason):
    payload = {**MINIMAL, **patch}
    lines = errors_of(payload)
    assert any(line.startswith(f"{field}:") and reason in line for line in lines), lines


@pytest.mark.parametrize(
    ("scaling", "batch", "expected"),
    [
        ("linear", 32, 0.1),
        ("linear", 2, 0.1 / 16),
        ("linear", 256, 0.8),
        ("sqrt", 32, 0.1),
        ("sqrt", 2, 0.025),  # sqrt(1/16) = 1/4
        ("sqrt", 128, 0.2),
        ("none", 2, 0.1),
        ("none", 256, 0.1),
    ],
)
def test_lr_scaling_rule_relative_to_training_batch_size(scaling, batch, expected):
    assert math.isclose(scaled_lr(0.1, batch, 32, scaling), expected)
    spec = JobSpec.model_validate(
        {
            **MINIMAL,
            "training": {"batch_size": 32, "lr": 0.1, "lr_scaling": scaling},
            "search": {"trials": {"batch_sizes": [2, 32, 128, 256]}},
        }
    )
    assert math.isclose(spec.effective_lr(batch, 0.1), expected)
    assert math.isclose(spec.effective_lr(batch, 0.3), expected * 3)  # each of trials.lrs too


def test_lr_scaling_must_be_a_known_mode():
    lines = errors_of({**MINIMAL, "training": {"lr_scaling": "cubic"}})
    assert any(line.startswith("training.lr_scaling:") and "'linear'" in line for line in lines)


def test_effective_lr_above_the_bound_is_refused_naming_the_field():
    # lr 0.5 tuned for batch 32, linearly scaled to batch 1024: 16 > 10.
    payload = {
        **MINIMAL,
        "training": {"batch_size": 32, "lr": 0.5},
        "search": {"trials": {"batch_sizes": [32, 1024]}},
    }
    (line,) = errors_of(payload)
    assert line.startswith("training.lr_scaling: the trial at batch size 1024 with lr 0.5 ")
    why = "(training.lr_scaling 'linear' relative to training.batch_size 32)"
    assert f"effective lr of 16 {why}" in line
    assert "above the bound of 10" in line
    # sqrt scaling gives 0.5 * sqrt(32) = 2.83: allowed; and so is the unscaled rate.
    for scaling, expected in (("sqrt", 0.5 * math.sqrt(32)), ("none", 0.5)):
        payload["training"] = {"batch_size": 32, "lr": 0.5, "lr_scaling": scaling}
        assert math.isclose(JobSpec.model_validate(payload).effective_lr(1024, 0.5), expected)
    # Unscaled, each of search.trials.lrs is checked (the field itself has no upper bound).
    unscaled = {"training": {"lr_scaling": "none"}, "search": {"trials": {"lrs": [0.1, 20]}}}
    (line,) = errors_of({**MINIMAL, **unscaled})
    assert line.startswith("search.trials.lrs: the trial at batch size 32 with lr 20 would ")
    # A rate exactly at the bound is allowed.
    at_bound = {**MINIMAL, "training": {"batch_size": 1, "lr": 5.0}}
    at_bound["search"] = {"trials": {"batch_sizes": [1, 2]}}
    assert JobSpec.model_validate(at_bound).effective_lr(2, 5.0) == 10.0


def test_builtin_arch_list_matches_the_zoo():
    assert set(BUILTIN_ARCHS) == set(sn_core.list_models())


def test_json_schema_is_exported_with_descriptions():
    schema = job_spec_schema()
    assert set(schema["required"]) == {"model", "dataset"}
    assert "TrainingSpec" in schema["$defs"]
    assert schema["$defs"]["TrainingSpec"]["properties"]["ratio_weight_decay"]["description"]
    compile_field = schema["$defs"]["TrainingSpec"]["properties"]["compile"]
    assert compile_field["default"] is False and "eager" in compile_field["description"]


def test_settings_split_data_roots_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMSEARCH_DATA_ROOTS", f"{tmp_path}/a:{tmp_path}/b,{tmp_path}/c")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    settings = Settings()
    assert [p.name for p in settings.data_roots] == ["a", "b", "c"]
    assert settings.ray_address == "ray://head:10001"


def test_pool_and_baselines_take_every_pool_member():
    import service.spec as spec_module
    from sn_core.vocabulary import POOL_MEMBERS

    assert spec_module.PoolMember.__args__ == POOL_MEMBERS
    spec = JobSpec.model_validate(
        {
            **MINIMAL,
            "search": {"pool": ["ln", "rms", "dyt", "none"]},
            "verify": {"baselines": ["rms"]},
        }
    )
    assert spec.search.pool == ["ln", "rms", "dyt", "none"]
    assert spec.verify.baselines == ["rms"]


def test_pool_needs_a_statistics_member():
    lines = errors_of({**MINIMAL, "search": {"pool": ["dyt", "none"]}})
    assert len(lines) == 1 and lines[0].startswith("search.pool: "), lines
    assert "no statistics member" in lines[0]


def test_token_layouts_refuse_gn_naming_each_item(monkeypatch):
    import service.spec as spec_module

    monkeypatch.setitem(spec_module.ARCH_LAYOUTS, "resnet20", "tokens")
    lines = errors_of(
        {**MINIMAL, "search": {"pool": ["ln", "gn"]}, "verify": {"baselines": ["gn", "rms"]}}
    )
    assert [line.split(":")[0] for line in lines] == ["search.pool.1", "verify.baselines.0"]
    assert all("cannot compute 'gn'" in line for line in lines)
    # Unset baselines take the layout's default (no gn for tokens); channel models keep bn, gn.
    ok = JobSpec.model_validate({**MINIMAL, "search": {"pool": ["ln", "rms", "dyt"]}})
    assert ok.verify.baselines == ["ln", "rms"]
    assert JobSpec.model_validate({**MINIMAL, "model": {"arch": "vgg_small"}}).verify.baselines == [
        "bn",
        "gn",
    ]
