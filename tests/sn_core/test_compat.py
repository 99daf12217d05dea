"""sn_core.compat reproduces the original public SwitchNorm code (docs/sn-spec.md section 4).

The reference below is a line-by-line re-implementation of the original layers as plain autograd
modules; the compat layers must match it in outputs, gradients and running statistics (float64).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sn_core.compat import (
    load_reference_state_dict,
    recompute_batch_statistics,
    reference_switchnorm,
)
from sn_core.layers import SwitchNorm1d, SwitchNorm2d, SwitchNorm3d

DTYPE = torch.float64
TOL = dict(rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------- the original
class _OriginalSwitchNormNd(nn.Module):
    """The original SwitchNorm2d and 3d: autograd; parameters (1, C, 1, ...), buffers (1, C, 1)."""

    param_shape: tuple[int, ...] = ()

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.997,
        using_moving_average=True,
        using_bn=True,
        last_gamma=False,
    ):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.using_moving_average = using_moving_average
        self.using_bn = using_bn
        self.last_gamma = last_gamma
        shape = (1, num_features) + self.param_shape
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        k = 3 if using_bn else 2
        self.mean_weight = nn.Parameter(torch.ones(k))
        self.var_weight = nn.Parameter(torch.ones(k))
        if using_bn:
            self.register_buffer("running_mean", torch.zeros(1, num_features, 1))
            self.register_buffer("running_var", torch.zeros(1, num_features, 1))
        self.reset_parameters()

    def reset_parameters(self):
        if self.using_bn:
            self.running_mean.zero_()
            self.running_var.zero_()
        if self.last_gamma:
            self.weight.data.fill_(0)
        else:
            self.weight.data.fill_(1)
        self.bias.data.zero_()

    def forward(self, x):
        shape = x.shape
        n, c = shape[:2]
        x = x.view(n, c, -1)
        mean_in = x.mean(-1, keepdim=True)
        var_in = x.var(-1, keepdim=True)  # unbiased: NaN for a single position

        mean_ln = mean_in.mean(1, keepdim=True)
        temp = var_in + mean_in**2
        var_ln = temp.mean(1, keepdim=True) - mean_ln**2

        if self.using_bn:
            if self.training:
                mean_bn = mean_in.mean(0, keepdim=True)
                var_bn = temp.mean(0, keepdim=True) - mean_bn**2
                if self.using_moving_average:
                    self.running_mean.mul_(self.momentum)
                    self.running_mean.add_((1 - self.momentum) * mean_bn.data)
                    self.running_var.mul_(self.momentum)
                    self.running_var.add_((1 - self.momentum) * var_bn.data)
                else:
                    self.running_mean.add_(mean_bn.data)
                    self.running_var.add_(mean_bn.data**2 + var_bn.data)
            else:
                mean_bn = self.running_mean
                var_bn = self.running_var

        mean_weight = torch.softmax(self.mean_weight, 0)
        var_weight = torch.softmax(self.var_weight, 0)

        if self.using_bn:
            mean = mean_weight[0] * mean_in + mean_weight[1] * mean_ln + mean_weight[2] * mean_bn
            var = var_weight[0] * var_in + var_weight[1] * var_ln + var_weight[2] * var_bn
        else:
            mean = mean_weight[0] * mean_in + mean_weight[1] * mean_ln
            var = var_weight[0] * var_in + var_weight[1] * var_ln

        x = (x - mean) / (var + self.eps).sqrt()
        x = x.view(shape)
        return x * self.weight + self.bias


class OriginalSwitchNorm2d(_OriginalSwitchNormNd):
    param_shape = (1, 1)


class OriginalSwitchNorm3d(_OriginalSwitchNormNd):
    param_shape = (1, 1, 1)


class OriginalSwitchNorm1d(nn.Module):
    """The original SwitchNorm1d on (N, C): logits [LN, BN], parameters and buffers (1, C)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.997, using_moving_average=True):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.using_moving_average = using_moving_average
        self.weight = nn.Parameter(torch.ones(1, num_features))
        self.bias = nn.Parameter(torch.zeros(1, num_features))
        self.mean_weight = nn.Parameter(torch.ones(2))
        self.var_weight = nn.Parameter(torch.ones(2))
        self.register_buffer("running_mean", torch.zeros(1, num_features))
        self.register_buffer("running_var", torch.zeros(1, num_features))
        self.reset_parameters()

    def reset_parameters(self):
        self.running_mean.zero_()
        self.running_var.zero_()
        self.weight.data.fill_(1)
        self.bias.data.zero_()

    def forward(self, x):
        mean_ln = x.mean(1, keepdim=True)
        var_ln = x.var(1, keepdim=True)

        if self.training:
            mean_bn = x.mean(0, keepdim=True)
            var_bn = x.var(0, keepdim=True)
            if self.using_moving_average:
                self.running_mean.mul_(self.momentum)
                self.running_mean.add_((1 - self.momentum) * mean_bn.data)
                self.running_var.mul_(self.momentum)
                self.running_var.add_((1 - self.momentum) * var_bn.data)
            else:
                self.running_mean.add_(mean_bn.data)
                self.running_var.add_(mean_bn.data**2 + var_bn.data)
        else:
            mean_bn = self.running_mean
            var_bn = self.running_var

        mean_weight = torch.softmax(self.mean_weight, 0)
        var_weight = torch.softmax(self.var_weight, 0)

        mean = mean_weight[0] * mean_ln + mean_weight[1] * mean_bn
        var = var_weight[0] * var_ln + var_weight[1] * var_bn

        x = (x - mean) / (var + self.eps).sqrt()
        return x * self.weight + self.bias


ORIGINALS = {1: OriginalSwitchNorm1d, 2: OriginalSwitchNorm2d, 3: OriginalSwitchNorm3d}


# ------------------------------------------------------------------------------- helpers
def _pair(dims, channels, seed=0, momentum=0.997, using_bn=True, using_moving_average=True):
    """An original layer and a compat layer with identical random parameters."""
    gen = torch.Generator().manual_seed(seed)
    kwargs = dict(momentum=momentum, using_moving_average=using_moving_average)
    extra = {} if dims == 1 else {"using_bn": using_bn}
    original = ORIGINALS[dims](channels, **kwargs, **extra).to(DTYPE)
    ours = reference_switchnorm(dims, channels, using_bn=using_bn, dtype=DTYPE, **kwargs)
    with torch.no_grad():
        for name in ("weight", "bias"):
            value = 1 + 0.5 * torch.randn(channels, generator=gen, dtype=DTYPE)
            getattr(ours, name).copy_(value)
            getattr(original, name).copy_(value.view_as(getattr(original, name)))
        for name in ("mean_weight", "var_weight"):
            value = torch.randn(getattr(ours, name).shape, generator=gen, dtype=DTYPE)
            getattr(ours, name).copy_(value)
            getattr(original, name).copy_(value)
    return original, ours


def _input(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    # Per-channel offsets and scales, so the IN/LN/BN statistics all differ.
    c = shape[1]
    offset = torch.randn((1, c) + (1,) * (len(shape) - 2), generator=gen, dtype=DTYPE)
    scale = torch.rand((1, c) + (1,) * (len(shape) - 2), generator=gen, dtype=DTYPE) + 0.5
    return torch.randn(shape, generator=gen, dtype=DTYPE) * scale + 2 * offset


def _grads(module):
    return {
        name: param.grad.reshape(-1).clone()
        for name, param in module.named_parameters()
        if param.grad is not None
    }


def _step(original, ours, x, seed):
    """One training forward/backward on both; compares outputs and every gradient."""
    gen = torch.Generator().manual_seed(1000 + seed)
    x_orig = x.clone().requires_grad_(True)
    x_ours = x.clone().requires_grad_(True)
    y_orig = original(x_orig)
    y_ours = ours(x_ours)
    torch.testing.assert_close(y_ours, y_orig, **TOL)
    grad_y = torch.randn(y_orig.shape, generator=gen, dtype=DTYPE)
    original.zero_grad()
    ours.zero_grad()
    y_orig.backward(grad_y)
    y_ours.backward(grad_y)
    torch.testing.assert_close(x_ours.grad, x_orig.grad, **TOL)
    g_orig, g_ours = _grads(original), _grads(ours)
    assert set(g_ours) == set(g_orig) == {"weight", "bias", "mean_weight", "var_weight"}
    for name in g_orig:
        torch.testing.assert_close(g_ours[name], g_orig[name], **TOL, msg=name)


def _assert_running_equal(original, ours):
    torch.testing.assert_close(ours.running_mean, original.running_mean.reshape(-1), **TOL)
    torch.testing.assert_close(ours.running_var, original.running_var.reshape(-1), **TOL)


def _train_and_compare(original, ours, shape, steps=4, momentum_update=True):
    original.train()
    ours.train()
    for step in range(steps):
        _step(original, ours, _input(shape, seed=step), seed=step)
        if momentum_update and ours.track_running_stats:
            _assert_running_equal(original, ours)
    original.eval()
    ours.eval()
    x = _input(shape, seed=99)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), original(x), **TOL)


# --------------------------------------------------------------------------------- layers
@pytest.mark.parametrize(
    "shape", [(4, 3, 5, 5), (2, 6, 2, 2), (8, 4, 3, 7), (1, 5, 4, 4), (3, 2, 1, 6)]
)
def test_2d_matches_original(shape):
    original, ours = _pair(2, shape[1], seed=sum(shape))
    _train_and_compare(original, ours, shape)


@pytest.mark.parametrize("shape", [(8, 5), (2, 3), (16, 2), (3, 7)])
def test_1d_matches_original(shape):
    original, ours = _pair(1, shape[1], seed=sum(shape))
    assert ours.pool == ("ln", "bn")
    _train_and_compare(original, ours, shape)


def test_3d_matches_original():
    original, ours = _pair(3, 4, seed=3)
    _train_and_compare(original, ours, (3, 4, 2, 3, 2))


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (2, 4, 2, 2)])
def test_2d_without_bn_matches_original(shape):
    original, ours = _pair(2, shape[1], seed=7, using_bn=False)
    assert ours.pool == ("in", "ln")
    assert ours.running_mean is None and ours.running_var is None
    assert not any("running" in name for name, _ in ours.named_buffers())
    _train_and_compare(original, ours, shape)


def test_later_momentum_matches_original():
    """One later version of the original used m = 0.9."""
    original, ours = _pair(2, 3, seed=11, momentum=0.9)
    assert ours.momentum == pytest.approx(0.1)
    _train_and_compare(original, ours, (4, 3, 3, 3), steps=6)


def test_construction_matches_original_defaults():
    for dims in (1, 2, 3):
        layer = reference_switchnorm(dims, 6)
        assert type(layer) is {1: SwitchNorm1d, 2: SwitchNorm2d, 3: SwitchNorm3d}[dims]
        assert layer.variance == "reference"
        assert layer.momentum == pytest.approx(0.003)
        assert layer.ratio_fn == "softmax"
        assert layer.pool == (("ln", "bn") if dims == 1 else ("in", "ln", "bn"))
        assert torch.equal(layer.running_mean, torch.zeros(6))
        assert torch.equal(layer.running_var, torch.zeros(6))  # the original starts at 0
        assert torch.equal(layer.weight, torch.ones(6))
        assert torch.equal(layer.bias, torch.zeros(6))
        assert torch.equal(layer.mean_weight, torch.ones(len(layer.pool)))
    assert reference_switchnorm(1, 4, using_bn=False).pool == ("ln",)
    assert reference_switchnorm(1, 4, using_bn=False).running_mean is None
    assert torch.equal(reference_switchnorm(2, 4, last_gamma=True).weight, torch.zeros(4))
    with pytest.raises(ValueError, match="dims"):
        reference_switchnorm(4, 3)


def test_1d_without_bn_is_unbiased_layer_norm():
    layer = reference_switchnorm(1, 5, using_bn=False, dtype=DTYPE)
    x = _input((4, 5), seed=1)
    expected = (x - x.mean(1, keepdim=True)) / (x.var(1, keepdim=True) + layer.eps).sqrt()
    torch.testing.assert_close(layer(x), expected, **TOL)


def test_cumulative_average_without_moving_average():
    """using_moving_average=False: our running mean is the original's raw sum / batches."""
    original, ours = _pair(2, 3, seed=5, using_moving_average=False)
    assert ours.momentum is None
    original.train()
    ours.train()
    steps = 5
    batch_vars = []
    for step in range(steps):
        x = _input((4, 3, 3, 3), seed=step)
        _step(original, ours, x, seed=step)
        x3 = x.view(4, 3, -1)
        var_in, mu_in = torch.var_mean(x3, dim=2)
        batch_vars.append((var_in + mu_in**2).mean(0) - mu_in.mean(0) ** 2)
    torch.testing.assert_close(ours.running_mean, original.running_mean.view(-1) / steps, **TOL)
    torch.testing.assert_close(ours.running_var, torch.stack(batch_vars).mean(0), **TOL)


@pytest.mark.filterwarnings("ignore:var\\(\\):UserWarning")
def test_single_position_maps_never_nan_but_original_does():
    """1x1 maps: the original's unbiased IN variance is 0/0 (docs/sn-spec.md section 4)."""
    original, ours = _pair(2, 4, seed=2)
    x = _input((6, 4, 1, 1), seed=3)
    original.train()
    ours.train()
    y_orig = original(x)
    y_ours = ours(x.clone().requires_grad_(True))
    assert torch.isnan(y_orig).all()  # documents the trap
    assert torch.isfinite(y_ours).all()
    y_ours.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())
    assert torch.isfinite(ours.running_mean).all() and torch.isfinite(ours.running_var).all()
    original.eval()
    ours.eval()
    with torch.no_grad():
        assert torch.isnan(original(x)).all()
        assert torch.isfinite(ours(x)).all()


@pytest.mark.filterwarnings("ignore:var\\(\\):UserWarning")
@pytest.mark.parametrize("shape", [(1, 4), (5, 1)])
def test_1d_single_sample_or_channel_never_nan_but_original_does(shape):
    """1d: the original's unbiased variance over N = 1 (BN) or C = 1 (LN) is 0/0."""
    original, ours = _pair(1, shape[1], seed=4)
    x = _input(shape, seed=5)
    assert torch.isnan(original(x)).all()
    y = ours(x.clone().requires_grad_(True))
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())


# ---------------------------------------------------------------------------- checkpoints
def _net(norm):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        norm(2, 8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
        norm(2, 4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 6),
        norm(1, 6),
        nn.Linear(6, 2),
    ).to(DTYPE)


def _original_norm(dims, channels, **kwargs):
    return ORIGINALS[dims](channels, **kwargs)


def _trained_original(**kwargs):
    net = _net(lambda dims, c: _original_norm(dims, c, **kwargs))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for step in range(5):
        x = _input((4, 3, 6, 6), seed=step)
        loss = net(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net


def test_load_reference_checkpoint_reproduces_eval_and_train_outputs():
    original = _trained_original()
    state = original.state_dict()
    assert state["1.weight"].shape == (1, 8, 1, 1)
    assert state["1.running_mean"].shape == (1, 8, 1)
    assert state["8.weight"].shape == (1, 6) and state["8.running_var"].shape == (1, 6)
    assert not torch.equal(state["1.mean_weight"], torch.ones(3))  # the logits did train

    ours = _net(lambda dims, c: reference_switchnorm(dims, c))
    result = load_reference_state_dict(ours, state)
    assert not result.missing_keys and not result.unexpected_keys
    assert ours[1].weight.shape == (8,)
    assert int(ours[1].num_batches_tracked) == 0 and int(ours[1].mean_choice) == -1
    ours.eval()
    x = _input((5, 3, 6, 6), seed=42)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), original(x), **TOL)
        original.train()
        ours.train()
        torch.testing.assert_close(ours(x), original(x), **TOL)
    for index in (1, 4, 8):  # one more training step moved both running statistics alike
        _assert_running_equal(original[index], ours[index])


def test_load_data_parallel_prefixed_checkpoint():
    original = _trained_original()
    state = original.state_dict()
    prefixed = type(state)((f"module.{key}", value) for key, value in state.items())
    prefixed._metadata = type(state._metadata)(
        (f"module.{key}" if key else "module", value) for key, value in state._metadata.items()
    )
    ours = _net(lambda dims, c: reference_switchnorm(dims, c))
    load_reference_state_dict(ours, prefixed)
    ours.eval()
    x = _input((3, 3, 6, 6), seed=8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), original(x), **TOL)
    assert prefixed["module.1.weight"].shape == (1, 8, 1, 1)  # the input is left unchanged
    assert "module.1.num_batches_tracked" not in prefixed


def test_load_without_bn_checkpoint():
    original = _net(lambda dims, c: _original_norm(dims, c, using_bn=False) if dims == 2 else
                    _original_norm(dims, c))  # fmt: skip
    with torch.no_grad():
        for module in original.modules():
            if isinstance(module, _OriginalSwitchNormNd):
                module.mean_weight.normal_()
                module.var_weight.normal_()
    ours = _net(lambda dims, c: reference_switchnorm(dims, c, using_bn=dims == 1))
    load_reference_state_dict(ours, original.state_dict())
    original.eval()
    ours.eval()
    x = _input((2, 3, 4, 4), seed=4)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), original(x), **TOL)


def test_wrong_logit_shape_is_a_clear_error():
    state = _trained_original().state_dict()  # 3 logits [IN, LN, BN]
    ours = _net(lambda dims, c: reference_switchnorm(dims, c, using_bn=dims == 1))
    with pytest.raises(ValueError, match=r"1\.mean_weight.*\(3,\).*2 normalizers \[IN, LN\]"):
        load_reference_state_dict(ours, state)


def test_loads_into_population_switchnorm_too():
    """Any SwitchNorm takes the reshaped parameters (its numerics are then its own)."""
    state = _trained_original().state_dict()
    ours = _net(
        lambda dims, c: (
            SwitchNorm2d(c, pool=("in", "ln", "bn"))
            if dims == 2
            else SwitchNorm1d(c, pool=("ln", "bn"))
        )
    ).to(DTYPE)
    load_reference_state_dict(ours, state)
    torch.testing.assert_close(ours[1].running_var, state["1.running_var"].view(-1))
    torch.testing.assert_close(ours[4].weight, state["4.weight"].view(-1))


# ------------------------------------------------------------------------ batch statistics
def _reference_bn_stats(x):
    """The original code's BN statistics of x, computed directly (no sn_core code)."""
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    if x3.shape[2] == 1:
        var, mean = torch.var_mean(x3[:, :, 0], dim=0)
        return mean, var
    var_in, mu_in = torch.var_mean(x3, dim=2)
    mean = mu_in.mean(0)
    return mean, (var_in + mu_in**2).mean(0) - mean**2


def _capture_inputs(model, layers, batches):
    """Inputs each layer sees when ``model`` runs in train mode (parameters are not changed)."""
    seen = {layer: [] for layer in layers}
    handles = [
        layer.register_forward_pre_hook(lambda m, args: seen[m].append(args[0].detach()))
        for layer in layers
    ]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for handle in handles:
        handle.remove()
    model.load_state_dict(state)
    return seen


def test_recompute_batch_statistics_pools_over_batches():
    torch.manual_seed(0)
    model = nn.Sequential(
        reference_switchnorm(2, 3),
        nn.Conv2d(3, 4, 3, padding=1),
        SwitchNorm2d(4),  # population mode
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 25, 5),
        reference_switchnorm(1, 5),
        SwitchNorm1d(5, pool=("in", "ln")),  # no running statistics: left alone
    ).to(DTYPE)
    batches = [_input((n, 3, 5, 5), seed=n) for n in (4, 2, 6, 3)]
    ref_sn, pop_sn, bn, ref_1d = model[0], model[2], model[3], model[6]
    seen = _capture_inputs(model, [ref_sn, pop_sn, ref_1d], batches[:3])

    model.eval()
    model[1].train()  # a mixed state, to be restored exactly
    bn_before = {k: v.clone() for k, v in bn.state_dict().items()}
    tracked_before = int(pop_sn.num_batches_tracked)
    used = recompute_batch_statistics(model, batches, max_batches=3)
    assert used == 3
    assert [m.training for m in model] == [False, True] + [False] * 6
    for key, value in bn.state_dict().items():
        assert torch.equal(value, bn_before[key]), key
    assert int(pop_sn.num_batches_tracked) == tracked_before
    assert all(p.grad is None for p in model.parameters())

    # Reference 2d: the pooled statistics are the original's BN statistics of the concatenation.
    mean, var = _reference_bn_stats(torch.cat(seen[ref_sn]))
    torch.testing.assert_close(ref_sn.running_mean, mean, **TOL)
    torch.testing.assert_close(ref_sn.running_var, var, **TOL)
    # Population 2d: the pooled mean and the unbiased variance of the concatenation.
    pooled = torch.cat(seen[pop_sn])
    var, mean = torch.var_mean(pooled, dim=(0, 2, 3), correction=1)
    torch.testing.assert_close(pop_sn.running_mean, mean, **TOL)
    torch.testing.assert_close(pop_sn.running_var, var, **TOL)
    # Reference 1d: per-batch unbiased variances over N, combined by the law of total variance.
    stats = [(*_reference_bn_stats(x), x.shape[0]) for x in seen[ref_1d]]
    total = sum(n for _, _, n in stats)
    mean = sum(n * m for m, _, n in stats) / total
    var = sum(n * (v + (m - mean) ** 2) for m, v, n in stats) / total
    torch.testing.assert_close(ref_1d.running_mean, mean, **TOL)
    torch.testing.assert_close(ref_1d.running_var, var, **TOL)


def test_recompute_batch_statistics_accepts_loader_tuples_and_needs_a_batch():
    layer = reference_switchnorm(2, 3, dtype=DTYPE)
    batches = [(_input((4, 3, 3, 3), seed=s), torch.zeros(4)) for s in range(3)]
    assert recompute_batch_statistics(layer, iter(batches)) == 3
    assert layer.training  # a fresh layer is in train mode, and stays so
    mean, var = _reference_bn_stats(torch.cat([x for x, _ in batches]))
    torch.testing.assert_close(layer.running_var, var, **TOL)
    torch.testing.assert_close(layer.running_mean, mean, **TOL)
    with pytest.raises(ValueError, match="at least one batch"):
        recompute_batch_statistics(layer, [])
    torch.testing.assert_close(layer.running_mean, mean, **TOL)  # unchanged by the failure
    assert math.isfinite(float(layer.running_var.sum()))
