"""What a search produces, as plain data: per-trial outcomes and epoch records.

Trials report one ``EpochRecord`` per epoch (``worker.trainable``); the driver turns the stream
into ``TrialOutcome`` objects (``worker.search``), which the recommendation, the verification and
the report read; the recorders store the records (``worker.recorder``, ``worker.db_recorder``).
Everything here is JSON-serializable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NotRequired, TypedDict

from service.metrics import Metric


class LayerRatios(TypedDict):
    """One SN layer's ratios at an evaluation (``sn_core.switch_ratios`` restricted to these)."""

    mean: dict[str, float]  # {normalizer: ratio}, over the layer's pool
    var: dict[str, float]
    fixed: dict[str, bool]  # {"mean": bool, "var": bool}: that choice is one-hot for good
    # {"norm": r, "dyt": r, "none": r} over the output choices of a layer with point-wise
    # members (sn_core.vocabulary.OUTPUT_CHOICES); absent for the others.
    output: NotRequired[dict[str, float]]


class EpochRecord(TypedDict):
    """What a trial reports after each epoch (besides Ray's own bookkeeping keys).

    A TypedDict rather than a dataclass because the record crosses Ray (``tune.report``), JSON
    lines and the database as a plain dict: a TypedDict is one at run time, so no boundary
    converts it, and the type checker still knows every key.
    """

    epoch: int  # 1-based: the epochs completed
    epochs_budget: int
    train_loss: float
    val_loss: float | None  # None when not finite (a diverged model)
    val_accuracy: float
    fraction_fixed: float  # share of SN choices already one-hot
    all_fixed: bool
    stable_evals: int  # epochs trained with every choice fixed and unchanged
    progress: float  # epoch / epochs_budget
    ratios: dict[str, LayerRatios]  # by layer name, in network order
    done: bool  # the trial's last epoch (budget reached or stopped early)
    train_seconds: float  # wall time of the epoch's training steps
    # Only in the last record of a trial whose training loss stopped being finite: what happened
    # (step, loss, learning rate, what to change); the epoch was cut short there and the model
    # evaluated as it was (``worker.trainable.TrialTraining.epochs``).
    diverged: NotRequired[str]
    # A language model's validation perplexity, exp of ``val_loss`` (its mean token loss; None
    # when that is not finite); its ``val_accuracy`` is then the next-token accuracy.
    val_perplexity: NotRequired[float | None]
    # The Ray node the epoch was trained on (``ray.get_runtime_context().get_node_id()``): set
    # by the Ray trainable, absent from ``normsearch demo``'s records (no Ray).
    node_id: NotRequired[str]
    # Only in the first record after ``training.compile`` could not compile the model: why; the
    # trial trained eagerly from then on (``worker.trainable.TrialTraining``).
    compile_fallback: NotRequired[str]


# Spelled out: with postponed annotations a TypedDict cannot tell NotRequired keys apart.
OPTIONAL_EPOCH_KEYS: tuple[str, ...] = ("diverged", "node_id", "compile_fallback", "val_perplexity")
EPOCH_KEYS: tuple[str, ...] = tuple(
    key for key in EpochRecord.__annotations__ if key not in OPTIONAL_EPOCH_KEYS
)  # in every record


def epoch_record(result: dict[str, Any]) -> EpochRecord:
    """The trial-reported part of a Ray Tune result."""
    keys = (*EPOCH_KEYS, *OPTIONAL_EPOCH_KEYS)
    return {key: result[key] for key in keys if key in result}  # type: ignore[return-value]


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
    history: list[EpochRecord] = field(default_factory=list)  # in epoch order
    variant: str = "sn"  # "sn" (the search), "plan" or a baseline norm (verification)
    plan: dict[str, Any] | None = None  # sn_core NormalizerPlan.to_dict() of its final model
    # Its last checkpoint (model.safetensors + meta.json): where it is (a path, or an s3:// URI)
    # and Ray's ``Checkpoint`` of it, which reads it through its filesystem (``checkpoint_state``).
    checkpoint_dir: str | None = None
    error: str | None = None
    # The learning rate it trained with: ``lr`` (its identity, the base rate) scaled to its batch
    # size by the spec's ``training.lr_scaling``; None means unscaled, ``lr``.
    effective_lr: float | None = None
    # Set when its training loss stopped being finite (then ``status`` is "ERROR" and ``error``
    # says the same): a search trial so cut short gives no ratios to aggregate; a verification
    # run keeps its measured accuracy, a loss for its configuration rather than a dropped seed.
    diverged: str | None = None
    checkpoint: Any = field(default=None, repr=False, compare=False)
    # A language model's final validation perplexity (its last record's); None for classifiers.
    val_perplexity: float | None = None

    def __post_init__(self) -> None:
        if self.effective_lr is None:
            self.effective_lr = self.lr

    @property
    def counts_in_verification(self) -> bool:
        """Its final accuracy is a verification result: it finished, or it diverged (then it
        counts at the accuracy it ended with; dropping its seed would flatter an unstable
        configuration in the paired comparison)."""
        return self.val_accuracy is not None and (
            self.status == "TERMINATED" or bool(self.diverged)
        )

    def metric_value(self, metric: Metric) -> float | None:
        """Its final value of ``metric`` (``service.metrics``): accuracy or perplexity."""
        value = getattr(self, metric.key)
        return float(value) if value is not None and math.isfinite(value) else None

    @property
    def final_ratios(self) -> dict[str, LayerRatios]:
        return self.history[-1]["ratios"] if self.history else {}

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``checkpoint`` (Ray's object) is left out, ``checkpoint_dir`` says where."""
        data = asdict(replace(self, checkpoint=None))
        data.pop("checkpoint")
        return data
