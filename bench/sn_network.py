"""Benchmark: a whole network with SN layers against the same network with BatchNorm2d.

Plain script::

    python bench/sn_network.py [--arch resnet20] [--batch 64 8] [--size 32] [--threads 2]
                               [--compiled] [--memory | --memory-only]

Per-layer figures (``bench/sn_layer.py``) isolate the normalization; this measures what a user
pays per training step and per inference batch when every norm layer of a zoo model is SN, and
(``fixed``) once the sparsity schedule has fixed every SN layer to BN; with the compiled kernel
loaded, ``sn-python`` is the SN model on the Python mixture (``use_kernel("python")``). The
models run interleaved in one process (the order rotates each round); medians are printed with
their ratio to BN and, for the fixed model, the interquartile range of its per-round ratio to BN.

``--compiled`` adds each model under ``torch.compile`` (inductor) to the same interleaved rounds
and prints a second table, compiled against eager; each compiled model's compilation (its first
train step and first evaluation, the time until they return) is reported on its own and kept out
of the step times.

``--memory`` (or ``--memory-only``, without the timings) measures each model's training memory in
a fresh process (``memory_child``): the bytes autograd saves for backward in a train step and the
peak resident set of building and training it, above what the process held after its imports.
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
    parser.add_argument(
        "--compiled", action="store_true", help="also each model under torch.compile (inductor)"
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also peak training memory per model (each in a fresh process)",
    )
    parser.add_argument(
        "--memory-only", action="store_true", help="only the memory table (no timings)"
    )
    parser.add_argument(
        "--memory-child", nargs=2, metavar=("MODEL", "BATCH"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


MODELS = ("bn", "sn", "fixed")
COMPILED = tuple(f"{name}+c" for name in MODELS)


def measure(arch: str, batch: int, size: int, repeat: int, warmup: int, compiled=False) -> dict:
    """Per phase ("train", "eval"): median ms per model, and the fixed/BN per-round ratios;
    with ``compiled`` also the compiled twins ("bn+c", ...) and their compile seconds."""
    import torch
    from torch import nn

    from sn_core.functional import kernel, use_kernel

    models = build_models(arch, MODELS)
    if kernel() == "native":  # the same SN model on the Python mixture, for the ratio
        models["sn-python"] = build_models(arch, ("sn",))["sn"]
    names = tuple(name for name in ("bn", "sn", "sn-python", "fixed") if name in models)
    if compiled:
        import copy

        for name in MODELS:
            models[f"{name}+c"] = copy.deepcopy(models[name])
        names = names + COMPILED
    optimizers = {
        k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()
    }
    calls = {name: models[name] for name in names}
    for name in COMPILED if compiled else ():
        calls[name] = torch.compile(models[name])
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def train_step(name: str) -> float:
        model, optimizer = models[name], optimizers[name]
        model.train()
        previous = use_kernel("python" if name == "sn-python" else "auto")
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(calls[name](x), target).backward()
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
            calls[name](x)
        elapsed = time.perf_counter() - start
        use_kernel(previous)
        return elapsed

    out = {}
    compile_s = {}
    for name in COMPILED if compiled else ():  # the first calls compile; untimed afterwards
        compile_s[name] = (train_step(name), evaluate(name))
    for phase, run in (("train", train_step), ("eval", evaluate)):
        times = {name: [] for name in names}
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
        for name in MODELS if compiled else ():  # compiled / eager, per round
            ratios = [c / e for c, e in zip(times[f"{name}+c"], times[name], strict=True)]
            out[phase][f"{name}+c_ratio"] = statistics.median(ratios)
    return {"phases": out, "compile_s": compile_s}


def build_models(arch: str, names) -> dict:
    """The zoo model with BatchNorm2d ("bn"), every norm layer SN ("sn"), or SN fixed to BN.

    The SN model is what a search trial trains mid-anneal: a ``SparsityController`` (sparsestmax,
    the job spec's default) stepped to 30% of its window, no layer fixed yet, with its
    ``RatioBank`` (every free layer's ratios in one batched call per forward)."""
    import sn_core

    models = {}
    for name in names:
        model = sn_core.build_model(arch, num_classes=10, in_channels=3)
        if name != "bn":
            model = sn_core.convert_to_switchnorm(model)
        if name == "sn":
            controller = sn_core.SparsityController(model, "sparsestmax", 0.0, 0.6)
            controller.step(0.18)
            assert not any(None not in layer.fixed for _, layer in controller.layers)
        if name == "fixed":
            for layer in model.modules():
                if isinstance(layer, sn_core.SwitchNorm):
                    layer.fix("bn", "bn")
        models[name] = model
    return models


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (Linux): VmRSS now, VmHWM the peak since reset."""
    with open("/proc/self/status") as status:
        line = next(row for row in status if row.startswith(field + ":"))
    return int(line.split()[1])


def memory_child(arch: str, name: str, batch: int, size: int) -> dict:
    """One model's training memory, measured in this (fresh) process: the bytes autograd saves
    for backward in one training step (unique storages: the activations a step holds at its
    peak, input included) and the peak resident set of building the model and running five SGD
    steps, above what the process held before (its imports). The peak is the kernel's own
    high-water mark (VmHWM), reset after the imports (``/proc/self/clear_refs``): the imports'
    peak, higher than a small model's training, would hide it otherwise."""
    import torch
    from sn_layer import saved_bytes
    from torch import nn

    import sn_core  # noqa: F401  (imported before the reset, like torch)
    import sn_core.zoo  # noqa: F401

    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current resident set
    before_kib = _status_kib("VmRSS")
    model = build_models(arch, (name,))[name].train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 10, (batch,))
    saved = saved_bytes(lambda: nn.functional.cross_entropy(model(x), target))
    for _ in range(5):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), target).backward()
        optimizer.step()
    return {
        "saved_bytes": saved,
        "peak_bytes": (_status_kib("VmHWM") - before_kib) * 1024,
    }


def measure_memory(arch: str, batch: int, size: int, threads: int) -> dict:
    """``memory_child`` of each model, each in its own process (a peak resident set is per
    process and never goes down)."""
    import json
    import subprocess

    out = {}
    for name in MODELS:
        command = [sys.executable, os.path.abspath(__file__), "--arch", arch, "--size", str(size)]
        command += ["--threads", str(threads), "--memory-child", name, str(batch)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def print_memory(arch: str, size: int, rows) -> None:
    print(
        f"\n### Peak training memory ({arch}, {size}x{size}x3, SGD with momentum)\n\n"
        "saved = bytes autograd keeps for backward in one train step (unique storages, input "
        "included: the activations at the step's peak); peak = the process's peak resident set "
        "(VmHWM, reset after the imports) while building the model and training 5 steps, above "
        "what it held after its imports (each model in a fresh process; parameters, gradients, "
        "optimizer state, activations and allocator slack).\n"
    )
    print(
        "| batch | saved BN MB | saved SN / BN | saved fixed / BN | peak BN MB "
        "| peak SN / BN | peak fixed / BN |\n|---:|---:|---:|---:|---:|---:|---:|"
    )

    for batch, memory in rows:
        bn, sn, fixed = (memory[name] for name in MODELS)
        print(
            f"| {batch} | {bn['saved_bytes'] / 1e6:.1f} "
            f"| **{sn['saved_bytes'] / bn['saved_bytes']:.2f}x** "
            f"| {fixed['saved_bytes'] / bn['saved_bytes']:.2f}x "
            f"| {bn['peak_bytes'] / 1e6:.1f} "
            f"| **{sn['peak_bytes'] / bn['peak_bytes']:.2f}x** "
            f"| {fixed['peak_bytes'] / bn['peak_bytes']:.2f}x |"
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch

    torch.set_num_threads(args.threads)
    if args.memory_child:
        import json

        name, batch = args.memory_child
        print(json.dumps(memory_child(args.arch, name, int(batch), args.size)))
        return 0
    torch.manual_seed(0)
    from sn_core.functional import kernel

    print(
        f"## {args.arch}: SN against BatchNorm2d, torch {torch.__version__}, "
        f"{args.threads} threads, sn_core kernel {kernel()} "
        "(SN: a search trial mid-anneal, sparsestmax with its ratio bank; SN python: the same "
        "SN model on the Python mixture)"
    )
    if args.memory_only:
        rows = [(b, measure_memory(args.arch, b, args.size, args.threads)) for b in args.batch]
        print_memory(args.arch, args.size, rows)
        return 0
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
    compiled_rows = []
    for batch in args.batch:
        measured = measure(args.arch, batch, args.size, args.repeat, args.warmup, args.compiled)
        result = measured["phases"]
        compiled_rows.append((batch, measured))
        if args.compiled:  # as soon as measured: compiling is slow on CPU
            print(f"(batch {batch} compiled: {compiled_summary(measured)})", flush=True)
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
    if args.compiled:
        print_compiled(compiled_rows)
    if args.memory:
        rows = [(b, measure_memory(args.arch, b, args.size, args.threads)) for b in args.batch]
        print_memory(args.arch, args.size, rows)
    return 0


def compiled_summary(measured: dict) -> str:
    phases = measured["phases"]
    return "; ".join(
        f"{phase}: SN compiled/eager {row['sn+c_ratio']:.2f}x, BN compiled/eager "
        f"{row['bn+c_ratio']:.2f}x, SN compiled / BN compiled {row['sn+c'] / row['bn+c']:.2f}x"
        for phase, row in phases.items()
    )


def print_compiled(rows) -> None:
    print(
        "\n### Compiled (torch.compile, inductor) against eager, same rounds\n\n"
        "compiled/eager = median per-round ratio; compile s = the first train step and the first "
        "evaluation of the compiled model (excluded from the step times).\n"
    )
    print(
        "| batch | phase | BN compiled ms | compiled/eager BN | SN compiled ms | compiled/eager SN "
        "| SN compiled / BN compiled | fixed compiled / BN compiled |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    for batch, measured in rows:
        for phase, row in measured["phases"].items():
            print(
                f"| {batch} | {phase} | {row['bn+c']:.1f} | {row['bn+c_ratio']:.2f}x "
                f"| {row['sn+c']:.1f} | {row['sn+c_ratio']:.2f}x "
                f"| **{row['sn+c'] / row['bn+c']:.2f}x** | {row['fixed+c'] / row['bn+c']:.2f}x |"
            )
    print("\n| batch | compile s: BN (train, eval) | SN | fixed SN |\n|---:|---|---|---|")
    for batch, measured in rows:
        cells = [f"{t:.1f}, {e:.1f}" for t, e in measured["compile_s"].values()]
        print(f"| {batch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
