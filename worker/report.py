"""The output directory of a search: plan, report, ratio histories and a figure.

``write_report`` writes ``plan.json`` / ``plan.yaml`` (the plan of the configuration the
verification's verdict chose, ``worker.export.deliverable_plan``; without one the recommended
plan), ``search_plan.json`` (the search's recommended per-layer ``NormalizerPlan``, whatever the
verdict), ``report.json`` (spec, recommendation with the torch layer each planned layer becomes,
per-trial summaries, verification, the outputs' metadata, extra), ``ratios.csv``
(every trial's ratio history in long format) and ``ratios.png`` (the recommended ratios per layer,
drawn like the SN papers' figures).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from service.vocabulary import ArtifactKind
from sn_core import NormalizerPlan
from sn_core.vocabulary import MEMBER_LABELS, OUTPUT_CHOICES, STATISTIC_MEMBERS

from .recommend import Recommendation, layer_outputs, torch_layers
from .results import EpochRecord, TrialOutcome

__all__ = ["CSV_COLUMNS", "COLORS", "plot_ratios", "write_report"]

COLORS = {
    "in": "tab:blue", "ln": "tab:orange", "bn": "tab:green", "gn": "tab:red", "rms": "tab:purple",
}  # fmt: skip
# The output ratios' columns (out_norm, out_dyt, out_none) are empty for layers without
# point-wise members.
CSV_COLUMNS = (
    ["trial_id", "seed", "batch_size", "epoch", "layer"]
    + [f"mean_{k}" for k in STATISTIC_MEMBERS]
    + [f"var_{k}" for k in STATISTIC_MEMBERS]
    + [f"out_{k}" for k in OUTPUT_CHOICES]
    + ["mean_fixed", "var_fixed"]
)

RatioRows = list[tuple[str, Mapping[str, float], Mapping[str, float]]]


def _jsonable(value: Any) -> Any:
    """Plain JSON data: str keys, lists for tuples/sets, None for non-finite floats."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    return str(value)


def _trial_summary(trial: TrialOutcome, used: set[str]) -> dict[str, Any]:
    choices = None
    if trial.plan is not None:
        choices = NormalizerPlan.from_dict(trial.plan).counts()
    return {
        "trial_id": trial.trial_id,
        "seed": trial.seed,
        "batch_size": trial.batch_size,
        "lr": trial.lr,
        "effective_lr": trial.effective_lr,
        "status": trial.status,
        "epochs_used": trial.epochs_used,
        "epochs_budget": trial.epochs_budget,
        "val_accuracy": trial.val_accuracy,
        **({"val_perplexity": trial.val_perplexity} if trial.val_perplexity is not None else {}),
        "error": trial.error,
        "used": trial.trial_id in used,
        "choices": choices,
    }


def _csv_rows(outcomes: list[TrialOutcome]) -> list[dict[str, Any]]:
    return [row for trial in outcomes for record in trial.history for row in _rows(trial, record)]


def _rows(trial: TrialOutcome, record: EpochRecord) -> list[dict[str, Any]]:
    """One CSV row per layer of one epoch record."""
    rows = []
    for layer, ratios in record["ratios"].items():
        row: dict[str, Any] = {
            "trial_id": trial.trial_id,
            "seed": trial.seed,
            "batch_size": trial.batch_size,
            "epoch": record["epoch"],
            "layer": layer,
        }
        for role in ("mean", "var"):
            values = ratios[role]
            for kind in STATISTIC_MEMBERS:
                row[f"{role}_{kind}"] = float(values[kind]) if kind in values else ""
            fixed = ratios.get("fixed", {}).get(role)
            row[f"{role}_fixed"] = "" if fixed is None else int(bool(fixed))
        output = ratios.get("output") or {}
        for choice in OUTPUT_CHOICES:
            row[f"out_{choice}"] = float(output[choice]) if choice in output else ""
        rows.append(row)
    return rows


def write_ratios_csv(path: Path, outcomes: list[TrialOutcome]) -> Path:
    """One row per trial x epoch x layer; an empty cell for a normalizer not in the pool."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(_csv_rows(outcomes))
    return path


def write_report(
    out_dir: Path,
    *,
    spec: dict,
    recommendation: Recommendation,
    outcomes: list[TrialOutcome],
    verification: dict | None,
    plan: NormalizerPlan | None = None,
    outputs: dict | None = None,
    extra: dict | None = None,
    described: dict[str, str] | None = None,
) -> dict[ArtifactKind, Path]:
    """Write the search's output files into ``out_dir`` (created if needed); returns their paths
    by kind: plan_json, plan_yaml (``plan``, default the recommended plan), search_plan_json
    (the recommended plan), report_json, ratios_csv, ratios_png. ``outputs``: the downloads'
    metadata (``worker.job.JobResult.outputs``), kept in the report. ``described``: the
    recommendation's torch layers as built in the job's network (``JobResult.torch_layers``);
    without it they are told from the plan alone."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    search_plan = recommendation.plan
    delivered = search_plan if plan is None else plan
    paths = {
        ArtifactKind.plan_json: delivered.save(out_dir / "plan.json"),
        ArtifactKind.plan_yaml: delivered.save(out_dir / "plan.yaml"),
        ArtifactKind.search_plan_json: search_plan.save(out_dir / "search_plan.json"),
    }
    used = set(recommendation.trial_ids)
    report = {
        "spec": spec,
        "recommendation": {
            **recommendation.to_dict(),
            # Layer name -> the torch layer apply_plan builds for it (sn_core's rule, in words;
            # DynamicTanh or Identity where the output choice is point-wise).
            "torch_layers": described
            or torch_layers(search_plan, layer_outputs(recommendation.to_dict())),
        },
        "trials": [_trial_summary(t, used) for t in outcomes],
        "verification": verification,
        # What plan.json and the checkpoints are (configuration, verdict, source run, accuracy).
        "outputs": outputs or {"plan": delivered.metadata},
        "extra": extra,
    }
    report_path = out_dir / "report.json"
    text = json.dumps(_jsonable(report), indent=2, allow_nan=False)
    report_path.write_text(text + "\n", encoding="utf-8")
    paths[ArtifactKind.report_json] = report_path
    paths[ArtifactKind.ratios_csv] = write_ratios_csv(out_dir / "ratios.csv", outcomes)
    n = len(recommendation.trial_ids)
    title = (
        f"Recommended normalizer ratios, batch size {recommendation.target_batch_size} "
        f"({n} trial{'s' if n != 1 else ''})"
    )
    paths[ArtifactKind.ratios_png] = plot_ratios(search_plan, out_dir / "ratios.png", title=title)
    return paths


def _as_rows(layers: Any) -> RatioRows:
    if isinstance(layers, NormalizerPlan):
        return [(x.name, x.mean_ratios, x.var_ratios) for x in layers]
    if isinstance(layers, Mapping):  # sn_core.switch_ratios(model) or an epoch record's ratios
        return [(name, r["mean"], r["var"]) for name, r in layers.items()]
    return [(name, mean, var) for name, mean, var in layers]


def _short(name: str, limit: int = 18) -> str:
    name = name.replace("downsample", "ds").replace("layer", "L")
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def plot_ratios(
    layers: NormalizerPlan | Mapping[str, Any] | Sequence[tuple[str, Mapping, Mapping]],
    path: str | Path,
    *,
    title: str = "Switchable Normalization ratios per layer",
    dpi: int = 120,
) -> Path:
    """Two panels (mean, variance) with one stacked bar per layer in network order.

    ``layers`` is a list of (name, mean_ratios, var_ratios), a ``NormalizerPlan`` or a
    ``switch_ratios``-style mapping. Colours are fixed per normalizer (IN blue, LN orange, BN
    green, GN red, RMS purple). Written as PNG with the Agg backend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _as_rows(layers)
    present = {k for _, mean, var in rows for k in (*mean, *var)}
    kinds = [k for k in STATISTIC_MEMBERS if k in present]
    n = len(rows)
    width = min(max(8.0, 0.3 * n + 2.0), 30.0)
    fig, axes = plt.subplots(2, 1, figsize=(width, 6.5), sharex=True)
    try:
        xs = list(range(n))
        for ax, role, index in ((axes[0], "mean", 1), (axes[1], "variance", 2)):
            bottom = [0.0] * n
            for kind in kinds:
                heights = [float(row[index].get(kind, 0.0)) for row in rows]
                ax.bar(
                    xs,
                    heights,
                    bottom=bottom,
                    width=0.85,
                    color=COLORS[kind],
                    label=MEMBER_LABELS[kind],
                    edgecolor="white",
                    linewidth=0.3,
                )
                bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
            ax.set_ylim(0.0, 1.0)
            ax.set_xlim(-0.6, n - 0.4)
            ax.set_ylabel(f"{role} ratio")
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_title(title)
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)
        step = max(1, math.ceil(n / 60))
        ticks = xs[::step]
        axes[1].set_xticks(ticks)
        fontsize = 8 if n <= 30 else 6
        axes[1].set_xticklabels([_short(rows[i][0]) for i in ticks], rotation=90, fontsize=fontsize)
        axes[1].set_xlabel("layer (network order)")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path
