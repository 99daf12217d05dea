"""Bounded specs: the schema's type-level ceilings, the builders' arguments, and the operator's
limits (``service.limits``), each refusal naming the field, the limit and its variable."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from service.limits import SpecLimitExceeded, check_spec_limits, env_var, spec_limit_violations
from service.settings import Settings
from service.spec import ARCH_KWARGS, LANGUAGE_MODELS, JobSpec, format_validation_error, json_depth
from sn_core.zoo import get_model_builder
from tests.support.api import tiny_spec

EXAMPLES = sorted(Path(__file__).resolve().parents[2].glob("examples/*.yaml"))
MINIMAL = {"model": {"arch": "mlp"}, "dataset": {"kind": "digits"}}


def errors_of(payload: dict) -> list[str]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(payload)
    return format_validation_error(info.value)


def spec(**parts) -> JobSpec:
    return JobSpec.model_validate({**MINIMAL, **parts})


def test_arch_kwargs_match_the_zoo_builders_signatures():
    for arch, fields in ARCH_KWARGS.items():
        signature = inspect.signature(get_model_builder(arch))
        keyword_only = {
            name for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY
        }
        assert set(fields) == keyword_only, arch


def test_builtin_defaults_pass_their_own_kwargs_check():
    for arch in ARCH_KWARGS:
        signature = inspect.signature(get_model_builder(arch))
        defaults = {
            name: list(p.default) if isinstance(p.default, tuple) else p.default
            for name, p in signature.parameters.items()
            if p.kind is p.KEYWORD_ONLY
        }
        dataset = {"kind": "text"} if arch in LANGUAGE_MODELS else MINIMAL["dataset"]
        JobSpec.model_validate({"dataset": dataset, "model": {"arch": arch, "kwargs": defaults}})


@pytest.mark.parametrize(
    ("kwargs", "field", "reason"),
    [
        ({"hiden": [8]}, "model.kwargs.hiden", "mlp takes no argument 'hiden'; it takes: hidden"),
        ({"hidden": "64"}, "model.kwargs.hidden", "valid list"),
        ({"hidden": [64, 0]}, "model.kwargs.hidden.1", "greater than or equal to 1"),
        ({"hidden": [2**40]}, "model.kwargs.hidden.0", "less than or equal to 1048576"),
        ({"input_size": True}, "model.kwargs.input_size", "valid integer"),
    ],
)
def test_unknown_or_mistyped_builder_arguments_are_named(kwargs, field, reason):
    lines = errors_of({**MINIMAL, "model": {"arch": "mlp", "kwargs": kwargs}})
    assert any(line.startswith(f"{field}:") and reason in line for line in lines), lines


def test_deeply_nested_kwargs_are_refused_before_serialization():
    nested: dict = {}
    inner = nested
    for _ in range(1000):
        inner["a"] = {}
        inner = inner["a"]
    assert json_depth(nested) == 1001
    (line,) = errors_of({**MINIMAL, "model": {"arch": "mlp", "kwargs": nested}})
    assert line.startswith("model.kwargs: ") and "nested more than 4 levels" in line


@pytest.mark.parametrize(
    ("patch", "field", "reason"),
    [
        ({"search": {"trials": {"seeds": [0, 1, 1]}}}, "search.trials.seeds", "[1] appear"),
        ({"search": {"trials": {"seeds": [2**40]}}}, "search.trials.seeds.0", "less than"),
        ({"search": {"trials": {"seeds": [-1]}}}, "search.trials.seeds.0", "greater than"),
        ({"search": {"trials": {"batch_sizes": [8, 8]}}}, "search.trials.batch_sizes", "appear"),
        ({"search": {"trials": {"lrs": [0.1, 0.1]}}}, "search.trials.lrs", "appear"),
        ({"search": {"trials": {"batch_sizes": [10**30]}}}, "search.trials.batch_sizes", "65536"),
        ({"verify": {"baselines": ["bn", "bn"]}}, "verify.baselines", "['bn'] appear"),
        ({"verify": {"epochs": 10**30}}, "verify.epochs", "less than or equal to 10000"),
        ({"dataset": {"kind": "synthetic", "num_samples": 10**9}}, "dataset.num_samples", "less"),
        ({"dataset": {"kind": "digits", "seed": 10**30}}, "dataset.seed", "less than"),
        ({"model": {"arch": "mlp", "num_classes": 10**9}}, "model.num_classes", "less than"),
        ({"model": {"arch": "mlp", "in_channels": 10**9}}, "model.in_channels", "less than"),
    ],
)
def test_the_schema_refuses_duplicates_and_numbers_no_job_could_use(patch, field, reason):
    lines = errors_of({**MINIMAL, **patch})
    assert any(line.startswith(f"{field}:") and reason in line for line in lines), lines


def test_trial_counts_and_epochs_of_search_and_verification():
    s = spec(
        training={"epochs": 5},
        search={"trials": {"seeds": [0, 1], "batch_sizes": [4, 8, 16], "lrs": [0.1, 0.05]}},
        verify={"epochs": 3, "baselines": ["bn", "gn"]},
    )
    assert (s.search_trial_count, s.verification_trial_count) == (12, 6)  # 2x3x2; (1+2)x2
    assert s.trial_count == 18 and s.trial_epochs == 12 * 5 + 6 * 3
    off = spec(verify={"enabled": False}, search={"trials": {"seeds": [0, 1]}})
    assert off.verification_trial_count == 0 and off.trial_epochs == 2 * off.training.epochs


def test_examples_and_the_test_suites_spec_are_within_the_default_limits():
    specs = [JobSpec.model_validate(yaml.safe_load(path.read_text())) for path in EXAMPLES]
    specs.append(JobSpec.model_validate(tiny_spec()))
    assert len(specs) >= 5
    for s in specs:
        assert spec_limit_violations(s, Settings()) == []


def test_the_probe_of_640000_trials_is_refused_naming_each_limit():
    # The probe, within the schema's ceilings: 64 seeds x 64 batch sizes x 64 lrs.
    s = spec(
        training={"lr_scaling": "none"},
        search={
            "trials": {
                "seeds": list(range(64)),
                "batch_sizes": list(range(1, 65)),
                "lrs": [0.001 * i for i in range(1, 65)],
            }
        },
    )
    with pytest.raises(SpecLimitExceeded) as info:
        check_spec_limits(s, Settings())
    body = info.value.to_dict()
    assert info.value.status_code == 422 and body["code"] == "limit_exceeded"
    fields = [e["field"] for e in body["errors"]]
    assert fields == [
        "search.trials.seeds",
        "search.trials.batch_sizes",
        "search.trials.lrs",
        "search.trials",
        "search.trials",
    ]
    seeds = body["errors"][0]["message"]
    assert seeds == (
        "the number of seeds is 64, over the limit of 16; ask for less, or have the operator "
        "raise the limit (NORMSEARCH_MAX_SEEDS)"
    )
    assert "262336" in body["errors"][3]["message"] and "NORMSEARCH_MAX_TRIALS" in body["message"]
    assert "NORMSEARCH_MAX_TRIAL_EPOCHS" in body["errors"][4]["message"]


@pytest.mark.parametrize(
    ("parts", "setting", "field", "value"),
    [
        ({"training": {"epochs": 2000}}, "max_epochs", "training.epochs", 2000),
        ({"verify": {"epochs": 1001}}, "max_epochs", "verify.epochs", 1001),
        (
            {"training": {"batch_size": 8192, "lr": 0.01}},
            "max_batch_size",
            "training.batch_size",
            8192,
        ),
        (
            {
                "training": {"lr_scaling": "none"},
                "search": {"trials": {"batch_sizes": [32, 5000]}},
            },
            "max_batch_size",
            "search.trials.batch_sizes",
            5000,
        ),
        (
            {"dataset": {"kind": "synthetic", "num_samples": 300_000}},
            "max_num_samples",
            "dataset.num_samples",
            300_000,
        ),
        (
            {"dataset": {"kind": "synthetic", "num_classes": 2000}},
            "max_num_classes",
            "dataset.num_classes",
            2000,
        ),
        (
            {"model": {"arch": "mlp", "num_classes": 5000}},
            "max_num_classes",
            "model.num_classes",
            5000,
        ),
        ({"model": {"arch": "mlp", "in_channels": 65}}, "max_in_channels", "model.in_channels", 65),
        (
            {"dataset": {"kind": "synthetic", "image_size": 600}},
            "max_image_size",
            "dataset.image_size",
            600,
        ),
    ],
)
def test_each_limit_names_its_field_and_variable(parts, setting, field, value):
    violations = spec_limit_violations(spec(**parts), Settings())
    assert [v.field for v in violations] == [field]
    assert f"is {value}, over the limit of {getattr(Settings(), setting)}" in violations[0].message
    assert env_var(setting) in violations[0].message
    # The operator raises the limit, and the same spec passes.
    raised = Settings(**{setting: value})
    assert spec_limit_violations(spec(**parts), raised) == []


def test_total_trials_and_trial_epochs_are_bounded_separately():
    grid = {"trials": {"seeds": list(range(8)), "batch_sizes": [8, 16, 32, 64]}}
    s = spec(training={"epochs": 100}, search=grid)  # 32 search trials + 24 verification
    assert s.trial_count == 56 and s.trial_epochs == 5600
    assert spec_limit_violations(s, Settings()) == []
    small = Settings(max_trials=50, max_trial_epochs=5000)
    messages = [v.message for v in spec_limit_violations(s, small)]
    assert len(messages) == 2
    assert "trials, search and verification together is 56, over the limit of 50" in messages[0]
    assert "(trials x epochs each) is 5600, over the limit of 5000" in messages[1]


def test_limits_are_settings_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("NORMSEARCH_MAX_TRIALS", "1000")
    monkeypatch.setenv("NORMSEARCH_MAX_SEEDS", "32")
    settings = Settings()
    assert (settings.max_trials, settings.max_seeds) == (1000, 32)
    with pytest.raises(ValidationError):  # no limit above the schema's own ceiling
        Settings(max_seeds=65)
