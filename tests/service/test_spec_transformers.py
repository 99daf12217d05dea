"""The job spec of transformer jobs: defaults per model family and 422s naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.spec import JobSpec, applicable_dump, format_validation_error

LM = {"model": {"arch": "char_lm"}, "dataset": {"kind": "text"}}
VIT = {"model": {"arch": "vit"}, "dataset": {"kind": "digits"}}


def _errors(payload: dict) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(payload)
    return format_validation_error(caught.value)


def test_transformer_defaults_and_metric():
    lm, vit = JobSpec.model_validate(LM), JobSpec.model_validate(VIT)
    assert lm.metric == "perplexity" and vit.metric == "accuracy"
    assert lm.search.pool == ["ln", "rms"] and lm.verify.baselines == ["ln", "rms"]
    assert vit.search.pool == ["ln", "rms"] and vit.verify.baselines == ["ln", "rms"]
    assert lm.dataset.context == 64 and lm.dataset.path is None
    assert JobSpec.model_validate(applicable_dump(lm)) == lm
    assert "context_length" not in applicable_dump(vit)["dataset"]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({**LM, "dataset": {"kind": "digits"}}, "dataset.kind: model 'char_lm' cannot train"),
        ({**VIT, "dataset": {"kind": "text"}}, "dataset.kind: model 'vit' cannot train"),
        ({**LM, "search": {"pool": ["ln", "bn"]}}, "search.pool: model 'char_lm' cannot mix"),
        ({**VIT, "search": {"pool": ["ln", "bn"]}}, "search.pool: model 'vit' cannot mix ['bn']"),
        ({**VIT, "verify": {"baselines": ["bn"]}}, "verify.baselines: model 'vit' has no"),
        (
            {**LM, "dataset": {"kind": "text", "context_length": 5000}},
            "dataset.context_length: Input should be less than or equal to 4096",
        ),
        (
            {**LM, "dataset": {"kind": "text", "max_chars": 10}},
            "dataset.max_chars: Input should be greater than or equal to 1000",
        ),
        ({**LM, "dataset": {"kind": "text", "image_size": 8}}, "dataset.image_size:"),
        ({**LM, "dataset": {"kind": "text", "num_samples": 100}}, "dataset.num_samples:"),
        ({**VIT, "dataset": {"kind": "digits", "max_chars": 5000}}, "dataset.max_chars:"),
        (
            {**LM, "model": {"arch": "char_lm", "kwargs": {"context": 8}}},
            "model.kwargs.context: char_lm context 8 is shorter than",
        ),
        ({**VIT, "model": {"arch": "vit", "kwargs": {"heads": 0}}}, "model.kwargs.heads:"),
        ({**VIT, "model": {"arch": "vit", "kwargs": {"depth": 65}}}, "model.kwargs.depth:"),
        ({**VIT, "model": {"arch": "vit", "kwargs": {"qk_norm": 1}}}, "model.kwargs.qk_norm:"),
    ],
)
def test_bad_transformer_specs_name_the_field(payload, expected):
    assert any(line.startswith(expected) for line in _errors(payload)), _errors(payload)
