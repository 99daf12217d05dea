"""Benchmark: where a search trial's time goes, from the torch profiler, SN against BatchNorm.

Plain script (no pytest)::

    python bench/trial_profile.py [--arch resnet20] [--epochs 1] [--rounds 3] [--batch 32]

Trains trials in this process through ``worker.trainable.TrialTraining`` (the loop Ray's trials
run, without Ray) on scikit-learn's digits: the SN search variant and the same network with
BatchNorm ("bn"), same seed and batch size, each under ``torch.profiler`` (CPU activities),
``--rounds`` times interleaved (per phase the median). The epoch loop names its phases
(``worker.trainable.PHASES``: batch indexing, forward with the loss, backward, optimizer step,
the sparsity controller, evaluation, the ratio snapshot); the table gives each phase's total and
per-step time for both variants, its share of the SN trial, and SN / BN. Below it, the SN
trial's costliest operators by self CPU time. The first epoch is profiled too (the SN mixture
runs there; later epochs fix layers), so the figures are a whole short trial, not a steady
state. The profiler's own overhead (per operator) is in both variants alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet20", help="zoo model")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per trial")
    parser.add_argument("--batch", type=int, default=32, help="batch size")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--top", type=int, default=10, help="operators listed for SN")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved SN/BN trials each")
    return parser.parse_args(argv)


def profile_trial(spec, data, variant: str, batch: int, epochs: int, top: int):
    """(per-phase CPU milliseconds, steps, wall seconds, the ``top`` operators by self CPU time
    as (name, calls, ms)) of one trial. The profile itself is dropped here: a whole trial's
    events take gigabytes."""
    from torch.profiler import ProfilerActivity, profile

    from worker.trainable import PHASES, TrialTraining

    training = TrialTraining(
        spec, data, variant=variant, seed=0, batch_size=batch, lr=0.1, epochs=epochs
    )
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in training.epochs():
            pass
    wall = time.perf_counter() - started
    averages = prof.key_averages()
    totals = {event.key: event.cpu_time_total / 1000.0 for event in averages}
    phases = {name: totals.get(label, 0.0) for name, label in PHASES.items()}
    ops = [e for e in averages if not e.key.startswith("normsearch.")]
    ops.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    top_ops = [(e.key, e.count, e.self_cpu_time_total / 1000.0) for e in ops[:top]]
    del prof, averages, ops
    return phases, training.steps_per_epoch * epochs, wall, top_ops


def median_run(runs: list) -> tuple:
    """Per phase, the median over rounds; the wall time's median; the operators of the round
    whose wall time is the median."""
    phases = {name: statistics.median(run[0][name] for run in runs) for name in runs[0][0]}
    ordered = sorted(runs, key=lambda run: run[2])
    middle = ordered[(len(ordered) - 1) // 2]
    return phases, middle[1], statistics.median(run[2] for run in runs), middle[3]


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch

    from service.spec import JobSpec
    from worker.data import load_dataset

    torch.set_num_threads(args.threads)
    spec = JobSpec.model_validate(
        {
            "model": {"arch": args.arch},
            "dataset": {"kind": "digits"},
            "training": {"epochs": args.epochs, "batch_size": args.batch, "lr": 0.1},
            "search": {"stop_when_stable": {"enabled": False}},
        }
    )
    data = load_dataset(spec.dataset)
    load_before = os.getloadavg()[0]
    runs: dict[str, list] = {"sn": [], "bn": []}
    for _ in range(args.rounds):  # interleaved: a load change hits both variants alike
        for variant in runs:
            runs[variant].append(
                profile_trial(spec, data, variant, args.batch, args.epochs, args.top)
            )
    load_after = os.getloadavg()[0]
    sn, steps, sn_wall, sn_ops = median_run(runs["sn"])
    bn, _, bn_wall, _ = median_run(runs["bn"])

    print(
        f"## One trial of {args.arch} on digits: SN search vs BatchNorm, torch "
        f"{torch.__version__}, {args.threads} threads\n"
    )
    print(
        f"{args.epochs} epochs x {steps // args.epochs} steps at batch {args.batch}, profiled "
        f"whole; CPU time per phase in ms, the median of {args.rounds} interleaved trials per "
        f"variant (no interval). Wall (median): SN {sn_wall:.1f} s, BN {bn_wall:.1f} s "
        f"({sn_wall / bn_wall:.2f}x).\n"
    )
    print("| phase | SN ms | SN ms/step | share of SN | BN ms | BN ms/step | SN/BN |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    total_sn = sum(sn.values()) or 1.0
    for name in sn:
        ratio = f"{sn[name] / bn[name]:.2f}x" if bn[name] >= 1.0 else "-"  # BN has no such phase
        print(
            f"| {name} | {sn[name]:.0f} | {sn[name] / steps:.2f} | {sn[name] / total_sn:.1%} "
            f"| {bn[name]:.0f} | {bn[name] / steps:.2f} | {ratio} |"
        )
    print(f"\n### The SN trial's {args.top} costliest operators (self CPU time)\n")
    print("| operator | calls | self CPU ms | share of the phases' time |")
    print("|---|---:|---:|---:|")
    for name, calls, self_ms in sn_ops:
        print(f"| `{name}` | {calls} | {self_ms:.0f} | {self_ms / total_sn:.1%} |")
    print(
        f"\n1-minute load average {load_before:.2f} before, {load_after:.2f} after, on "
        f"{os.cpu_count()} CPUs (timings from a machine loaded beyond --threads are unreliable)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
