"""Benchmark: a whole network with SN layers against the same network with BatchNorm2d.

Plain script::

    python bench/sn_network.py [--arch resnet20] [--batch 64 8] [--size 32] [--threads 2]

Per-layer figures (``bench/sn_layer.py``) isolate the normalization; this measures what a user
pays per training step and per inference batch when every norm layer of a zoo model is SN, and
(``fixed``) once the sparsity schedule has fixed every SN layer to BN; with the compiled kernel
loaded, ``sn-python`` is the SN model on the Python mixture (``use_kernel("python")``). The
models run interleaved in one process (the order rotates each round); medians are printed with
their ratio to BN and, for the fixed model, the interquartile range of its per-round ratio to BN.
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


def measure(arch: str, batch: int, size: int, repeat: int, warmup: int) -> dict:
    """Per phase ("train", "eval"): median ms per model, and the fixed/BN per-round ratios."""
    import torch
    from torch import nn

    import sn_core

    models = {"bn": sn_core.build_model(arch, num_classes=10, in_channels=3)}
    models["sn"] = sn_core.convert_to_switchnorm(
        sn_core.build_model(arch, num_classes=10, in_channels=3)
    )
    from sn_core.functional import kernel, use_kernel

    if kernel() == "native":  # the same SN model on the Python mixture, for the ratio
        models["sn-python"] = sn_core.convert_to_switchnorm(
            sn_core.build_model(arch, num_classes=10, in_channels=3)
        )
    models["fixed"] = sn_core.convert_to_switchnorm(
        sn_core.build_model(arch, num_classes=10, in_channels=3)
    )
    for layer in models["fixed"].modules():
        if isinstance(layer, sn_core.SwitchNorm):
            layer.fix("bn", "bn")
    optimizers = {
        k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()
    }
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def train_step(name: str) -> float:
        model, optimizer = models[name], optimizers[name]
        model.train()
        previous = use_kernel("python" if name == "sn-python" else "auto")
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), target).backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        use_kernel(previous)
        return elapsed

    def evaluate(name: str) -> float:
        model = models[name]
        model.eval()
        previous = use_kernel("python" if name == "sn-python" else "auto")
        start = time.perf_counter()
        with torch.no_grad():
            model(x)
        elapsed = time.perf_counter() - start
        use_kernel(previous)
        return elapsed

    out = {}
    for phase, run in (("train", train_step), ("eval", evaluate)):
        times = {name: [] for name in models}
        names = tuple(models)
        for i in range(warmup + repeat):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                elapsed = run(name)
                if i >= warmup:
                    times[name].append(elapsed)
        ratios = [f / b for f, b in zip(times["fixed"], times["bn"], strict=True)]
        q1, ratio, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        out[phase] = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        out[phase]["fixed_ratio"] = (ratio, q1, q3)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from sn_core.functional import kernel

    print(
        f"## {args.arch}: SN against BatchNorm2d, torch {torch.__version__}, "
        f"{args.threads} threads, sn_core kernel {kernel()} "
        "(SN python: the same SN model on the Python mixture)"
    )
    print(f"\nInput {args.size}x{args.size}x3; train step = forward, backward, SGD step.\n")
    print(
        f"{args.repeat} interleaved rounds per phase after {args.warmup} warm-up rounds; "
        "fixed = every SN layer fixed to BN (native kernel); fixed/BN = median per-round ratio "
        "[interquartile range].\n"
    )
    print(
        "| batch | phase | BN ms | SN ms | SN/BN | SN python ms | SN python/BN | fixed SN ms "
        "| fixed/BN [IQR] |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for batch in args.batch:
        result = measure(args.arch, batch, args.size, args.repeat, args.warmup)
        for phase, row in result.items():
            ratio, q1, q3 = row["fixed_ratio"]
            python = row.get("sn-python")
            python_cells = (
                "- | -" if python is None else f"{python:.1f} | {python / row['bn']:.2f}x"
            )
            print(
                f"| {batch} | {phase} | {row['bn']:.1f} | {row['sn']:.1f} "
                f"| **{row['sn'] / row['bn']:.2f}x** | {python_cells} | {row['fixed']:.1f} "
                f"| **{ratio:.2f}x** [{q1:.2f}, {q3:.2f}] |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
