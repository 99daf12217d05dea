"""Benchmark: a whole network with SN layers against the same network with BatchNorm2d.

Plain script::

    python bench/sn_network.py [--arch resnet20] [--batch 64 8] [--size 32] [--threads 2]

Per-layer figures (``bench/sn_layer.py``) isolate the normalization; this measures what a user
pays per training step and per inference batch when every norm layer of a zoo model is SN. The
two models run interleaved in one process; medians are printed with their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 8])
    parser.add_argument("--size", type=int, default=32, help="image side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    return parser.parse_args(argv)


def measure(arch: str, batch: int, size: int, repeat: int, warmup: int) -> list[float]:
    """Median ms of (train step BN, train step SN, eval BN, eval SN), BN and SN interleaved."""
    import torch
    from torch import nn

    import sn_core

    models = {"bn": sn_core.build_model(arch, num_classes=10, in_channels=3)}
    models["sn"] = sn_core.convert_to_switchnorm(
        sn_core.build_model(arch, num_classes=10, in_channels=3)
    )
    optimizers = {
        k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()
    }
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def train_step(name: str) -> float:
        model, optimizer = models[name], optimizers[name]
        model.train()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), target).backward()
        optimizer.step()
        return time.perf_counter() - start

    def evaluate(name: str) -> float:
        model = models[name]
        model.eval()
        start = time.perf_counter()
        with torch.no_grad():
            model(x)
        return time.perf_counter() - start

    medians = []
    for run in (train_step, evaluate):
        times = {name: [] for name in models}
        for i in range(warmup + repeat):
            for name in ("bn", "sn") if i % 2 else ("sn", "bn"):
                elapsed = run(name)
                if i >= warmup:
                    times[name].append(elapsed)
        medians += [statistics.median(times[k]) * 1e3 for k in ("bn", "sn")]
    return medians


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"## {args.arch}: SN against BatchNorm2d, torch {torch.__version__}, {args.threads} threads"
    )
    print(f"\nInput {args.size}x{args.size}x3; train step = forward, backward, SGD step.\n")
    print("| batch | train BN ms | train SN ms | SN/BN | eval BN ms | eval SN ms | SN/BN |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch in args.batch:
        train_bn, train_sn, eval_bn, eval_sn = measure(
            args.arch, batch, args.size, args.repeat, args.warmup
        )
        print(
            f"| {batch} | {train_bn:.1f} | {train_sn:.1f} | **{train_sn / train_bn:.2f}x** "
            f"| {eval_bn:.1f} | {eval_sn:.1f} | **{eval_sn / eval_bn:.2f}x** |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
