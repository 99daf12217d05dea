"""Stable, explained per-layer choices from the final ratios of several search trials.

Votes alone throw information away: two trials at 0.51/0.49 and one at 0.02/0.98 vote 2:1 for
the first normalizer although the evidence favours the second. So per layer, and separately for
the mean and the variance, the trials' ratio vectors are averaged (``aggregated ratios``); the
argmax of that average is the choice, ``margin`` the top minus the second aggregated ratio and
``agreement`` the share of trials whose own argmax equals that choice.

A side (mean or variance) is *indifferent* when the trials disagree (agreement below
``AGREEMENT_MIN``: with 2 trials a 1:1 split, with 3 a 1:1:1 split; 2 of 3 is enough) or when the
aggregated margin is below ``MARGIN_MIN`` (the search did not separate its top two: SN ratios
that settled are near one-hot, and one-hot where a choice was fixed). Its *tied set* is then every
normalizer whose aggregated ratio lies within ``MARGIN_MIN`` of the top; a decided side's tied
set is its argmax alone. An indifferent layer takes, among all (mean, var) pairs of the two tied
sets, the one cheapest at inference:

1. ``bn``/``bn``: BatchNorm folds into the preceding convolution, free at inference;
2. the same normalizer for both (``in``/``in``, ``ln``/``ln``, ``gn``/``gn``): one standard torch
   layer (InstanceNorm, GroupNorm(1, C), GroupNorm(G, C));
3. a mixed pair (e.g. mean ``bn``, var ``ln``): needs the custom SelectedNorm layer;

then the higher summed aggregated ratio, then ``bn``, ``gn``, ``ln``, ``in``. The pair matters:
mean tied {in, bn} with var decided ``in`` gives ``in``/``in``, not the mixed ``bn``/``in``.
With one trial agreement is 1 by definition and measures nothing; every note says "1 trial".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .results import TrialOutcome

__all__ = [
    "AGREEMENT_MIN",
    "KIND_ORDER",
    "MARGIN_MIN",
    "OUTPUT_ORDER",
    "Aggregate",
    "LayerAggregate",
    "SideAggregate",
    "aggregate",
    "output_side",
    "pair_cost",
    "plan_agreement",
    "plan_choices",
    "trial_ratios",
]

MARGIN_MIN = 0.1  # aggregated top-minus-second ratio below this: the search did not decide
AGREEMENT_MIN = 2 / 3  # share of trials agreeing below this: the trials did not agree
KIND_ORDER = ("bn", "gn", "ln", "in", "rms")  # last resort between equal-cost, equal-ratio pairs
# An undecided output keeps the normalized output (what the model was built with), then DyT.
OUTPUT_ORDER = ("norm", "dyt", "none")
_EPS = 1e-9  # slack for float comparisons of ratios and shares

Ratios = Mapping[str, Mapping[str, Any]]  # {layer: {"mean": {norm: p}, "var": {norm: p}, ...}}


def pair_cost(mean: str, var: str) -> int:
    """0 for bn/bn (folds into the convolution), 1 for one standard layer, 2 for a mixed pair."""
    if mean == var:
        return 0 if mean == "bn" else 1
    return 2


def _kind_rank(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def _output_rank(choice: str) -> int:
    return OUTPUT_ORDER.index(choice) if choice in OUTPUT_ORDER else len(OUTPUT_ORDER)


def _argmax(ratios: Mapping[str, float], rank=_kind_rank) -> str:
    """The top normalizer; exact ties go to ``rank`` (KIND_ORDER: cheapest), not pool order."""
    return min(ratios, key=lambda k: (-ratios[k], rank(k)))


@dataclass(frozen=True)
class SideAggregate:
    """The mean or the variance side of one layer over the trials."""

    ratios: dict[str, float]  # aggregated (the mean over trials), pool order
    argmax: str
    margin: float
    agreement: float
    indifferent: bool
    tied: tuple[str, ...]  # argmax alone unless indifferent; cheapest first

    def to_dict(self) -> dict[str, Any]:
        return {
            "ratios": dict(self.ratios),
            "argmax": self.argmax,
            "margin": self.margin,
            "agreement": self.agreement,
            "indifferent": self.indifferent,
            "tied": list(self.tied),
        }


@dataclass(frozen=True)
class LayerAggregate:
    """One layer's resolved choice (``mean``, ``var``) and why."""

    name: str
    mean: str
    var: str
    mean_side: SideAggregate
    var_side: SideAggregate
    trials: int
    note: str

    @property
    def indifferent(self) -> bool:
        return self.mean_side.indifferent or self.var_side.indifferent

    @property
    def margin(self) -> float:
        return min(self.mean_side.margin, self.var_side.margin)

    @property
    def agreement(self) -> float:
        return min(self.mean_side.agreement, self.var_side.agreement)

    @property
    def choice(self) -> tuple[str, str]:
        return (self.mean, self.var)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mean": self.mean,
            "var": self.var,
            "indifferent": self.indifferent,
            "margin": self.margin,
            "agreement": self.agreement,
            "trials": self.trials,
            "note": self.note,
            "mean_side": self.mean_side.to_dict(),
            "var_side": self.var_side.to_dict(),
        }


@dataclass(frozen=True)
class Aggregate:
    """The per-layer choices of one batch size's trials, in network order."""

    trials: int
    layers: tuple[LayerAggregate, ...]
    margin_min: float = MARGIN_MIN
    agreement_min: float = AGREEMENT_MIN

    def choices(self) -> dict[str, tuple[str, str]]:
        return {layer.name: layer.choice for layer in self.layers}

    @property
    def indifferent_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.indifferent]

    @property
    def summary(self) -> str:
        basis = "1 trial (agreement not measured)" if self.trials == 1 else f"{self.trials} trials"
        k = len(self.indifferent_layers)
        text = f"{basis}; {k} of {len(self.layers)} layers indifferent"
        return text + (", resolved to the cheapest tied choice at inference" if k else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "margin_min": self.margin_min,
            "agreement_min": self.agreement_min,
            "summary": self.summary,
            "indifferent_layers": self.indifferent_layers,
            "layers": [layer.to_dict() for layer in self.layers],
        }


def _side(
    per_trial: list[dict[str, float]], margin_min: float, agreement_min: float, rank=_kind_rank
) -> SideAggregate:
    n = len(per_trial)
    pool = list(per_trial[0])
    ratios = {k: math.fsum(r[k] for r in per_trial) / n for k in pool}
    top = _argmax(ratios, rank)
    ordered = sorted(ratios.values(), reverse=True)
    margin = ordered[0] - ordered[1] if len(ordered) > 1 else 1.0
    agreement = sum(_argmax(r, rank) == top for r in per_trial) / n
    indifferent = agreement < agreement_min - _EPS or margin < margin_min - _EPS
    tied = (top,)
    if indifferent:
        near = [k for k in pool if ratios[k] >= ratios[top] - margin_min - _EPS]
        tied = tuple(sorted(near, key=rank))
    return SideAggregate(ratios, top, margin, agreement, indifferent, tied)


def output_side(
    layer: str,
    per_trial: Sequence[Any],
    *,
    margin_min: float = MARGIN_MIN,
    agreement_min: float = AGREEMENT_MIN,
) -> SideAggregate:
    """One layer's output ratios ({"norm", "dyt", "none"} over its pool) aggregated over the
    trials as the mean and variance sides are; ``tied[0]`` is the choice: the top output, or
    when the trials left it undecided the first tied one in ``OUTPUT_ORDER`` (keep the
    normalization before replacing it)."""
    cleaned = [_clean(i, layer, "output", r) for i, r in enumerate(per_trial)]
    for i, r in enumerate(cleaned):
        if list(r) != list(cleaned[0]):
            raise ValueError(
                f"layer {layer!r}: trial {i} output choices {list(r)}, trial 0 {list(cleaned[0])}"
            )
    return _side(cleaned, margin_min, agreement_min, _output_rank)


def _resolve(mean: SideAggregate, var: SideAggregate) -> tuple[str, str]:
    pairs = [(m, v) for m in mean.tied for v in var.tied]
    return min(
        pairs,
        key=lambda p: (
            pair_cost(*p),
            -(mean.ratios[p[0]] + var.ratios[p[1]]),
            _kind_rank(p[0]),
            _kind_rank(p[1]),
        ),
    )


def _note(mean: SideAggregate, var: SideAggregate, choice: tuple[str, str], n: int) -> str:
    """Plain words: how many trials back the choice and, if indifferent, why it was picked."""
    sides = (("mean", mean), ("var", var))
    if n == 1:
        basis = "1 trial"
    elif mean.agreement == var.agreement == 1.0:
        basis = f"all {n} trials agree"
    else:
        basis = ", ".join(
            f"{name} {round(s.agreement * n)} of {n} trials agree" for name, s in sides
        )
    if not (mean.indifferent or var.indifferent):
        return f"{basis}; margin {min(mean.margin, var.margin):.2f}"
    why = "; ".join(
        f"{name} indifferent (margin {s.margin:.2f}"
        + ("" if n == 1 else f", agreement {s.agreement:.2f}")
        + f"): tied {{{', '.join(s.tied)}}}"
        for name, s in sides
        if s.indifferent
    )
    cheapest = {0: "BN folds into the convolution", 1: "one standard layer", 2: "mixed pair"}
    return (
        f"{basis}; {why}; chose {choice[0]}/{choice[1]}, the cheapest tied pair at inference "
        f"({cheapest[pair_cost(*choice)]})"
    )


def _clean(trial: int, layer: str, role: str, ratios: Any) -> dict[str, float]:
    if not isinstance(ratios, Mapping) or not ratios:
        raise ValueError(f"trial {trial}, layer {layer!r}: no {role} ratios")
    out = {}
    for kind, p in ratios.items():
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p) or p < 0:
            raise ValueError(f"trial {trial}, layer {layer!r}: {role} ratio {kind}={p!r}")
        out[str(kind)] = float(p)
    return out


def aggregate(
    trials: Sequence[Ratios],
    *,
    margin_min: float = MARGIN_MIN,
    agreement_min: float = AGREEMENT_MIN,
) -> Aggregate:
    """Aggregate the final ratios of ``trials`` (one batch size; layers in network order, which
    the first trial's order defines). Raises ValueError when there is no trial, or when the
    trials' layers or pools differ (plans of different models cannot be combined)."""
    if not trials:
        raise ValueError("no trial to aggregate")
    names = list(trials[0])
    if not names:
        raise ValueError("trial 0 has no norm layer ratios")
    layers = []
    for i, trial in enumerate(trials):
        if list(trial) != names:
            raise ValueError(f"trial {i} has different norm layers than trial 0")
    n = len(trials)
    for name in names:
        sides = []
        for role in ("mean", "var"):
            per_trial = [_clean(i, name, role, t[name].get(role)) for i, t in enumerate(trials)]
            for i, r in enumerate(per_trial):
                if list(r) != list(per_trial[0]):
                    raise ValueError(
                        f"layer {name!r}: trial {i} pools {list(r)}, trial 0 {list(per_trial[0])}"
                    )
            sides.append(_side(per_trial, margin_min, agreement_min))
        mean, var = sides
        choice = _resolve(mean, var)
        note = _note(mean, var, choice, n)
        layers.append(LayerAggregate(name, choice[0], choice[1], mean, var, n, note))
    return Aggregate(n, tuple(layers), margin_min, agreement_min)


def trial_ratios(trial: TrialOutcome) -> dict[str, dict[str, dict[str, float]]]:
    """A trial's final ratios per layer in its plan's (network) order: its last epoch record,
    falling back to the ratios stored in its plan where that record lacks the layer (as
    ``worker.recommend`` reads them)."""
    if trial.plan is None:
        raise ValueError(f"trial {trial.trial_id!r} has no plan")
    final = trial.final_ratios
    out = {}
    for entry in trial.plan["layers"]:
        record = final.get(entry["name"]) or {}
        out[entry["name"]] = {
            "mean": dict(record.get("mean") or entry["mean_ratios"]),
            "var": dict(record.get("var") or entry["var_ratios"]),
        }
    return out


def plan_choices(plan: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """{layer: (mean, var)} of a ``NormalizerPlan.to_dict()``."""
    return {entry["name"]: (entry["mean"], entry["var"]) for entry in plan["layers"]}


def plan_agreement(
    a: Mapping[str, tuple[str, str]] | Aggregate, b: Mapping[str, tuple[str, str]] | Aggregate
) -> float:
    """Share of layers whose (mean, var) choice is identical in both plans (e.g. two searches on
    disjoint seeds). Raises ValueError when they describe different layers."""
    ca = a.choices() if isinstance(a, Aggregate) else dict(a)
    cb = b.choices() if isinstance(b, Aggregate) else dict(b)
    if set(ca) != set(cb):
        only = sorted(set(ca) ^ set(cb))
        raise ValueError(f"the plans describe different layers (only in one: {only[:5]})")
    if not ca:
        raise ValueError("the plans have no layer")
    return sum(tuple(ca[k]) == tuple(cb[k]) for k in ca) / len(ca)
