"""The zoo's transformers: every norm position is ``norm_layer`` (LayerNorm, RMSNorm, or the
SwitchNormTokens surgery makes of them); shapes, gradients, causality and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sn_core
from service.spec import TOKEN_POOL_MEMBERS
from sn_core.vocabulary import POINTWISE_MEMBERS
from sn_core.zoo import get_model_builder

TINY = {"dim": 16, "depth": 2, "heads": 2}
# (arch, kwargs, input): 8x8 and 16x16 digits, MNIST-1D as a 1-D sequence, characters.
CASES = {
    "vit-8x8": ("vit", {**TINY, "qk_norm": True}, lambda: torch.rand(4, 1, 8, 8)),
    "vit-16x16-cls": (
        "vit",
        {**TINY, "input_size": 16, "patch_size": 4, "pool": "cls"},
        lambda: torch.rand(4, 1, 16, 16),
    ),
    "vit-mnist1d": (
        "vit",
        {**TINY, "input_size": 40, "spatial_dims": 1, "patch_size": 4},
        lambda: torch.randn(4, 1, 40),
    ),
    "char_lm": (
        "char_lm",
        {**TINY, "context": 12, "qk_norm": True},
        lambda: torch.randint(0, 10, (4, 12)),
    ),
}


def _build(name: str, norm_layer=None) -> tuple[nn.Module, torch.Tensor]:
    arch, kwargs, make_input = CASES[name]
    torch.manual_seed(0)
    model = sn_core.build_model(
        arch, num_classes=10, in_channels=1, norm_layer=norm_layer, **kwargs
    )
    return model, make_input()


def _expected_shape(name: str, x: torch.Tensor) -> tuple[int, ...]:
    return (len(x), 12, 10) if name == "char_lm" else (len(x), 10)


def _norm_count(name: str) -> int:
    # two per block, the final norm, and two more per block with QK-norm
    _, kwargs, _ = CASES[name]
    return kwargs["depth"] * (2 + 2 * kwargs.get("qk_norm", False)) + 1


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(("norm_layer", "cls"), [(None, nn.LayerNorm), ("rms", nn.RMSNorm)])
def test_every_norm_is_norm_layer_and_trains(name, norm_layer, cls):
    model, x = _build(name, norm_layer)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm | nn.RMSNorm)]
    assert len(norms) == _norm_count(name) and all(type(m) is cls for m in norms)
    out = model(x)
    assert out.shape == _expected_shape(name, x)
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(CASES))
def test_surgery_makes_every_norm_a_token_sn_layer_and_trains(name):
    model, x = _build(name)
    reference = model(x).detach()
    pool = model.token_pool_members
    sn_core.convert_to_switchnorm(model, pool=pool, token_pool=pool, example_input=x)
    layers = [m for m in model.modules() if isinstance(m, sn_core.SwitchNormTokens)]
    assert len(layers) == _norm_count(name)
    assert not any(isinstance(m, nn.LayerNorm | nn.RMSNorm) for m in model.modules())
    model.train()
    out = model(x)
    assert out.shape == reference.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    ratios = list(sn_core.ratio_parameters(model))
    assert len(ratios) == 2 * len(layers) and all(p.grad is not None for p in ratios)
    # One-hot on LN everywhere: exactly the LayerNorm model it came from.
    for layer in layers:
        layer.fix(layer.pool.index("ln"), layer.pool.index("ln"))
    model.eval()
    torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_layer", [None, "rms"])
def test_char_lm_is_causal_after_surgery(norm_layer):
    model, x = _build("char_lm", norm_layer)
    sn_core.convert_to_switchnorm(model, token_pool=model.token_pool_members, example_input=x)
    model.train()  # the mixture path, with its statistics
    changed = x.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 10
    torch.testing.assert_close(model(changed)[:, :8], model(x)[:, :8])
    assert not torch.allclose(model(changed)[:, 8:], model(x)[:, 8:])


def test_the_spec_pools_only_what_each_model_computes():
    for arch, members in TOKEN_POOL_MEMBERS.items():
        model_members = get_model_builder(arch)(num_classes=10).token_pool_members
        assert set(members) - set(POINTWISE_MEMBERS) <= set(model_members)
    assert get_model_builder("char_lm")().token_pool_members == ("ln", "rms")  # causal


@pytest.mark.parametrize(
    ("arch", "kwargs", "message"),
    [
        ("vit", {"dim": 10, "heads": 4}, "multiple of heads"),
        ("vit", {"patch_size": 3}, "divide input_size"),
        ("vit", {"pool": "max"}, "pool must be"),
        ("vit", {"spatial_dims": 3}, "spatial_dims"),
        ("vit", {"norm_layer": "bn"}, "no token"),
        ("char_lm", {"context": 0}, "context"),
    ],
)
def test_bad_arguments_are_clear_errors(arch, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sn_core.build_model(arch, num_classes=10, in_channels=1, **kwargs)


def test_wrong_inputs_are_clear_errors():
    vit, _ = _build("vit-8x8")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) input of size \(8, 8\)"):
        vit(torch.rand(2, 1, 16, 16))
    lm, _ = _build("char_lm")
    with pytest.raises(ValueError, match="T <= context"):
        lm(torch.randint(0, 10, (2, 13)))
    with pytest.raises(ValueError, match="integer character ids"):
        lm(torch.rand(2, 12))
