"""``training.compile``: a trial trains its compiled model, or eagerly when compilation fails.

The backend is swapped for ``aot_eager`` (Dynamo, AOT autograd and the custom op's registrations,
no code generation: seconds on CPU) or for one that fails as a missing C++ compiler would.
"""

from __future__ import annotations

import logging

import pytest
from torch._dynamo.utils import counters

from service.spec import JobSpec
from worker import trainable
from worker.data import load_dataset
from worker.trainable import TrialTraining


def trial(compile_: bool) -> TrialTraining:
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "mlp", "kwargs": {"hidden": [16]}},
            "dataset": {"kind": "digits", "num_samples": 300},
            "training": {"epochs": 2, "batch_size": 64, "lr": 0.05, "compile": compile_},
            "search": {"pool": ["ln", "bn"], "sparsity": {"end": 0.5}},
        }
    )
    data = load_dataset(spec.dataset)
    return TrialTraining(spec, data, variant="sn", seed=0, batch_size=64, lr=0.05, epochs=2)


def failing_backend(graph, example_inputs):
    raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")


@pytest.mark.slow  # several compilations: ~20 s on a quiet 2-core machine
def test_a_compiled_trial_trains_as_the_eager_one(monkeypatch):
    monkeypatch.setattr(trainable, "COMPILE_BACKEND", "aot_eager")
    import torch._dynamo

    torch._dynamo.reset()
    counters.clear()
    compiled = list(trial(True).epochs())
    assert counters["stats"]["unique_graphs"] >= 2  # training and evaluation graphs
    eager = list(trial(False).epochs())
    for a, b in zip(compiled, eager, strict=True):
        assert "compile_fallback" not in a
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-2)
        assert a["fraction_fixed"] == b["fraction_fixed"]
    assert compiled[-1]["all_fixed"]  # layers fixed mid-trial: recompiled, no error


@pytest.mark.slow  # one failed trace and two short trials: ~15 s on the loaded machine
def test_a_trial_that_cannot_compile_trains_eagerly_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(trainable, "COMPILE_BACKEND", failing_backend)
    import torch._dynamo

    torch._dynamo.reset()
    with caplog.at_level(logging.WARNING, logger="worker.trainable"):
        records = list(trial(True).epochs())
    eager = list(trial(False).epochs())
    assert "C++ compiler" in records[0]["compile_fallback"]
    assert "compile_fallback" not in records[1]  # reported once
    assert [r["train_loss"] for r in records] == [r["train_loss"] for r in eager]
    lines = [r for r in caplog.records if "training.compile failed" in r.getMessage()]
    assert len(lines) == 1
