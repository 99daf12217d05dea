"""Benchmark: what an SN search costs, and what early stopping saves, on a local Ray Tune.

Plain script (no pytest)::

    python bench/search_cost.py [--epochs 30] [--seeds 0 1 2] [--early-end 0.15] [--json PATH]

On scikit-learn's digits (1x8x8) with resnet20 (every norm layer SN over in/ln/bn), batch size
32, in one process on a local Ray with ``--num-cpus`` CPUs (one per trial) and storage in a fresh
temporary directory, it runs three experiments through ``worker.search.run_trials``:

1. ``full``: the full-budget search: ``--epochs`` per trial, the default sparsity schedule (every
   layer one-hot by 60% of the budget), stop_when_stable disabled, one trial per seed.
2. ``early``: the same budget and seeds, the sparsity schedule compressed (one-hot by
   ``--early-end`` of the budget) and stop_when_stable enabled (patience ``--patience``).
3. ``bn``: a BatchNorm2d baseline (variant "bn") for ``--bn-epochs`` epochs, same seeds, for
   training throughput.

It prints Markdown: the epochs the early run used against the full budget (target <= 30%), the
per-layer agreement of the two recommendations (``worker.recommend.recommend``; target >= 90% of
layers with identical (mean, var) choices), both runs' validation accuracy (mean over trials of
the last epoch's), training throughput (train images / median epoch ``train_seconds``, epochs after
the first) of the full SN run against the BN baseline (targets >= 0.8x, and >= 0.95x once every
layer is fixed), over all SN epochs, over the epochs that ended with some layer not yet fixed
(those compute the whole mixture) and over those with every layer fixed, and the wall time of
each phase. Trials of one phase share the CPUs, so the timings of concurrent trials include that
contention alike for SN and BN (same seeds, same concurrency).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

# Targets: (label, key, comparison, bound)
TARGETS = [
    ("early run epochs / full budget <= 30%", "early_epoch_fraction", "<=", 0.30),
    ("recommendations agree (mean, var) on >= 90% of layers", "layer_agreement", ">=", 0.90),
    # issue 12: a search trial at >= 0.8x a BN model's throughput, >= 0.95x once all fixed
    ("SN throughput >= 0.8x BN (all SN epochs after the first)", "sn_over_bn", ">=", 0.80),
    (
        "SN throughput >= 0.8x BN (mixture epochs only: some layer not fixed)",
        "sn_mixture_over_bn",
        ">=",
        0.80,
    ),
    ("SN throughput >= 0.95x BN (epochs with every layer fixed)", "sn_fixed_over_bn", ">=", 0.95),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="training budget per trial")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one trial each")
    parser.add_argument(
        "--early-end",
        type=float,
        default=0.15,
        help="early run: fraction of the budget by which every layer is one-hot",
    )
    parser.add_argument(
        "--full-end", type=float, default=0.6, help="full run: same (the spec's default, 0.6)"
    )
    parser.add_argument("--patience", type=int, default=2, help="early run: stop_when_stable")
    parser.add_argument("--bn-epochs", type=int, default=5, help="BN baseline epochs per trial")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--keep", action="store_true", help="keep the temporary storage dir")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.bn_epochs < 2 or args.epochs < 2:
        parser.error("--epochs and --bn-epochs must be >= 2 (the first epoch is skipped)")
    return args


def make_spec(args: argparse.Namespace, *, end: float, stop_when_stable: bool):
    from service.spec import JobSpec

    return JobSpec.model_validate(
        {
            "model": {"arch": "resnet20"},
            "dataset": {"kind": "digits"},
            "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr},
            "search": {
                "sparsity": {"end": end},
                "stop_when_stable": {"enabled": stop_when_stable, "patience": args.patience},
                "trials": {"seeds": list(args.seeds)},
            },
            "verify": {"enabled": False},
        }
    )


def log(message: str) -> None:
    print(f"[search_cost] {message}", file=sys.stderr, flush=True)


def run_phase(spec, data, name: str, storage, **kwargs) -> tuple[list, float]:
    from worker.recorder import MemoryRecorder
    from worker.search import run_trials, trial_grid

    grid = kwargs.pop("grid", None) or trial_grid(spec)
    log(f"phase {name}: {len(grid)} trial(s) ...")
    start = time.perf_counter()
    # Tune prints its experiment tables to stdout; keep stdout for the Markdown report.
    with contextlib.redirect_stdout(sys.stderr):
        run = run_trials(
            spec,
            data,
            name=name,
            storage_dir=storage,
            recorder=MemoryRecorder(),
            grid=grid,
            **kwargs,
        )
    wall = time.perf_counter() - start
    failed = [o for o in run.outcomes if o.status != "TERMINATED"]
    for outcome in failed:
        log(f"phase {name}: trial {outcome.trial_id} {outcome.status}: {outcome.error}")
    log(f"phase {name}: done in {wall:.0f} s")
    return run.outcomes, wall


def final_accuracy(outcomes) -> float | None:
    values = [o.history[-1]["val_accuracy"] for o in outcomes if o.history]
    return statistics.fmean(values) if values else None


def epoch_seconds(outcomes, keep) -> list[float]:
    """train_seconds of every epoch record after the first for which keep(record) holds."""
    return [
        float(r["train_seconds"])
        for o in outcomes
        for r in o.history
        if r["epoch"] > 1 and "train_seconds" in r and keep(r)
    ]


def throughput(num_train: int, seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"epochs": 0, "median_s": None, "images_per_s": None}
    median = statistics.median(seconds)
    return {"epochs": len(seconds), "median_s": median, "images_per_s": num_train / median}


def choices(recommendation) -> dict[str, tuple[str, str]]:
    return {layer.name: (layer.mean, layer.var) for layer in recommendation.plan.layers}


def agreement(full: dict, early: dict) -> dict[str, Any]:
    names = [name for name in full if name in early]
    n = max(len(names), 1)
    return {
        "layers": len(names),
        "only_in_one": sorted(set(full) ^ set(early)),
        "layer_agreement": sum(full[k] == early[k] for k in names) / n,
        "mean_agreement": sum(full[k][0] == early[k][0] for k in names) / n,
        "var_agreement": sum(full[k][1] == early[k][1] for k in names) / n,
        "differing": [
            {"layer": k, "full": "/".join(full[k]), "early": "/".join(early[k])}
            for k in names
            if full[k] != early[k]
        ],
    }


def trial_choices(outcome) -> dict[str, tuple[str, str]]:
    return {e["name"]: (e["mean"], e["var"]) for e in (outcome.plan or {}).get("layers", [])}


def pair_agreement(pairs: list[tuple[dict, dict]]) -> dict[str, Any]:
    """Agreement figures averaged over pairs of per-layer choices."""
    rows = [agreement(a, b) for a, b in pairs]
    out: dict[str, Any] = {"pairs": len(rows)}
    for key in ("layer_agreement", "mean_agreement", "var_agreement"):
        out[key] = statistics.fmean(r[key] for r in rows) if rows else None
    return out


def seed_agreement(full, early) -> dict[str, dict[str, Any]]:
    """How much single trials agree: seed with seed within a run, and each seed across runs."""
    ok_full = [o for o in full if o.status == "TERMINATED" and o.plan]
    ok_early = [o for o in early if o.status == "TERMINATED" and o.plan]

    def within(trials):
        return [
            (trial_choices(a), trial_choices(b))
            for i, a in enumerate(trials)
            for b in trials[i + 1 :]
        ]

    by_seed = {o.seed: o for o in ok_early}
    across = [
        (trial_choices(o), trial_choices(by_seed[o.seed])) for o in ok_full if o.seed in by_seed
    ]
    return {
        "full: seed vs seed": pair_agreement(within(ok_full)),
        "early: seed vs seed": pair_agreement(within(ok_early)),
        "full vs early, same seed": pair_agreement(across),
    }


def trial_rows(outcomes) -> list[dict[str, Any]]:
    return [
        {
            "trial_id": o.trial_id,
            "seed": o.seed,
            "variant": o.variant,
            "status": o.status,
            "epochs_used": o.epochs_used,
            "epochs_budget": o.epochs_budget,
            "final_val_accuracy": o.history[-1]["val_accuracy"] if o.history else None,
            "first_all_fixed_epoch": next(
                (r["epoch"] for r in o.history if r.get("all_fixed")), None
            ),
            "train_seconds": [r.get("train_seconds") for r in o.history],
            "all_fixed": [r.get("all_fixed") for r in o.history],
        }
        for o in outcomes
    ]


def fmt(value, spec: str = ".3f", none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


def check_targets(figures: dict) -> list[dict]:
    verdicts = []
    for label, key, op, bound in TARGETS:
        value = figures.get(key)
        ok = value is not None and (value <= bound if op == "<=" else value >= bound)
        verdicts.append({"target": label, "key": key, "value": value, "pass": ok})
    return verdicts


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import ray
    import torch

    from worker.data import load_dataset
    from worker.recommend import recommend
    from worker.search import ensure_ray

    total_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    storage = tempfile.mkdtemp(prefix="normsearch-search-cost-")
    phases: dict[str, float] = {}
    try:
        start = time.perf_counter()
        full_spec = make_spec(args, end=args.full_end, stop_when_stable=False)
        early_spec = make_spec(args, end=args.early_end, stop_when_stable=True)
        data = load_dataset(full_spec.dataset, data_roots=[])
        ensure_ray(None, num_cpus=args.num_cpus)
        phases["setup (data, Ray start)"] = time.perf_counter() - start

        full, phases["full search"] = run_phase(full_spec, data, "full", storage)
        early, phases["early-stopped search"] = run_phase(early_spec, data, "early", storage)
        bn_grid = [
            {"seed": s, "batch_size": args.batch_size, "lr": args.lr, "variant": "bn"}
            for s in args.seeds
        ]
        bn, phases["BN baseline"] = run_phase(
            full_spec,
            data,
            "bn",
            storage,
            grid=bn_grid,
            variant="bn",
            epochs=args.bn_epochs,
            use_scheduler=False,
        )

        start = time.perf_counter()
        target = full_spec.target_batch_size
        rec_full = recommend(full, target_batch_size=target)
        rec_early = recommend(early, target_batch_size=target)
        phases["recommendations"] = time.perf_counter() - start
    finally:
        ray.shutdown()
        if args.keep:
            log(f"kept storage in {storage}")
        else:
            shutil.rmtree(storage, ignore_errors=True)
    phases["total"] = time.perf_counter() - total_start
    load_after = os.getloadavg()[0]

    num_train = len(data.x_train)
    agree = agreement(choices(rec_full), choices(rec_early))
    seeds_agree = seed_agreement(full, early)
    used = sum(o.epochs_used for o in early)
    budget = sum(o.epochs_budget for o in early)
    tp = {
        "sn_all": throughput(num_train, epoch_seconds(full, lambda r: True)),
        "sn_mixture": throughput(num_train, epoch_seconds(full, lambda r: not r["all_fixed"])),
        "sn_fixed": throughput(num_train, epoch_seconds(full, lambda r: r["all_fixed"])),
        "bn": throughput(num_train, epoch_seconds(bn, lambda r: True)),
    }

    def ratio(key: str) -> float | None:
        sn, base = tp[key]["images_per_s"], tp["bn"]["images_per_s"]
        return None if sn is None or base is None else sn / base

    figures = {
        "early_epochs_used": used,
        "early_epochs_budget": budget,
        "early_epoch_fraction": used / budget if budget else None,
        "full_epochs_used": sum(o.epochs_used for o in full),
        "layer_agreement": agree["layer_agreement"],
        "mean_agreement": agree["mean_agreement"],
        "var_agreement": agree["var_agreement"],
        "full_val_accuracy": final_accuracy(full),
        "early_val_accuracy": final_accuracy(early),
        "bn_val_accuracy": final_accuracy(bn),
        "sn_over_bn": ratio("sn_all"),
        "sn_mixture_over_bn": ratio("sn_mixture"),
        "sn_fixed_over_bn": ratio("sn_fixed"),
    }
    verdicts = check_targets(figures)

    seeds = " ".join(map(str, args.seeds))
    print(
        f"## SN search cost: resnet20 on digits ({num_train} train / {len(data.x_val)} val images"
        f", 1x8x8), torch {torch.__version__}, ray {ray.__version__}"
    )
    print(
        f"\nBatch {args.batch_size}, lr {args.lr}, seeds {seeds}, local Ray with {args.num_cpus} "
        f"CPUs (1 per trial). full: {args.epochs} epochs, one-hot by {args.full_end:.0%}, no early"
        f" stop. early: same budget, one-hot by {args.early_end:.0%}, stop_when_stable patience "
        f"{args.patience}. BN baseline: {args.bn_epochs} epochs."
    )

    print("\n### Targets\n")
    print("| figure | value | target | verdict |")
    print("|---|---:|---:|---|")
    shown = {
        "early_epoch_fraction": f"{fmt(figures['early_epoch_fraction'], '.1%')} ({used}/{budget})",
        "layer_agreement": fmt(figures["layer_agreement"], ".1%"),
        "sn_over_bn": f"{fmt(figures['sn_over_bn'], '.2f')}x",
        "sn_mixture_over_bn": f"{fmt(figures['sn_mixture_over_bn'], '.2f')}x",
        "sn_fixed_over_bn": f"{fmt(figures['sn_fixed_over_bn'], '.2f')}x",
    }
    for (label, key, op, bound), verdict in zip(TARGETS, verdicts, strict=True):
        bound_text = (
            f"{bound:.0%}"
            if key in ("early_epoch_fraction", "layer_agreement")
            else (f"{bound:.2f}x")
        )
        print(
            f"| {label} | {shown[key]} | {op} {bound_text} | "
            f"**{'PASS' if verdict['pass'] else 'MISS'}** |"
        )

    print("\n### Runs\n")
    print(
        "| run | trials (ok) | epochs used / budget | first epoch all fixed (per trial) "
        "| final val acc (mean) | per trial |"
    )
    print("|---|---:|---:|---|---:|---|")
    for name, outcomes in (("full", full), ("early", early), ("bn", bn)):
        rows = trial_rows(outcomes)
        ok = sum(o.status == "TERMINATED" for o in outcomes)
        fixed = ", ".join(str(r["first_all_fixed_epoch"] or "-") for r in rows)
        per_trial = ", ".join(
            f"s{r['seed']} {fmt(r['final_val_accuracy'])} @{r['epochs_used']}" for r in rows
        )
        print(
            f"| {name} | {len(outcomes)} ({ok}) | {sum(r['epochs_used'] for r in rows)} / "
            f"{sum(r['epochs_budget'] for r in rows)} | {fixed if name != 'bn' else 'n/a'} | "
            f"{fmt(final_accuracy(outcomes))} | {per_trial} |"
        )

    print(f"\n### Recommendations (target batch size {target})\n")
    print(
        f"{agree['layers']} layers; (mean, var) identical in "
        f"**{agree['layer_agreement']:.1%}**, mean choice in {agree['mean_agreement']:.1%}, "
        f"variance choice in {agree['var_agreement']:.1%}."
    )
    for name, rec in (("full", rec_full), ("early", rec_early)):
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(rec.plan.counts().items()))
        conf = rec.summary.get("mean_confidence")
        print(f"- {name}: {counts} (mean confidence {fmt(conf, '.2f')})")
    if agree["only_in_one"]:
        print(f"- layers in only one plan: {', '.join(agree['only_in_one'])}")
    if agree["differing"]:
        print("\n| layer | full | early |\n|---|---|---|")
        for row in agree["differing"]:
            print(f"| {row['layer']} | {row['full']} | {row['early']} |")
    print(
        "\nSingle trials' plans, for scale (how far seeds alone move the choices):\n\n"
        "| comparison | pairs | (mean, var) identical | mean | var |\n|---|---:|---:|---:|---:|"
    )
    rows = {
        **seeds_agree,
        "full vs early, recommendations": {"pairs": 1, **agree},
    }
    for label, row in rows.items():
        print(
            f"| {label} | {row['pairs']} | {fmt(row['layer_agreement'], '.1%')} "
            f"| {fmt(row['mean_agreement'], '.1%')} | {fmt(row['var_agreement'], '.1%')} |"
        )

    print(f"\n### Training throughput ({num_train} train images / median epoch train_seconds)\n")
    print("| model | epochs (after the first) | median s/epoch | images/s | / BN |")
    print("|---|---:|---:|---:|---:|")
    labels = {
        "sn_all": "SN, full run, all epochs",
        "sn_mixture": "SN, full run, mixture epochs (not all fixed)",
        "sn_fixed": "SN, full run, all layers fixed",
        "bn": "BN baseline",
    }
    for key, label in labels.items():
        row = tp[key]
        rel = "1.00x" if key == "bn" else f"{fmt(ratio(key), '.2f')}x"
        print(
            f"| {label} | {row['epochs']} | {fmt(row['median_s'], '.2f')} "
            f"| {fmt(row['images_per_s'], '.0f')} | {rel} |"
        )

    print("\n### Wall time\n")
    print("| phase | s |\n|---|---:|")
    for name, seconds in phases.items():
        print(f"| {name} | {seconds:.1f} |")
    print(
        f"\n1-minute load average {load_before:.2f} before, {load_after:.2f} after, on "
        f"{os.cpu_count()} CPUs (timings from a machine loaded beyond --num-cpus are unreliable)"
    )

    if args.json:
        payload = {
            "args": vars(args),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "num_train": num_train,
            "num_val": len(data.x_val),
            "figures": figures,
            "targets": verdicts,
            "agreement": agree,
            "seed_agreement": seeds_agree,
            "throughput": tp,
            "phases_s": phases,
            "load_average": [load_before, load_after],
            "plans": {"full": rec_full.plan.to_dict(), "early": rec_early.plan.to_dict()},
            "trials": {
                "full": trial_rows(full),
                "early": trial_rows(early),
                "bn": trial_rows(bn),
            },
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
