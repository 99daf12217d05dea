"""A trial whose training loss stops being finite stops there, with its reason, and what it
reports stays finite JSON (the API and the database refuse NaN)."""

from __future__ import annotations

import json

import pytest

from service.spec import JobSpec
from tests.support.datasets import poisoned_digits
from worker.data import load_dataset
from worker.trainable import TrialTraining


@pytest.mark.parametrize("variant", ["sn", "bn"])
def test_a_non_finite_loss_ends_the_trial_with_its_reason(variant):
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "mlp"},
            "dataset": {"kind": "digits"},
            "training": {"epochs": 3, "batch_size": 64, "lr": 0.1},
            "search": {"pool": ["ln", "bn"]},
        }
    )
    data = poisoned_digits()
    training = TrialTraining(spec, data, variant=variant, seed=0, batch_size=64, lr=0.1, epochs=3)
    records = list(training.epochs())
    assert len(records) == 1  # stopped in its first epoch, not trained on NaN weights
    (record,) = records
    assert record["done"]
    assert record["diverged"].startswith("training diverged: the loss was nan at epoch 1, step ")
    assert "batch size 64" in record["diverged"] and "lower training.lr" in record["diverged"]
    assert 0.0 <= record["val_accuracy"] <= 1.0  # measured on the model as it was
    json.dumps(record, allow_nan=False)  # no NaN reaches JSON


def test_a_finite_run_reports_no_divergence():
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "mlp"},
            "dataset": {"kind": "digits"},
            "training": {"epochs": 1, "batch_size": 64, "lr": 0.1},
            "search": {"pool": ["ln", "bn"]},
        }
    )
    data = load_dataset(spec.dataset, data_roots=[])
    (record,) = TrialTraining(
        spec, data, variant="sn", seed=0, batch_size=64, lr=0.1, epochs=1
    ).epochs()
    assert "diverged" not in record and record["val_accuracy"] > 0.5
