"""Fixed layers run torch's own kernels: identical numerics to the mixture they replace.

A SwitchNorm fixed to one normalizer for both mean and variance takes the native path
(sn_core/layers.py); these tests run it beside a twin that computes the same one-hot ratios through
the mixture (sparsestmax at a one-hot radius, not fixed), in float64, and switch one layer from
the mixture to the native path mid-run so the running buffers carry across the switch.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from sn_core.layers import SwitchNorm1d, SwitchNorm2d, SwitchNorm3d
from sn_core.selected import SelectedNorm

# Every test runs on both SN kernel backends (tests/sn_core/conftest.py).
pytestmark = pytest.mark.usefixtures("sn_kernel")

SN = {1: SwitchNorm1d, 2: SwitchNorm2d, 3: SwitchNorm3d}
SHAPES = {1: (4, 8, 7), 2: (4, 8, 5, 6), 3: (3, 8, 3, 4, 5)}
POOL = ("in", "ln", "bn", "gn")
NATIVE_GRAD_FN = {"bn": "NativeBatchNormBackward0", "in": "NativeGroupNormBackward0"}
MIXTURE_GRAD_FN = "_SwitchNormFunctionBackward"


def grad_fn_name(y: torch.Tensor) -> str:
    """The autograd node that computed y, looking through the mixture's final reshape."""
    node = y.grad_fn
    if type(node).__name__ in ("ViewBackward0", "UnsafeViewBackward0"):
        node = node.next_functions[0][0]
    return type(node).__name__


def onehot_mixture_layer(kind, dims, momentum, track, **kwargs):
    """Not fixed, but sparsestmax at a radius that makes its ratios exactly one-hot on ``kind``."""
    layer = SN[dims](
        8, pool=POOL, groups=4, momentum=momentum, track_running_stats=track,
        ratio_fn="sparsestmax", **kwargs,
    ).double()  # fmt: skip
    layer.radius = 1.0
    with torch.no_grad():
        layer.mean_weight[POOL.index(kind)] += 1.0
        layer.var_weight[POOL.index(kind)] += 1.0
        layer.weight.normal_()
        layer.bias.normal_()
    return layer


def step(layer, x, grad):
    x = x.clone().requires_grad_()
    y = layer(x)
    y.backward(grad)
    grads = {"x": x.grad, "weight": layer.weight.grad.clone(), "bias": layer.bias.grad.clone()}
    layer.zero_grad(set_to_none=True)
    return y.detach(), grads, grad_fn_name(y)


def buffers(layer):
    names = ("running_mean", "running_var", "num_batches_tracked")
    return {n: getattr(layer, n).clone() for n in names if getattr(layer, n) is not None}


def assert_same(a, b):
    y_a, grads_a, _ = a
    y_b, grads_b, _ = b
    assert_close(y_a, y_b, rtol=1e-10, atol=1e-10)
    for name in grads_a:
        assert_close(grads_a[name], grads_b[name], rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kind", POOL)
@pytest.mark.parametrize(("momentum", "track"), [(0.1, True), (None, True), (0.1, False)])
def test_switch_to_native_path_keeps_outputs_gradients_and_buffers(dims, kind, momentum, track):
    torch.manual_seed(0)
    mixture = onehot_mixture_layer(kind, dims, momentum, track)
    switched = copy.deepcopy(mixture)
    native_fn = NATIVE_GRAD_FN.get(kind, "NativeGroupNormBackward0")
    for i in range(5):
        if i == 2:  # the switch: from here on the native kernel, same buffers
            switched.fix(kind, kind)
            # What the fixed layer computed before the native path: the mixture of the fixed
            # choice alone (a layer fixed to IN/LN/GN stops updating BN running statistics).
            fixed_mixture = copy.deepcopy(switched)
            fixed_mixture._native = None
        x = torch.randn(SHAPES[dims], dtype=torch.float64) * 3 + i
        grad = torch.randn_like(x)
        a, b = step(mixture, x, grad), step(switched, x, grad)
        assert a[2] == MIXTURE_GRAD_FN
        assert b[2] == (native_fn if i >= 2 else MIXTURE_GRAD_FN)
        assert_same(a, b)
        twin = mixture
        if i >= 2:
            assert_same(step(fixed_mixture, x, grad), b)
            twin = fixed_mixture
        expected, after = buffers(twin), buffers(switched)
        assert expected.keys() == after.keys()
        for name in expected:
            assert_close(after[name], expected[name], rtol=1e-12, atol=1e-12, msg=name)
    if kind == "bn" and track:
        assert int(switched.num_batches_tracked) == 5
    mixture.eval()
    switched.eval()
    trained = buffers(switched)
    x = torch.randn(SHAPES[dims], dtype=torch.float64) * 2 - 1
    grad = torch.randn_like(x)
    a, b = step(mixture, x, grad), step(switched, x, grad)
    assert b[2] == native_fn
    assert_same(a, b)
    with torch.no_grad():
        assert_close(mixture(x), switched(x), rtol=1e-10, atol=1e-10)
    for name, value in buffers(switched).items():  # evaluation leaves them alone
        assert_close(value, trained[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(("mean", "var"), [("bn", "in"), ("ln", "bn"), ("gn", "in")])
def test_mixed_fixed_choice_keeps_the_mixture(mean, var):
    layer = SwitchNorm2d(8, pool=POOL, groups=4).double()
    layer.fix(mean, var)
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    for training in (True, False):
        layer.train(training)
        assert grad_fn_name(layer(x)) == MIXTURE_GRAD_FN


def test_reference_variance_keeps_the_mixture():
    """The original code's estimators are not torch's: no native path in reference mode."""
    layer = SwitchNorm2d(8, pool=("in", "ln", "bn"), variance="reference").double()
    layer.fix("bn", "bn")
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    assert grad_fn_name(layer(x)) == MIXTURE_GRAD_FN
    layer.variance = "population"  # assigning a plan attribute re-plans the forward
    assert grad_fn_name(layer(x)) == NATIVE_GRAD_FN["bn"]


def test_one_value_per_channel_falls_back_to_the_finite_mixture():
    """torch's BN rejects a batch with one value per channel; the fixed layer stays finite."""
    layer = SwitchNorm1d(6, pool=POOL, groups=2).double()
    layer.fix("bn", "bn")
    x = torch.randn(1, 6, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert grad_fn_name(y) == MIXTURE_GRAD_FN
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(layer.running_var).all()
    assert grad_fn_name(layer(torch.randn(2, 6, dtype=torch.float64))) == "NativeBatchNormBackward0"


def test_plan_follows_unfix_load_state_dict_and_dtype():
    layer = SwitchNorm2d(8, pool=POOL, groups=4)
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    layer.fix("ln", "ln")
    assert grad_fn_name(layer(x)) == "NativeGroupNormBackward0"
    fresh = SwitchNorm2d(8, pool=POOL, groups=4)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.fixed == (1, 1) and grad_fn_name(fresh(x)) == "NativeGroupNormBackward0"
    layer.unfix()
    assert grad_fn_name(layer(x)) == MIXTURE_GRAD_FN
    # A mixed fixed choice's constant one-hot ratios follow .double().
    layer.fix("bn", "ln")
    layer.double()
    y = layer(x.detach().double().requires_grad_())
    assert y.dtype == torch.float64 and grad_fn_name(y) == MIXTURE_GRAD_FN


def test_assigning_eps_or_groups_replans_the_forward():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    for fixed in (False, True):
        layer = SwitchNorm2d(8, pool=("gn", "bn"), groups=4).double()
        built = SwitchNorm2d(8, pool=("gn", "bn"), groups=2, eps=0.5).double()
        if fixed:
            layer.fix("gn", "gn")
            built.fix("gn", "gn")
        layer.eps, layer.groups = 0.5, 2
        assert_close(layer(x), built(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", POOL)
def test_selected_norm_with_one_normalizer_is_native(kind):
    torch.manual_seed(0)
    same = SelectedNorm(8, mean=kind, var=kind, groups=4).double()
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    assert grad_fn_name(same(x)) == NATIVE_GRAD_FN.get(kind, "NativeGroupNormBackward0")
    mixed = SelectedNorm(8, mean=kind, var="ln" if kind != "ln" else "bn", groups=4).double()
    assert grad_fn_name(mixed(x)) == MIXTURE_GRAD_FN


@pytest.mark.parametrize("kind", POOL)
@pytest.mark.parametrize("training", [True, False])
def test_flat_input_native_matches_fixed_mixture(kind, training):
    """(N, C) inputs, one position per channel: IN's variance is 0 on both paths."""
    torch.manual_seed(0)
    native = SwitchNorm1d(6, pool=POOL, groups=2).double()
    native.fix(kind, kind)
    with torch.no_grad():
        native.weight.normal_()
        native.bias.normal_()
    mixture = copy.deepcopy(native)
    mixture._native = None  # the fixed layer's former path
    native.train(training)
    mixture.train(training)
    x = torch.randn(5, 6, dtype=torch.float64)
    grad = torch.randn_like(x)
    a, b = step(native, x, grad), step(mixture, x, grad)
    assert a[2] == NATIVE_GRAD_FN.get(kind, "NativeGroupNormBackward0")
    assert b[2] == MIXTURE_GRAD_FN
    assert_same(a, b)
    for name, value in buffers(mixture).items():
        assert_close(buffers(native)[name], value, rtol=1e-12, atol=1e-12, msg=name)
