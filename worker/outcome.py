"""A finished job's result in one short line, for the jobs list (``jobs.result``).

The worker computes it once, when the job succeeds, from what report.json holds: the verdict's
chosen configuration with its final-epoch validation accuracy (mean and sample std over the
verification's seeds), or without a verification the search's trials at the target batch size.
Every accuracy says which epoch it is (the final one) and how sure it is (std over the seeds, or
"1 seed: no interval"), so the list never shows a bare number. A language model's result is its
validation perplexity instead (``perplexity``; ``accuracy`` null), written "ppl 4.12 ± ...".
"""

from __future__ import annotations

import math
from typing import Any

from service.metrics import ACCURACY, Metric

from .recommend import Recommendation
from .results import TrialOutcome
from .verdict import label, mean_and_std

__all__ = ["ACCURACY_KIND", "job_result", "result_text", "short_label"]

ACCURACY_KIND = "final epoch"  # which epoch every accuracy of the result is


def short_label(config: str) -> str:
    """A configuration as a jobs-list cell names it: "plan", "SN model", "all-BN"."""
    return label(config, short=True)


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    return mean_and_std([v for v in values if v is not None and math.isfinite(v)])


def result_text(result: dict[str, Any]) -> str:
    """ "plan 0.981 ± 0.004 (4 seeds, final epoch)", "all-BN 0.950 (1 seed: no interval, final
    epoch)", "search plan, not verified: 0.97 ± ... (2 trials, final epoch)"."""
    label, accuracy, std, n = result["label"], result["accuracy"], result["std"], result["n"]
    unit = "seed" if result["verified"] else "trial"
    prefix, what = "", "accuracy"
    if "perplexity" in result:  # a language model: lower is better
        accuracy, prefix, what = result["perplexity"], "ppl ", "perplexity"
    if accuracy is None:
        return f"{label}: no {what}"
    if n < 2 or std is None:
        spread = f"{prefix}{accuracy:.3f} (1 {unit}: no interval, {result['accuracy_kind']})"
    else:
        spread = f"{prefix}{accuracy:.3f} ± {std:.3f} ({n} {unit}s, {result['accuracy_kind']})"
    return f"{label} {spread}" if result["verified"] else f"{label}, not verified: {spread}"


def _result(
    *,
    configuration: str | None,
    label: str,
    accuracy: float | None,
    std: float | None,
    n: int,
    verified: bool,
    reason: str,
    metric: Metric = ACCURACY,
) -> dict[str, Any]:
    """``accuracy``: the metric's mean (a language model's perplexity goes to ``perplexity``)."""
    result = {
        "configuration": configuration,
        "label": label,
        "verified": verified,
        "reason": reason,
        "accuracy": accuracy if metric is ACCURACY else None,
        "std": std,
        "n": n,
        "accuracy_kind": ACCURACY_KIND,
        "metric": f"{metric.label}: mean and sample std over "
        + ("the verification's seeds" if verified else "the search trials at the target batch"),
    }
    if metric is not ACCURACY:
        result["perplexity"] = accuracy
    result["text"] = result_text(result)
    return result


def job_result(
    verification: dict[str, Any] | None,
    recommendation: Recommendation,
    outcomes: list[TrialOutcome],
    *,
    metric: Metric = ACCURACY,
) -> dict[str, Any]:
    """The result of a succeeded job (plain JSON data with ``text``, its short form).

    With a verdict that chose a configuration: that configuration and its final-epoch accuracy
    over the verification's seeds. A verdict that chose nothing: its words. No verification:
    the search plan, not verified, with the final-epoch accuracy of the trials it came from."""
    decided = (verification or {}).get("verdict")
    if decided and decided.get("chosen"):
        chosen = decided["chosen"]
        stats = (decided.get("configs") or {}).get(chosen) or {}
        # The verdict's own statistics, so the list and the report agree to the digit.
        return _result(
            configuration=chosen,
            label=short_label(chosen),
            accuracy=stats.get("mean"),
            std=stats.get("std"),
            n=int(stats.get("n") or 0),
            verified=True,
            reason=decided.get("reason", ""),
            metric=metric,
        )
    if decided:
        result = _result(
            configuration=None,
            label="no verdict",
            accuracy=None,
            std=None,
            n=0,
            verified=True,
            reason=decided["reason"],
            metric=metric,
        )
        result["text"] = f"no verdict: {decided.get('text') or decided['reason']}"
        return result
    used = set(recommendation.trial_ids)
    values = [o.metric_value(metric) for o in outcomes if o.trial_id in used]
    accuracy, std = _mean_std(values)
    return _result(
        configuration="search_plan",
        label="search plan",
        accuracy=accuracy,
        std=std,
        n=sum(v is not None and math.isfinite(v) for v in values),
        verified=False,
        reason="not_verified",
        metric=metric,
    )
