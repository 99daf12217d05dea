"""Surgery (norm layers -> SwitchNorm) and inspection of SN layers, ratio logits and ratios."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from sn_core.inspect import (
    clip_ratio_grad_norm,
    param_groups,
    ratio_parameters,
    switch_layers,
    switch_ratios,
)
from sn_core.layers import SwitchNorm1d, SwitchNorm2d, SwitchNorm3d
from sn_core.surgery import SOURCE_NORM_TYPES, convert_to_switchnorm, single_element_pool
from sn_core.zoo import build_model, list_models

# Small, fast settings per zoo arch (as test_zoo.py): builder kwargs and input size (a side
# of square images, or the spatial shape as a tuple).
ZOO_CONFIG: dict[str, tuple[dict, int | tuple[int, ...]]] = {
    "resnet20": ({}, 16),
    "resnet32": ({}, 16),
    "resnet56": ({}, 16),
    "resnet18": (dict(small_input=True, width=16), 16),
    "resnet34": (dict(small_input=True, width=8), 16),
    "resnet50": (dict(small_input=True, width=16), 16),
    "vgg11": (dict(small_input=True, width=16), 16),
    "vgg_small": (dict(width=8), 16),
    "mobilenetv2": (dict(small_input=True, width_mult=0.5), 16),
    "mlp": (dict(input_size=64, hidden=(32, 16)), 8),
    "cnn1d": (dict(channels=8), (40,)),
}
SN_BY_DIMS = {1: SwitchNorm1d, 2: SwitchNorm2d, 3: SwitchNorm3d}


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: intra-op threads only add overhead (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _class_dims(module: nn.Module) -> int:
    return int(type(module).__name__[-2])  # BatchNorm2d -> 2


def _randomize_norms(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SOURCE_NORM_TYPES) and getattr(m, "weight", None) is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(7)


# The token models (vit, char_lm) have BN-free token layers: tests/sn_core/test_zoo_transformers.py.
@pytest.mark.parametrize("arch", [a for a in list_models() if a not in ("vit", "char_lm")])
def test_zoo_model_converts_and_bn_choice_reproduces_batchnorm(arch):
    assert arch in ZOO_CONFIG, "add new architectures to ZOO_CONFIG"
    kwargs, size = ZOO_CONFIG[arch]
    torch.manual_seed(0)
    original = build_model(arch, num_classes=5, **kwargs).double().eval()
    _randomize_norms(original)
    spatial = (size, size) if isinstance(size, int) else size
    x = torch.randn(4, 3, *spatial, dtype=torch.float64)
    with torch.no_grad():
        expected = original(x)

    model = convert_to_switchnorm(copy.deepcopy(original))
    converted = dict(model.named_modules())
    sources = [(n, m) for n, m in original.named_modules() if isinstance(m, SOURCE_NORM_TYPES)]
    assert sources and not any(isinstance(m, SOURCE_NORM_TYPES) for m in model.modules())
    assert len(switch_layers(model)) == len(sources)
    for name, src in sources:
        sn = converted[name]
        assert type(sn) is SN_BY_DIMS[_class_dims(src)]
        assert sn.pool == ("in", "ln", "bn") and not sn.training
        assert (sn.eps, sn.momentum) == (src.eps, src.momentum)
        assert sn.weight.dtype == torch.float64
        for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(sn, key), getattr(src, key), rtol=0, atol=0)

    for _, layer in switch_layers(model):
        layer.fix("bn", "bn")
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    for _, layer in switch_layers(model):
        layer.unfix()
    out = model.train()(x)
    out.sum().backward()
    assert out.shape == (4, 5) and torch.isfinite(out).all()


def _resnet20() -> nn.Module:
    return build_model("resnet20", num_classes=5)


def _sn_names(model: nn.Module) -> set[str]:
    return {name for name, _ in switch_layers(model)}


@pytest.mark.parametrize(
    "skip",
    ["bn1", ["bn1", "layer1.*"], lambda name, m: name == "bn1" or name.startswith("layer1.")],
    ids=["name", "patterns", "callable"],
)
def test_skip_by_name_pattern_or_callable(skip):
    model = convert_to_switchnorm(_resnet20(), skip=skip)
    assert isinstance(model.bn1, nn.BatchNorm2d)
    assert isinstance(model.layer2[0].bn1, SwitchNorm2d)
    layer1_bns = [m for m in model.layer1.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bool(layer1_bns) == (skip != "bn1")


def test_skipped_container_keeps_its_norms():
    model = convert_to_switchnorm(_resnet20(), skip="layer3")
    assert not switch_layers(model.layer3) and switch_layers(model.layer2)


class PooledHead(nn.Module):
    """Conv -> BN -> ReLU -> global pool -> BN on 1x1 maps -> flatten -> linear -> BN (N, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pooled_bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 6)
        self.fc_bn = nn.BatchNorm1d(6)
        self.vol_gn = nn.GroupNorm(2, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pooled_bn(self.pool(torch.relu(self.bn(self.conv(x)))))
        h = self.fc_bn(self.fc(h.flatten(1)))
        return self.vol_gn(h[:, :, None, None, None].expand(-1, -1, 2, 2, 2)).mean((2, 3, 4))


def test_example_input_drops_in_where_one_element_per_channel_and_sets_groupnorm_dims():
    model = PooledHead()
    _randomize_norms(model)
    model.train()
    model.pool.eval()  # a mixed state, to be restored exactly
    flags = {n: m.training for n, m in model.named_modules()}
    source = copy.deepcopy(model)
    convert_to_switchnorm(model, example_input=torch.randn(2, 3, 8, 8))
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert isinstance(model.bn, SwitchNorm2d) and model.bn.pool == ("in", "ln", "bn")
    # 1x1 maps and (N, C) features: IN normalizes a single value there, LN and BN remain.
    assert isinstance(model.pooled_bn, SwitchNorm2d) and model.pooled_bn.pool == ("ln", "bn")
    assert isinstance(model.fc_bn, SwitchNorm1d) and model.fc_bn.pool == ("ln", "bn")
    assert model.fc_bn.fixed == (None, None)  # still a choice to search
    torch.testing.assert_close(model.fc_bn.running_mean, source.fc_bn.running_mean)
    assert isinstance(model.vol_gn, SwitchNorm3d) and model.vol_gn.groups == 2
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    assert model.fc_bn.mean_weight.grad is not None

    plain = convert_to_switchnorm(PooledHead())  # no example: everything, GroupNorm as 2d
    assert isinstance(plain.pooled_bn, SwitchNorm2d) and isinstance(plain.fc_bn, SwitchNorm1d)
    assert plain.fc_bn.pool == ("in", "ln", "bn")
    assert isinstance(plain.vol_gn, SwitchNorm2d)


def test_single_element_layers_left_with_one_normalizer_are_fixed_and_with_none_kept():
    x = torch.randn(2, 3, 8, 8)
    model = convert_to_switchnorm(PooledHead(), pool=("bn", "in"), example_input=x)
    assert model.bn.pool == ("bn", "in") and model.bn.fixed == (None, None)
    for layer in (model.pooled_bn, model.fc_bn):
        assert layer.pool == ("bn",) and layer.fixed == (0, 0)
        mean, var = layer.ratios()
        assert mean.tolist() == var.tolist() == [1.0]
    model(x).sum().backward()
    assert model.fc_bn.mean_weight.grad is None  # fixed: the logits stay out of the graph

    only_in = convert_to_switchnorm(PooledHead(), pool=("in",), example_input=x)
    assert isinstance(only_in.bn, SwitchNorm2d) and only_in.bn.pool == ("in",)
    assert type(only_in.pooled_bn) is nn.BatchNorm2d and type(only_in.fc_bn) is nn.BatchNorm1d
    assert only_in(x).shape == (2, 6)

    # One channel: LN and GN over one value are IN again; only BN stays.
    one = nn.Sequential(nn.Flatten(), nn.Linear(12, 1), nn.BatchNorm1d(1))
    convert_to_switchnorm(one, pool=("in", "ln", "gn"), example_input=torch.randn(2, 12))
    assert type(one[2]) is nn.BatchNorm1d
    convert_to_switchnorm(one, pool=("in", "ln", "bn", "gn"), example_input=torch.randn(2, 12))
    assert one[2].pool == ("bn",) and one[2].fixed == (0, 0)


def test_single_element_pool_rules():
    assert single_element_pool(("in", "ln", "bn", "gn"), 8) == ("ln", "bn", "gn")
    assert single_element_pool(("GN", "in"), 8) == ("gn",)
    assert single_element_pool(("in", "ln", "bn"), 1) == ("bn",)
    assert single_element_pool(("in",), 8) == ()


def test_groupnorm_source_keeps_groups_and_affine():
    original = build_model("resnet20", num_classes=5, norm_layer="gn")
    _randomize_norms(original)
    model = convert_to_switchnorm(copy.deepcopy(original), pool=("in", "ln", "bn", "gn"))
    converted = dict(model.named_modules())
    for name, src in original.named_modules():
        if isinstance(src, nn.GroupNorm):
            sn = converted[name]
            assert isinstance(sn, SwitchNorm2d) and sn.groups == src.num_groups
            torch.testing.assert_close(sn.weight, src.weight, rtol=0, atol=0)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    # (N, C, 1) inputs in the MLP: the example forward reveals L = 1, so no IN, and GN gets
    # groups of two channels at least (the source's 32 groups of one channel are IN again).
    mlp = build_model("mlp", norm_layer="gn", input_size=16, hidden=(32, 16))
    assert [m.num_groups for m in mlp.modules() if isinstance(m, nn.GroupNorm)] == [32, 16]
    convert_to_switchnorm(mlp, pool=("in", "ln", "bn", "gn"), example_input=torch.randn(2, 3, 4, 4))
    layers = switch_layers(mlp)
    assert [(type(m), m.pool, m.groups) for _, m in layers] == [
        (SwitchNorm1d, ("ln", "bn", "gn"), 16),
        (SwitchNorm1d, ("ln", "bn", "gn"), 8),
    ]
    assert mlp(torch.randn(4, 3, 4, 4)).shape == (4, 10)


def test_groups_fall_back_to_a_divisor_and_instance_norm_without_affine():
    model = nn.Sequential(nn.BatchNorm2d(24), nn.InstanceNorm3d(12), nn.BatchNorm1d(48))
    convert_to_switchnorm(model, pool=("in", "ln", "bn", "gn"), groups=16)
    assert [m.groups for m in model] == [8, 4, 16]
    assert isinstance(model[1], SwitchNorm3d)
    assert torch.equal(model[1].weight, torch.ones(12)) and torch.equal(
        model[1].bias, torch.zeros(12)
    )
    assert model[1].running_var is not None  # "bn" in pool: the SN tracks its own statistics


def test_never_converts_twice_and_shared_layers_stay_shared():
    shared = nn.BatchNorm2d(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), shared, nn.Sequential(shared))
    convert_to_switchnorm(model)
    assert isinstance(model[1], SwitchNorm2d) and model[2][0] is model[1]
    layer = model[1]
    convert_to_switchnorm(model, pool=("in", "bn"))
    assert model[1] is layer and layer.pool == ("in", "ln", "bn")
    single = convert_to_switchnorm(nn.BatchNorm3d(4, momentum=0.3, eps=1e-3))
    assert isinstance(single, SwitchNorm3d) and (single.momentum, single.eps) == (0.3, 1e-3)


# --- inspection ------------------------------------------------------------------------------


class UserBlock(nn.Module):
    """Not an SN layer, yet it has parameters named like SN logits."""

    def __init__(self) -> None:
        super().__init__()
        self.mean_weight = nn.Parameter(torch.zeros(3))
        self.foo_weight = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mean_weight.sum() + self.foo_weight.sum()


class MySN(SwitchNorm2d):
    """A subclass: found by type, whatever it is called."""


def _inspect_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        SwitchNorm2d(4),
        UserBlock(),
        nn.Conv2d(4, 4, 3, padding=1),
        MySN(4, tied=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


def test_switch_layers_and_ratio_parameters_by_type():
    model = _inspect_model()
    assert [(n, type(m)) for n, m in switch_layers(model)] == [("1", SwitchNorm2d), ("4", MySN)]
    ratios = ratio_parameters(model)
    expected = [model[1].mean_weight, model[1].var_weight, model[4].mean_weight]
    assert len(ratios) == 3 and all(a is b for a, b in zip(ratios, expected, strict=True))
    assert not any(p is model[2].mean_weight or p is model[2].foo_weight for p in ratios)


def test_param_groups_split_every_parameter_once():
    model = _inspect_model()
    groups = param_groups(model, lr=0.1, weight_decay=5e-4, ratio_lr_mult=0.1)
    others, ratios = groups
    assert ratios["params"] == ratio_parameters(model)
    assert (others["lr"], others["weight_decay"]) == (0.1, 5e-4)
    assert math.isclose(ratios["lr"], 0.01) and ratios["weight_decay"] == 0.0
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert any(p is model[2].foo_weight for p in others["params"])
    torch.optim.SGD(groups, lr=0.1, momentum=0.9)  # accepted as they are


def test_clip_ratio_grad_norm_touches_only_the_logits():
    model = _inspect_model()
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    before = model[0].weight.grad.clone()
    total = clip_ratio_grad_norm(model, 1.0)
    assert math.isclose(float(total), 10.0 * math.sqrt(9), rel_tol=1e-6)
    norm = torch.linalg.vector_norm(torch.cat([p.grad for p in ratio_parameters(model)]))
    assert float(norm) <= 1.0 + 1e-5
    assert torch.equal(model[0].weight.grad, before) and model[2].foo_weight.grad[0] == 10.0


def test_switch_ratios_values_divergence_and_fixed_flags():
    model = _inspect_model()
    stats = switch_ratios(model)
    assert list(stats) == ["1", "4"]
    first = stats["1"]
    for key in ("mean", "var"):
        assert math.isclose(sum(first[key].values()), 1.0, rel_tol=1e-6)
        assert all(type(v) is float for v in first[key].values())
        assert math.isclose(first["entropy"][key], math.log(3), rel_tol=1e-6)
        assert abs(first["margin"][key]) < 1e-6
    assert first["divergence"] == 0.0 and first["fixed"] == {"mean": False, "var": False}
    assert stats["4"]["divergence"] == 0.0  # tied: mean and variance ratios are one vector

    with torch.no_grad():
        model[1].var_weight.copy_(torch.tensor([2.0, 0.0, 1.0]))
    changed = switch_ratios(model)["1"]
    p, q = (torch.tensor(list(changed[k].values()), dtype=torch.float64) for k in ("mean", "var"))
    expected = float((p * (p / q).log()).sum() + (q * (q / p).log()).sum())
    assert changed["divergence"] > 0 and math.isclose(changed["divergence"], expected)
    assert math.isclose(changed["margin"]["var"], float(q[0] - q[2]), rel_tol=1e-6)

    model[1].fix(mean="bn", var="in")
    model[4].fix(mean="ln")
    fixed = switch_ratios(model)
    assert fixed["1"]["mean"] == {"in": 0.0, "ln": 0.0, "bn": 1.0}
    assert fixed["1"]["fixed"] == {"mean": True, "var": True}
    assert fixed["4"]["fixed"] == {"mean": True, "var": True}
    assert fixed["1"]["entropy"]["mean"] == 0.0 and fixed["1"]["margin"]["mean"] == 1.0
    # Two different one-hot choices: large but finite (ratios clamped to >= 1e-8).
    assert math.isclose(fixed["1"]["divergence"], 2 * (1 - 1e-8) * math.log(1e8), rel_tol=1e-6)
    model[1].fix(var="bn")
    assert switch_ratios(model)["1"]["divergence"] == 0.0
