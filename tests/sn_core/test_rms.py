"""The uncentred "rms" pool member: exact against torch.nn.RMSNorm, stable, mixable, finalizable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from service.spec import JobSpec
from sn_core import NORMALIZERS, SelectedNorm, finalize, plan_from_model
from sn_core.layers import SwitchNorm1d, SwitchNorm2d, SwitchNorm3d
from sn_core.vocabulary import POOL_MEMBERS

# Every test runs on both SN kernel backends (tests/sn_core/conftest.py).
pytestmark = pytest.mark.usefixtures("sn_kernel")

SHAPES = {SwitchNorm1d: (5, 6, 7), SwitchNorm2d: (4, 6, 5, 3), SwitchNorm3d: (3, 6, 2, 3, 4)}


def _affine(layer: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen, dtype=layer.bias.dtype))


def _rms_reference(x, weight, bias, eps):
    """torch.nn.RMSNorm over (C, *) (no affine) with a per-channel weight and bias."""
    y = nn.functional.rms_norm(x, x.shape[1:], None, eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return y * weight.view(shape) + bias.view(shape)


@pytest.mark.parametrize("cls", list(SHAPES))
@pytest.mark.parametrize("fixed", [True, False])
def test_one_hot_rms_equals_torch_rmsnorm_in_outputs_and_gradients(cls, fixed):
    torch.manual_seed(0)
    layer = cls(6, pool=("in", "ln", "bn", "rms"), dtype=torch.float64)
    _affine(layer)
    if fixed:
        layer.fix("rms", "rms")
    else:  # one-hot soft ratios: the full mixture with the other three weighted 0
        with torch.no_grad():
            layer.mean_weight.copy_(torch.tensor([-1e4, -1e4, -1e4, 0.0]))
            layer.var_weight.copy_(torch.tensor([-1e4, -1e4, -1e4, 0.0]))
    x = (torch.randn(SHAPES[cls], dtype=torch.float64) * 3 + 2).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    w_ref = layer.weight.detach().clone().requires_grad_()
    b_ref = layer.bias.detach().clone().requires_grad_()
    y = layer(x)
    y_ref = _rms_reference(x_ref, w_ref, b_ref, layer.eps)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.bias.grad, b_ref.grad, rtol=1e-10, atol=1e-10)


def _mixture_reference(x, weight, bias, mean_ratios, var_ratios, eps):
    """The SN definition written with autograd ops over (ln, rms, bn), float64, training."""
    dims = tuple(range(1, x.dim()))
    ln_mean = x.mean(dims, keepdim=True)
    ln_var = ((x - ln_mean) ** 2).mean(dims, keepdim=True)
    rms_var = (x * x).mean(dims, keepdim=True)
    bn_dims = (0, *range(2, x.dim()))
    bn_mean = x.mean(bn_dims, keepdim=True)
    bn_var = ((x - bn_mean) ** 2).mean(bn_dims, keepdim=True)
    mean = mean_ratios[0] * ln_mean + mean_ratios[1] * 0.0 + mean_ratios[2] * bn_mean
    var = var_ratios[0] * ln_var + var_ratios[1] * rms_var + var_ratios[2] * bn_var
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(shape) + bias.view(shape)


@pytest.mark.parametrize("cls", list(SHAPES))
def test_soft_mixture_with_rms_matches_its_definition_including_ratio_gradients(cls):
    torch.manual_seed(1)
    layer = cls(6, pool=("ln", "rms", "bn"), dtype=torch.float64)
    _affine(layer, 2)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.3, -0.2, 0.5]))
        layer.var_weight.copy_(torch.tensor([-0.4, 0.9, 0.1]))
    x = (torch.randn(SHAPES[cls], dtype=torch.float64) + 1.5).requires_grad_()
    mean_w = layer.mean_weight.detach().clone().requires_grad_()
    var_w = layer.var_weight.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y = layer(x)
    y_ref = _mixture_reference(
        x_ref, layer.weight.detach(), layer.bias.detach(), mean_w.softmax(0), var_w.softmax(0),
        layer.eps,
    )  # fmt: skip
    torch.testing.assert_close(y, y_ref, rtol=1e-11, atol=1e-11)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.mean_weight.grad, mean_w.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.var_weight.grad, var_w.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rms_is_finite_on_all_zero_inputs(dtype):
    for cls, shape in SHAPES.items():
        for fixed in (False, True):
            layer = cls(6, pool=("ln", "bn", "rms"), dtype=dtype)
            if fixed:
                layer.fix("rms", "rms")
            x = torch.zeros(shape, dtype=dtype, requires_grad=True)
            y = layer(x)
            y.sum().backward()
            assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
            assert fixed or torch.isfinite(layer.mean_weight.grad).all()


def test_fixed_rms_model_finalizes_to_selected_norm_with_the_same_output():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), SwitchNorm2d(8, pool=("in", "ln", "bn", "rms")))
    _affine(model[1], 3)
    model[1].fix("rms", "rms")
    plan = plan_from_model(model)
    assert (plan.layers[0].mean, plan.layers[0].var) == ("rms", "rms")
    final = finalize(model).eval()
    assert isinstance(final[1], SelectedNorm) and final[1].choice == ("rms", "rms")
    model.eval()
    x = torch.randn(4, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(final(x), model(x), rtol=0, atol=0)
        ref = _rms_reference(model[0](x), model[1].weight, model[1].bias, model[1].eps)
        torch.testing.assert_close(final(x), ref, rtol=1e-5, atol=1e-5)


def test_rms_is_a_pool_member_but_not_a_service_normalizer():
    assert "rms" in POOL_MEMBERS and "rms" not in NORMALIZERS and "dyt" in POOL_MEMBERS
    assert set(NORMALIZERS) < set(POOL_MEMBERS)
    with pytest.raises(ValueError, match="unknown normalizer"):
        SwitchNorm2d(4, pool=("ln", "rmsnorm"))


@pytest.mark.parametrize("where", ["search.pool", "verify.baselines"])
def test_service_job_spec_takes_rms(where):
    section, field = where.split(".")
    payload = {"model": {"arch": "resnet20"}, "dataset": {"kind": "digits"}}
    payload[section] = {field: ["bn", "rms"]}
    spec = JobSpec.model_validate(payload)
    assert getattr(getattr(spec, section), field) == ["bn", "rms"]
