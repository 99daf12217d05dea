"""A short Switchable Normalization search on scikit-learn's handwritten digits.

The smallest end-to-end use of sn_core: build a zoo model, convert its norms to SN, train with the
ratio logits in their own optimizer group while sparsestmax anneals every layer to one normalizer,
then read the per-layer choices, finalize to plain torch layers and check the finalized model
agrees with the SN model. ``worker.job.run_job`` does the same at scale: Ray Tune trials over
seeds, batch sizes and learning rates, with checkpoints, a majority recommendation and a
verification.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

import sn_core


@dataclass
class DigitsResult:
    model: nn.Module
    finalized: nn.Module
    plan: sn_core.NormalizerPlan
    val_accuracy: float
    finalized_accuracy: float
    epochs: int
    history: list[dict] = field(default_factory=list)


def load_digits(seed: int = 0, val_fraction: float = 0.2) -> tuple[torch.Tensor, ...]:
    """Digits as (x_train, y_train, x_val, y_val): 1x8x8 float images scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(len(x) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(1) == y[start : start + batch_size]).sum())
    return correct / len(x)


def train_digits(
    *,
    arch: str = "resnet20",
    epochs: int = 12,
    batch_size: int = 32,
    lr: float = 0.1,
    ratio_lr_mult: float = 1.0,
    sparsity_end: float = 0.6,
    seed: int = 0,
    on_epoch=None,
) -> DigitsResult:
    """Train an SN version of ``arch`` on digits; sparsestmax makes every layer one-hot by
    ``sparsity_end`` of the budget. ``on_epoch(record)`` is called after every epoch."""
    torch.manual_seed(seed)
    x_train, y_train, x_val, y_val = load_digits(seed)
    model = sn_core.build_model(arch, num_classes=10, in_channels=1)
    sn_core.convert_to_switchnorm(model, pool=("in", "ln", "bn"))
    groups = sn_core.param_groups(model, lr=lr, weight_decay=5e-4, ratio_lr_mult=ratio_lr_mult)
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    total_steps = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=total_steps, pct_start=0.2
    )
    controller = sn_core.SparsityController(model, method="sparsestmax", end=sparsity_end)
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict] = []
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train))
        total_loss = 0.0
        for start in range(0, len(x_train), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            sn_core.clip_ratio_grad_norm(model, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            controller.step(step / total_steps)
            total_loss += loss.item() * len(idx)
        record = {
            "epoch": epoch + 1,
            "loss": total_loss / len(x_train),
            "val_accuracy": accuracy(model, x_val, y_val),
            "fraction_fixed": sn_core.fraction_fixed(model),
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    plan = sn_core.plan_from_model(model)
    finalized = sn_core.finalize(model, plan)
    return DigitsResult(
        model=model,
        finalized=finalized,
        plan=plan,
        val_accuracy=history[-1]["val_accuracy"],
        finalized_accuracy=accuracy(finalized, x_val, y_val),
        epochs=epochs,
        history=history,
    )
