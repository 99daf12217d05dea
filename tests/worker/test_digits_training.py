"""``normsearch demo``'s training (the trainable's epoch loop, no Ray) on scikit-learn's real
handwritten digits reaches well above chance and finalizes without drift."""

from __future__ import annotations

import pytest
import torch

import sn_core
from worker.digits_demo import accuracy, train_digits
from worker.results import EPOCH_KEYS

# End to end: real processes (Ray trials, Celery workers); not part of `make test-fast`.
pytestmark = pytest.mark.e2e


def test_sn_network_learns_digits_and_finalizes_without_drift():
    result = train_digits(arch="resnet20", epochs=4, batch_size=64, sparsity_end=0.5, seed=1)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert all(set(r) == set(EPOCH_KEYS) for r in result.history)  # the trainable's records
    assert result.history[-1]["done"] and result.history[-1]["all_fixed"]
    assert result.val_accuracy > 0.8  # chance is 0.1
    assert sn_core.fraction_fixed(result.model) == 1.0
    # Every choice is one-hot, so the finalized plain-torch model computes the same function.
    assert abs(result.finalized_accuracy - result.val_accuracy) < 1e-9
    x_val = result.data.x_val
    result.model.eval()
    torch.testing.assert_close(
        result.finalized(x_val[:64]), result.model(x_val[:64]), atol=1e-4, rtol=1e-4
    )
    assert len(result.plan) == len(sn_core.switch_layers(result.model))
    assert accuracy(result.finalized, result.data) == result.finalized_accuracy
