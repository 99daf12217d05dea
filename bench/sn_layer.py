"""Benchmark: sn_core SwitchNorm2d against nn.BatchNorm2d, nn.GroupNorm and the naive reference.

Plain script (no pytest)::

    python bench/sn_layer.py [--threads 2] [--repeat N] [--budget S] [--malloc-tuned] [--json PATH]

For each shape (float32, CPU) it measures the median time of forward+backward in training mode
(``y.backward(g)`` with a fixed random g, x requires grad) and of the evaluation forward
(``eval()`` under ``torch.no_grad``), with the candidates' runs interleaved within each repeat so
machine noise hits all of them alike (SN with BatchNorm2d and GroupNorm in one group, SN with the
naive reference in another, because the reference's temporaries disturb whatever runs next), and
the bytes each layer's forward saves for backward (unique storages seen by
``torch.autograd.graph.saved_tensors_hooks``; the input counts). It prints a Markdown table per
shape and one PASS/MISS line per target (docs/sn-spec.md section 7).

``--malloc-tuned`` raises glibc's mmap and trim thresholds to 1 GiB (``mallopt``) before torch is
imported, so freed large blocks are reused rather than handed back to the OS and faulted in again
on the next allocation (the effect a caching allocator such as jemalloc or tcmalloc has; see
PyTorch's CPU performance tuning guide). It affects all candidates alike.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import sys
import time

SHAPES = [(32, 64, 56, 56), (8, 256, 14, 14), (2, 64, 56, 56)]
CANDIDATES = ("SwitchNorm2d", "BatchNorm2d", "GroupNorm", "Reference")
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
GIB = 1 << 30

# Targets: (label, key, comparison, bound)
TARGETS = [
    ("fwd+bwd <= 1.0x BN", "sn_over_bn", "<=", 1.0),
    ("fwd+bwd >= 4x faster than reference", "speedup_vs_reference", ">=", 4.0),
    ("eval <= 3x BN eval", "sn_eval_over_bn_eval", "<=", 3.0),
    ("saved for backward <= 1.1x input", "sn_saved_over_input", "<=", 1.1),
]


def tune_malloc() -> dict[str, int]:
    """Set glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD to 1 GiB; returns mallopt's results."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return {
        "M_MMAP_THRESHOLD": libc.mallopt(M_MMAP_THRESHOLD, GIB),
        "M_TRIM_THRESHOLD": libc.mallopt(M_TRIM_THRESHOLD, GIB),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--repeat",
        type=int,
        default=0,
        help="timed runs per candidate, shape and phase (default: 100 for the largest shape, "
        "500 for the others)",
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="seconds for all timed runs, split evenly over shapes and phases: a phase stops "
        "early (after at least 5 repeats) when its share is spent, e.g. on a loaded machine",
    )
    parser.add_argument("--malloc-tuned", action="store_true", help="glibc mallopt thresholds")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build_layers(channels: int):
    from torch import nn

    from sn_core.layers import SwitchNorm2d
    from sn_core.reference import ReferenceSwitchNorm

    return {
        "SwitchNorm2d": SwitchNorm2d(channels),
        "BatchNorm2d": nn.BatchNorm2d(channels),
        "GroupNorm": nn.GroupNorm(32, channels),
        "Reference": ReferenceSwitchNorm(channels),
    }


def saved_bytes(layer, x) -> int:
    """Bytes of the unique storages the layer's forward saves for backward."""
    import torch

    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    layer.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    del y
    return sum(storages.values())


def bench_shape(shape, repeat: int, warmup: int, seed: int, budget_s: float) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).requires_grad_(True)
    grad_out = torch.randn(shape, generator=gen)
    layers = build_layers(shape[1])

    def fwd_bwd(layer):
        x.grad = None
        layer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        layer(x).backward(grad_out)
        return time.perf_counter() - start

    def evaluate(layer):
        start = time.perf_counter()
        with torch.no_grad():
            layer(x)
        return time.perf_counter() - start

    # Two interleaved groups, each compared within itself: the naive reference allocates several
    # input-sized temporaries per call, which changes the allocator's and caches' state for
    # whatever runs next, so it is kept away from the SN-versus-torch comparison.
    groups = {
        "torch": ("SwitchNorm2d", "BatchNorm2d", "GroupNorm"),
        "naive": ("SwitchNorm2d", "Reference"),
    }
    times = {
        group: {name: {"fwd_bwd": [], "eval": []} for name in names}
        for group, names in groups.items()
    }
    done = {}
    for phase, run, train in (("fwd_bwd", fwd_bwd, True), ("eval", evaluate, False)):
        for layer in layers.values():
            layer.train(train)
        for group, names in groups.items():
            for _ in range(warmup):
                for name in names:
                    run(layers[name])
            deadline = time.perf_counter() + budget_s / 4
            for i in range(repeat):
                # Rotate the order so no candidate always runs after the same one.
                k = i % len(names)
                for name in names[k:] + names[:k]:
                    times[group][name][phase].append(run(layers[name]))
                if i + 1 >= 5 and time.perf_counter() > deadline:
                    break
            done[phase] = min(done.get(phase, repeat), i + 1)

    input_bytes = x.numel() * x.element_size()
    result = {"shape": list(shape), "input_bytes": input_bytes, "repeats": done, "layers": {}}
    for name, layer in layers.items():
        group = "naive" if name == "Reference" else "torch"
        result["layers"][name] = {
            "fwd_bwd_ms": statistics.median(times[group][name]["fwd_bwd"]) * 1e3,
            "eval_ms": statistics.median(times[group][name]["eval"]) * 1e3,
            "saved_bytes": saved_bytes(layer, x),
        }
    sn, bn, ref = (result["layers"][k] for k in ("SwitchNorm2d", "BatchNorm2d", "Reference"))
    sn_beside_reference = statistics.median(times["naive"]["SwitchNorm2d"]["fwd_bwd"]) * 1e3
    result["sn_beside_reference_fwd_bwd_ms"] = sn_beside_reference
    result["sn_over_bn"] = sn["fwd_bwd_ms"] / bn["fwd_bwd_ms"]
    result["speedup_vs_reference"] = ref["fwd_bwd_ms"] / sn_beside_reference
    result["sn_eval_over_bn_eval"] = sn["eval_ms"] / bn["eval_ms"]
    result["sn_saved_over_input"] = sn["saved_bytes"] / input_bytes
    return result


def default_repeat(shape) -> int:
    numel = 1
    for size in shape:
        numel *= size
    return 100 if numel > 4_000_000 else 500


def print_shape(result: dict) -> None:
    shape = "x".join(str(s) for s in result["shape"])
    mb = result["input_bytes"] / 1e6
    runs = result["repeats"]
    print(
        f"\n### {shape} float32 (input {mb:.1f} MB; {runs['fwd_bwd']} fwd+bwd and "
        f"{runs['eval']} eval repeats; {result['wall_s']:.0f} s)\n"
    )
    print("| layer | fwd+bwd ms | eval ms | saved for backward MB | saved / input |")
    print("|---|---:|---:|---:|---:|")
    for name, row in result["layers"].items():
        saved = row["saved_bytes"]
        print(
            f"| {name} | {row['fwd_bwd_ms']:.2f} | {row['eval_ms']:.2f} | {saved / 1e6:.1f} "
            f"| {saved / result['input_bytes']:.2f}x |"
        )
    print(
        f"\nSN/BN fwd+bwd **{result['sn_over_bn']:.2f}x**, "
        f"SN speed-up over reference **{result['speedup_vs_reference']:.1f}x**, "
        f"SN eval / BN eval **{result['sn_eval_over_bn_eval']:.2f}x**, "
        f"SN saved / input **{result['sn_saved_over_input']:.2f}x**"
    )


def check_targets(results: list[dict]) -> list[dict]:
    verdicts = []
    for label, key, op, bound in TARGETS:
        values = [r[key] for r in results]
        ok = all(v <= bound if op == "<=" else v >= bound for v in values)
        verdicts.append({"target": label, "pass": ok, "values": values})
        shown = ", ".join(
            f"{'x'.join(map(str, r['shape']))}: {v:.2f}"
            for r, v in zip(results, values, strict=True)
        )
        print(f"- {'PASS' if ok else 'MISS'} {label} ({shown})")
    return verdicts


def main(argv=None) -> int:
    args = parse_args(argv)
    malloc = tune_malloc() if args.malloc_tuned else None  # before torch allocates anything

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if malloc is None:
        mode = "default glibc malloc"
    else:
        status = ", ".join(f"{k}={'ok' if v == 1 else 'FAILED'}" for k, v in malloc.items())
        mode = f"malloc-tuned (mallopt 1 GiB: {status})"
    load_before = os.getloadavg()[0]
    print(f"## SwitchNorm2d benchmark: torch {torch.__version__}, {args.threads} threads, {mode}")
    print(
        "\nMedians over interleaved runs (SN with the torch layers; SN with the naive reference "
        "in a second group); fwd+bwd = train-mode forward + y.backward(g); eval = eval-mode "
        "forward under no_grad. GroupNorm has 32 groups."
    )

    results = []
    for shape in SHAPES:
        repeat = args.repeat or default_repeat(shape)
        start = time.perf_counter()
        result = bench_shape(shape, repeat, args.warmup, args.seed, args.budget / len(SHAPES))
        result["wall_s"] = time.perf_counter() - start
        print_shape(result)
        results.append(result)

    print("\n### Targets\n")
    verdicts = check_targets(results)
    load_after = os.getloadavg()[0]
    print(
        f"\n1-minute load average {load_before:.2f} before, {load_after:.2f} after, on "
        f"{os.cpu_count()} CPUs (timings from a machine loaded beyond --threads are unreliable)"
    )
    if args.json:
        payload = {
            "torch": torch.__version__,
            "threads": args.threads,
            "malloc_tuned": args.malloc_tuned,
            "mallopt": malloc,
            "load_average": [load_before, load_after],
            "results": results,
            "targets": verdicts,
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
