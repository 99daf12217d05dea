"""From the trials of a search to one per-layer normalizer recommendation.

Each successful trial (status ``"TERMINATED"`` with a plan) contributes, per layer, its final mean
and variance ratios. ``worker.aggregate`` averages them over the trials of the target batch size
(not only their votes), takes the argmax per side, marks a layer *indifferent* when the trials
disagree or the aggregated margin is small, and resolves indifferent layers by one cost-aware rule
(bn/bn, which folds into the convolution, before one standard torch layer, before a mixed pair;
``AGGREGATION_RULE``). ``confidence`` is the layer's agreement (share of trials whose own choice
is the aggregated one, the smaller of mean and variance) times its aggregated margin (top ratio
minus the second, the smaller of mean and variance). With one trial agreement measures nothing:
the summary and every layer's note say "1 trial".

A layer whose pool has point-wise members (dyt, none) has output ratios too; they are
aggregated the same way (``worker.aggregate.output_side``) into the layer's output choice: "norm"
(the normalized output, the layer ``mean``/``var`` name) or a point-wise member, which replaces
the norm layer by ``DynamicTanh`` or ``nn.Identity`` (``OUTPUT_TORCH_LAYERS``).

Final ratios come from the trial's last epoch record (``history[-1]["ratios"]``, a
``worker.results.EpochRecord``) and fall back to the ratios stored in its plan when that record
lacks the layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service.metrics import ACCURACY, Metric
from sn_core import LayerChoice, NormalizerPlan, plan_torch_layers
from sn_core.vocabulary import DEFAULT_DYT_ALPHA0, OUTPUT_CHOICES, STATISTIC_MEMBERS

from .aggregate import AGREEMENT_MIN, MARGIN_MIN, Aggregate, SideAggregate, aggregate, output_side
from .results import LayerRatios, TrialOutcome

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "OUTPUT_TORCH_LAYERS",
    "Recommendation",
    "layer_outputs",
    "recommend",
    "successful",
    "symmetric_kl",
    "torch_layers",
]

# The torch layer a point-wise output choice becomes (sn_core's DynamicTanh, torch's Identity).
OUTPUT_TORCH_LAYERS = {"dyt": "DynamicTanh", "none": "Identity"}

_RATIO_EPS = 1e-8  # the clamp of sn_core.switch_ratios' divergence
# How a layer the trials left undecided is resolved (worker.aggregate), in the report's words.
AGGREGATION_RULE = (
    "ratios averaged over the trials; a layer is indifferent when less than "
    f"{AGREEMENT_MIN:.0%} of the trials agree or the averaged margin is below {MARGIN_MIN}, "
    "and then takes the cheapest choice at inference "
    "among its near-tied normalizers: bn/bn (folds into the convolution), then one standard torch "
    "layer (same normalizer for mean and variance), then a mixed pair (SelectedNorm)"
)


def successful(outcomes: list[TrialOutcome]) -> list[TrialOutcome]:
    """The trials a recommendation may use: finished normally and with a plan."""
    return [o for o in outcomes if o.status == "TERMINATED" and o.plan is not None]


def symmetric_kl(p: dict[str, float], q: dict[str, float]) -> float:
    """KL(p||q) + KL(q||p) over the union of keys, both clamped to at least 1e-8."""
    total = 0.0
    for kind in set(p) | set(q):
        a = max(float(p.get(kind, 0.0)), _RATIO_EPS)
        b = max(float(q.get(kind, 0.0)), _RATIO_EPS)
        total += (a - b) * (math.log(a) - math.log(b))
    return total


def _margin(ratios: dict[str, float]) -> float:
    values = sorted(ratios.values(), reverse=True)
    if len(values) < 2:
        return 1.0
    return min(1.0, max(0.0, values[0] - values[1]))


@dataclass
class _Vote:
    """One trial's view of one layer."""

    entry: dict[str, Any]  # its plan layer entry
    mean_ratios: dict[str, float]
    var_ratios: dict[str, float]
    output_ratios: dict[str, float] | None = None  # a layer with point-wise members only


def _votes(trial: TrialOutcome) -> dict[str, _Vote]:
    assert trial.plan is not None
    final = trial.final_ratios
    votes: dict[str, _Vote] = {}
    for entry in trial.plan["layers"]:
        name = entry["name"]
        pool = tuple(entry["pool"])
        record: LayerRatios | None = final.get(name)
        mean = record["mean"] if record and record["mean"] else entry["mean_ratios"]
        var = record["var"] if record and record["var"] else entry["var_ratios"]
        output = (record or {}).get("output") or entry.get("output_ratios")
        statistics = [k for k in pool if k in STATISTIC_MEMBERS]
        votes[name] = _Vote(
            entry=entry,
            mean_ratios={k: float(mean.get(k, 0.0)) for k in statistics},
            var_ratios={k: float(var.get(k, 0.0)) for k in statistics},
            output_ratios=(
                {k: float(output[k]) for k in OUTPUT_CHOICES if k in output} if output else None
            ),
        )
    return votes


def _aggregate(
    trials: list[TrialOutcome], dyt_alpha0: float = DEFAULT_DYT_ALPHA0
) -> tuple[list[LayerChoice], Aggregate, dict[str, SideAggregate]]:
    """One LayerChoice per layer (network order) from trials of the same model, the
    aggregation behind the choices (agreement, margin, indifference, notes), and the output
    side of each layer with output ratios (a dyt layer's alpha starting at ``dyt_alpha0``)."""
    votes = [_votes(t) for t in trials]
    names = [entry["name"] for entry in trials[0].plan["layers"]]  # type: ignore[index]
    for trial, trial_votes in zip(trials, votes, strict=True):
        if list(trial_votes) != names:
            raise ValueError(
                f"trial {trial.trial_id!r} has different norm layers than trial "
                f"{trials[0].trial_id!r}; cannot combine plans of different models"
            )
    for name in names:
        first = votes[0][name].entry
        for trial, trial_votes in zip(trials, votes, strict=True):
            for key in ("pool", "num_features", "groups"):
                if trial_votes[name].entry[key] != first[key]:
                    raise ValueError(
                        f"layer {name!r}: trial {trial.trial_id!r} has "
                        f"{key}={trial_votes[name].entry[key]!r}, trial "
                        f"{trials[0].trial_id!r} has {first[key]!r}"
                    )
    combined = aggregate(
        [
            {name: {"mean": v[name].mean_ratios, "var": v[name].var_ratios} for name in names}
            for v in votes
        ]
    )
    layers = []
    sides: dict[str, SideAggregate] = {}
    for name, agg in zip(names, combined.layers, strict=True):
        first = votes[0][name].entry
        outputs = [v[name].output_ratios for v in votes]
        side = None
        if any(o is not None for o in outputs):
            if any(o is None for o in outputs):
                raise ValueError(f"layer {name!r}: some trials have output ratios, others none")
            side = output_side(name, outputs)
            sides[name] = side
        layers.append(
            _layer_choice(
                side,
                dyt_alpha0,
                name=name,
                mean=agg.mean,
                var=agg.var,
                num_features=first["num_features"],
                mean_ratios=dict(agg.mean_side.ratios),
                var_ratios=dict(agg.var_side.ratios),
                confidence=min(1.0, max(0.0, agg.agreement * agg.margin)),
                pool=tuple(first["pool"]),
                groups=first["groups"],
                dims=first.get("dims"),
                eps=first.get("eps"),
            )
        )
    return layers, combined, sides


def _layer_choice(output: SideAggregate | None, dyt_alpha0: float, **fields: Any) -> LayerChoice:
    """The plan entry; its ``output`` choice (and ratios) where the layer has output ratios."""
    if output is None:
        return LayerChoice(**fields)
    choice = output.tied[0]
    # A dyt layer's DynamicTanh starts where the searched layers did (the job's dyt_alpha0).
    alpha = dyt_alpha0 if choice == "dyt" else None
    return LayerChoice(**fields, output=choice, output_ratios=dict(output.ratios), dyt_alpha=alpha)


def layer_outputs(recommendation_dict: dict[str, Any]) -> dict[str, str]:
    """Layer -> its output choice, for the layers with point-wise members (a recommendation's
    ``to_dict()`` or a report's ``recommendation``; empty for reports from before them)."""
    return dict((recommendation_dict.get("summary") or {}).get("outputs") or {})


def torch_layers(
    plan: NormalizerPlan, outputs: dict[str, str], model: nn.Module | None = None
) -> dict[str, str]:
    """Per plan layer the torch layer it becomes: sn_core's ``plan_torch_layers`` (in ``model``,
    the job's network, when given: a transformer's token layers become LayerNorm or RMSNorm,
    which the plan alone does not say), except where the output choice is point-wise
    (``DynamicTanh(C)`` or ``Identity``)."""
    described = plan_torch_layers(plan, model=model)
    for layer in plan:
        choice = outputs.get(layer.name, "norm")
        if choice == "dyt":
            described[layer.name] = f"{OUTPUT_TORCH_LAYERS['dyt']}({layer.num_features})"
        elif choice != "norm":
            described[layer.name] = OUTPUT_TORCH_LAYERS[choice]
    return described


def _final_score(trial: TrialOutcome, metric: Metric = ACCURACY) -> float:
    """Its final value of ``metric`` as a higher-is-better score (-inf without one)."""
    value = trial.metric_value(metric)
    if value is None and trial.history:
        last = trial.history[-1].get(metric.key)
        value = float(last) if last is not None and math.isfinite(last) else None
    return metric.score(value) if value is not None else -math.inf


def _kinds(layers: list[LayerChoice]) -> list[str]:
    """The statistics members of any layer's pool, in the canonical order."""
    present = {k for layer in layers for k in layer.mean_ratios}
    return [k for k in STATISTIC_MEMBERS if k in present]


def _average_ratio(layers: list[LayerChoice], role: str) -> dict[str, float]:
    """Per normalizer, its ratio averaged over the layers whose pool has it."""
    out = {}
    for kind in _kinds(layers):
        values = [
            getattr(layer, f"{role}_ratios")[kind]
            for layer in layers
            if kind in getattr(layer, f"{role}_ratios")
        ]
        out[kind] = sum(values) / len(values)
    return out


def _summary(layers: list[LayerChoice], plan: NormalizerPlan) -> dict[str, Any]:
    kinds = _kinds(layers)
    divergence = {layer.name: symmetric_kl(layer.mean_ratios, layer.var_ratios) for layer in layers}
    last = max(len(layers) - 1, 1)
    return {
        "layers": len(layers),
        "choices": plan.counts(),
        "mean_counts": {k: sum(layer.mean == k for layer in layers) for k in kinds},
        "var_counts": {k: sum(layer.var == k for layer in layers) for k in kinds},
        "mixed_layers": sum(layer.mean != layer.var for layer in layers),
        "by_depth": [
            {"layer": layer.name, "depth_fraction": i / last, "mean": layer.mean, "var": layer.var}
            for i, layer in enumerate(layers)
        ],
        "confidence": {layer.name: layer.confidence for layer in layers},
        "mean_confidence": sum(layer.confidence for layer in layers) / max(len(layers), 1),
        "divergence": divergence,
        "mean_divergence": sum(divergence.values()) / max(len(divergence), 1),
        "max_divergence": max(divergence.values(), default=0.0),
    }


@dataclass
class Recommendation:
    """The recommended plan and how it was reached.

    ``best_trial`` is the id of the used trial with the highest final validation accuracy (ties:
    fewer epochs, then input order). ``by_batch_size`` (keyed by batch size, empty when the
    successful trials share one batch size) has per batch size: the trials, the per-normalizer
    ratio averaged over layers for mean and variance, the per-layer aggregated choices, and
    ``layers``: per layer, the final-epoch mean and variance ratios averaged over its trials
    (the SN paper's finding, BN's share growing with the batch, is read off these).
    """

    plan: NormalizerPlan
    target_batch_size: int
    trial_ids: list[str]
    best_trial: str
    summary: dict[str, Any]
    by_batch_size: dict[int, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "target_batch_size": self.target_batch_size,
            "trial_ids": list(self.trial_ids),
            "best_trial": self.best_trial,
            "summary": self.summary,
            "by_batch_size": {str(bs): entry for bs, entry in sorted(self.by_batch_size.items())},
        }


def recommend(
    outcomes: list[TrialOutcome],
    *,
    target_batch_size: int,
    metric: Metric = ACCURACY,
    dyt_alpha0: float = DEFAULT_DYT_ALPHA0,
) -> Recommendation:
    """Combine the successful trials of ``target_batch_size`` into one ``Recommendation``. A
    layer recommended "dyt" starts its DyT at ``dyt_alpha0`` (the job's ``model.dyt_alpha0``,
    where its searched layers started), recorded as its ``dyt_alpha``.

    Raises ValueError when no trial of that batch size succeeded, or when the trials' plans
    describe different models.
    """
    ok = successful(outcomes)
    trials = [t for t in ok if t.batch_size == target_batch_size]
    if not trials:
        seen = sorted({t.batch_size for t in ok})
        raise ValueError(
            f"no successful trial (status TERMINATED with a plan) at batch size "
            f"{target_batch_size}: {len(outcomes)} trial(s), successful batch sizes {seen}"
        )
    layers, combined, sides = _aggregate(trials, dyt_alpha0)
    metadata = {
        "target_batch_size": target_batch_size,
        "trials": len(trials),
        "seeds": [t.seed for t in trials],
        # A layer is indifferent when its statistics or its output choice is.
        "indifferent_layers": [
            layer.name
            for layer in combined.layers
            if layer.indifferent or (layer.name in sides and sides[layer.name].indifferent)
        ],
        "rule": AGGREGATION_RULE,
    }
    if any("dyt" in side.ratios for side in sides.values()):
        metadata["dyt_alpha0"] = dyt_alpha0  # where the searched and the plan's DyTs start
    plan = NormalizerPlan(layers=tuple(layers), metadata=metadata)
    best = min(
        enumerate(trials),
        key=lambda it: (-_final_score(it[1], metric), it[1].epochs_used, it[0]),
    )[1]
    summary = _summary(layers, plan)
    if sides:  # layers with point-wise members: their output choice and its aggregation
        summary["outputs"] = {name: side.tied[0] for name, side in sides.items()}
        summary["output_counts"] = {
            c: sum(choice == c for choice in summary["outputs"].values()) for c in OUTPUT_CHOICES
        }
        summary["output_aggregation"] = {name: side.to_dict() for name, side in sides.items()}
    summary["aggregation"] = {
        "summary": combined.summary,
        "rule": AGGREGATION_RULE,
        "indifferent_layers": metadata["indifferent_layers"],
        "layers": {layer.name: layer.to_dict() for layer in combined.layers},
    }
    summary["best_trial"] = {
        "trial_id": best.trial_id,
        "seed": best.seed,
        "val_accuracy": best.val_accuracy,
        "epochs_used": best.epochs_used,
    }
    if metric is not ACCURACY:
        summary["best_trial"][metric.key] = best.metric_value(metric)

    by_batch_size: dict[int, dict[str, Any]] = {}
    batch_sizes = sorted({t.batch_size for t in ok})
    if len(batch_sizes) > 1:
        for bs in batch_sizes:
            group = [t for t in ok if t.batch_size == bs]
            group_layers, _, group_sides = (
                (layers, combined, sides)
                if bs == target_batch_size
                else _aggregate(group, dyt_alpha0)
            )
            by_batch_size[bs] = {
                "trials": len(group),
                "trial_ids": [t.trial_id for t in group],
                "mean_ratio": _average_ratio(group_layers, "mean"),
                "var_ratio": _average_ratio(group_layers, "var"),
                "choices": {layer.name: layer.choice for layer in group_layers},
                # Per layer (network order): its final-epoch ratios averaged over the trials
                # of this batch size, the cells of the UI's layers x batch sizes heatmap.
                "layers": {
                    layer.name: {
                        "mean": dict(layer.mean_ratios),
                        "var": dict(layer.var_ratios),
                        **(
                            {"output": dict(group_sides[layer.name].ratios)}
                            if layer.name in group_sides
                            else {}
                        ),
                    }
                    for layer in group_layers
                },
            }
    return Recommendation(
        plan=plan,
        target_batch_size=target_batch_size,
        trial_ids=[t.trial_id for t in trials],
        best_trial=best.trial_id,
        summary=summary,
        by_batch_size=by_batch_size,
    )
