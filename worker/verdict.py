"""From verification accuracies to one recommendation in plain words.

Verification trains the recommended per-layer plan (``"plan"``) and uniform baselines (``"bn"``,
``"gn"``, ``"ln"``, ``"in"``) from scratch with the same seeds; ``"sn"`` (the annealed search model)
is reported beside them but is not a deployable choice, so it takes no part in the decision.

Comparisons are paired by seed: the same seed gives the same initialization and data order, so the
per-seed difference removes most of the run-to-run noise that separate means would keep. Every
comparison uses the seeds on which all compared configurations finished (a failed run drops its
seed everywhere, and the verdict says so), which keeps the comparisons mutually consistent.

Decision rule. Configurations are grouped by what they cost at inference (``COST_CLASS``):
``bn`` (folds into the preceding convolution), then ``gn``, ``ln``, ``in`` (one standard layer
each), then the plan (which may need the custom SelectedNorm layer, and is one more thing to
maintain). Configuration A *beats* B when the 95% paired Student-t interval of A - B lies entirely
above 0. The verdict takes the configurations that nothing beats and, among them, the cheapest
class; within that class the baseline the plan itself is (a plan with one normalizer everywhere:
the search found it), else the best mean, then the order ``bn, gn, ln, in``. So the plan is chosen
only when it beats every uniform baseline that is not itself beaten (in particular the best one);
otherwise the cheapest uniform baseline that is statistically as good as the best wins, and the
words say whether the plan is that baseline, worse than it, or within noise. No practical
tolerance is added on top: with the usual 2-5 verification seeds the interval is already wide,
and the cost order settles every doubt in favour of the cheaper layer. With one common seed there
is no interval: the verdict takes the highest accuracy on that seed (ties by the cost order),
reason ``"single_seed"``, and claims no confidence.

The metric. A classifier's verdict compares final validation accuracies (differences in
percentage points); a language model's compares final validation perplexities, lower being better,
through ``service.metrics``'s score ``-ln(perplexity)``: its differences are log-perplexity points,
100 x ln(ppl_baseline / ppl_config), about the percentage by which the perplexity is lower. The
statistics (``ConfigStats``) stay in the metric's own values (mean perplexity, its std).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from service.metrics import ACCURACY, Metric

__all__ = [
    "CONFIDENCE",
    "COST_ORDER",
    "PLAN",
    "REASONS",
    "SN",
    "UNIFORM",
    "ConfigStats",
    "PairedDiff",
    "Verdict",
    "label",
    "mean_and_std",
    "paired_difference",
    "verdict",
]

PLAN = "plan"
SN = "sn"
# Every pool member can be a uniform baseline; also their preference order on ties.
UNIFORM = ("bn", "gn", "ln", "in", "rms", "none", "dyt")
COST_ORDER = (*UNIFORM, PLAN)  # cheapest first
# What each costs at inference: BN folds into the convolution and "none" is the identity (0);
# GN, LN, IN, RMS and DyT are one layer each (1); a per-layer plan may need SelectedNorm and is
# one more thing to maintain (2).
COST_CLASS = {"bn": 0, "none": 0, "gn": 1, "ln": 1, "in": 1, "rms": 1, "dyt": 1, PLAN: 2}
# How a uniform baseline is named in words (the others: all-<NAME>).
_BASELINE_LABELS = {"dyt": "all-DyT", "none": "no-norm"}
CONFIDENCE = 0.95
REASONS = (
    "plan_better",  # the plan beats every baseline that matters: use it
    "plan_is_baseline",  # the plan uses that baseline's normalizer in every layer
    "within_noise",  # a uniform baseline; the plan's interval against it contains 0
    "plan_worse",  # a uniform baseline; the plan's interval against it lies below 0
    "single_seed",  # one common seed: the best observed accuracy, no interval
    "no_plan",  # the plan has no finished run: the best uniform baseline
    "no_baseline",  # nothing to compare the plan with
    "no_common_seeds",  # the configurations finished on disjoint seeds: no pairing possible
    "no_results",  # nothing finished
)


def label(config: str, *, short: bool = False) -> str:
    """How a configuration is named in the verdict's words, or ``short`` in a table cell (the
    jobs list): "the per-layer plan" / "plan", "all-BN" either way."""
    if config == PLAN:
        return "plan" if short else "the per-layer plan"
    if config == SN:
        return "SN model" if short else "the SN model (search, annealed)"
    return _BASELINE_LABELS.get(config, f"all-{config.upper()}")


@dataclass(frozen=True)
class ConfigStats:
    """One configuration's final validation metric (accuracies: fractions in [0, 1]; or
    perplexities) over its seeds."""

    config: str
    n: int
    mean: float | None  # None when no run finished
    std: float | None  # sample std (ddof=1); None below 2 seeds
    per_seed: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "label": label(self.config),
            "n": self.n,
            "mean": self.mean,
            "std": self.std,
            "per_seed": {str(s): a for s, a in sorted(self.per_seed.items())},
        }


@dataclass(frozen=True)
class PairedDiff:
    """``config`` minus ``baseline`` over common seeds, in points: 100 x the difference of the
    metric's higher-is-better score (accuracy points, or log-perplexity points)."""

    config: str
    baseline: str
    seeds: list[int]
    mean_points: float
    ci_low_points: float | None  # None with one seed: no interval
    ci_high_points: float | None
    confidence: float = CONFIDENCE

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def better(self) -> bool:
        """``config`` beats ``baseline``: the interval lies entirely above 0."""
        return self.ci_low_points is not None and self.ci_low_points > 0

    @property
    def worse(self) -> bool:
        return self.ci_high_points is not None and self.ci_high_points < 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "baseline": self.baseline,
            "seeds": list(self.seeds),
            "n": self.n,
            "mean_points": self.mean_points,
            "ci_low_points": self.ci_low_points,
            "ci_high_points": self.ci_high_points,
            "confidence": self.confidence,
        }


@dataclass(frozen=True)
class Verdict:
    """The verification's statistics and the recommended configuration.

    ``comparisons`` holds the plan against each uniform baseline (paired on ``seeds``);
    ``missing`` the seeds each configuration lacks relative to all seeds seen.
    """

    chosen: str | None  # "plan", a uniform baseline, or None when nothing can be chosen
    reason: str  # one of REASONS
    text: str
    seeds: list[int]  # the common seeds the comparisons pair on
    missing: dict[str, list[int]]
    configs: dict[str, ConfigStats]
    comparisons: list[PairedDiff] = field(default_factory=list)
    confidence: float = CONFIDENCE
    metric: Metric = ACCURACY

    def to_dict(self) -> dict[str, Any]:
        data = {
            "chosen": self.chosen,
            "chosen_label": label(self.chosen) if self.chosen else None,
            "reason": self.reason,
            "text": self.text,
            "seeds": list(self.seeds),
            "missing": {c: list(s) for c, s in self.missing.items()},
            "confidence": self.confidence,
            "configs": {c: s.to_dict() for c, s in self.configs.items()},
            "comparisons": [c.to_dict() for c in self.comparisons],
        }
        if self.metric is not ACCURACY:  # a classifier's verdict reads as it always has
            data["metric"] = self.metric.name
            data["higher_is_better"] = self.metric.higher_is_better
            data["points"] = self.metric.points
        return data


def paired_difference(
    a: Mapping[int, float],
    b: Mapping[int, float],
    *,
    config: str = PLAN,
    baseline: str = "bn",
    seeds: list[int] | None = None,
    confidence: float = CONFIDENCE,
) -> PairedDiff:
    """Mean of ``a[s] - b[s]`` in points over ``seeds`` (default: their common seeds) with its
    Student-t interval (n - 1 degrees of freedom); no interval for one seed."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    use = sorted(set(a) & set(b)) if seeds is None else sorted(seeds)
    lacking = [s for s in use if s not in a or s not in b]
    if lacking:
        raise ValueError(f"seeds {lacking} are missing from {config!r} or {baseline!r}")
    if not use:
        raise ValueError(f"{config!r} and {baseline!r} share no seed")
    diffs = [100.0 * (a[s] - b[s]) for s in use]
    n = len(diffs)
    mean = math.fsum(diffs) / n
    if n == 1:
        return PairedDiff(config, baseline, use, mean, None, None, confidence)
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return PairedDiff(config, baseline, use, mean, mean - half, mean + half, confidence)


def mean_and_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean (None without values) and sample std (None below 2 values)."""
    n = len(values)
    mean = math.fsum(values) / n if n else None
    std = None
    if n > 1 and mean is not None:
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, std


def _stats(config: str, per_seed: dict[int, float]) -> ConfigStats:
    mean, std = mean_and_std([per_seed[s] for s in sorted(per_seed)])
    return ConfigStats(config, len(per_seed), mean, std, dict(sorted(per_seed.items())))


def _validated(
    accuracies: Mapping[str, Mapping[int, float]], metric: Metric = ACCURACY
) -> dict[str, dict[int, float]]:
    known = {PLAN, SN, *UNIFORM}
    out: dict[str, dict[int, float]] = {}
    for config, per_seed in accuracies.items():
        if config not in known:
            raise ValueError(f"unknown configuration {config!r}; expected one of {sorted(known)}")
        clean: dict[int, float] = {}
        for seed, acc in per_seed.items():
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ValueError(f"{config}: seed {seed!r} is not an integer")
            if isinstance(acc, bool) or not isinstance(acc, int | float):
                raise ValueError(f"{config} seed {seed}: {metric.name} {acc!r} is not a number")
            try:
                metric.check(acc)
            except ValueError as error:
                raise ValueError(f"{config} seed {seed}: {error}") from None
            clean[seed] = float(acc)
        out[config] = clean
    return out


def _num(x: float, signed: bool = False) -> str:
    """One decimal, more when rounding would hide a nonzero value's sign."""
    for digits in (1, 2, 3):
        text = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
        if x == 0 or float(text) != 0:
            return text
    return f"{0.0:+.1f}" if signed else "0.0"


def _ci(d: PairedDiff) -> str:
    assert d.ci_low_points is not None and d.ci_high_points is not None
    pct = f"{100 * d.confidence:g}%"
    return f"{pct} CI {_num(d.ci_low_points)} to {_num(d.ci_high_points)}"


def _list(seeds: list[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def verdict(
    accuracies: Mapping[str, Mapping[int, float]],
    *,
    confidence: float = CONFIDENCE,
    plan_uniform: str | None = None,
    metric: Metric = ACCURACY,
) -> Verdict:
    """The statistics and the decision (see the module docstring) for ``accuracies``:
    configuration -> {seed: final validation accuracy in [0, 1]}, one entry per finished run.
    ``plan_uniform``: the normalizer the plan uses in every layer (mean and variance), if one
    does; when the verdict picks that baseline, the words say the search found it.
    ``metric``: what the values are (``service.metrics``; default accuracy); the decision
    compares their scores. Raises ValueError on unknown configurations or impossible values."""
    raw = _validated(accuracies, metric)
    configs = {c: _stats(c, s) for c, s in raw.items()}
    data = {c: {s: metric.score(v) for s, v in per_seed.items()} for c, per_seed in raw.items()}
    points = metric.points
    finished = [c for c in COST_ORDER if data.get(c)]  # decision candidates, cheapest first
    all_seeds = sorted({s for c in finished for s in data[c]})
    missing = {c: [s for s in all_seeds if s not in data[c]] for c in finished}
    missing = {c: s for c, s in missing.items() if s}
    common = sorted(set.intersection(*(set(data[c]) for c in finished))) if finished else []

    def done(chosen: str | None, reason: str, text: str, comps: list[PairedDiff]) -> Verdict:
        if missing and common:
            gaps = "; ".join(f"{label(c)} lacks {_list(s)}" for c, s in missing.items())
            text += f". Paired on the common {_list(common)} only ({gaps})"
        return Verdict(chosen, reason, text, common, missing, configs, comps, confidence, metric)

    if not finished:
        return done(None, "no_results", "no verification run finished: nothing to compare", [])
    if not common:
        return done(
            None,
            "no_common_seeds",
            f"no seed on which {', '.join(label(c) for c in finished)} all finished: "
            "no paired comparison possible; rerun the failed seeds",
            [],
        )
    uniform = [c for c in finished if c != PLAN]
    if not uniform:
        return done(
            PLAN,
            "no_baseline",
            f"no uniform baseline finished ({_seeds(len(common))}): nothing to compare the "
            "per-layer plan with; it is unverified",
            [],
        )

    def diff(a: str, b: str) -> PairedDiff:
        return paired_difference(
            data[a], data[b], config=a, baseline=b, seeds=common, confidence=confidence
        )

    comps = [diff(PLAN, b) for b in uniform] if PLAN in finished else []
    mean_on_common = {c: math.fsum(data[c][s] for s in common) / len(common) for c in finished}
    best_uniform = max(uniform, key=lambda c: (mean_on_common[c], -COST_ORDER.index(c)))

    if len(common) == 1:
        seed = common[0]
        top = max(finished, key=lambda c: (data[c][seed], -COST_ORDER.index(c)))
        text = f"1 seed: no interval; add seeds. Tentatively {label(top)}, the best on seed {seed}"
        if PLAN in finished:
            ref = best_uniform if top == PLAN else top
            d = diff(PLAN, ref)
            text += f" (the plan: {_num(d.mean_points, True)} {points} against {label(ref)})"
        return done(top, "single_seed", text, comps)

    beaten_by: dict[str, PairedDiff] = {}
    for c in finished:
        for other in finished:
            if other != c and c not in beaten_by and (d := diff(other, c)).better:
                beaten_by[c] = d
    # paired means add up over common seeds, so the top mean is never beaten (the default only
    # guards against rounding)
    top_mean = max(finished, key=lambda c: (mean_on_common[c], -COST_ORDER.index(c)))
    unbeaten = [c for c in finished if c not in beaten_by] or [top_mean]
    cheapest = min(COST_CLASS[c] for c in unbeaten)
    # Among unbeaten configurations of the cheapest class: the one the search itself found, else
    # the best mean (same cost at inference: no reason to take the lower one), then cost order.
    chosen = max(
        (c for c in unbeaten if COST_CLASS[c] == cheapest),
        key=lambda c: (c == plan_uniform, mean_on_common[c], -COST_ORDER.index(c)),
    )
    n = _seeds(len(common))

    if chosen == PLAN:
        d = diff(PLAN, best_uniform)
        text = (
            f"use the per-layer plan: {_num(d.mean_points, True)} {points} over "
            f"{label(best_uniform)}, the best uniform baseline ({_ci(d)}; {n})"
        )
        return done(PLAN, "plan_better", text, comps)

    if PLAN in finished and plan_uniform == chosen:
        d = diff(PLAN, chosen)
        reason = "plan_is_baseline"
        text = (
            f"use {label(chosen)}: the search chose {chosen.upper()} for every layer, so the plan "
            f"is {label(chosen)} itself (trained twice: {_num(d.mean_points, True)} {points}, "
            f"{_ci(d)}; {n})"
        )
    elif PLAN in finished:
        d = diff(PLAN, chosen)
        reason = "plan_worse" if d.worse else "within_noise"
        how = "worse" if d.worse else "not better, within noise"
        text = f"use {label(chosen)}: the plan is {how} ({_num(d.mean_points, True)} {points}, "
        text += f"{_ci(d)}; {n})"
    else:
        reason, text = "no_plan", f"the per-layer plan has no finished run; use {label(chosen)}"
    if best_uniform != chosen and (d := diff(best_uniform, chosen)).mean_points >= 0.05:
        text += (
            f"; {label(best_uniform)} scores {_num(d.mean_points, True)} {points} more, within "
            f"noise ({_ci(d)})"
        )
        if COST_CLASS[best_uniform] > COST_CLASS[chosen]:
            text += f", and {label(chosen)} is cheaper at inference"
        else:
            text += f", at the same cost at inference as {label(chosen)}"
        if chosen == "bn":
            text += " (BN folds into the convolution)"
    for c in COST_ORDER[: COST_ORDER.index(chosen)]:
        if c in beaten_by and COST_CLASS[c] < COST_CLASS[chosen]:
            # the chosen configuration's own margin when it beats c, else what does
            d = mine if (mine := diff(chosen, c)).better else beaten_by[c]
            text += (
                f"; {label(d.config)} beats the cheaper {label(c)} by "
                f"{_num(d.mean_points, True)} {points} ({_ci(d)})"
            )
    return done(chosen, reason, text, comps)
