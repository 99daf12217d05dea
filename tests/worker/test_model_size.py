"""The worker's model-size check: exact parameter counts and an activation estimate from the meta
device, so a model over the limits fails the job at once without allocating it."""

from __future__ import annotations

import time

import pytest
import torch

from service.limits import ModelLimits
from service.settings import Settings
from service.spec import JobSpec
from worker.data import load_dataset
from worker.job import ModelSpecError, check_searchable
from worker.model_size import ModelSize, measure_model, size_problems
from worker.models import zoo_model

DEFAULTS = ModelLimits.from_settings(Settings())


def mlp_spec(hidden, batch_sizes=(32,)) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"arch": "mlp", "kwargs": {"hidden": list(hidden)}},
            "dataset": {"kind": "digits"},
            "training": {"batch_size": 32, "lr": 0.01, "lr_scaling": "none"},
            "search": {"trials": {"batch_sizes": list(batch_sizes)}},
        }
    )


@pytest.mark.parametrize(
    ("arch", "kwargs", "shape"),
    [("mlp", {"hidden": [24, 12]}, (1, 8, 8)), ("resnet20", {}, (3, 8, 8)), ("cnn1d", {}, (1, 40))],
)
def test_parameter_count_is_exactly_the_built_models(arch, kwargs, shape):
    spec = JobSpec.model_validate(
        {"model": {"arch": arch, "kwargs": kwargs}, "dataset": {"kind": "digits"}}
    )
    size = measure_model(spec, input_shape=shape, num_classes=10, in_channels=shape[0])
    real = zoo_model(spec, 10, shape[0])
    assert size.params == sum(p.numel() for p in real.parameters())
    assert size.batch_size == 32 and size.activation_bytes > 0


def test_activation_estimate_counts_every_layer_output_at_the_largest_batch():
    # MLP 64 -> 24 -> 12 -> 10 at batch 16: per sample, the two linears (24, 12), their norms
    # (24, 12) and the head (10); the ReLUs are in place. float32.
    small = measure_model(
        mlp_spec([24, 12], batch_sizes=(4, 16)),
        input_shape=(1, 8, 8),
        num_classes=10,
        in_channels=1,
    )
    assert small.batch_size == 16
    assert small.activation_bytes == 16 * (24 + 24 + 12 + 12 + 10) * 4


def test_the_probes_40000_wide_mlp_is_refused_in_a_moment_naming_the_limit():
    spec = mlp_spec([40000, 40000])
    data = load_dataset(spec.dataset)
    started = time.perf_counter()
    with pytest.raises(ModelSpecError) as info:
        check_searchable(spec, data, DEFAULTS)
    assert time.perf_counter() - started < 5  # measured on the meta device, never allocated
    message = str(info.value)
    assert message.startswith("model 'mlp' is too large to train here: it has 1,603,120,010 ")
    assert "over the limit of 100,000,000 (NORMSEARCH_MAX_MODEL_PARAMS)" in message


def test_activation_memory_over_its_limit_names_the_batch_size_and_variable():
    spec = mlp_spec([4096], batch_sizes=(32, 4096))
    data = load_dataset(spec.dataset)
    with pytest.raises(ModelSpecError, match="NORMSEARCH_MAX_ACTIVATION_MIB") as info:
        check_searchable(spec, data, ModelLimits(max_params=10**9, max_activation_mib=100))
    assert "one training step at batch size 4096 needs about 128 MiB" in str(info.value)
    # Within the limits the model is built for real and searched as before.
    assert check_searchable(spec, data, ModelLimits(max_params=10**9, max_activation_mib=200)) == 1


def test_size_problems_lists_each_bound_and_skips_an_unmeasured_estimate():
    limits = ModelLimits(max_params=1000, max_activation_mib=1)
    both = size_problems(ModelSize(2000, 2 << 20, 8), limits)
    assert len(both) == 2 and "NORMSEARCH_MAX_MODEL_PARAMS" in both[0]
    assert size_problems(ModelSize(10, None, 8), limits) == []


def test_a_model_that_does_not_fit_the_data_is_still_named_as_such():
    spec = JobSpec.model_validate(
        {"model": {"arch": "mlp", "kwargs": {"input_size": 5}}, "dataset": {"kind": "digits"}}
    )
    data = load_dataset(spec.dataset)
    with pytest.raises(ModelSpecError, match=r"model 'mlp' cannot be built .*\[1, 8, 8\]"):
        check_searchable(spec, data, DEFAULTS)
    assert torch.device("meta") != torch.empty(1).device  # the default device is left as it was
