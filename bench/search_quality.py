"""Benchmark: is the recommendation worth anything? Cases where the normalizer matters.

Plain script (no pytest)::

    python bench/search_quality.py [--case mlp-digits ...] [--json PATH] [--num-cpus 2]

Each case is a model on a dataset at a few batch sizes (``CASES``; the spec of each job is the
case's ``examples/`` file with the batch size, seeds and budgets set here). For every batch size
it runs one whole job through ``worker.job.run_job``, as the service does: a search with four seeds
(0-3), the aggregated recommendation, and a verification that trains the plan and the uniform
baselines from scratch with the same four seeds, at that batch size with the learning rate scaled
to it (``training.lr_scaling: linear`` relative to the case's reference batch size). It prints
Markdown:

- per job: each configuration's final-epoch validation accuracy (mean and sample std over the four
  seeds), the verdict in the service's words, the agreement of two independent searches (seeds
  {0, 1} against {2, 3}: share of layers with the same (mean, var) choice), once for their raw
  per-layer plans and once for their final choices (each half's plan verified from scratch like
  the job's and judged by the same verdict), the indifferent layers, and wall time;
- per case: the mean BN ratio per batch size (BN's share of the final, annealed ratios, averaged
  over layers, mean and variance sides and the four search trials);
- the targets of the search-quality issue, each with its measured figure.

Everything runs on a local Ray (``--num-cpus``, one CPU per trial) with storage in a temporary
directory; nothing is downloaded (digits ships with scikit-learn, MNIST-1D is generated).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SEEDS = (0, 1, 2, 3)
HALVES = ((0, 1), (2, 3))  # two independent searches: disjoint seed sets
CONFIG_ORDER = ("plan", "bn", "gn", "ln", "in", "sn")


@dataclass(frozen=True)
class Case:
    """A model and dataset (an ``examples/`` spec) searched at ``batch_sizes``."""

    name: str
    example: str  # examples/<example>
    batch_sizes: tuple[int, ...]
    epochs: dict[int, int]  # search epochs per batch size (verification: the same)
    baselines: tuple[str, ...]
    verify_at: tuple[int, ...] | None = None  # batch sizes with a verification (None: all)
    overrides: dict[str, Any] = field(default_factory=dict)  # merged into the spec's sections
    note: str = ""


CASES = {
    case.name: case
    for case in (
        Case(
            "mlp-digits",
            "mlp_digits.yaml",
            batch_sizes=(2, 32),
            epochs={2: 4, 32: 15},
            baselines=("bn", "gn", "ln"),
            note="BatchNorm over two samples: its statistics collapse",
        ),
        Case(
            "resnet20-digits",
            "digits.yaml",
            batch_sizes=(2, 8, 32),
            epochs={2: 2, 8: 3, 32: 6},
            baselines=("bn", "gn"),
            verify_at=(32,),  # the sweep is for the ratios; every normalizer works on digits
            note="the SN paper's sweep: ratios against the batch size",
        ),
        Case(
            "cnn1d-mnist1d",
            "mnist1d_cnn1d.yaml",
            batch_sizes=(4, 32),
            epochs={4: 6, 32: 12},
            baselines=("bn", "gn", "ln"),
            note="MNIST-1D, where a normalizer matters at any batch size",
        ),
    )
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), nargs="+", default=list(CASES))
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary storage dir")
    parser.add_argument(
        "--dump", metavar="DIR", help="write every job's trial outcomes (histories) as JSON there"
    )
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[search_quality] {message}", file=sys.stderr, flush=True)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def case_spec(case: Case, batch_size: int):
    """The job of ``case`` at ``batch_size``: its example spec with this benchmark's seeds,
    budget and baselines; the learning rate scales from the example's batch size."""
    import yaml

    from service.spec import JobSpec

    payload = yaml.safe_load((REPO / "examples" / case.example).read_text())
    epochs = case.epochs[batch_size]
    payload = _merge(
        payload,
        {
            "training": {"epochs": epochs, "lr_scaling": "linear"},
            "search": {
                "trials": {"seeds": list(SEEDS), "batch_sizes": [batch_size]},
                "target_batch_size": batch_size,
                "stop_when_stable": {"enabled": False},
            },
            "verify": {
                "enabled": case.verify_at is None or batch_size in case.verify_at,
                "epochs": epochs,
                "baselines": list(case.baselines),
            },
            "resources": {"cpus_per_trial": 1},
        },
    )
    return JobSpec.model_validate(_merge(payload, case.overrides))


def bn_share(outcomes) -> float | None:
    """BN's share of the final ratios: mean over successful trials, layers, mean and var."""
    from worker.recommend import successful

    values = [
        ratios[side].get("bn", 0.0)
        for trial in successful(outcomes)
        for ratios in trial.final_ratios.values()
        for side in ("mean", "var")
    ]
    return statistics.fmean(values) if values else None


def _choices(plan) -> dict[str, tuple[str, str]]:
    return {layer.name: (layer.mean, layer.var) for layer in plan.layers}


def half_recommendations(outcomes, batch_size: int) -> list | None:
    """The recommendation of each seed half (two independent searches), None when a half has
    no successful trial."""
    from worker.recommend import recommend

    recommendations = []
    for half in HALVES:
        trials = [o for o in outcomes if o.seed in half]
        try:
            recommendations.append(recommend(trials, target_batch_size=batch_size))
        except ValueError as exc:
            log(f"agreement: seeds {half}: {exc}")
            return None
    return recommendations


def half_agreement(halves: list | None) -> float | None:
    """Share of layers on which the recommendations of the two seed halves agree."""
    from worker.aggregate import plan_agreement

    if halves is None:
        return None
    return plan_agreement(*(_choices(r.plan) for r in halves))


def final_choice_agreement(
    spec, data, result, halves: list, batch_size: int, work_dir: Path
) -> dict:
    """Agreement of what two independent searches would deliver: each seed half's own plan,
    trained from scratch on seeds 0-3 (the job's plan runs when it is the same plan), judged
    against the job's baseline runs by the service's verdict; the final choice of a layer is
    the plan's when the verdict picks the plan, else the chosen uniform normalizer."""
    from worker.aggregate import plan_agreement
    from worker.job import uniform_normalizer
    from worker.models import PLAN_VARIANT
    from worker.verdict import verdict

    measured = verification_values(result.verification_outcomes)
    job_plan = _choices(result.recommendation.plan)
    finals, verdicts = [], []
    for index, recommendation in enumerate(halves):
        choices = _choices(recommendation.plan)
        if choices == job_plan:
            plan_accuracy = measured.get(PLAN_VARIANT, {})
        else:
            plan_accuracy = verification_values(
                verification_runs(
                    spec, data, PLAN_VARIANT, SEEDS, work_dir,
                    name=f"verify-half{index}", plan=recommendation.plan.to_dict(),
                )
            ).get(PLAN_VARIANT, {})  # fmt: skip
        accuracies = {k: v for k, v in measured.items() if k != PLAN_VARIANT}
        decided = verdict(
            {**accuracies, PLAN_VARIANT: plan_accuracy},
            plan_uniform=uniform_normalizer(recommendation.plan),
        )
        chosen = decided.chosen
        finals.append(
            choices if chosen == PLAN_VARIANT else {name: (chosen, chosen) for name in choices}
        )
        verdicts.append(chosen)
    return {"agreement": plan_agreement(*finals), "verdicts": verdicts}


def verification_runs(
    spec, data, variant: str, seeds, work_dir: Path, *, name: str, plan: dict | None = None
) -> list:
    """``variant`` (the plan, or a uniform baseline built from ``spec``) trained from scratch
    on ``seeds`` as a job's verification trains it: the target batch size, the first lr, the
    verification's epochs, no early stopping. Returns the trial outcomes."""
    from worker.recorder import MemoryRecorder
    from worker.search import grid_point, run_trials

    batch = spec.target_batch_size
    grid = [
        grid_point(spec, seed=s, batch_size=batch, lr=spec.lrs[0], variant=variant) for s in seeds
    ]
    with contextlib.redirect_stdout(sys.stderr):  # Tune's tables; stdout is the report
        run = run_trials(
            spec, data, name=name, storage_dir=work_dir, recorder=MemoryRecorder(), grid=grid,
            variant=variant, epochs=spec.verify_epochs, plan=plan, use_scheduler=False,
        )  # fmt: skip
    return run.outcomes


def verification_values(outcomes, metric=None) -> dict[str, dict[int, float]]:
    """Variant -> {seed: final value of ``metric`` (default accuracy)} of the runs that count
    in a verification (``TrialOutcome.counts_in_verification``)."""
    from service.metrics import ACCURACY

    metric = metric or ACCURACY
    values: dict[str, dict[int, float]] = {}
    for o in outcomes:
        value = o.metric_value(metric)
        if o.counts_in_verification and value is not None:
            values.setdefault(o.variant, {})[o.seed] = value
    return values


def run_whole_job(spec, storage: Path, work_dir: Path):
    """One job through ``worker.job.run_job`` as the service runs it (in memory, on the local
    Ray); returns its result, the loaded dataset and the wall time in seconds."""
    from worker.data import load_dataset
    from worker.job import run_job
    from worker.recorder import MemoryRecorder

    start = time.perf_counter()
    data = load_dataset(spec.dataset, data_roots=[storage])
    with contextlib.redirect_stdout(sys.stderr):  # Tune's tables; stdout is the report
        result = run_job(
            spec, data_roots=[storage], work_dir=work_dir, recorder=MemoryRecorder(), data=data
        )
    return result, data, time.perf_counter() - start


def run_case_job(
    case: Case, batch_size: int, storage: Path, dump: Path | None = None
) -> dict[str, Any]:
    spec = case_spec(case, batch_size)
    log(f"{case.name} batch {batch_size}: {spec.training.epochs} epochs, seeds {list(SEEDS)} ...")
    start = time.perf_counter()
    work_dir = storage / f"{case.name}-b{batch_size}"
    result, data, wall = run_whole_job(spec, storage, work_dir)
    halves = half_recommendations(result.outcomes, batch_size)
    final = {"agreement": None, "verdicts": []}
    if spec.verify.enabled and halves is not None:
        final = final_choice_agreement(spec, data, result, halves, batch_size, work_dir)
    extra_wall = time.perf_counter() - start - wall
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
        outcomes = [o.to_dict() for o in (*result.outcomes, *result.verification_outcomes)]
        (dump / f"{case.name}-b{batch_size}.json").write_text(json.dumps(outcomes))
    verification = result.verification or {}
    decided = verification.get("verdict") or {}
    rows = verification.get("results", {})
    failed = [
        f"{o.variant} seed {o.seed}: {o.error}"
        for o in (*result.outcomes, *result.verification_outcomes)
        if o.status != "TERMINATED"
    ]
    plan_layers = result.recommendation.plan.layers
    log(f"{case.name} batch {batch_size}: {decided.get('text')} ({wall:.0f} s)")
    return {
        "case": case.name,
        "batch_size": batch_size,
        "epochs": spec.training.epochs,
        "effective_lr": spec.effective_lr(batch_size, spec.lrs[0]),
        "configs": {
            key: {
                "mean": row.get("val_accuracy"),
                "std": row.get("std"),
                "per_seed": row.get("per_seed", []),
            }
            for key, row in rows.items()
        },
        "verdict": decided.get("chosen"),
        "verdict_reason": decided.get("reason"),
        "verdict_text": decided.get("text"),
        "agreement": half_agreement(halves),
        "verified": spec.verify.enabled,
        "final_agreement": final["agreement"],
        "half_verdicts": final["verdicts"],
        "agreement_wall_s": extra_wall,
        "bn_share": bn_share(result.outcomes),
        "layers": len(plan_layers),
        "plan": {layer.name: f"{layer.mean}/{layer.var}" for layer in plan_layers},
        "indifferent": len(result.recommendation.plan.metadata.get("indifferent_layers", [])),
        "failed": failed,
        "wall_s": wall,
    }


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def ratio_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def final_cell(job: dict) -> str:
    if job["final_agreement"] is None:
        return "- (not verified)"
    return f"{pct(job['final_agreement'])}% ({' / '.join(map(str, job['half_verdicts']))})"


def config_cell(config: dict | None) -> str:
    if not config or config.get("mean") is None:
        return "-"
    std = config.get("std")
    return pct(config["mean"]) + ("" if std is None else f" ± {100 * std:.1f}")


def check_targets(jobs: list[dict], total_s: float) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each target of the issue."""
    out = []
    for job in jobs:
        where = f"{job['case']} b{job['batch_size']}"
        uniform = {
            k: c["mean"]
            for k, c in job["configs"].items()
            if k in ("bn", "gn", "ln", "in") and c["mean"] is not None
        }
        plan = job["configs"].get("plan", {}).get("mean")
        if not job["verified"]:  # a search-only point of a sweep: only its ratios count
            continue
        if not uniform or plan is None:
            out.append((f"{where}: verification finished", "no", False))
            continue
        best_key = max(uniform, key=uniform.get)
        best = uniform[best_key]
        weak = sorted(k for k, v in uniform.items() if v <= best - 0.05)
        if weak:
            out.append(
                (
                    f"{where}: the recommendation is none of the baselines 5+ points below "
                    f"the best ({', '.join(weak)})",
                    f"verdict {job['verdict']}",
                    job["verdict"] not in weak,
                )
            )
            out.append(
                (
                    f"{where}: the plan is within 1 point of the best uniform ({best_key}) or "
                    "better",
                    f"{100 * (plan - best):+.1f} points",
                    plan >= best - 0.01,
                )
            )
        if job["case"] == "mlp-digits" and job["batch_size"] == 2 and "bn" in uniform:
            chosen = job["configs"].get(job["verdict"] or "", {}).get("mean")
            gain = None if chosen is None else chosen - uniform["bn"]
            out.append(
                (
                    f"{where}: the recommendation beats all-BN by >= 20 points",
                    "-" if gain is None else f"{100 * gain:+.1f} points",
                    gain is not None and gain >= 0.20,
                )
            )
        out.append(
            (
                f"{where}: two independent searches agree on the final choice of >= 90% of the "
                "layers",
                f"{pct(job['final_agreement'])}% (plans alone: {pct(job['agreement'])}%)",
                job["final_agreement"] is not None and job["final_agreement"] >= 0.9,
            )
        )
    for name in dict.fromkeys(job["case"] for job in jobs):
        sweep = sorted((j["batch_size"], j["bn_share"]) for j in jobs if j["case"] == name)
        if len(sweep) < 2:
            continue
        shares = [s for _, s in sweep]
        pairs = zip(shares, shares[1:], strict=False)
        rising = all(a is not None and b is not None and b > a for a, b in pairs)
        out.append(
            (
                f"{name}: the mean BN ratio rises with the batch size",
                ", ".join(f"b{b} {ratio_cell(s)}" for b, s in sweep),
                rising,
            )
        )
    out.append(("the whole benchmark runs in < 20 min", f"{total_s / 60:.1f} min", total_s < 1200))
    return out


def render(jobs: list[dict], total_s: float) -> str:
    lines = [
        "| case | batch | lr | epochs | plan | all-BN | all-GN | all-LN | SN model | verdict "
        "| plans agree | final choices agree | BN ratio | indifferent | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for job in jobs:
        c = job["configs"]
        lines.append(
            f"| {job['case']} | {job['batch_size']} | {job['effective_lr']:.3g} "
            f"| {job['epochs']} | {config_cell(c.get('plan'))} | {config_cell(c.get('bn'))} "
            f"| {config_cell(c.get('gn'))} | {config_cell(c.get('ln'))} "
            f"| {config_cell(c.get('sn'))} | {job['verdict'] or '-'} "
            f"| {pct(job['agreement'])}% of {job['layers']} "
            f"| {final_cell(job)} "
            f"| {ratio_cell(job['bn_share'])} "
            f"| {job['indifferent']} | {job['wall_s']:.0f} + {job['agreement_wall_s']:.0f} s |"
        )
    lines += [
        "",
        "Accuracies: final-epoch validation accuracy in %, mean ± sample std over seeds 0-3 "
        "(each configuration trained from scratch; SN model: the search's own annealed trials). "
        "Plans agree: the per-layer recommendations of seeds {0, 1} and of seeds {2, 3} (share "
        "of layers with the same mean/var choice). Final choices agree: the same for what each "
        "would deliver, its plan verified from scratch on seeds 0-3 against the job's baseline "
        "runs (in brackets: each half's verdict). BN ratio: BN's share of the final ratios of the "
        "search trials. Wall: the job (search and verification), then the halves' extra "
        "verification.",
        "",
        "Verdicts:",
        "",
    ]
    verified = [j for j in jobs if j["verified"]]
    lines += [f"- {j['case']} b{j['batch_size']}: {j['verdict_text']}" for j in verified]
    failed = [f"{j['case']} b{j['batch_size']}: {f}" for j in jobs for f in j["failed"]]
    if failed:
        lines += ["", "Failed or diverged runs:", ""] + [f"- {f}" for f in failed]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [
        f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in check_targets(jobs, total_s)
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from worker.search import ensure_ray

    storage = Path(tempfile.mkdtemp(prefix="normsearch-quality-"))
    start = time.perf_counter()
    jobs = []
    try:
        ensure_ray(None, args.num_cpus)
        for name in args.case:
            case = CASES[name]
            for batch_size in case.batch_sizes:
                dump = Path(args.dump) if args.dump else None
                jobs.append(run_case_job(case, batch_size, storage, dump))
    finally:
        if not args.keep:
            shutil.rmtree(storage, ignore_errors=True)
    total = time.perf_counter() - start
    print(render(jobs, total))
    if args.json:
        Path(args.json).write_text(json.dumps({"jobs": jobs, "total_s": total}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
