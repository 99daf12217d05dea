"""The fast SwitchNorm{1,2,3}d agrees with the naive ``ReferenceSwitchNorm`` (float64).

Outputs, input gradients, gradients of every parameter and running statistics are compared over
several training steps (so the running statistics move away from their initial values) and then
in evaluation, for every input rank and several pools; ``gradcheck`` covers the hand-written
backward directly.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from sn_core.layers import SwitchNorm1d, SwitchNorm2d, SwitchNorm3d
from sn_core.reference import ReferenceSwitchNorm

# Every test runs on both SN kernel backends (tests/sn_core/conftest.py).
pytestmark = pytest.mark.usefixtures("sn_kernel")

DTYPE = torch.float64
TOL = {"rtol": 1e-9, "atol": 1e-10}

# (layer class, input shape); C = 8 so that groups=4 divides it.
SHAPES = {
    "1d-NCL": (SwitchNorm1d, (4, 8, 7)),
    "1d-NC": (SwitchNorm1d, (6, 8)),
    "2d": (SwitchNorm2d, (3, 8, 5, 4)),
    "3d": (SwitchNorm3d, (2, 8, 3, 4, 2)),
}
POOLS = {
    "in-ln-bn": ("in", "ln", "bn"),
    "in-ln-bn-gn": ("in", "ln", "bn", "gn"),
    "bn": ("bn",),
    "ln-bn": ("ln", "bn"),
}
PARAMS = ("weight", "bias", "mean_weight", "var_weight")
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def make_pair(cls, channels, pool, seed=0, **kwargs):
    """A fast layer with random logits/affine parameters and a reference with the same state."""
    gen = torch.Generator().manual_seed(seed)
    fast = cls(channels, pool=pool, groups=4, **kwargs).to(DTYPE)
    with torch.no_grad():
        for name in PARAMS:
            param = getattr(fast, name, None)
            if param is not None:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=DTYPE))
    ref = ReferenceSwitchNorm(channels, pool=pool, groups=4, **kwargs).to(DTYPE)
    result = ref.load_state_dict(fast.state_dict(), strict=False)
    assert not result.missing_keys
    assert set(result.unexpected_keys) == {"mean_choice", "var_choice"}
    return fast, ref


def step(layer, x, grad_out):
    """Forward + backward; returns the output and the gradients of x and the parameters."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    y.backward(grad_out)
    grads = {"x": x.grad}
    for name in PARAMS:
        param = getattr(layer, name, None)
        if param is not None:
            grads[name] = param.grad
    return y.detach(), grads


def assert_same_step(fast, ref, x, grad_out, context):
    y_fast, g_fast = step(fast, x, grad_out)
    y_ref, g_ref = step(ref, x, grad_out)
    torch.testing.assert_close(y_fast, y_ref, **TOL, msg=lambda m: f"{context} output: {m}")
    assert g_fast.keys() == g_ref.keys()
    for name in g_ref:
        if g_ref[name] is None or torch.count_nonzero(g_ref[name]) == 0:
            # e.g. the logits of a single-normalizer pool: autograd may give zeros or None.
            assert g_fast[name] is None or torch.count_nonzero(g_fast[name]) == 0, name
            continue
        assert g_fast[name] is not None, f"{context}: no gradient for {name}"
        torch.testing.assert_close(
            g_fast[name], g_ref[name], **TOL, msg=lambda m, n=name: f"{context} grad {n}: {m}"
        )


def assert_same_buffers(fast, ref, context):
    for name in BUFFERS:
        a, b = getattr(fast, name), getattr(ref, name)
        assert (a is None) == (b is None), f"{context}: {name} present in only one layer"
        if a is not None:
            torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=name: f"{context} {n}: {m}")


@pytest.mark.parametrize("pool", POOLS.values(), ids=POOLS.keys())
@pytest.mark.parametrize("shape_id", SHAPES.keys())
def test_agrees_with_reference_train_then_eval(shape_id, pool):
    cls, shape = SHAPES[shape_id]
    fast, ref = make_pair(cls, shape[1], pool, seed=list(SHAPES).index(shape_id) * 10 + len(pool))
    gen = torch.Generator().manual_seed(1)

    def batch():
        # Non-zero mean and non-unit scale per channel, so the running statistics move.
        x = torch.randn(shape, generator=gen, dtype=DTYPE)
        per_channel = (1, shape[1]) + (1,) * (len(shape) - 2)
        scale = torch.rand(per_channel, generator=gen, dtype=DTYPE) * 3 + 0.5
        offset = torch.randn(per_channel, generator=gen, dtype=DTYPE) * 2
        return x * scale + offset, torch.randn(shape, generator=gen, dtype=DTYPE)

    fast.train()
    ref.train()
    for i in range(3):
        x, grad_out = batch()
        assert_same_step(fast, ref, x, grad_out, f"train step {i}")
        assert_same_buffers(fast, ref, f"after train step {i}")
    if fast.track_running_stats:
        assert int(fast.num_batches_tracked) == 3
        assert not torch.allclose(fast.running_mean, torch.zeros_like(fast.running_mean))
        assert not torch.allclose(fast.running_var, torch.ones_like(fast.running_var))

    fast.eval()
    ref.eval()
    for i in range(2):
        x, grad_out = batch()
        assert_same_step(fast, ref, x, grad_out, f"eval step {i}")
    assert_same_buffers(fast, ref, "after eval")


@pytest.mark.parametrize("shape_id", ["1d-NC", "2d"])
@pytest.mark.parametrize(
    "kwargs",
    [{"affine": False}, {"track_running_stats": False}, {"momentum": None}],
    ids=["no-affine", "no-running-stats", "cumulative-momentum"],
)
def test_agrees_with_reference_options(shape_id, kwargs):
    cls, shape = SHAPES[shape_id]
    fast, ref = make_pair(cls, shape[1], ("in", "ln", "bn", "gn"), seed=5, **kwargs)
    gen = torch.Generator().manual_seed(2)
    for mode in ("train", "train", "eval"):
        fast.train(mode == "train")
        ref.train(mode == "train")
        x = torch.randn(shape, generator=gen, dtype=DTYPE) * 2 + 1
        grad_out = torch.randn(shape, generator=gen, dtype=DTYPE)
        assert_same_step(fast, ref, x, grad_out, f"{kwargs} {mode}")
        assert_same_buffers(fast, ref, f"{kwargs} {mode}")


def test_state_dict_round_trip():
    fast, ref = make_pair(SwitchNorm2d, 8, ("in", "ln", "bn"), seed=3)
    with torch.no_grad():
        ref.running_mean.normal_()
        ref.running_var.uniform_(0.5, 2.0)
        ref.num_batches_tracked.fill_(7)
        ref.weight.normal_()
    fresh = SwitchNorm2d(8, groups=4).to(DTYPE)
    result = fresh.load_state_dict(ref.state_dict(), strict=False)
    assert set(result.missing_keys) == {"mean_choice", "var_choice"}
    assert not result.unexpected_keys
    for name, value in ref.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcheck_switchnorm2d(mode):
    layer, _ = make_pair(SwitchNorm2d, 4, ("in", "ln", "bn", "gn"), seed=4)
    layer.groups = 2
    with torch.no_grad():  # non-trivial running statistics for evaluation
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
    layer.train(mode == "train")
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 4, 3, 2, generator=gen, dtype=DTYPE) * 1.5 + 0.5
    inputs = [x] + [getattr(layer, name).detach().clone() for name in PARAMS]
    inputs = [t.requires_grad_(True) for t in inputs]

    def fn(x, *params):
        return functional_call(layer, dict(zip(PARAMS, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
