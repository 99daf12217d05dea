"""sn_core.ratio_bank: the free layers' ratios computed in one batched call per forward change
where ratios are computed, never their values: outputs and every gradient equal the per-layer
path, and a row is used only in its own forward and only while its logits are current."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import sn_core
from sn_core import RatioBank, SparsityController, SwitchNorm2d, SwitchNormTokens

F64 = torch.float64


class Mixed(nn.Module):
    """Pools of different sizes, a tied layer, one layer used twice, a half-fixed layer and a
    token layer with point-wise members."""

    def __init__(self) -> None:
        super().__init__()
        self.a = SwitchNorm2d(4, pool=("in", "ln", "bn"))
        self.b = SwitchNorm2d(4, pool=("ln", "bn"), tied=True)
        self.c = SwitchNorm2d(4, pool=("in", "ln", "bn", "gn"), groups=2)
        self.d = SwitchNorm2d(4, pool=("in", "ln", "bn"))
        self.t = SwitchNormTokens(4, pool=("ln", "rms", "dyt", "none"), tied=True)

    def forward(self, x):
        y = self.c(self.b(self.a(x))) + self.a(x)  # a twice
        y = self.d(y)
        return y, self.t(y.flatten(2).transpose(1, 2))


def _model(ratio_fn: str) -> Mixed:
    model = Mixed().double()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=F64))
    for _, layer in sn_core.switch_layers(model):
        layer.ratio_fn = ratio_fn
        layer.radius = 0.2
        layer.output_radius = 0.3
        layer.temperature = 0.7
    model.d.fix(var=1)  # mean free, variance fixed
    return model


def _step(model, x):
    model.zero_grad(set_to_none=True)
    y, tokens = model(x)
    (y.square().mean() + tokens.sin().mean()).backward()
    return [y.detach(), tokens.detach()] + [
        p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()
    ]


@pytest.mark.parametrize("ratio_fn", ["sparsestmax", "softmax", "temperature"])
def test_banked_forward_and_backward_equal_the_per_layer_path(ratio_fn):
    plain = _model(ratio_fn)
    banked = copy.deepcopy(plain)
    bank = RatioBank(banked)
    x = torch.randn(3, 4, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(1))
    for a, b in zip(_step(plain, x), _step(banked, x), strict=True):
        assert_close(a, b, rtol=1e-12, atol=1e-12)
    bank.close()


def test_the_bank_computes_once_per_group_and_layers_take_their_rows():
    model = _model("sparsestmax")
    calls = []
    original = sn_core.ratio_bank.compute_ratios

    def counting(name, logits, **kw):
        calls.append(tuple(logits.shape))
        return original(name, logits, **kw)

    bank = RatioBank(model)
    offered, taken = {}, []

    def offer(name):
        def hook(module, args):  # returns None: the input stays
            offered.setdefault(name, sorted(module._banked or {}))

        return hook

    for name, layer in sn_core.switch_layers(model):
        layer.register_forward_pre_hook(offer(name))
        layer.register_forward_hook(lambda m, i, o: taken.append(m._banked))
    sn_core.ratio_bank.compute_ratios = counting
    try:
        model(torch.randn(3, 4, 5, 5, dtype=F64))
    finally:
        sn_core.ratio_bank.compute_ratios = original
    # K=3: a's mean and var, d's mean (its var is fixed), t's output (norm, dyt, none);
    # K=2: b (tied) and t's statistics (ln, rms; tied); K=4: c's mean and var.
    assert sorted(calls) == [(2, 2), (2, 4), (4, 3)]
    assert offered == {
        "a": ["mean", "var"], "b": ["mean"], "c": ["mean", "var"], "d": ["mean"],
        "t": ["mean", "output"],
    }  # fmt: skip
    assert all(not banked for banked in taken)  # every row taken in its layer's first call
    assert all(layer._banked is None for _, layer in sn_core.switch_layers(model))  # dropped
    bank.close()


def test_a_row_is_not_used_once_its_logits_or_schedule_changed():
    model = _model("sparsestmax")
    bank = RatioBank(model)
    x = torch.randn(3, 4, 5, 5, dtype=F64)
    layer = model.a

    def radius_changed(module, args):
        module.radius = 0.4  # after the bank filled, before the layer runs

    handle = layer.register_forward_pre_hook(radius_changed)
    y_banked = model(x)[0]
    handle.remove()
    bank.close()
    y_plain = model(x)[0]  # radius 0.4 everywhere in a, no bank
    assert_close(y_banked, y_plain, rtol=1e-12, atol=1e-12)


def test_a_layer_called_outside_the_models_forward_computes_its_own_ratios():
    model = _model("sparsestmax")
    bank = RatioBank(model)
    x = torch.randn(3, 4, 5, 5, dtype=F64)
    _step(model, x)  # fills, uses, backpropagates, drops
    direct = model.a(x)  # no bank rows: its own graph, which backward can use
    direct.sum().backward()
    assert model.a.mean_weight.grad is not None
    bank.close()


def test_the_controller_banks_by_default_and_close_removes_it():
    model = _model("sparsestmax")
    controller = SparsityController(model, "sparsestmax", 0.0, 0.6)
    assert isinstance(controller.bank, RatioBank)
    assert len(model._forward_pre_hooks) == 1 and len(model._forward_hooks) == 1
    controller.close()
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert SparsityController(model, batch_ratios=False).bank is None


def test_a_copy_of_the_model_carries_a_bank_that_computes_nothing():
    """finalize and apply_plan deep-copy the model: the copy must not keep computing the ratios
    of SN layers it replaced (nor hold them alive)."""
    model = _model("sparsestmax")
    RatioBank(model)
    finalized = sn_core.finalize(model)
    hooks = list(finalized._forward_pre_hooks.values())
    assert len(hooks) == 1 and hooks[0].__self__.layers == []
    assert not sn_core.switch_layers(finalized)
    copied = copy.deepcopy(model)
    (bank,) = [hook.__self__ for hook in copied._forward_pre_hooks.values()]
    assert bank.layers == []
    y, _ = copied(torch.randn(3, 4, 5, 5, dtype=F64))  # still runs, layers compute their own
    assert torch.isfinite(y).all()
