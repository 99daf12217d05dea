"""What a search produces, as plain data: per-trial outcomes and epoch records.

Trials report one ``EpochRecord``-shaped dict per epoch (``worker.trainable``); the driver turns
the stream into ``TrialOutcome`` objects (``worker.search``), which the recommendation, the
verification and the report read. Everything here is JSON-serializable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Keys of the per-epoch result a trial reports (besides Ray's own bookkeeping keys):
#   epoch, epochs_budget, train_loss, val_loss, val_accuracy, fraction_fixed, all_fixed,
#   stable_evals, progress, ratios, done, pid (the worker process that ran the epoch),
#   train_seconds (wall time of the epoch's training steps)
# ``ratios`` is sn_core.switch_ratios(model) restricted to {"mean", "var", "fixed"} per layer:
#   {layer: {"mean": {norm: float}, "var": {norm: float}, "fixed": {"mean": bool, "var": bool}}}
EPOCH_KEYS = (
    "epoch",
    "epochs_budget",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "fraction_fixed",
    "all_fixed",
    "stable_evals",
    "progress",
    "ratios",
    "done",
    "pid",
    "train_seconds",
)


def epoch_record(result: dict[str, Any]) -> dict[str, Any]:
    """The trial-reported part of a Ray Tune result."""
    return {key: result[key] for key in EPOCH_KEYS if key in result}


@dataclass
class TrialOutcome:
    """One finished (or failed) trial of a search."""

    trial_id: str
    seed: int
    batch_size: int
    lr: float
    status: str  # "TERMINATED" or "ERROR"
    epochs_used: int
    epochs_budget: int
    val_accuracy: float | None
    history: list[dict[str, Any]] = field(default_factory=list)  # epoch records, in order
    variant: str = "sn"  # "sn" (the search), "plan" or a baseline norm (verification)
    plan: dict[str, Any] | None = None  # sn_core NormalizerPlan.to_dict() of its final model
    checkpoint_dir: str | None = None  # its last checkpoint (model.safetensors + meta.json)
    error: str | None = None

    @property
    def final_ratios(self) -> dict[str, Any]:
        return self.history[-1]["ratios"] if self.history else {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
