"""Benchmark: the normalizer search on transformers, against uniform LN, RMSNorm and DyT.

Plain script (no pytest)::

    python bench/transformer_norms.py [--case vit-digits char-lm] [--alpha0 0.5 1.0 2.0]
                                      [--json PATH] [--num-cpus 2]

Each case is a transformer of the zoo on its ``examples/`` spec (``CASES``: the ViT on 8x8
digits, the character LM on the standard library's sources, cut down here to fit the budget).
Per case it runs one whole job through ``worker.job.run_job``, as the service does: a tied search
over the pool [ln, rms, dyt] (per token, mixed at each layer's output for DyT) with seeds 0-2,
the aggregated recommendation, and a verification that trains the plan and the uniform baselines
all-LN, all-RMS and all-DyT (at the spec's default ``model.dyt_alpha0``) from scratch with the
same seeds. DyT's initial alpha matters at this scale, so all-DyT is also trained at every other
``--alpha0`` value: the same verification runs (seeds, batch, lr, epochs) of a spec whose only
change is ``model.dyt_alpha0`` (``search_quality.verification_runs``). It prints Markdown:

- per case: each configuration's final-epoch metric (validation accuracy for the ViT, validation
  perplexity for the LM), mean ± sample std over the seeds, the verdict in the service's words
  (it judges the job's own baselines), the plan's per-layer choices with their confidence and
  which layers the aggregation found indifferent, and wall time;
- the issue's target per case: the final recommendation (the verdict's choice) within noise of
  the best uniform baseline, the DyT grid included, or better: the paired 95% interval of their
  per-seed difference (``worker.verdict.paired_difference``) reaches 0 or lies above it.

Everything runs on a local Ray (``--num-cpus``, one CPU per trial) with storage in a temporary
directory; nothing is downloaded (digits ships with scikit-learn, the corpus is the stdlib's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # search_quality, beside this script

import search_quality  # noqa: E402  (the job runner, verification runs and spec merging)

REPO = search_quality.REPO
SEEDS = (0, 1, 2)
POOL = ("ln", "rms", "dyt")
BASELINES = ("ln", "rms", "dyt")
DEFAULT_ALPHA0_GRID = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Case:
    """A transformer of the zoo on its ``examples/`` spec, with this benchmark's overrides."""

    name: str
    example: str  # examples/<example>
    overrides: dict[str, Any] = field(default_factory=dict)  # merged into the spec's sections
    note: str = ""


CASES = {
    case.name: case
    for case in (
        Case(
            "vit-digits",
            "vit_digits.yaml",
            note="4 pre-norm blocks of width 64 over 16 patches of 2x2 (the example's settings)",
        ),
        Case(
            "char-lm",
            "char_lm_stdlib.yaml",
            # the example's 300k characters cut to fit the benchmark's budget
            overrides={"dataset": {"max_chars": 150_000}},
            note="2 causal blocks with QK-norm over 64 characters; the first 150k characters",
        ),
    )
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), nargs="+", default=list(CASES))
    parser.add_argument(
        "--alpha0",
        type=float,
        nargs="+",
        default=list(DEFAULT_ALPHA0_GRID),
        metavar="A",
        help="DyT's initial alpha values to train all-DyT at (model.dyt_alpha0)",
    )
    parser.add_argument("--epochs", type=int, help="override every case's epochs (a quick run)")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary storage dir")
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="print the Markdown of an earlier run's --json; run nothing",
    )
    args = parser.parse_args(argv)
    if len(set(args.alpha0)) != len(args.alpha0):
        parser.error(f"--alpha0 {args.alpha0}: a value appears twice")
    return args


def log(message: str) -> None:
    print(f"[transformer_norms] {message}", file=sys.stderr, flush=True)


def case_payload(case: Case, epochs: int | None = None) -> dict[str, Any]:
    """The job of ``case`` as a spec payload: its example with this benchmark's pool, seeds,
    baselines and full budgets (no early stopping: every configuration's final epoch is the
    same epoch)."""
    import yaml

    payload = yaml.safe_load((REPO / "examples" / case.example).read_text())
    payload = search_quality._merge(payload, case.overrides)
    if epochs is not None:
        payload = search_quality._merge(payload, {"training": {"epochs": epochs}})
    return search_quality._merge(
        payload,
        {
            "search": {
                "pool": list(POOL),
                "trials": {"seeds": list(SEEDS)},
                "stop_when_stable": {"enabled": False},
            },
            "verify": {"enabled": True, "epochs": None, "baselines": list(BASELINES)},
            "resources": {"cpus_per_trial": 1},
        },
    )


def dyt_key(alpha0: float) -> str:
    return f"dyt@{alpha0:g}"


def plan_layers(plan) -> list[dict[str, Any]]:
    """Per layer of a recommended plan: its choice in one word (the output's point-wise member,
    else the tied statistics' normalizer), confidence, and whether it was indifferent."""
    indifferent = set(plan.metadata.get("indifferent_layers", []))
    rows = []
    for layer in plan.layers:
        output = getattr(layer, "output", None)
        choice = output if output not in (None, "norm") else layer.mean
        if layer.mean != layer.var:
            choice = f"{layer.mean}/{layer.var}"
        rows.append(
            {
                "layer": layer.name,
                "choice": choice,
                "confidence": layer.confidence,
                "indifferent": layer.name in indifferent,
            }
        )
    return rows


def run_case(case: Case, alphas: list[float], storage: Path, epochs: int | None) -> dict[str, Any]:
    from service.metrics import metric_for
    from service.spec import JobSpec

    payload = case_payload(case, epochs)
    spec = JobSpec.model_validate(payload)
    metric = metric_for(spec.metric)
    default_alpha = spec.model.dyt_alpha0
    log(f"{case.name}: {spec.training.epochs} epochs, seeds {list(SEEDS)}, pool {list(POOL)} ...")
    work_dir = storage / case.name
    result, data, job_wall = search_quality.run_whole_job(spec, storage, work_dir)
    verification = result.verification or {}
    decided = verification.get("verdict") or {}
    values = search_quality.verification_values(result.verification_outcomes, metric)
    # the SN model: each seed's search trial (one batch size and lr here), as the job reports it
    values["sn"] = {
        o.seed: v
        for o in result.outcomes
        if o.status == "TERMINATED" and (v := o.metric_value(metric)) is not None
    }
    values[dyt_key(default_alpha)] = values.pop("dyt", {})
    grid_start = time.perf_counter()
    for alpha in alphas:
        if alpha == default_alpha:  # the job's own all-DyT baseline
            continue
        log(f"{case.name}: all-DyT at alpha0 {alpha:g} ...")
        alpha_spec = JobSpec.model_validate(
            search_quality._merge(payload, {"model": {"dyt_alpha0": alpha}})
        )
        outcomes = search_quality.verification_runs(
            alpha_spec, data, "dyt", SEEDS, work_dir, name=f"dyt-alpha{alpha:g}"
        )
        values[dyt_key(alpha)] = search_quality.verification_values(outcomes, metric).get("dyt", {})
    grid_wall = time.perf_counter() - grid_start
    failed = [
        f"{o.variant} seed {o.seed}: {o.error}"
        for o in (*result.outcomes, *result.verification_outcomes)
        if o.status != "TERMINATED"
    ]
    log(f"{case.name}: {decided.get('text')} ({job_wall:.0f} + {grid_wall:.0f} s)")
    return {
        "case": case.name,
        "note": case.note,
        "metric": metric.name,
        "higher_is_better": metric.higher_is_better,
        "epochs": spec.training.epochs,
        "seeds": list(SEEDS),
        "default_alpha0": default_alpha,
        "alpha0_grid": list(alphas),
        "values": {k: {str(s): v for s, v in sorted(per.items())} for k, per in values.items()},
        "verdict": decided.get("chosen"),
        "verdict_reason": decided.get("reason"),
        "verdict_text": decided.get("text"),
        "layers": plan_layers(result.recommendation.plan),
        "failed": failed,
        "job_wall_s": job_wall,
        "grid_wall_s": grid_wall,
    }


def _per_seed(case: dict, key: str) -> dict[int, float]:
    return {int(s): v for s, v in (case["values"].get(key) or {}).items()}


def uniform_keys(case: dict) -> list[str]:
    """The uniform baselines measured: ln, rms and every DyT alpha0 (the SN model is none)."""
    return [k for k in case["values"] if k not in ("plan", "sn") and _per_seed(case, k)]


def recommended_key(case: dict) -> str | None:
    """The verdict's choice as a key of ``values`` (all-DyT: the job's own, default alpha0)."""
    chosen = case["verdict"]
    return dyt_key(case["default_alpha0"]) if chosen == "dyt" else chosen


def check_target(case: dict) -> tuple[str, str, bool]:
    """(target, measured, met): the recommendation within noise of the best uniform baseline or
    better: the paired 95% interval of (recommendation - best) in the metric's score points
    reaches 0 or lies above it."""
    from service.metrics import metric_for
    from worker.verdict import mean_and_std, paired_difference

    metric = metric_for(case["metric"])
    target = (
        f"{case['case']}: the final recommendation is within noise of the best uniform "
        "baseline (LN, RMS, DyT at every alpha0) or better"
    )
    chosen = recommended_key(case)
    uniform = uniform_keys(case)
    if chosen is None or not _per_seed(case, chosen) or not uniform:
        return target, "no verdict or no baseline finished", False

    def score(key: str) -> dict[int, float]:
        return {s: metric.score(v) for s, v in _per_seed(case, key).items()}

    def mean_score(key: str) -> float:
        mean, _ = mean_and_std(list(score(key).values()))
        return mean

    best = max(uniform, key=mean_score)
    if best == chosen:
        return (
            target,
            f"{chosen} chosen, the best uniform baseline ({metric_cell(case, best)})",
            True,
        )
    d = paired_difference(score(chosen), score(best), config=chosen, baseline=best)
    if d.ci_low_points is None:
        return (
            target,
            f"{d.mean_points:+.1f} {metric.points} vs {best} (1 seed: no interval)",
            False,
        )
    measured = (
        f"{chosen} {d.mean_points:+.1f} {metric.points} vs {best} "
        f"(95% CI {d.ci_low_points:+.1f} to {d.ci_high_points:+.1f}; {len(d.seeds)} seeds)"
    )
    return target, measured, d.ci_high_points >= 0


def metric_cell(case: dict, key: str) -> str:
    from worker.verdict import mean_and_std

    per_seed = _per_seed(case, key)
    if not per_seed:
        return "-"
    mean, std = mean_and_std(list(per_seed.values()))
    accuracy = case["metric"] == "accuracy"
    scale, digits = (100.0, 1) if accuracy else (1.0, 2)
    text = f"{scale * mean:.{digits}f}"
    text += f" ± {scale * std:.{digits}f}" if std is not None else " (1 seed: no interval)"
    missing = [s for s in case["seeds"] if s not in per_seed]
    return text + (f" (lacks seed {', '.join(map(str, missing))})" if missing else "")


def _alpha_of(key: str) -> float:
    return float(key.split("@", 1)[1])


def config_label(case: dict, key: str) -> str:
    labels = {"plan": "searched plan", "ln": "all-LN", "rms": "all-RMS", "sn": "SN model (search)"}
    if key.startswith("dyt@"):
        alpha = key.split("@", 1)[1]
        default = " (the job's baseline)" if float(alpha) == case["default_alpha0"] else ""
        return f"all-DyT, alpha0 {alpha}{default}"
    return labels.get(key, key)


def render(cases: list[dict], total_s: float) -> str:
    lines = []
    for case in cases:
        unit = "accuracy %" if case["metric"] == "accuracy" else "perplexity"
        lines += [
            f"### {case['case']}",
            "",
            f"{case['note']}; {case['epochs']} epochs. Final-epoch validation {case['metric']} "
            f"({unit}; "
            f"{'higher' if case['higher_is_better'] else 'lower'} is better), mean ± sample std "
            f"over seeds {', '.join(map(str, case['seeds']))}, each configuration trained from "
            "scratch (SN model: the search's own annealed trials).",
            "",
            f"| configuration | {unit} |",
            "|---|---|",
        ]
        grid = sorted((k for k in case["values"] if k.startswith("dyt@")), key=_alpha_of)
        order = ["plan", "ln", "rms", *grid]
        order += [k for k in case["values"] if k not in order]
        lines += [f"| {config_label(case, k)} | {metric_cell(case, k)} |" for k in order]
        indifferent = [row["layer"] for row in case["layers"] if row["indifferent"]]
        lines += [
            "",
            f"Verdict ({case['verdict'] or 'none'}): {case['verdict_text'] or '-'}",
            "",
            "| layer | plan's choice | confidence | indifferent |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {row['layer']} | {row['choice']} | {row['confidence']:.2f} "
            f"| {'yes' if row['indifferent'] else 'no'} |"
            for row in case["layers"]
        ]
        lines += [
            "",
            f"Indifferent layers: {len(indifferent)} of {len(case['layers'])}"
            + (f" ({', '.join(indifferent)})" if indifferent else ""),
            f"Wall: {case['job_wall_s']:.0f} s job (search and verification) + "
            f"{case['grid_wall_s']:.0f} s DyT alpha0 grid.",
        ]
        if case["failed"]:
            lines += ["", "Failed or diverged runs:", ""] + [f"- {f}" for f in case["failed"]]
        lines.append("")
    lines += ["| target | measured | met |", "|---|---|---|"]
    for case in cases:
        target, measured, met = check_target(case)
        lines.append(f"| {target} | {measured} | {'yes' if met else '**no**'} |")
    lines += ["", f"Total wall time: {total_s / 60:.1f} min."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        print(render(saved["cases"], saved["total_s"]))
        return 0
    from worker.search import ensure_ray

    storage = Path(tempfile.mkdtemp(prefix="normsearch-transformers-"))
    start = time.perf_counter()
    cases = []
    try:
        ensure_ray(None, args.num_cpus)
        for name in args.case:
            cases.append(run_case(CASES[name], args.alpha0, storage, args.epochs))
    finally:
        if not args.keep:
            shutil.rmtree(storage, ignore_errors=True)
    total = time.perf_counter() - start
    print(render(cases, total))
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": cases, "total_s": total}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
