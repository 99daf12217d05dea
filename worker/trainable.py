"""The Ray Tune function trainable: train one variant, anneal SN ratios, report every epoch.

A trial is fully described by its config: the job spec (as a dict), the variant ("sn" for the
search, "plan" or a baseline norm for verification), seed, batch size, learning rate and budget.
Every epoch it evaluates, reports metrics with a checkpoint (model, optimizer, schedule and RNG
state), and on restart resumes from the last checkpoint, so a crashed trial continues with no gap
and no repeated epoch. Trials never write to a database: the driver's callback records results.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

import sn_core
from service.spec import JobSpec

from .data import LoadedDataset
from .models import SN_VARIANT, build_for_data
from .results import EpochRecord

# The profiler's names of the epoch loop's phases (``bench/trial_profile.py`` sums them): free
# when no profiler is running.
PHASES = {
    name: f"normsearch.{name}"
    for name in ("batch", "forward", "backward", "optimizer", "sparsity", "evaluate", "snapshot")
}
# torch.compile's backend for ``training.compile`` (tests use a quicker one).
COMPILE_BACKEND = "inductor"
STATE_FILE = "state.pt"
PLAN_FILE = "plan.json"
META_FILE = "meta.json"


log = logging.getLogger(__name__)


def _device() -> torch.device:
    """The trial's GPU when Ray assigned it one (CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _optimizer(model: nn.Module, spec: JobSpec, lr: float) -> torch.optim.Optimizer:
    training = spec.training
    groups = sn_core.param_groups(
        model,
        lr=lr,
        weight_decay=training.weight_decay,
        ratio_lr_mult=training.ratio_lr_mult,
        ratio_weight_decay=training.ratio_weight_decay,
    )
    if training.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(
        groups, lr=lr, momentum=training.momentum, nesterov=training.momentum > 0
    )


def _lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate after ``step`` of ``total`` optimizer steps."""
    progress = min(step / max(total, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "onecycle":  # linear warm-up over 20%, then cosine down to 0
        warm = 0.2
        if progress < warm:
            return 0.1 + 0.9 * progress / warm
        return 0.5 * (1 + math.cos(math.pi * (progress - warm) / (1 - warm)))
    if schedule == "step":
        return 0.1 ** int(progress * 3 - 1e-9) if progress > 0 else 1.0
    return 1.0


def _set_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base * factor


# The most of a dataset (inputs and labels) a trial copies to its GPU up front; a larger one stays
# in host memory and goes over batch by batch. Four quarter-GPU trials hold four copies.
DEVICE_DATA_MAX_BYTES = 1 << 30


def _on_device(*tensors: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """``tensors`` on ``device`` when together they fit ``DEVICE_DATA_MAX_BYTES``, else as they
    are (a CPU trial: always as they are)."""
    size = sum(t.numel() * t.element_size() for t in tensors)
    if device.type == "cpu" or size > DEVICE_DATA_MAX_BYTES:
        return tensors
    return tuple(t.to(device) for t in tensors)


def token_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross entropy of class logits (N, K) against labels (N,), or of a language model's
    (N, T, V) logits against (N, T) next-token targets over every position."""
    if y.dim() == 2:
        return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction=reduction)
    return nn.functional.cross_entropy(logits, y, reduction=reduction)


# Above this mean token loss the perplexity would overflow a float: recorded as None.
MAX_LOG_PERPLEXITY = 700.0


def perplexity(mean_token_loss: float) -> float | None:
    """exp of the mean token cross entropy (nats); None when not finite."""
    if not math.isfinite(mean_token_loss) or mean_token_loss > MAX_LOG_PERPLEXITY:
        return None
    return math.exp(mean_token_loss)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device, batch_size=512):
    """(mean cross-entropy, accuracy) of ``model`` on (x, y); for (N, T) token targets both are
    per token (the accuracy of the next-token argmax)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    count = y.numel()
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        logits = model(xb).float()
        loss_sum += float(token_loss(logits, yb, reduction="sum"))
        correct += int((logits.argmax(-1) == yb).sum())
    return loss_sum / max(count, 1), correct / max(count, 1)


def _ratio_snapshot(model: nn.Module) -> dict[str, Any]:
    """Per SN layer its mean and variance ratios, which are fixed, and its output ratios when
    its pool has point-wise members (``worker.results.LayerRatios``)."""
    snapshot = {}
    for name, info in sn_core.switch_ratios(model).items():
        entry = {"mean": info["mean"], "var": info["var"], "fixed": info["fixed"]}
        if info.get("output"):
            entry["output"] = info["output"]
        snapshot[name] = entry
    return snapshot


def _finite_ratios(ratios: dict[str, Any]) -> bool:
    return all(
        math.isfinite(p)
        for info in ratios.values()
        for role in ("mean", "var", "output")
        for p in (info.get(role) or {}).values()
    )


def _choices(ratios: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        name: (max(info["mean"], key=info["mean"].get), max(info["var"], key=info["var"].get))
        for name, info in ratios.items()
    }


def _save_checkpoint(directory: Path, model, optimizer, controller, meta: dict) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "controller": controller.state_dict() if controller is not None else None,
        "rng": torch.get_rng_state(),
    }
    torch.save(state, directory / STATE_FILE)
    if sn_core.switch_layers(model):
        sn_core.plan_from_model(model).save(directory / PLAN_FILE)
    (directory / META_FILE).write_text(json.dumps(meta))


def load_checkpoint_state(directory: Path, device="cpu") -> tuple[dict, dict]:
    """(state dict bundle, meta) of a trial checkpoint; tensors only, no code (weights_only)."""
    state = torch.load(Path(directory) / STATE_FILE, map_location=device, weights_only=True)
    meta = json.loads((Path(directory) / META_FILE).read_text())
    return state, meta


class TrialTraining:
    """One variant's model, optimizer and SN schedule, and its epoch loop.

    The Ray trainable (``train_trial``) and the single-process ``normsearch demo``
    (``worker.digits_demo``) both train through it, so they cannot drift apart. ``epochs()``
    yields one ``EpochRecord`` per epoch; between two records ``save(directory)`` writes a
    checkpoint that ``restore`` continues from with no gap and no repeated epoch.
    """

    def __init__(
        self,
        spec: JobSpec,
        data: LoadedDataset,
        *,
        variant: str,
        seed: int,
        batch_size: int,
        lr: float,
        epochs: int,
        plan: dict[str, Any] | None = None,
    ) -> None:
        torch.manual_seed(seed)
        self.spec, self.data, self.variant = spec, data, variant
        self.seed, self.batch_size, self.epochs_budget = seed, batch_size, epochs
        self.device = _device()
        self.model = build_for_data(spec, variant, data, plan=plan).to(self.device)
        self.optimizer = _optimizer(self.model, spec, lr)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.searching = variant == SN_VARIANT and spec.search.sparsity.method != "none"
        self.controller = (
            sn_core.SparsityController(
                self.model,
                method=spec.search.sparsity.method,
                start=spec.search.sparsity.start,
                end=spec.search.sparsity.end,
            )
            if variant == SN_VARIANT
            else None
        )
        # A dataset that fits DEVICE_DATA_MAX_BYTES moves to the trial's device once: a batch is
        # then an index into it, with no per-batch copy (on a CPU trial nothing moves).
        self.x_train, self.y_train = _on_device(data.x_train, data.y_train, device=self.device)
        self.x_val, self.y_val = _on_device(data.x_val, data.y_val, device=self.device)
        self.use_amp = spec.training.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.steps_per_epoch = math.ceil(len(data.x_train) / batch_size)
        self.total_steps = epochs * self.steps_per_epoch
        # The schedule moves in ~200 steps over the budget (and at every epoch end): a few steps
        # of delay in fixing a one-hot choice change nothing, a sparsestmax pass over every layer
        # after every optimizer step costs ~20% of a step.
        self.controller_every = max(1, self.total_steps // 200)
        self.epoch, self.stable_evals = 0, 0  # epochs completed
        self.choices: dict[str, tuple[str, str]] | None = None
        self.all_fixed = False
        # What forward and evaluation call: the model, or its compiled twin (same parameters and
        # buffers; checkpoints keep reading self.model).
        self.net: nn.Module = self.model
        if spec.training.compile:
            self.net = torch.compile(self.model, backend=COMPILE_BACKEND)
        self.compile_fallback: str | None = None  # why compilation failed, until reported

    def restore(self, directory: Path) -> None:
        """Continue from the checkpoint ``save`` wrote into ``directory``."""
        state, meta = load_checkpoint_state(directory, self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.controller is not None and state["controller"] is not None:
            self.controller.load_state_dict(state["controller"])
        torch.set_rng_state(state["rng"])
        self.epoch, self.stable_evals = meta["epoch"], meta["stable_evals"]
        self.choices = {k: tuple(v) for k, v in meta["choices"].items()}
        self.all_fixed = meta["all_fixed"]

    def save(self, directory: Path) -> None:
        """Checkpoint the epochs completed so far (model, optimizer, schedule, RNG)."""
        meta = {
            "epoch": self.epoch,
            "stable_evals": self.stable_evals,
            "choices": {k: list(v) for k, v in (self.choices or {}).items()},
            "all_fixed": self.all_fixed,
            "variant": self.variant,
        }
        _save_checkpoint(directory, self.model, self.optimizer, self.controller, meta)

    def epochs(self) -> Iterator[EpochRecord]:
        """Train the remaining epochs, one record after each; stops after the record with
        ``done`` (budget reached, or every choice stable for ``stop_when_stable.patience``)."""
        spec, model, optimizer, device = self.spec, self.model, self.optimizer, self.device
        batch_size, epochs, total_steps = self.batch_size, self.epochs_budget, self.total_steps
        last_step = self.steps_per_epoch - 1
        x_train, y_train = self.x_train, self.y_train
        yb_is_tokens = y_train.dim() == 2  # a language model: next-token targets, perplexity
        for epoch in range(self.epoch, epochs):
            epoch_started = time.perf_counter()
            model.train()
            order = torch.randperm(
                len(x_train), generator=torch.Generator().manual_seed(self.seed * 1000 + epoch)
            ).to(x_train.device)
            loss_sum, seen, diverged = 0.0, 0, None
            for i, start in enumerate(range(0, len(x_train), batch_size)):
                step = epoch * self.steps_per_epoch + i
                factor = _lr_factor(spec.training.lr_schedule, step, total_steps)
                _set_lr(optimizer, self.base_lrs, factor)
                with record_function(PHASES["batch"]):
                    idx = order[start : start + batch_size]
                    xb, yb = x_train[idx].to(device), y_train[idx].to(device)  # no-op on device
                optimizer.zero_grad(set_to_none=True)
                with record_function(PHASES["forward"]):
                    with torch.autocast(device.type, enabled=self.use_amp):
                        loss = token_loss(self._on_net(operator.call, xb), yb)
                    value = loss.item()
                if not math.isfinite(value):
                    diverged = self._divergence(value, epoch, i, optimizer)
                    break
                with record_function(PHASES["backward"]):
                    self.scaler.scale(loss).backward()
                with record_function(PHASES["optimizer"]):
                    if spec.training.grad_clip is not None:
                        self.scaler.unscale_(optimizer)
                        sn_core.clip_ratio_grad_norm(model, spec.training.grad_clip)
                    self.scaler.step(optimizer)
                    self.scaler.update()
                if self.controller is not None and (
                    (step + 1) % self.controller_every == 0 or i == last_step
                ):
                    with record_function(PHASES["sparsity"]):
                        self.controller.step((step + 1) / total_steps)
                loss_sum, seen = loss_sum + value * len(idx), seen + len(idx)

            train_seconds = time.perf_counter() - epoch_started
            with record_function(PHASES["evaluate"]):
                val_loss, val_accuracy = self._on_net(evaluate, self.x_val, self.y_val, device)
            with record_function(PHASES["snapshot"]):
                ratios = _ratio_snapshot(model)
            if diverged is not None and not _finite_ratios(ratios):
                ratios = {}  # NaN ratios would reach JSON (API, database) and mean nothing
            fraction_fixed = sn_core.fraction_fixed(model)
            all_fixed = bool(ratios) and fraction_fixed == 1.0
            choices = _choices(ratios)
            # Epochs completed with every choice already fixed at the previous evaluation: the
            # network has trained with its hard choices for that long (the epoch that fixed the
            # last layer does not count).
            unchanged = all_fixed and self.all_fixed and choices == self.choices
            self.stable_evals = self.stable_evals + 1 if unchanged else 0
            self.choices, self.all_fixed, self.epoch = choices, all_fixed, epoch + 1
            stop_early = (
                self.searching
                and spec.search.stop_when_stable.enabled
                and all_fixed
                and self.stable_evals >= spec.search.stop_when_stable.patience
            )
            done = stop_early or epoch + 1 == epochs or diverged is not None
            record = EpochRecord(
                epoch=epoch + 1,
                epochs_budget=epochs,
                train_loss=loss_sum / max(seen, 1),  # over the steps with a finite loss
                val_loss=val_loss if math.isfinite(val_loss) else None,
                val_accuracy=val_accuracy,
                fraction_fixed=fraction_fixed,
                all_fixed=all_fixed,
                stable_evals=self.stable_evals,
                progress=(epoch + 1) / epochs,
                ratios=ratios,
                done=done,
                train_seconds=train_seconds,
            )
            if yb_is_tokens:
                record["val_perplexity"] = perplexity(val_loss)
            if diverged is not None:
                record["diverged"] = diverged
            if self.compile_fallback is not None:
                record["compile_fallback"], self.compile_fallback = self.compile_fallback, None
            yield record
            if done:
                return

    def _on_net(self, call, *args):
        """``call(self.net, *args)``; when compiling the model fails (no C++ compiler, an inductor
        bug), the trial continues eagerly, logged once and noted in its next record. A failed
        compilation has run nothing, so the call is repeated on the model itself."""
        if self.net is self.model:
            return call(self.model, *args)
        try:
            return call(self.net, *args)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            inner = getattr(error, "inner_exception", None) or error
            reason = f"{type(inner).__name__}: {str(inner).strip()[:300]}"
            self.compile_fallback = f"training.compile failed, training eagerly: {reason}"
            log.warning("%s", self.compile_fallback)
            self.net = self.model
            return call(self.model, *args)

    def _divergence(self, loss: float, epoch: int, index: int, optimizer) -> str:
        """What a user is told when the training loss stops being finite, and why it stops:
        another step would only spread NaN through the weights (and the ratios)."""
        lr = max(group["lr"] for group in optimizer.param_groups)
        return (
            f"training diverged: the loss was {loss} at epoch {epoch + 1}, step {index + 1} of "
            f"{self.steps_per_epoch} (batch size {self.batch_size}, learning rate {lr:.3g}); "
            "lower training.lr or use a larger batch size"
        )


def trial_effective_lr(spec: JobSpec, trial: dict[str, Any]) -> float:
    """The learning rate a grid point trains with: its ``effective_lr``, or for a grid built
    without one, its base ``lr`` scaled by the spec's rule (``JobSpec.effective_lr``)."""
    if "effective_lr" in trial:
        return float(trial["effective_lr"])
    return spec.effective_lr(int(trial["batch_size"]), float(trial["lr"]))


def train_trial(config: dict[str, Any], data: LoadedDataset) -> None:
    """Ray Tune function trainable (``tune.with_parameters(train_trial, data=...)``)."""
    import ray
    from ray import tune

    spec = JobSpec.model_validate(config["spec"])
    trial = config["trial"]  # one grid point (worker.search.grid_point)
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_trial)))
    training = TrialTraining(
        spec,
        data,
        variant=trial.get("variant", config.get("variant", SN_VARIANT)),
        seed=int(trial["seed"]),
        batch_size=int(trial["batch_size"]),
        lr=trial_effective_lr(spec, trial),
        epochs=int(config["epochs"]),
        plan=config.get("plan"),
    )
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            training.restore(Path(directory))
    node_id = ray.get_runtime_context().get_node_id()  # where it ran, for users and tests
    for record in training.epochs():
        record["node_id"] = node_id
        with tempfile.TemporaryDirectory() as directory:
            training.save(Path(directory))
            tune.report(dict(record), checkpoint=tune.Checkpoint.from_directory(directory))
