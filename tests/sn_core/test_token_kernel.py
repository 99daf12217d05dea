"""sn_core.token_kernel: the hand-written per-token (ln, rms) mixture equals the generic
autograd path in outputs and every gradient, and stays finite, on both backends (``sn_kernel``:
the torch function and the compiled C++ kernel of sn_core/csrc/token_norm.cpp)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call
from torch.testing import assert_close

from sn_core import SwitchNormTokens

F64 = torch.float64


def _layer(pool, dtype=F64, **kwargs) -> SwitchNormTokens:
    layer = SwitchNormTokens(6, pool=pool, dtype=dtype, **kwargs)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=dtype))
    return layer


def _run(layer, path, x, upstream):
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = path(x)
    (y * upstream).sum().backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in layer.parameters()]
    return [y.detach(), x.grad, *grads]


def _assert_kernel_equals_the_generic_path(layer, x, upstream):
    """The layer's output and every gradient equal the generic autograd graph's (1e-12)."""
    kernel = _run(layer, layer, x, upstream)
    generic = _run(
        layer, lambda t: layer._generic_mixture_forward(t, layer.pool, None), x, upstream
    )
    for a, b in zip(kernel, generic, strict=True):
        assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "pool, kwargs",
    [
        (("ln", "rms"), {}),
        (("rms", "ln"), {"tied": True}),
        (("ln", "rms"), {"bias": False}),
        (("rms", "ln"), {"affine": False}),
        (("ln",), {}),
    ],
)
def test_kernel_equals_the_generic_path(pool, kwargs, sn_kernel):
    layer = _layer(pool, **kwargs)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 6, generator=gen, dtype=F64) * 3 + 2
    upstream = torch.randn(x.shape, generator=gen, dtype=F64)
    _assert_kernel_equals_the_generic_path(layer, x, upstream)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_selected_backend_runs_in_training_and_inference(sn_kernel, dtype):
    layer = _layer(("ln", "rms"), dtype=dtype)
    x = torch.randn(4, 5, 6, dtype=dtype, requires_grad=True)
    expected = "TokenMixture" if sn_kernel == "native" else "_PerTokenMixtureBackward"
    assert expected in layer(x).grad_fn.name()
    with torch.no_grad():
        inference = layer(x)
    assert_close(inference, layer._generic_mixture_forward(x, layer.pool, None).detach())


def test_the_native_kernel_threads_split_tokens_like_one_thread(sn_kernel):
    """Per-thread column sums (dweight, dbias) and ratio sums add up to the one-thread result."""
    layer = _layer(("ln", "rms"))
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(64, 300, 6, generator=gen, dtype=F64)  # many tokens: several tasks
    upstream = torch.randn(x.shape, generator=gen, dtype=F64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(layer, layer, x, upstream)
        torch.set_num_threads(max(2, threads))
        many = _run(layer, layer, x, upstream)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many, strict=True):
        assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_kernel_gradcheck(sn_kernel):
    layer = _layer(("ln", "rms"))
    names = [name for name, _ in layer.named_parameters()]
    x = torch.randn(2, 3, 6, dtype=F64, generator=torch.Generator().manual_seed(2))

    def run(x, *values):
        return functional_call(layer, dict(zip(names, values, strict=True)), (x,))

    inputs = (
        x.requires_grad_(),
        *(p.detach().clone().requires_grad_() for p in layer.parameters()),
    )
    assert torch.autograd.gradcheck(run, inputs, fast_mode=True)


@pytest.mark.parametrize("fill", [0.0, 5.0, 1e4])
def test_kernel_constant_and_large_mean_rows(fill, sn_kernel):
    """Constant tokens (variance 0) give finite outputs and gradients; float32 with a large
    mean agrees with float64 (the centred rows come from the layer-norm kernel)."""
    layer = _layer(("ln", "rms"))
    x = torch.full((2, 3, 6), fill, dtype=F64)
    x[1] += torch.randn(3, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    out = _run(layer, layer, x, torch.ones_like(x))
    assert all(torch.isfinite(t).all() for t in out)
    single = _layer(("ln", "rms"), dtype=torch.float32)
    low = _run(single, single, x.float(), torch.ones_like(x).float())
    assert_close(low[0], out[0].float(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "ratio_fn, settings, fixed_mean",
    [
        ("softmax", {}, None),
        ("temperature", {"temperature": 0.3}, None),
        ("sparsestmax", {"radius": 0.2}, None),
        ("softmax", {}, "ln"),
    ],
    ids=["softmax", "temperature", "sparsestmax", "mean-fixed"],
)
def test_every_ratio_function_gives_the_generic_paths_gradients(
    ratio_fn, settings, fixed_mean, sn_kernel
):
    """Softmax and temperature layers hand the kernel their logits (the native op takes the
    softmax itself); sparsestmax and partly fixed layers hand it ratios. Either way the output
    and every gradient, the logits' included, equal the generic graph's."""
    layer = _layer(("ln", "rms"), ratio_fn=ratio_fn)
    for name, value in settings.items():
        setattr(layer, name, value)
    if fixed_mean is not None:
        layer.fix(fixed_mean, None)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 6, generator=gen, dtype=F64) * 2 - 1
    upstream = torch.randn(x.shape, generator=gen, dtype=F64)
    _assert_kernel_equals_the_generic_path(layer, x, upstream)
    if fixed_mean is None:
        assert layer.mean_weight.grad.abs().sum() > 0  # the logits did get a gradient


def test_the_kernel_runs_in_inference_mode_and_refuses_double_backward(sn_kernel):
    layer = _layer(("ln", "rms"))
    x = torch.randn(2, 3, 6, dtype=F64, requires_grad=True)
    expected = layer._generic_mixture_forward(x, layer.pool, None).detach()
    with torch.inference_mode():
        assert_close(layer(x.detach()), expected)
    (grad,) = torch.autograd.grad(layer(x).sum(), x, create_graph=False)
    assert torch.isfinite(grad).all()
    if sn_kernel == "native":
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(layer(x).sum(), x, create_graph=True)
