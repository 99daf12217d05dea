"""Model zoo: every registered model builds, runs, and lets all of its norms be swapped."""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import sn_core
from sn_core.norms import NORM_LAYERS, group_norm, resolve_norm_layer
from sn_core.zoo import MODELS, build_model, get_model_builder, list_models, register_model
from sn_core.zoo import registry as registry_module
from sn_core.zoo.mobilenet import InvertedResidual
from sn_core.zoo.resnet import BasicBlock, Bottleneck

# Per-arch test settings: small and fast, and an input size each arch can handle (a side of
# square images, or the spatial shape as a tuple). ``residual`` archs accept ``zero_init_residual``.
TEST_CONFIG: dict[str, dict] = {
    "resnet20": dict(kwargs={}, size=16, residual=True),
    "resnet32": dict(kwargs={}, size=16, residual=True),
    "resnet56": dict(kwargs={}, size=16, residual=True),
    "resnet18": dict(kwargs=dict(small_input=True, width=16), size=16, residual=True),
    "resnet34": dict(kwargs=dict(small_input=True, width=8), size=16, residual=True),
    "resnet50": dict(kwargs=dict(small_input=True, width=16), size=16, residual=True),
    "vgg11": dict(kwargs=dict(small_input=True, width=16), size=16, residual=False),
    "vgg_small": dict(kwargs=dict(width=8), size=16, residual=False),
    "mobilenetv2": dict(kwargs=dict(small_input=True, width_mult=0.5), size=16, residual=True),
    "mlp": dict(kwargs=dict(input_size=64, hidden=(32, 16)), size=8, residual=False),
    "cnn1d": dict(kwargs={}, size=(40,), residual=False),
}
# Channels-last transformers: their norms are token norms (tests/sn_core/test_zoo_transformers.py).
TOKEN_ARCHS = {"char_lm", "vit"}
ARCHS = [a for a in list_models() if a not in TOKEN_ARCHS]
RESIDUAL_ARCHS = [a for a in ARCHS if TEST_CONFIG.get(a, {}).get("residual")]
NUM_CLASSES = 7


class OneGroupNorm(nn.GroupNorm):
    """A user-defined norm class taking the channel count first."""

    def __init__(self, num_features: int) -> None:
        super().__init__(1, num_features)


def _build(arch: str, **overrides) -> nn.Module:
    kwargs = {**TEST_CONFIG[arch]["kwargs"], **overrides}
    return build_model(arch, num_classes=NUM_CLASSES, **kwargs)


def _input(arch: str, in_channels: int = 3, batch: int = 2) -> torch.Tensor:
    size = TEST_CONFIG[arch]["size"]
    return torch.randn(batch, in_channels, *((size, size) if isinstance(size, int) else size))


def _count(model: nn.Module, cls: type | tuple[type, ...]) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


@pytest.fixture
def clean_registry():
    """Restore the registry (and the plug-in flag) after a test that registers models."""
    saved = dict(MODELS)
    loaded = registry_module._plugins_loaded
    yield
    MODELS.clear()
    MODELS.update(saved)
    registry_module._plugins_loaded = loaded


def test_every_model_has_a_test_config():
    assert set(ARCHS) == set(TEST_CONFIG), "add new architectures to TEST_CONFIG"
    assert set(ARCHS) | TOKEN_ARCHS == set(list_models())


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_model_builds_and_gives_logits(arch, in_channels):
    model = _build(arch, in_channels=in_channels)
    x = _input(arch, in_channels)
    model(x).sum().backward()  # train mode: batch statistics, gradients flow
    with torch.no_grad():
        assert model.eval()(x).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize(
    ("norm", "expected"),
    [
        ("gn", nn.GroupNorm),
        ("ln", nn.GroupNorm),
        ("in", (nn.InstanceNorm1d, nn.InstanceNorm2d)),
        (OneGroupNorm, OneGroupNorm),
        (functools.partial(nn.GroupNorm, 1), nn.GroupNorm),
    ],
    ids=["gn", "ln", "in", "class", "partial"],
)
@pytest.mark.parametrize("arch", ARCHS)
def test_norm_layer_swaps_every_norm(arch, norm, expected):
    n_default = _count(_build(arch), _BatchNorm)
    assert n_default > 0
    model = _build(arch, norm_layer=norm)
    assert _count(model, _BatchNorm) == 0
    assert _count(model, expected) == n_default
    if norm == "ln":
        assert all(m.num_groups == 1 for m in model.modules() if isinstance(m, nn.GroupNorm))
    if arch == "mlp" and norm == "in":
        return  # one element per channel: instance statistics do not exist (see zoo/mlp.py)
    assert model(_input(arch)).shape == (2, NUM_CLASSES)


def _residual_blocks(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if isinstance(m, BasicBlock | Bottleneck)
        or (isinstance(m, InvertedResidual) and m.use_res_connect)
    ]


def _last_norm(block: nn.Module) -> nn.Module:
    return block.bn2 if isinstance(block, BasicBlock) else block.bn3


@pytest.mark.parametrize("norm", [None, "gn"])
@pytest.mark.parametrize("arch", RESIDUAL_ARCHS)
def test_zero_init_residual_zeroes_last_norm_of_each_branch(arch, norm):
    blocks = _residual_blocks(_build(arch, norm_layer=norm))
    assert blocks and all(_last_norm(b).weight.abs().sum() > 0 for b in blocks)

    model = _build(arch, norm_layer=norm, zero_init_residual=True).eval()
    blocks = _residual_blocks(model)
    assert blocks and all(torch.count_nonzero(_last_norm(b).weight) == 0 for b in blocks)
    # Each residual branch now outputs zero, so a block passes its shortcut through.
    for block in blocks:
        ir = isinstance(block, InvertedResidual)  # residual: in == out channels
        x = torch.randn(2, block.conv_pwl.out_channels if ir else block.conv1.in_channels, 4, 4)
        with torch.no_grad():
            shortcut = x if getattr(block, "downsample", None) is None else block.downsample(x)
            expected = shortcut if isinstance(block, InvertedResidual) else torch.relu(shortcut)
            torch.testing.assert_close(block(x), expected)


def test_zero_init_residual_skips_norms_without_weight():
    model = build_model(
        "resnet20",
        norm_layer=functools.partial(nn.BatchNorm2d, affine=False),
        zero_init_residual=True,
    )
    assert all(m.weight is None for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_kwargs_reach_the_architecture():
    model = build_model("resnet18", small_input=True, width=16)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.out_channels == 16
    assert model.fc.in_features == 16 * 8
    with pytest.raises(TypeError):
        build_model("resnet20", width=8)


def test_cnn1d_is_the_mnist1d_cnn_and_searches_with_switchnorm1d():
    model = build_model("cnn1d", num_classes=10, in_channels=1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(25, (5,), (2,))] * 3
    assert _count(model, nn.BatchNorm1d) == 3 and model.head.in_features == 25 * 5
    x = torch.randn(16, 1, 40)
    sn_core.convert_to_switchnorm(model, example_input=x)
    layers = sn_core.switch_layers(model)
    assert len(layers) == 3 and not _count(model, _BatchNorm)
    assert all(type(m) is sn_core.SwitchNorm1d and m.pool == ("in", "ln", "bn") for _, m in layers)
    # One SGD step changes the weights and the ratio logits.
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(sn_core.param_groups(model, lr=0.1), lr=0.1)
    before = [p.detach().clone() for p in (convs[0].weight, layers[0][1].mean_weight)]
    loss = nn.functional.cross_entropy(model(x), torch.randint(0, 10, (16,)))
    loss.backward()
    optimizer.step()
    after = (convs[0].weight, layers[0][1].mean_weight)
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"\(N, C, L\) sequences"):
        model(torch.randn(2, 1, 8, 8))


def test_mlp_rejects_wrong_input_size():
    model = build_model("mlp", in_channels=1, input_size=64)
    with pytest.raises(ValueError, match="64 features"):
        model(torch.randn(2, 1, 4, 4))


# --- registry -------------------------------------------------------------------------------


def test_list_models_is_sorted_and_has_the_builtins():
    names = list_models()
    assert names == sorted(names)
    assert set(TEST_CONFIG) <= set(names)


def test_register_model_decorator_forms(clean_registry):
    @register_model
    def tiny_net(num_classes=10, in_channels=3, norm_layer=None):
        norm = resolve_norm_layer(norm_layer, 2)
        return nn.Sequential(
            nn.Conv2d(in_channels, 4, 3), norm(4), nn.Flatten(), nn.LazyLinear(num_classes)
        )

    @register_model("Other_Net")
    def _builder(num_classes=10, in_channels=3, norm_layer=None):
        return tiny_net(num_classes, in_channels, norm_layer)

    @register_model()
    def third_net(num_classes=10, in_channels=3, norm_layer=None):
        return tiny_net(num_classes, in_channels, norm_layer)

    assert tiny_net.__name__ == "tiny_net"  # the decorator returns the builder itself
    assert get_model_builder("tiny_net") is tiny_net
    assert get_model_builder("other_net") is _builder
    assert get_model_builder("OTHER_NET") is _builder
    assert "third_net" in list_models()
    model = build_model("other_net", num_classes=5, in_channels=1, norm_layer="gn")
    assert isinstance(model[1], nn.GroupNorm)
    assert model(torch.randn(2, 1, 6, 6)).shape == (2, 5)


def test_duplicate_names_are_rejected(clean_registry):
    def builder(num_classes=10, in_channels=3, norm_layer=None):
        return nn.Linear(in_channels, num_classes)

    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet20")(builder)
    with pytest.raises(ValueError, match="already registered"):
        register_model("ResNet20")(builder)
    assert MODELS["resnet20"] is not builder


def test_unknown_model_lists_known_names():
    with pytest.raises(KeyError) as info:
        build_model("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    assert all(name in message for name in list_models())
    with pytest.raises(ValueError, match="known models: .*resnet20"):
        get_model_builder("nope")


def _plugin_builder(num_classes=10, in_channels=3, norm_layer=None, hidden=4):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.Linear(hidden, num_classes))


def test_entry_point_plugin_is_found_and_loaded_once(monkeypatch, clean_registry):
    calls = []
    plugin = EntryPoint(
        name="plugnet",
        value=f"{__name__}:_plugin_builder",
        group=registry_module.ENTRY_POINT_GROUP,
    )

    def fake_entry_points(*, group):
        calls.append(group)
        return [plugin] if group == registry_module.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry_module, "_plugins_loaded", False)

    model = build_model("plugnet", num_classes=3, hidden=6)
    assert model(torch.randn(2, 1, 4, 4)).shape == (2, 3)
    assert get_model_builder("plugnet") is _plugin_builder
    assert "plugnet" in list_models()
    with pytest.raises(KeyError):
        get_model_builder("still_missing")
    assert calls == [registry_module.ENTRY_POINT_GROUP]  # scanned once, not on every miss


def test_plugin_cannot_shadow_a_builtin(monkeypatch, clean_registry):
    plugin = EntryPoint(
        name="resnet20", value=f"{__name__}:_plugin_builder", group="normsearch.models"
    )
    monkeypatch.setattr(registry_module, "entry_points", lambda *, group: [plugin])
    monkeypatch.setattr(registry_module, "_plugins_loaded", False)
    with pytest.warns(RuntimeWarning, match="already registered"):
        names = list_models()
    assert "resnet20" in names
    assert get_model_builder("resnet20") is not _plugin_builder


# --- norm specs -----------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_resolve_norm_layer_names(dims):
    assert isinstance(resolve_norm_layer(None, dims)(8), _BatchNorm)
    assert type(resolve_norm_layer("bn", dims)(8)).__name__ == f"BatchNorm{dims}d"
    inst = resolve_norm_layer("in", dims)(8)
    assert type(inst).__name__ == f"InstanceNorm{dims}d" and inst.affine
    assert resolve_norm_layer("ln", dims)(12).num_groups == 1
    assert resolve_norm_layer("GN", dims)(12).num_groups == 4


@pytest.mark.parametrize(("channels", "groups"), [(64, 32), (48, 16), (24, 8), (12, 4), (3, 1)])
def test_group_norm_picks_the_largest_dividing_group_count(channels, groups):
    assert group_norm(channels).num_groups == groups


def test_resolve_norm_layer_passes_classes_and_callables_through():
    assert resolve_norm_layer(OneGroupNorm, 2) is OneGroupNorm
    partial = functools.partial(nn.BatchNorm2d, momentum=0.01)
    assert resolve_norm_layer(partial, 2) is partial


def test_resolve_norm_layer_rejects_unknown_names_and_bad_args():
    with pytest.raises(ValueError) as info:
        resolve_norm_layer("batchnorm", 2)
    assert all(name in str(info.value) for name in NORM_LAYERS)
    with pytest.raises(ValueError, match="dims"):
        resolve_norm_layer("bn", 4)
    with pytest.raises(TypeError):
        resolve_norm_layer(3, 2)
