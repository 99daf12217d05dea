"""The generic (non-CPU) kernel paths, exercised on CPU so that GPU code is tested everywhere.

On CUDA the kernel uses torch.var_mean / addcmul / vecdot and runs the O(N*C) mixture on torch
tensors; on CPU it uses ATen norm kernels and NumPy. Both must compute the same thing.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import sn_core.functional as functional
from sn_core.layers import SwitchNorm2d

POOLS = [("in", "ln", "bn"), ("in", "ln", "bn", "gn"), ("bn",), ("ln", "gn")]


def run(layer: SwitchNorm2d, x: torch.Tensor, grad: torch.Tensor):
    x = x.clone().requires_grad_()
    y = layer(x)
    y.backward(grad)
    grads = [x.grad] + [p.grad.clone() for p in layer.parameters() if p.grad is not None]
    layer.zero_grad()
    return y.detach(), grads


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("training", [True, False])
def test_generic_path_matches_cpu_fast_path(monkeypatch, pool, training):
    torch.manual_seed(0)
    fast = SwitchNorm2d(8, pool=pool, groups=4).double().train(training)
    with torch.no_grad():
        fast.mean_weight.normal_()
        fast.var_weight.normal_()
        fast.weight.normal_()
        if fast.running_var is not None:
            fast.running_var.uniform_(0.5, 2.0)
    generic = SwitchNorm2d(8, pool=pool, groups=4).double().train(training)
    generic.load_state_dict(fast.state_dict())
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64) * 2 + 3
    grad = torch.randn_like(x)
    y_fast, grads_fast = run(fast, x, grad)
    monkeypatch.setattr(functional, "_cpu_kernels", lambda t: False)
    y_generic, grads_generic = run(generic, x, grad)
    assert_close(y_generic, y_fast)
    for a, b in zip(grads_generic, grads_fast, strict=True):
        assert_close(a, b)
    if training and fast.running_mean is not None:
        assert_close(generic.running_mean, fast.running_mean)
        assert_close(generic.running_var, fast.running_var)


def test_generic_path_passes_gradcheck(monkeypatch):
    monkeypatch.setattr(functional, "_cpu_kernels", lambda t: False)
    layer = SwitchNorm2d(4, pool=("in", "ln", "bn", "gn"), groups=2).double()
    with torch.no_grad():
        layer.mean_weight.normal_()
        layer.var_weight.normal_()
    x = torch.randn(3, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    params = (layer.weight, layer.bias, layer.mean_weight, layer.var_weight)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params))
