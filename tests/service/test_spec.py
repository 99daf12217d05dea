"""Job spec: defaults, validation messages that name the field, schema export, settings."""

from __future__ import annotations

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


def test_generated_datasets_default_sample_counts():
    def dataset(**fields) -> DatasetSpec:
        return JobSpec.model_validate({**MINIMAL, "dataset": fields}).dataset

    assert dataset(kind="synthetic").samples == 2000
    assert dataset(kind="mnist1d").samples == 5000  # the published MNIST-1D size
    assert dataset(kind="mnist1d", num_samples=300).samples == 300
    assert errors_of({**MINIMAL, "dataset": {"kind": "mnist1d", "num_samples": 55}}) == [
        "dataset: Value error, mnist1d num_samples must be a multiple of 10 (the same number "
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


def test_builtin_arch_list_matches_the_zoo():
    assert set(BUILTIN_ARCHS) == set(sn_core.list_models())


def test_json_schema_is_exported_with_descriptions():
    schema = job_spec_schema()
    assert set(schema["required"]) == {"model", "dataset"}
    assert "TrainingSpec" in schema["$defs"]
    assert schema["$defs"]["TrainingSpec"]["properties"]["ratio_weight_decay"]["description"]


def test_settings_split_data_roots_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMSEARCH_DATA_ROOTS", f"{tmp_path}/a:{tmp_path}/b,{tmp_path}/c")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    settings = Settings()
    assert [p.name for p in settings.data_roots] == ["a", "b", "c"]
    assert settings.ray_address == "ray://head:10001"
