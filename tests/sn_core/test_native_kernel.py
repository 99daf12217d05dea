"""The compiled SN CPU kernel (sn_core/csrc, sn_core/native.py) against the Python mixture.

Both backends of ``sn_core.functional.switch_norm`` must give the same outputs, batch statistics
and gradients for every pool member, variance convention and BN source; float64 gradcheck goes
through the compiled backward; a failed build or load falls back with one log line.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from sn_core.functional import MixtureConfig, kernel, switch_norm, use_kernel
from tests.support.kernels import require_native

ROOT = Path(__file__).resolve().parents[2]

CASES = {
    "all": ("in", "ln", "bn", "gn", "rms"),
    "in-ln-bn": ("in", "ln", "bn"),
    "bn": ("bn",),
    "gn-rms": ("gn", "rms"),
}
SHAPES = {"NCL": (4, 8, 7), "NC": (6, 8, 1), "N1": (1, 8, 5)}


def _inputs(kinds, shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, c, _ = shape

    def rand(*size, scale=1.0, shift=0.0):
        return (torch.randn(size, generator=gen, dtype=dtype) * scale + shift).requires_grad_()

    k = len(kinds)
    x = rand(*shape, scale=2.0, shift=0.7)
    weight, bias = rand(c), rand(c)
    mean_ratios = torch.softmax(rand(k), 0).detach().requires_grad_()
    var_ratios = torch.softmax(rand(k), 0).detach().requires_grad_()
    running = (torch.randn(c, generator=gen, dtype=dtype), torch.rand(c, generator=gen) + 0.5)
    return [x, weight, bias, mean_ratios, var_ratios], (running[0], running[1].to(dtype))


def _run(backend, kinds, shape, dtype, batch_bn, reference):
    use_kernel(backend)
    inputs, (rm, rv) = _inputs(kinds, shape, dtype)
    config = MixtureConfig(kinds, 1e-5, groups=4, batch_bn=batch_bn, reference=reference)
    running = (None, None) if batch_bn else (rm, rv)
    y, batch_mean, batch_var = switch_norm(*inputs, *running, config)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    y.backward(grad)
    return [y.detach(), batch_mean, batch_var] + [t.grad for t in inputs]


@pytest.fixture(autouse=True)
def _restore_kernel():
    previous = use_kernel("auto")
    yield
    use_kernel(previous)


@pytest.fixture
def native_kernel():
    """The native kernel must be built (skipped locally without it, a failure under CI)."""
    require_native()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape_id", SHAPES)
@pytest.mark.parametrize("case", CASES)
def test_native_matches_python_backend(native_kernel, case, shape_id, dtype):
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-5}
    kinds, shape = CASES[case], SHAPES[shape_id]
    names = ["y", "batch_mean", "batch_var", "x", "weight", "bias", "mean_ratios", "var_ratios"]
    for batch_bn in (True, False):
        for reference in (False, True):
            native = _run("native", kinds, shape, dtype, batch_bn, reference)
            python = _run("python", kinds, shape, dtype, batch_bn, reference)
            for name, a, b in zip(names, native, python, strict=True):
                where = f"{name} ({case}, batch_bn={batch_bn}, reference={reference})"
                if b is None:
                    assert a is None, where
                else:
                    assert a is not None and a.dtype == b.dtype, where
                    assert_close(a, b, **tol, msg=where)


def test_native_backward_passes_float64_gradcheck(native_kernel):
    kinds = CASES["all"]
    for batch_bn in (True, False):
        inputs, (rm, rv) = _inputs(kinds, (3, 8, 4), torch.float64, seed=3)
        config = MixtureConfig(kinds, 1e-5, groups=2, batch_bn=batch_bn)
        running = (None, None) if batch_bn else (rm, rv)

        def fn(*args, config=config, running=running):
            return switch_norm(*args, *running, config)[0]

        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def _ops_run(layer, x) -> set[str]:
    with torch.profiler.profile() as prof:
        layer(x).sum().backward()
    return {event.key for event in prof.key_averages()}


def test_the_layers_run_the_selected_backend(native_kernel):
    from sn_core.layers import SwitchNorm2d

    use_kernel("auto")
    assert kernel() == "native"
    layer = SwitchNorm2d(8, groups=4).double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    assert {"normsearch_cpu::forward", "normsearch_cpu::backward"} <= _ops_run(layer, x)
    y = layer(x)
    use_kernel("python")
    assert not any(op.startswith("normsearch_cpu::") for op in _ops_run(layer, x))
    assert_close(layer(x), y, rtol=1e-12, atol=1e-12)


def test_use_kernel_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="kernel must be one of"):
        use_kernel("cuda")


FALLBACK = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("sn_core.native").addHandler(handler)
    import torch
    from sn_core import native
    from sn_core.functional import kernel, use_kernel
    from sn_core.layers import SwitchNorm2d
    build_dir = Path(sys.argv[1])

    # A compiler that fails: the build step returns 0 with one line, and builds nothing.
    assert native.main(["--cxx", "/bin/false", "--build-dir", str(build_dir)]) == 0
    assert len(records) == 1 and "building the native CPU kernel failed" in records[0].getMessage()
    assert not native.library_path(build_dir).exists()

    # Not built: the first use logs once and the layers run the Python mixture.
    assert native.load(build_dir) is False and kernel() == "python"
    layer = SwitchNorm2d(4)
    for _ in range(3):
        layer(torch.randn(2, 4, 3, 3, requires_grad=True)).sum().backward()
    assert len(records) == 2 and "not built" in records[1].getMessage(), records
    try:
        use_kernel("native")
    except RuntimeError as error:
        assert "not available" in str(error)
    else:
        raise AssertionError("use_kernel('native') without the library must raise")

    # A library that does not load: one line, then the Python mixture.
    native._state.clear()
    native.library_path(build_dir).write_bytes(b"not a shared object")
    assert native.load(build_dir) is False and native.load(build_dir) is False
    assert len(records) == 3 and "loading the native CPU kernel" in records[2].getMessage()
    print("ok")
    """
)


@pytest.mark.slow  # a fresh interpreter importing torch: ~10 s on the loaded 2-core machine
def test_failed_build_or_load_falls_back_with_one_log_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK, str(tmp_path / "build")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
