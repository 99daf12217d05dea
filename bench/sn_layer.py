"""Benchmark: sn_core SwitchNorm2d against nn.BatchNorm2d, nn.GroupNorm and the naive reference.

Plain script (no pytest)::

    python bench/sn_layer.py [--threads 2] [--repeat N] [--budget S] [--malloc-tuned] [--json PATH]
                             [--fixed-only] [--no-fixed] [--tokens-only] [--no-tokens]
                             [--compiled] [--compiled-only]

For each shape (float32, CPU) it measures the median time of forward+backward in training mode
(``y.backward(g)`` with a fixed random g, x requires grad) and of the evaluation forward
(``eval()`` under ``torch.no_grad``), with the candidates' runs interleaved within each repeat so
machine noise hits all of them alike (SN with BatchNorm2d and GroupNorm in one group, SN with the
naive reference in another, because the reference's temporaries disturb whatever runs next), and
the bytes each layer's forward saves for backward (unique storages seen by
``torch.autograd.graph.saved_tensors_hooks``; the input counts). It prints a Markdown table per
shape and one PASS/MISS line per target (docs/sn-spec.md section 7).

A third comparison, *fixed layers*: ``SwitchNorm2d(pool=("in", "ln", "bn", "gn"))`` fixed to one
normalizer (``layer.fix(k, k)``, as the sparsity schedule leaves it) against the torch layer it
equals (``nn.BatchNorm2d``, ``nn.InstanceNorm2d(affine=True)``, ``nn.GroupNorm(1, C)``,
``nn.GroupNorm(32, C)``), each pair interleaved on its own. Its ratio is the median over repeats
of the per-repeat ratio (fixed SN time / torch time in the same round), printed with the
interquartile range of those ratios; target <= 1.05x.

A fourth, *token layers* (``--tokens-only`` / ``--no-tokens``): ``SwitchNormTokens`` on
(N, T, C) float32 activations, free over its default pool ("ln", "rms") and fixed to ln and to
rms, against ``nn.LayerNorm`` and ``nn.RMSNorm`` (and the free layer on the generic autograd path
that ``sn_core.token_kernel`` replaced), interleaved in a fresh seeded order each repeat, in
two groups (``TOKEN_GROUPS``: nn.RMSNorm and the generic path, whose temporaries disturb the
allocator for the next call, run with their own nn.LayerNorm); ratios are per-repeat (candidate /
nn.LayerNorm in the same round), medians with IQR; target: the free layer's fwd+bwd <= 1.5x
nn.LayerNorm.

A fifth, *compiled* (``--compiled`` / ``--compiled-only``): SwitchNorm2d and BatchNorm2d, each
eager and under ``torch.compile`` (inductor), all four interleaved in each repeat; ratios are
per-repeat (compiled / eager of the same layer, and compiled SN / compiled BN). Compilation (the
first fwd+bwd and the first evaluation of each compiled layer, until they return) is reported
on its own and kept out of the timed runs.

``--malloc-tuned`` raises glibc's mmap and trim thresholds to 1 GiB (``mallopt``) before torch is
imported, so freed large blocks are reused rather than handed back to the OS and faulted in again
on the next allocation (the effect a caching allocator such as jemalloc or tcmalloc has; see
PyTorch's CPU performance tuning guide). It affects all candidates alike.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import json
import os
import statistics
import sys
import time

SHAPES = [(32, 64, 56, 56), (8, 256, 14, 14), (2, 64, 56, 56)]
CANDIDATES = ("SwitchNorm2d", "BatchNorm2d", "GroupNorm", "Reference")
PYTHON_SN = "SwitchNorm2d (python kernel)"  # only when the native kernel is the default
FIXED_KINDS = ("bn", "in", "ln", "gn")
FIXED_BOUND = 1.05
TOKEN_SHAPES = [(32, 64, 256), (8, 256, 512)]
TOKEN_BOUND = 1.5
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
GIB = 1 << 30

# Targets: (label, key, comparison, bound)
TARGETS = [
    ("fwd+bwd <= 1.0x BN", "sn_over_bn", "<=", 1.0),
    ("fwd+bwd >= 4x faster than reference", "speedup_vs_reference", ">=", 4.0),
    ("eval <= 1.5x BN eval", "sn_eval_over_bn_eval", "<=", 1.5),  # issue 12
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
    parser.add_argument("--fixed-only", action="store_true", help="only the fixed-layer comparison")
    parser.add_argument("--no-fixed", action="store_true", help="skip the fixed-layer comparison")
    parser.add_argument("--tokens-only", action="store_true", help="only the token-layer case")
    parser.add_argument("--no-tokens", action="store_true", help="skip the token-layer case")
    parser.add_argument("--compiled", action="store_true", help="add the torch.compile case")
    parser.add_argument("--compiled-only", action="store_true", help="only the compiled case")
    return parser.parse_args(argv)


class OnKernel:
    """A layer whose calls run on one sn_core backend ("python" or "native"), then restore it.

    The backward follows the forward's backend (it rides on the autograd context).
    """

    def __init__(self, layer, kernel: str):
        self.layer, self.kernel = layer, kernel

    def __call__(self, x):
        from sn_core.functional import use_kernel

        previous = use_kernel(self.kernel)
        try:
            return self.layer(x)
        finally:
            use_kernel(previous)

    def __getattr__(self, name):
        return getattr(self.layer, name)


def build_layers(channels: int):
    from torch import nn

    from sn_core.functional import kernel
    from sn_core.layers import SwitchNorm2d
    from sn_core.reference import ReferenceSwitchNorm

    layers = {"SwitchNorm2d": SwitchNorm2d(channels)}
    if kernel() == "native":  # the same layer on the Python mixture, for the ratio
        layers[PYTHON_SN] = OnKernel(SwitchNorm2d(channels), "python")
    return {
        **layers,
        "BatchNorm2d": nn.BatchNorm2d(channels),
        "GroupNorm": nn.GroupNorm(32, channels),
        "Reference": ReferenceSwitchNorm(channels),
    }


def saved_bytes(forward) -> int:
    """Bytes of the unique storages autograd saves for backward while ``forward()`` runs (the
    activations a training step holds at its peak; bench/sn_network.py measures whole models
    with it too)."""
    import torch

    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(storages.values())


def timed_calls(shape, seed: int):
    """The input of ``shape`` (seeded) and two timers of one call of a layer on it: forward +
    backward (with a fixed output gradient) and an evaluation forward."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).requires_grad_(True)
    grad_out = torch.randn(shape, generator=gen)

    def fwd_bwd(layer) -> float:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        layer(x).backward(grad_out)
        return time.perf_counter() - start

    def evaluate(layer) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            layer(x)
        return time.perf_counter() - start

    return x, fwd_bwd, evaluate


def bench_shape(shape, repeat: int, warmup: int, seed: int, budget_s: float) -> dict:

    x, fwd_bwd, evaluate = timed_calls(shape, seed)
    layers = build_layers(shape[1])

    # Two interleaved groups, each compared within itself: the naive reference allocates several
    # input-sized temporaries per call, which changes the allocator's and caches' state for
    # whatever runs next, so it is kept away from the SN-versus-torch comparison.
    python_sn = (PYTHON_SN,) if PYTHON_SN in layers else ()
    groups = {
        "torch": ("SwitchNorm2d", *python_sn, "BatchNorm2d", "GroupNorm"),
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
            "saved_bytes": saved_bytes(functools.partial(layer.train(), x)),
        }
    sn, bn, ref = (result["layers"][k] for k in ("SwitchNorm2d", "BatchNorm2d", "Reference"))
    sn_beside_reference = statistics.median(times["naive"]["SwitchNorm2d"]["fwd_bwd"]) * 1e3
    result["sn_beside_reference_fwd_bwd_ms"] = sn_beside_reference
    result["sn_over_bn"] = sn["fwd_bwd_ms"] / bn["fwd_bwd_ms"]
    result["speedup_vs_reference"] = ref["fwd_bwd_ms"] / sn_beside_reference
    result["sn_eval_over_bn_eval"] = sn["eval_ms"] / bn["eval_ms"]
    result["sn_saved_over_input"] = sn["saved_bytes"] / input_bytes
    if python_sn:
        py = result["layers"][PYTHON_SN]
        result["python_sn_over_bn"] = py["fwd_bwd_ms"] / bn["fwd_bwd_ms"]
        result["python_sn_eval_over_bn_eval"] = py["eval_ms"] / bn["eval_ms"]
    return result


def build_fixed_pairs(channels: int) -> dict:
    """Per normalizer: (SN fixed to it, the torch layer it equals)."""
    from torch import nn

    from sn_core.layers import SwitchNorm2d

    torch_layers = {
        "bn": nn.BatchNorm2d(channels),
        "in": nn.InstanceNorm2d(channels, affine=True),
        "ln": nn.GroupNorm(1, channels),
        "gn": nn.GroupNorm(32, channels),
    }
    pairs = {}
    for kind in FIXED_KINDS:
        sn = SwitchNorm2d(channels, pool=FIXED_KINDS, groups=32)
        sn.fix(kind, kind)
        pairs[kind] = (sn, torch_layers[kind])
    return pairs


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def bench_fixed(shape, repeat: int, warmup: int, seed: int, budget_s: float) -> dict:
    """Fixed SN layers against the torch layers they equal, per-repeat ratios."""
    _, fwd_bwd, evaluate = timed_calls(shape, seed)
    pairs = build_fixed_pairs(shape[1])

    result = {"shape": list(shape), "kinds": {}}
    share = budget_s / (2 * len(pairs))
    for kind, (sn, ref) in pairs.items():
        row = {}
        for phase, run, train in (("fwd_bwd", fwd_bwd, True), ("eval", evaluate, False)):
            sn.train(train)
            ref.train(train)
            for _ in range(warmup):
                run(sn)
                run(ref)
            sn_times, ref_times = [], []
            deadline = time.perf_counter() + share
            for i in range(repeat):
                if i % 2:  # alternate which runs first
                    ref_times.append(run(ref))
                    sn_times.append(run(sn))
                else:
                    sn_times.append(run(sn))
                    ref_times.append(run(ref))
                if i + 1 >= 5 and time.perf_counter() > deadline:
                    break
            ratios = [a / b for a, b in zip(sn_times, ref_times, strict=True)]
            q1, median, q3 = quartiles(ratios)
            row[phase] = {
                "repeats": len(ratios),
                "sn_ms": statistics.median(sn_times) * 1e3,
                "torch_ms": statistics.median(ref_times) * 1e3,
                "ratio": median,
                "ratio_q1": q1,
                "ratio_q3": q3,
            }
        result["kinds"][kind] = row
    return result


def print_fixed(result: dict) -> None:
    shape = "x".join(str(s) for s in result["shape"])
    names = {
        "bn": "BatchNorm2d",
        "in": "InstanceNorm2d",
        "ln": "GroupNorm(1)",
        "gn": "GroupNorm(32)",
    }
    print(f"\n### Fixed SN layers vs the torch layer they equal, {shape} float32\n")
    print(
        "| fixed to | torch layer | repeats | fwd+bwd ms SN / torch | fwd+bwd ratio [IQR] "
        "| eval ms SN / torch | eval ratio [IQR] |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for kind, row in result["kinds"].items():
        fb, ev = row["fwd_bwd"], row["eval"]
        print(
            f"| {kind} | {names[kind]} | {fb['repeats']} / {ev['repeats']} "
            f"| {fb['sn_ms']:.3f} / {fb['torch_ms']:.3f} "
            f"| **{fb['ratio']:.3f}x** [{fb['ratio_q1']:.3f}, {fb['ratio_q3']:.3f}] "
            f"| {ev['sn_ms']:.3f} / {ev['torch_ms']:.3f} "
            f"| {ev['ratio']:.3f}x [{ev['ratio_q1']:.3f}, {ev['ratio_q3']:.3f}] |"
        )


COMPILED_CANDIDATES = ("SN", "SN compiled", "BN", "BN compiled")


def _median_ratio(times: dict, a: str, b: str) -> float:
    """Median over repeats of a's time / b's time in the same repeat."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def bench_compiled(shape, repeat: int, warmup: int, seed: int, budget_s: float) -> dict:
    """SwitchNorm2d and BatchNorm2d, eager and compiled (inductor), interleaved per repeat."""
    import torch
    from torch import nn

    from sn_core.layers import SwitchNorm2d

    _, fwd_bwd, evaluate = timed_calls(shape, seed)
    eager = {"SN": SwitchNorm2d(shape[1]), "BN": nn.BatchNorm2d(shape[1])}
    layers = {
        "SN": eager["SN"],
        "SN compiled": torch.compile(SwitchNorm2d(shape[1])),
        "BN": eager["BN"],
        "BN compiled": torch.compile(nn.BatchNorm2d(shape[1])),
    }
    result = {"shape": list(shape), "compile_s": {}, "phases": {}}
    for phase, run, train in (("fwd_bwd", fwd_bwd, True), ("eval", evaluate, False)):
        for layer in layers.values():
            layer.train(train)
        for name in ("SN compiled", "BN compiled"):  # the first call compiles
            result["compile_s"].setdefault(name, {})[phase] = run(layers[name])
        for _ in range(warmup):
            for layer in layers.values():
                run(layer)
        times = {name: [] for name in layers}
        deadline = time.perf_counter() + budget_s / 2
        names = COMPILED_CANDIDATES
        for i in range(repeat):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                times[name].append(run(layers[name]))
            if i + 1 >= 5 and time.perf_counter() > deadline:
                break
        ratio = functools.partial(_median_ratio, times)
        result["phases"][phase] = {
            "repeats": len(times["SN"]),
            "ms": {name: statistics.median(t) * 1e3 for name, t in times.items()},
            "sn_compiled_over_eager": ratio("SN compiled", "SN"),
            "bn_compiled_over_eager": ratio("BN compiled", "BN"),
            "sn_compiled_over_bn_compiled": ratio("SN compiled", "BN compiled"),
            "sn_compiled_over_bn_eager": ratio("SN compiled", "BN"),
        }
    return result


def print_compiled(result: dict) -> None:
    shape = "x".join(str(s) for s in result["shape"])
    print(f"\n### Compiled (torch.compile, inductor) vs eager, {shape} float32\n")
    print(
        "| phase | repeats | SN ms | SN compiled ms | BN ms | BN compiled ms | SN compiled/eager "
        "| BN compiled/eager | SN compiled / BN compiled | SN compiled / BN eager |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for phase, row in result["phases"].items():
        ms = row["ms"]
        print(
            f"| {phase} | {row['repeats']} | {ms['SN']:.3f} | {ms['SN compiled']:.3f} "
            f"| {ms['BN']:.3f} | {ms['BN compiled']:.3f} | {row['sn_compiled_over_eager']:.2f}x "
            f"| {row['bn_compiled_over_eager']:.2f}x "
            f"| **{row['sn_compiled_over_bn_compiled']:.2f}x** "
            f"| {row['sn_compiled_over_bn_eager']:.2f}x |"
        )
    compile_s = result["compile_s"]
    cells = ", ".join(
        f"{name} {c['fwd_bwd']:.1f} s + {c['eval']:.1f} s" for name, c in compile_s.items()
    )
    print(f"\nCompilation (first fwd+bwd + first eval, excluded above): {cells}")


def check_fixed_target(results: list[dict]) -> dict:
    values = {
        f"{'x'.join(map(str, r['shape']))} {kind}": row["fwd_bwd"]["ratio"]
        for r in results
        for kind, row in r["kinds"].items()
    }
    ok = all(v <= FIXED_BOUND for v in values.values())
    shown = ", ".join(f"{k}: {v:.3f}" for k, v in values.items())
    label = f"fixed SN fwd+bwd <= {FIXED_BOUND}x the torch layer it equals"
    print(f"- {'PASS' if ok else 'MISS'} {label} ({shown})")
    return {"target": label, "pass": ok, "values": list(values.values())}


def build_token_layers(channels: int) -> dict:
    """The token-layout candidates, nn.LayerNorm first (the ratios' denominator)."""
    from torch import nn

    from sn_core.tokens import SwitchNormTokens

    class GenericTokens(SwitchNormTokens):
        """The free layer on the generic autograd path (what the kernel replaced)."""

        def _mixture_forward(self, x, kinds, mask):
            return self._generic_mixture_forward(x, kinds, mask)

    fixed_ln = SwitchNormTokens(channels)
    fixed_ln.fix("ln", "ln")
    fixed_rms = SwitchNormTokens(channels)
    fixed_rms.fix("rms", "rms")
    return {
        "nn.LayerNorm": nn.LayerNorm(channels),
        "nn.RMSNorm": nn.RMSNorm(channels),
        "SN tokens free (ln, rms)": SwitchNormTokens(channels),
        "SN tokens free, generic autograd": GenericTokens(channels),
        "SN tokens fixed ln": fixed_ln,
        "SN tokens fixed rms": fixed_rms,
    }


# Interleaved in two groups, each against its own nn.LayerNorm: nn.RMSNorm (a composite on CPU)
# and the generic autograd path allocate several input-sized temporaries per call, which changes
# the allocator's state (pages handed back and faulted in again) for whatever runs next.
TOKEN_GROUPS = (
    ("nn.LayerNorm", "SN tokens free (ln, rms)", "SN tokens fixed ln", "SN tokens fixed rms"),
    ("nn.LayerNorm", "nn.RMSNorm", "SN tokens free, generic autograd"),
)


def bench_tokens(shape, repeat: int, warmup: int, seed: int, budget_s: float) -> dict:
    """fwd+bwd of the token candidates, interleaved in ``TOKEN_GROUPS`` (a fresh seeded order
    each repeat), ratios per repeat against the group's nn.LayerNorm."""
    import random

    import torch

    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).requires_grad_(True)
    grad_out = torch.randn(shape, generator=gen)
    layers = build_token_layers(shape[-1])
    order = random.Random(seed)

    def fwd_bwd(layer):
        x.grad = None
        layer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        layer(x).backward(grad_out)
        return time.perf_counter() - start

    rows = {}
    for group in TOKEN_GROUPS:
        for _ in range(warmup):
            for name in group:
                fwd_bwd(layers[name])
        times = {name: [] for name in group}
        deadline = time.perf_counter() + budget_s / len(TOKEN_GROUPS)
        for i in range(repeat):
            names = list(group)
            order.shuffle(names)
            for name in names:
                times[name].append(fwd_bwd(layers[name]))
            if i + 1 >= 5 and time.perf_counter() > deadline:
                break
        base = times["nn.LayerNorm"]
        for name in group:
            if name in rows:  # nn.LayerNorm of the second group: the first one's row stays
                continue
            ratios = [a / b for a, b in zip(times[name], base, strict=True)]
            q1, median, q3 = quartiles(ratios)
            rows[name] = {
                "repeats": len(ratios),
                "ms": statistics.median(times[name]) * 1e3,
                "ratio": median,
                "ratio_q1": q1,
                "ratio_q3": q3,
            }
    rows = {name: rows[name] for name in layers}  # the table's order
    return {"shape": list(shape), "layers": rows}


def print_tokens(result: dict) -> None:
    shape = "x".join(str(s) for s in result["shape"])
    print(f"\n### Token layers (N, T, C) = {shape} float32, fwd+bwd\n")
    print("| layer | repeats | ms (median) | / nn.LayerNorm, per repeat [IQR] |")
    print("|---|---:|---:|---:|")
    for name, row in result["layers"].items():
        print(
            f"| {name} | {row['repeats']} | {row['ms']:.3f} "
            f"| **{row['ratio']:.2f}x** [{row['ratio_q1']:.2f}, {row['ratio_q3']:.2f}] |"
        )


def check_token_target(results: list[dict]) -> dict:
    key = "SN tokens free (ln, rms)"
    values = {"x".join(map(str, r["shape"])): r["layers"][key]["ratio"] for r in results}
    ok = all(v <= TOKEN_BOUND for v in values.values())
    shown = ", ".join(f"{k}: {v:.2f}" for k, v in values.items())
    label = f"free token SN fwd+bwd <= {TOKEN_BOUND}x nn.LayerNorm"
    print(f"- {'PASS' if ok else 'MISS'} {label} ({shown})")
    return {"target": label, "pass": ok, "values": list(values.values())}


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
    if "python_sn_over_bn" in result:
        print(
            f"Python-kernel SN/BN fwd+bwd {result['python_sn_over_bn']:.2f}x, "
            f"eval {result['python_sn_eval_over_bn_eval']:.2f}x"
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
    title = "SwitchNormTokens" if args.tokens_only else "SwitchNorm2d"
    from sn_core.functional import kernel

    print(
        f"## {title} benchmark: torch {torch.__version__}, {args.threads} threads, {mode}, "
        f"sn_core kernel {kernel()}"
    )
    if not args.tokens_only:
        print(
            "\nMedians over interleaved runs (SN with the torch layers; SN with the naive "
            "reference in a second group); fwd+bwd = train-mode forward + y.backward(g); "
            "eval = eval-mode forward under no_grad. GroupNorm has 32 groups."
        )

    results, verdicts = [], []
    shapes_budget = args.budget / len(SHAPES)
    channel_first = not args.tokens_only and not args.compiled_only
    if channel_first and not args.fixed_only:
        for shape in SHAPES:
            repeat = args.repeat or default_repeat(shape)
            start = time.perf_counter()
            result = bench_shape(shape, repeat, args.warmup, args.seed, shapes_budget)
            result["wall_s"] = time.perf_counter() - start
            print_shape(result)
            results.append(result)
    fixed_results = []
    if channel_first and not args.no_fixed:
        for shape in SHAPES:
            repeat = args.repeat or default_repeat(shape)
            fixed = bench_fixed(shape, repeat, args.warmup, args.seed, shapes_budget)
            print_fixed(fixed)
            fixed_results.append(fixed)

    token_results = []
    if not args.no_tokens and not args.fixed_only and not args.compiled_only:
        for shape in TOKEN_SHAPES:
            repeat = args.repeat or default_repeat(shape)
            tokens = bench_tokens(shape, repeat, args.warmup, args.seed, shapes_budget)
            print_tokens(tokens)
            token_results.append(tokens)

    compiled_results = []
    if args.compiled or args.compiled_only:
        for shape in SHAPES:
            repeat = args.repeat or default_repeat(shape)
            compiled = bench_compiled(shape, repeat, args.warmup, args.seed, shapes_budget)
            print_compiled(compiled)
            compiled_results.append(compiled)

    print("\n### Targets\n")
    if results:
        verdicts = check_targets(results)
    if fixed_results:
        verdicts.append(check_fixed_target(fixed_results))
    if token_results:
        verdicts.append(check_token_target(token_results))
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
            "fixed": fixed_results,
            "tokens": token_results,
            "compiled": compiled_results,
            "targets": verdicts,
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
