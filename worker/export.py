"""What a job hands out: the plan and the checkpoint of the configuration the verdict chose.

The search recommends a per-layer plan; the verification (``worker.job.verify``) trains that plan
and uniform baselines from scratch, and its verdict (``worker.verdict``) names the configuration
to use. The downloads follow the verdict, so that what a user deploys is what was verified:

* ``plan.json`` / ``plan.yaml`` (``deliverable_plan``): the chosen configuration as a plan: the
  search's per-layer plan when the verdict picks it, else the chosen baseline's uniform plan (every
  norm layer that baseline's normalizer for mean and variance, ``uniform_plan``). Its metadata says
  which configuration, whether it was verified, the verdict's words, and where the search's own
  plan is kept (``search_plan.json`` and report.json's ``recommendation.plan``).
* ``checkpoint.zip`` (``export_checkpoint``): the best verification run of that configuration (the
  highest final-epoch validation accuracy among its seeds) from its last Ray Tune checkpoint,
  loaded into the skeleton ``sn_core.load_finalized`` builds for that plan (the zoo model with the
  plan applied), its BatchNorms folded into the preceding convolutions when the spec asks
  (``export.fold_batchnorm``). Without a verdict (verification disabled, or no configuration
  chosen) nothing was trained from scratch: the best search trial's SN model is finalized with the
  *recommended* plan and evaluated on the validation split after finalization, and the metadata
  says "not verified".
* ``search_checkpoint.zip`` (``export_search_checkpoint``): the best search trial's SN model
  finalized with its own one-hot choices, what the search itself trained.

The checkpoint's own metadata is in its ``plan.json`` (``plan.metadata["checkpoint"]`` after
``sn_core.load_finalized``) and in report.json's ``outputs``. Every checkpoint is written as one
zip, the very file users download, so its recorded SHA-256 and size are those of the download.
The runs' checkpoints are read wherever Ray Tune stored them (``run_state``: a local or shared path
or an s3:// bucket); the zips are written to the job's output directory in the runs directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

import sn_core
from service.metrics import ACCURACY, PERPLEXITY, Metric, metric_for
from service.spec import JobSpec

from .data import LoadedDataset
from .models import (
    NORM_LAYER_BASELINES,
    PLAN_VARIANT,
    SN_VARIANT,
    baseline_plan,
    build_for_data,
    model_spec,
)
from .recommend import Recommendation
from .results import TrialOutcome
from .trainable import evaluate, load_checkpoint_state, perplexity
from .verdict import UNIFORM, label

__all__ = [
    "CHECKPOINT_FILE",
    "SEARCH_CHECKPOINT_FILE",
    "SEARCH_PLAN_FILE",
    "Choice",
    "chosen_configuration",
    "deliverable_plan",
    "export_checkpoint",
    "export_search_checkpoint",
    "fold_for_export",
    "load_run_weights",
    "uniform_plan",
]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.zip"
SEARCH_CHECKPOINT_FILE = "search_checkpoint.zip"
SEARCH_PLAN_FILE = "search_plan.json"
SEARCH_PLAN_NOTE = (
    "the search's per-layer plan is kept as search_plan.json (artifact search_plan_json) and in "
    "report.json (recommendation.plan)"
)


@dataclass(frozen=True)
class Choice:
    """The configuration the downloads are. ``config``: "plan" or a uniform baseline;
    ``verified``: a verdict chose it; ``reason`` and ``text``: the verdict's, or why there is
    none."""

    config: str
    verified: bool
    reason: str
    text: str

    @property
    def label(self) -> str:
        return label(self.config)

    def metadata(self) -> dict[str, Any]:
        """What every download of this choice says about it."""
        return {
            "configuration": self.config,
            "configuration_label": self.label,
            "verified": self.verified,
            "verification": self.text if self.verified else f"not verified: {self.text}",
            "verdict_reason": self.reason,
            "search_plan": SEARCH_PLAN_NOTE,
        }


def chosen_configuration(verification: Mapping[str, Any] | None) -> Choice:
    """The verdict's configuration; the recommended plan, not verified, without one."""
    if verification is None:
        return Choice(
            PLAN_VARIANT,
            False,
            "verification_disabled",
            "verify.enabled is false: the recommended per-layer plan was not trained from "
            "scratch against uniform baselines",
        )
    verdict = verification["verdict"]
    if verdict.get("chosen") is None:
        return Choice(PLAN_VARIANT, False, verdict["reason"], verdict["text"])
    return Choice(verdict["chosen"], True, verdict["reason"], verdict["text"])


# ------------------------------------------------------------------------------------ plans
def _norm_kind(module: nn.Module, baseline: str) -> str | None:
    """The normalizer a torch norm layer of the ``baseline`` model computes (None: not a norm
    layer a plan can name)."""
    if isinstance(module, _BatchNorm):
        return "bn"
    if isinstance(module, _InstanceNorm):
        return "in"
    if isinstance(module, nn.GroupNorm):
        if baseline in ("gn", "ln"):
            return baseline
        return "ln" if module.num_groups == 1 else "gn"
    return None


_DIMS = {
    nn.BatchNorm1d: 1,
    nn.BatchNorm2d: 2,
    nn.BatchNorm3d: 3,
    nn.InstanceNorm1d: 1,
    nn.InstanceNorm2d: 2,
    nn.InstanceNorm3d: 3,
}


def _dims(module: nn.Module) -> int | None:
    """1, 2 or 3 for BatchNorm / InstanceNorm by class; None for GroupNorm (any input)."""
    return next((dims for cls, dims in _DIMS.items() if isinstance(module, cls)), None)


def uniform_plan(
    model: nn.Module,
    baseline: str,
    *,
    search_plan: sn_core.NormalizerPlan | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> sn_core.NormalizerPlan:
    """The plan of a uniform ``baseline`` model (built with ``norm_layer=baseline``): one one-hot
    entry per norm layer, in network order, with that layer's channels, groups, eps and
    dimensionality (from ``search_plan`` where the layer's class does not say it)."""
    if baseline not in UNIFORM:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of {list(UNIFORM)}")
    searched = {layer.name: layer for layer in search_plan or ()}
    layers = []
    for name, module in model.named_modules():
        kind = _norm_kind(module, baseline)
        if kind is None:
            continue
        known = searched.get(name)
        dims = _dims(module) or (known.dims if known else None)
        groups = module.num_groups if isinstance(module, nn.GroupNorm) else None
        layers.append(
            sn_core.LayerChoice(
                name=name,
                mean=kind,
                var=kind,
                num_features=getattr(module, "num_features", None) or module.num_channels,
                pool=(kind,),
                groups=groups or (known.groups if known else 32),
                dims=dims,
                eps=module.eps,
            )
        )
    return sn_core.NormalizerPlan(tuple(layers), dict(metadata or {}))


def deliverable_plan(
    spec: JobSpec, data: LoadedDataset, recommendation: Recommendation, choice: Choice
) -> sn_core.NormalizerPlan:
    """plan.json: the chosen configuration as a plan, with ``choice``'s metadata."""
    search = recommendation.plan
    if choice.config == PLAN_VARIANT:
        return sn_core.NormalizerPlan(search.layers, {**search.metadata, **choice.metadata()})
    if choice.config not in NORM_LAYER_BASELINES:  # rms, dyt, none: a uniform plan already
        return baseline_plan(
            spec,
            choice.config,
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            example_input=data.x_train[: min(8, len(data.x_train))],
            metadata={"target_batch_size": recommendation.target_batch_size, **choice.metadata()},
        )
    baseline = build_for_data(spec, choice.config, data)
    return uniform_plan(
        baseline,
        choice.config,
        search_plan=search,
        metadata={"target_batch_size": recommendation.target_batch_size, **choice.metadata()},
    )


# ------------------------------------------------------------------------------ checkpoints
def _skeleton(spec: JobSpec, data: LoadedDataset, plan: sn_core.NormalizerPlan) -> nn.Module:
    """The model ``sn_core.load_finalized`` builds for ``plan``: the zoo model, plan applied."""
    zoo = model_spec(spec, num_classes=data.num_classes, in_channels=data.in_channels)
    model = sn_core.build_model(
        zoo["arch"], num_classes=zoo["num_classes"], in_channels=zoo["in_channels"], **zoo["kwargs"]
    )
    return sn_core.apply_plan(model, plan)


def load_run_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a verification run's weights into the skeleton of its plan, strictly: the trained
    model and the one ``sn_core.load_finalized`` will build must be the same module tree."""
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"the verification run's weights do not fit the model its plan builds: {exc}"
        ) from exc


def _count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def fold_for_export(model: nn.Module, requested: bool) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` with its BatchNorms folded when ``requested``, and what was done, in words."""
    model.eval()
    if not requested:
        return model, {
            "batchnorm_folded": False,
            "folded_layers": 0,
            "fold_batchnorm": "not requested (export.fold_batchnorm is false)",
        }
    before = _count_batchnorms(model)
    try:
        folded = sn_core.fold_batchnorm(model)
    except ValueError as exc:  # a model torch.fx cannot trace: saved as it is, with the reason
        log.warning("checkpoint saved unfolded: %s", exc)
        return model, {
            "batchnorm_folded": False,
            "folded_layers": 0,
            "fold_batchnorm": f"requested, not done: {exc}",
        }
    count = before - _count_batchnorms(folded)
    if count == 0:
        return model, {
            "batchnorm_folded": False,
            "folded_layers": 0,
            "fold_batchnorm": "requested; no BatchNorm directly follows a convolution",
        }
    return folded, {
        "batchnorm_folded": True,
        "folded_layers": count,
        "fold_batchnorm": f"requested: {count} BatchNorm layer(s) folded into their convolution",
    }


def _save(
    spec: JobSpec,
    data: LoadedDataset,
    model: nn.Module,
    plan: sn_core.NormalizerPlan,
    info: dict[str, Any],
    path: Path,
    *,
    folded: bool,
) -> Path:
    """Write the checkpoint zip atomically (a resumed job never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.part.zip")
    stamped = sn_core.NormalizerPlan(plan.layers, {**plan.metadata, "checkpoint": info})
    zoo = model_spec(spec, num_classes=data.num_classes, in_channels=data.in_channels)
    try:
        sn_core.save_finalized(model, stamped, zoo, tmp, batchnorm_folded=folded)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def run_state(run: TrialOutcome) -> tuple[dict, dict]:
    """(state bundle, meta) of a run's last checkpoint, read through Ray's ``Checkpoint``
    (``as_directory``: the directory itself when it is local or on a shared path, a temporary
    copy of an s3:// one), so the export works wherever the experiments are stored."""
    if run.checkpoint is not None:
        with run.checkpoint.as_directory() as directory:
            return load_checkpoint_state(Path(directory))
    return load_checkpoint_state(Path(run.checkpoint_dir))


def _evaluated(model: nn.Module, data: LoadedDataset, spec: JobSpec) -> dict[str, Any]:
    """The finalized model's validation accuracy (a language model's: next-token), and for a
    language model its validation perplexity too."""
    loss, accuracy = evaluate(model, data.x_val, data.y_val, torch.device("cpu"))
    info: dict[str, Any] = {
        "val_accuracy": accuracy,
        "accuracy": "validation accuracy of this model, evaluated after finalization",
    }
    if spec.metric == PERPLEXITY.name:
        info["val_perplexity"] = perplexity(loss)
    return info


def _search_model(spec: JobSpec, data: LoadedDataset, trial: TrialOutcome) -> nn.Module:
    """The search trial's SN model as its last checkpoint left it (eval mode)."""
    model = build_for_data(spec, SN_VARIANT, data)
    state, _ = run_state(trial)
    model.load_state_dict(state["model"])
    return model.eval()


def _best_trial(recommendation: Recommendation, outcomes: list[TrialOutcome]) -> TrialOutcome:
    return next(o for o in outcomes if o.trial_id == recommendation.best_trial)


def _best_run(
    config: str, runs: list[TrialOutcome], metric: Metric = ACCURACY
) -> tuple[TrialOutcome, dict[int, float]]:
    """The finished run of ``config`` with the best final-epoch validation ``metric`` (ties:
    the lowest seed), and every finished seed's value."""
    done = [
        o
        for o in runs
        if o.variant == config
        and o.status == "TERMINATED"
        and o.metric_value(metric) is not None
        and o.checkpoint_dir
    ]
    if not done:
        raise RuntimeError(
            f"the verdict chose {label(config)} but none of its verification runs left a checkpoint"
        )
    best = max(done, key=lambda o: (metric.score(o.metric_value(metric)), -o.seed))
    return best, {o.seed: o.metric_value(metric) for o in sorted(done, key=lambda o: o.seed)}


def export_checkpoint(
    spec: JobSpec,
    data: LoadedDataset,
    *,
    plan: sn_core.NormalizerPlan,
    choice: Choice,
    recommendation: Recommendation,
    search_outcomes: list[TrialOutcome],
    verification_outcomes: list[TrialOutcome],
    path: Path,
) -> dict[str, Any]:
    """Write ``checkpoint.zip``, a trained model of ``choice`` whose layers are ``plan``'s (see
    the module docstring); returns its metadata (also stored in its plan.json)."""
    info: dict[str, Any] = {"artifact": "checkpoint", **choice.metadata()}
    if choice.verified:
        metric = metric_for(spec.metric)
        run, per_seed = _best_run(choice.config, verification_outcomes, metric)
        state, _ = run_state(run)
        model = _skeleton(spec, data, plan)
        load_run_weights(model, state["model"])
        seeds = ", ".join(str(seed) for seed in per_seed)
        info |= {
            "source": f"verification run of {choice.label} (trained from scratch)",
            "trial_id": run.trial_id,
            "seed": run.seed,
            "epochs": run.epochs_used,
            "val_accuracy": run.val_accuracy,
            "accuracy": (
                "final-epoch validation accuracy of this run, the highest of the configuration's "
                f"{len(per_seed)} finished seed(s) ({seeds})"
            ),
            f"{metric.key}_per_seed": {str(seed): acc for seed, acc in per_seed.items()},
        }
        if metric is not ACCURACY:
            info |= {
                metric.key: run.val_perplexity,
                "accuracy": (
                    f"final-epoch {metric.label} of this run, the best of the configuration's "
                    f"{len(per_seed)} finished seed(s) ({seeds}); val_accuracy: next-token"
                ),
            }
    else:
        trial = _best_trial(recommendation, search_outcomes)
        model = sn_core.finalize(_search_model(spec, data, trial), plan)
        info |= {
            "source": (
                "the best search trial's SN model (annealed), finalized with the recommended "
                "per-layer plan (not the trial's own choices); no run trained it from scratch"
            ),
            "trial_id": trial.trial_id,
            "seed": trial.seed,
            "epochs": trial.epochs_used,
            **_evaluated(model, data, spec),
            "search_trial_val_accuracy": trial.val_accuracy,
        }
    model, fold = fold_for_export(model, spec.export.fold_batchnorm)
    info |= fold
    _save(spec, data, model, plan, info, path, folded=fold["batchnorm_folded"])
    return info


def export_search_checkpoint(
    spec: JobSpec,
    data: LoadedDataset,
    *,
    recommendation: Recommendation,
    outcomes: list[TrialOutcome],
    path: Path,
) -> dict[str, Any]:
    """Write ``search_checkpoint.zip``: the best search trial's SN model finalized with its own
    one-hot choices (never folded); returns its metadata."""
    trial = _best_trial(recommendation, outcomes)
    sn_model = _search_model(spec, data, trial)
    own = sn_core.plan_from_model(sn_model)
    model = sn_core.finalize(sn_model, own)
    info = {
        "artifact": "search_checkpoint",
        "verified": False,
        "source": (
            "the best search trial's SN model (annealed), finalized with its own one-hot choices; "
            "the configuration the verdict chose is in plan.json and checkpoint.zip"
        ),
        "trial_id": trial.trial_id,
        "seed": trial.seed,
        "epochs": trial.epochs_used,
        **_evaluated(model, data, spec),
        "search_trial_val_accuracy": trial.val_accuracy,
        "batchnorm_folded": False,
    }
    _save(spec, data, model.eval(), own, info, path, folded=False)
    return info
