"""SwitchNorm layers: exactness against torch's norm layers, stability, fixing, state dicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sn_core.layers import SwitchNorm1d, SwitchNorm2d, SwitchNorm3d

# Every test runs on both SN kernel backends (tests/sn_core/conftest.py).
pytestmark = pytest.mark.usefixtures("sn_kernel")

SN = {1: SwitchNorm1d, 2: SwitchNorm2d, 3: SwitchNorm3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
IN = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
SHAPES = {1: (4, 8, 7), 2: (4, 8, 5, 6), 3: (3, 8, 3, 4, 5)}
POOL = ("in", "ln", "bn", "gn")


def torch_layer(kind: str, dims: int, channels: int, groups: int) -> nn.Module:
    return {
        "bn": lambda: BN[dims](channels),
        "in": lambda: IN[dims](channels, affine=True),
        "ln": lambda: nn.GroupNorm(1, channels),
        "gn": lambda: nn.GroupNorm(groups, channels),
    }[kind]().double()


def onehot_layer(kind: str, dims: int, channels: int, groups: int, how: str) -> nn.Module:
    """An SN layer whose ratios are one-hot on ``kind``: by fixing, or by a one-element pool."""
    if how == "fixed":
        layer = SN[dims](channels, pool=POOL, groups=groups)
        layer.fix(kind, kind)
    elif how == "pool":
        layer = SN[dims](channels, pool=(kind,), groups=groups)
    else:  # sparsestmax with a radius that forces one-hot, logits favouring kind
        layer = SN[dims](channels, pool=POOL, groups=groups, ratio_fn="sparsestmax")
        layer.radius = 1.0
        with torch.no_grad():
            layer.mean_weight[POOL.index(kind)] += 1.0
            layer.var_weight[POOL.index(kind)] += 1.0
    return layer.double()


def copy_affine(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kind", POOL)
@pytest.mark.parametrize("how", ["fixed", "pool", "sparsestmax"])
def test_onehot_equals_torch_layer(dims, kind, how):
    torch.manual_seed(0)
    channels, groups = 8, 4
    sn = onehot_layer(kind, dims, channels, groups, how)
    ref = torch_layer(kind, dims, channels, groups)
    with torch.no_grad():
        sn.weight.normal_()
        sn.bias.normal_()
    copy_affine(sn, ref)
    for step in range(3):  # several steps so running statistics move
        x = (torch.randn(SHAPES[dims], dtype=torch.float64) * 3 + step).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        y, y_ref = sn(x), ref(x_ref)
        assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
        grad = torch.randn_like(y)
        y.backward(grad)
        y_ref.backward(grad)
        assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-10)
        assert_close(sn.weight.grad, ref.weight.grad, rtol=1e-9, atol=1e-10)
        assert_close(sn.bias.grad, ref.bias.grad, rtol=1e-9, atol=1e-10)
        sn.zero_grad()
        ref.zero_grad()
    if kind == "bn":
        assert_close(sn.running_mean, ref.running_mean)
        assert_close(sn.running_var, ref.running_var)
        assert int(sn.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    sn.eval()
    ref.eval()
    x = torch.randn(SHAPES[dims], dtype=torch.float64) * 2 - 1
    assert_close(sn(x), ref(x), rtol=1e-10, atol=1e-10)


def test_switchnorm1d_on_flat_input_matches_batchnorm1d():
    sn = SwitchNorm1d(6, pool=("bn",)).double()
    bn = nn.BatchNorm1d(6).double()
    x = torch.randn(16, 6, dtype=torch.float64) * 5 + 3
    assert_close(sn(x), bn(x))
    assert_close(sn.running_var, bn.running_var)


def test_momentum_none_is_cumulative_average_like_batchnorm():
    sn = SwitchNorm2d(4, pool=("bn",), momentum=None).double()
    bn = nn.BatchNorm2d(4, momentum=None).double()
    for _ in range(4):
        x = torch.randn(5, 4, 3, 3, dtype=torch.float64) * 2 + 1
        sn(x)
        bn(x)
    assert_close(sn.running_mean, bn.running_mean)
    assert_close(sn.running_var, bn.running_var)


def test_large_mean_float32_normalizes_accurately():
    """Per-channel mean 1e4, std 1 in float32: no E[x^2] - E[x]^2 cancellation."""
    torch.manual_seed(0)
    x64 = torch.randn(8, 16, 12, 12, dtype=torch.float64) + 1e4
    layer = SwitchNorm2d(16)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.3, -0.2, 0.5]))
        layer.var_weight.copy_(torch.tensor([-0.4, 0.1, 0.2]))
    exact = layer.double()(x64)
    y = layer.float()(x64.float())
    assert y.std().item() == pytest.approx(exact.std().item(), rel=1e-3)
    assert (y.double() - exact).abs().max().item() < 5e-3
    # For comparison: the naive one-pass variance would be off by O(1) here.
    naive_var = (x64.float() ** 2).mean() - x64.float().mean() ** 2
    assert abs(naive_var.item() - x64.var().item()) > 0.1


NAN_CASES = [(d, k) for d in (1, 2, 3) for k in ("unit_spatial", "batch_of_one", "constant")]


@pytest.mark.parametrize(("dims", "shape_kind"), NAN_CASES + [(1, "flat")])
def test_never_nan(dims, shape_kind):
    channels = 4
    shape = {
        "unit_spatial": (3, channels) + (1,) * dims,
        "batch_of_one": (1, channels) + (3,) * dims,
        "constant": (2, channels) + (3,) * dims,
        "flat": (1, channels),
    }[shape_kind]
    layer = SN[dims](channels, pool=POOL, groups=2)
    x = torch.randn(shape) if shape_kind != "constant" else torch.full(shape, 7.0)
    x.requires_grad_()
    for mode in ("train", "eval"):
        layer.train(mode == "train")
        y = layer(x)
        y.sum().backward()
        assert torch.isfinite(y).all()
        assert torch.isfinite(x.grad).all()
        for p in layer.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
        x.grad = None


def test_fixed_logits_get_no_gradient_and_do_not_move():
    torch.manual_seed(0)
    layer = SwitchNorm2d(8)
    other = [layer.weight, layer.bias]
    optimizer = torch.optim.SGD(
        [
            {"params": other},
            {"params": [layer.mean_weight, layer.var_weight], "weight_decay": 1e-2},
        ],
        lr=0.1,
        momentum=0.9,
    )
    for _ in range(3):  # build momentum while free
        optimizer.zero_grad()
        layer(torch.randn(4, 8, 3, 3)).pow(2).mean().backward()
        optimizer.step()
    layer.fix("bn", "ln")
    frozen = (layer.mean_weight.detach().clone(), layer.var_weight.detach().clone())
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.randn(4, 8, 3, 3)).pow(2).mean().backward()
        assert layer.mean_weight.grad is None and layer.var_weight.grad is None
        optimizer.step()
    assert torch.equal(layer.mean_weight, frozen[0])
    assert torch.equal(layer.var_weight, frozen[1])
    mean_ratios, var_ratios = layer.ratios()
    assert mean_ratios.tolist() == [0.0, 0.0, 1.0] and var_ratios.tolist() == [0.0, 1.0, 0.0]


def test_partially_fixed_layer_still_learns_the_free_choice():
    layer = SwitchNorm2d(8)
    layer.fix(mean="bn")
    layer(torch.randn(4, 8, 3, 3)).pow(3).mean().backward()
    assert layer.mean_weight.grad is None
    assert layer.var_weight.grad is not None and layer.var_weight.grad.abs().sum() > 0


def test_fixed_choice_survives_state_dict_round_trip():
    layer = SwitchNorm2d(8, pool=POOL, groups=4)
    layer.fix("gn", "in")
    fresh = SwitchNorm2d(8, pool=POOL, groups=4)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.fixed == (3, 0)
    x = torch.randn(2, 8, 4, 4)
    assert_close(fresh.eval()(x), layer.eval()(x))


def test_tied_layer_shares_one_logit_vector():
    layer = SwitchNorm2d(8, tied=True)
    assert layer.var_weight is None
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias", "mean_weight"]
    mean, var = layer.ratios()
    assert torch.equal(mean, var)
    layer.fix(mean="ln")
    assert layer.fixed == (1, 1)


def test_old_state_dict_without_num_batches_tracked_loads():
    """A version-0 checkpoint (no ``num_batches_tracked``) loads strictly, with the counter
    restarted at 0 and every other tensor taken from the checkpoint."""
    layer = SwitchNorm2d(4)
    with torch.no_grad():
        layer.running_mean.uniform_()
        layer.mean_weight.uniform_()
    layer.num_batches_tracked.fill_(7)
    state = layer.state_dict()
    del state["num_batches_tracked"]
    state._metadata = {"": {"version": None}}
    fresh = SwitchNorm2d(4)
    fresh.num_batches_tracked.fill_(3)
    result = fresh.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys
    assert int(fresh.num_batches_tracked) == 0
    for name, value in state.items():
        torch.testing.assert_close(fresh.state_dict()[name], value, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pool": ()}, "at least one"),
        ({"pool": ("in", "xx")}, "unknown normalizer"),
        ({"pool": ("in", "in")}, "twice"),
        ({"pool": ("gn",), "groups": 3}, "groups=3"),
        ({"ratio_fn": "argmax"}, "unknown ratio_fn"),
        ({"variance": "unbiased"}, "variance"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SwitchNorm2d(8, **kwargs)


def test_wrong_input_rank_and_channels_are_clear_errors():
    with pytest.raises(ValueError, match="expected 4D input"):
        SwitchNorm2d(4)(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="expected 4 channels"):
        SwitchNorm2d(4)(torch.randn(2, 5, 3, 3))


def test_extra_repr_mentions_pool_and_ratio_fn():
    text = repr(SwitchNorm2d(8, ratio_fn="sparsestmax"))
    assert "pool=('in', 'ln', 'bn')" in text and "sparsestmax" in text


def test_saves_only_input_and_small_statistics_for_backward():
    x = torch.randn(4, 16, 20, 20, requires_grad=True)
    layer = SwitchNorm2d(16)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    assert sum(saved.values()) <= 1.1 * x.numel() * x.element_size()
