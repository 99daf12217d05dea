"""``normsearch demo``: one SN training on scikit-learn's handwritten digits, in this process.

The smallest end-to-end use of the search without Ray: the job spec's defaults on digits, trained
by the trainable's own epoch loop (``worker.trainable.TrialTraining``, so the demo trains exactly
as a search trial does), then the per-layer choices, the model finalized to plain torch layers and
a check that the finalized model agrees with the SN model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import sn_core
from service.spec import JobSpec

from .data import LoadedDataset, load_dataset
from .models import SN_VARIANT
from .results import EpochRecord
from .trainable import TrialTraining, evaluate


@dataclass
class DigitsResult:
    model: nn.Module
    finalized: nn.Module
    plan: sn_core.NormalizerPlan
    data: LoadedDataset
    val_accuracy: float
    finalized_accuracy: float
    epochs: int
    history: list[EpochRecord] = field(default_factory=list)


def digits_spec(
    *, arch: str, epochs: int, batch_size: int, lr: float, sparsity_end: float, seed: int
) -> JobSpec:
    """The job spec of the demo: one SN trial on digits (split by ``seed``), no early stop."""
    return JobSpec.model_validate(
        {
            "model": {"arch": arch},
            "dataset": {"kind": "digits", "seed": seed},
            "training": {"epochs": epochs, "batch_size": batch_size, "lr": lr},
            "search": {
                "sparsity": {"end": sparsity_end},
                "stop_when_stable": {"enabled": False},
                "trials": {"seeds": [seed]},
            },
            "verify": {"enabled": False},
        }
    )


def accuracy(model: nn.Module, data: LoadedDataset) -> float:
    """Validation accuracy of ``model`` on ``data`` (CPU)."""
    return evaluate(model, data.x_val, data.y_val, torch.device("cpu"))[1]


def train_digits(
    *,
    arch: str = "resnet20",
    epochs: int = 12,
    batch_size: int = 32,
    lr: float = 0.1,
    sparsity_end: float = 0.6,
    seed: int = 0,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> DigitsResult:
    """Train an SN version of ``arch`` on digits; sparsestmax makes every layer one-hot by
    ``sparsity_end`` of the budget. ``on_epoch(record)`` is called after every epoch."""
    spec = digits_spec(
        arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, sparsity_end=sparsity_end, seed=seed
    )
    data = load_dataset(spec.dataset)
    training = TrialTraining(
        spec, data, variant=SN_VARIANT, seed=seed, batch_size=batch_size, lr=lr, epochs=epochs
    )
    history: list[EpochRecord] = []
    for record in training.epochs():
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    model = training.model.cpu().eval()
    plan = sn_core.plan_from_model(model)
    finalized = sn_core.finalize(model, plan)
    return DigitsResult(
        model=model,
        finalized=finalized,
        plan=plan,
        data=data,
        val_accuracy=history[-1]["val_accuracy"],
        finalized_accuracy=accuracy(finalized, data),
        epochs=epochs,
        history=history,
    )
