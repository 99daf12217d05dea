"""Point-wise pool members (dyt, none) mixed at the output: exactness, gradients, sparsity,
plans, finalize and checkpoints (docs/sn-spec.md section 9)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.testing import assert_close

from sn_core import (
    DynamicTanh,
    LayerChoice,
    NormalizerPlan,
    SparsityController,
    SwitchNorm1d,
    SwitchNorm2d,
    SwitchNormTokens,
    apply_plan,
    build_model,
    convert_to_switchnorm,
    describe_norm,
    finalize,
    load_finalized,
    plan_from_model,
    plan_torch_layers,
    ratio_parameters,
    save_finalized,
    switch_ratios,
)

F64 = torch.float64
POOL_2D = ("in", "ln", "bn", "dyt", "none")
POOL_TOKENS = ("ln", "rms", "bn", "dyt", "none")


def _randomize(layer: nn.Module, seed: int = 3) -> nn.Module:
    """Random affine parameters and DyT alpha, so that no term is trivially 0 or 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=F64))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen, dtype=F64))
        alpha = layer.alpha if isinstance(layer, DynamicTanh) else layer.dyt_alpha
        if alpha is not None:
            alpha.fill_(0.7)
    return layer


def _sn(kind: str, pool, **kwargs):
    if kind == "tokens":
        return _randomize(SwitchNormTokens(6, pool=pool, dtype=F64, **kwargs))
    return _randomize(SwitchNorm2d(6, pool=pool, dtype=F64, **kwargs))


def _input(kind: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (4, 5, 6) if kind == "tokens" else (4, 6, 3, 3)
    return torch.randn(shape, generator=gen, dtype=F64) * 2 + 1


def _onehot_logits(layer, choice: str) -> None:
    with torch.no_grad():
        layer.output_weight.copy_(
            torch.tensor([0.0 if c == choice else -1e4 for c in layer.output_choices])
        )


def _grads(module: nn.Module, x: torch.Tensor, names: tuple[str, ...], seed: int = 5):
    """(output, grad of x, grads of the named parameters) for a random upstream gradient."""
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = module(x)
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    (y * upstream).sum().backward()
    params = dict(module.named_parameters())
    return y.detach(), x.grad, [params[n].grad for n in names]


# --------------------------------------------------------------------------------- exact
@pytest.mark.parametrize("kind", ["2d", "tokens"])
@pytest.mark.parametrize("fixed", [True, False])
def test_onehot_dyt_equals_dynamic_tanh(kind, fixed):
    layer = _sn(kind, POOL_2D if kind == "2d" else POOL_TOKENS)
    if fixed:
        layer.fix(output="dyt")
    else:
        _onehot_logits(layer, "dyt")
    reference = DynamicTanh(6, channels_last=kind == "tokens", dtype=F64)
    with torch.no_grad():
        for name in ("weight", "bias"):
            getattr(reference, name).copy_(getattr(layer, name))
        reference.alpha.copy_(layer.dyt_alpha)
    x = _input(kind)
    y1, gx1, (gw1, gb1, ga1) = _grads(layer, x, ("weight", "bias", "dyt_alpha"))
    y2, gx2, (gw2, gb2, ga2) = _grads(reference, x, ("weight", "bias", "alpha"))
    tol = 0.0 if fixed else 1e-12  # fixed: the very same ops
    for a, b in ((y1, y2), (gx1, gx2), (gw1, gw2), (gb1, gb2), (ga1, ga2)):
        assert_close(a, b, rtol=tol, atol=tol)
    if fixed:  # no statistics, no logits in the graph
        assert layer.mean_weight.grad is None and layer.output_weight.grad is None


@pytest.mark.parametrize("kind", ["2d", "tokens"])
@pytest.mark.parametrize("fixed", [True, False])
def test_onehot_none_is_the_identity(kind, fixed):
    layer = _sn(kind, POOL_2D if kind == "2d" else POOL_TOKENS)
    if fixed:
        layer.fix(output="none")
    else:
        _onehot_logits(layer, "none")
    x = _input(kind)
    y, gx, _ = _grads(layer, x, ())
    _, gx_ref, _ = _grads(nn.Identity(), x, ())
    tol = 0.0 if fixed else 1e-12
    assert_close(y, x, rtol=tol, atol=tol)
    assert_close(gx, gx_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", ["2d", "tokens"])
@pytest.mark.parametrize("fixed", [True, False])
def test_onehot_norm_equals_the_plain_sn_layer(kind, fixed):
    pool = POOL_2D if kind == "2d" else POOL_TOKENS
    layer = _sn(kind, pool)
    plain = _sn(kind, pool[:3])
    assert set(plain.state_dict()) < set(layer.state_dict())
    plain.load_state_dict(layer.state_dict(), strict=False)
    if fixed:
        layer.fix(output="norm")
    else:
        _onehot_logits(layer, "norm")
    x = _input(kind)
    names = ("weight", "bias", "mean_weight", "var_weight")
    y1, gx1, g1 = _grads(layer, x, names)
    y2, gx2, g2 = _grads(plain, x, names)
    tol = 0.0 if fixed else 1e-12
    for a, b in zip((y1, gx1, *g1), (y2, gx2, *g2), strict=True):
        assert_close(a, b, rtol=tol, atol=tol)
    assert_close(layer.running_mean, plain.running_mean, rtol=tol, atol=tol)
    if fixed:  # output "norm" costs nothing extra: no DyT, no output logits in the graph
        assert layer.dyt_alpha.grad is None and layer.output_weight.grad is None


def test_layers_without_pointwise_members_are_unchanged():
    """Same state_dict keys as before the output mixture existed: old checkpoints load."""
    keys = [
        "weight", "bias", "mean_weight", "var_weight", "running_mean", "running_var",
        "num_batches_tracked", "mean_choice", "var_choice",
    ]  # fmt: skip
    assert list(SwitchNorm2d(4).state_dict()) == keys
    layer = SwitchNorm2d(4)
    assert layer.pointwise == () and layer.output_ratios() is None
    assert "output" not in switch_ratios(layer)[""]
    with pytest.raises(ValueError, match="no point-wise members"):
        layer.fix(output="dyt")


# ------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("kind", ["2d", "tokens"])
def test_mixed_output_gradcheck(kind):
    pool = ("in", "ln", "dyt", "none") if kind == "2d" else ("ln", "rms", "dyt", "none")
    shape = (2, 4, 6) if kind == "tokens" else (2, 6, 2, 2)
    layer = _sn(kind, pool)
    names = ("weight", "bias", "mean_weight", "var_weight", "output_weight", "dyt_alpha")
    params = dict(layer.named_parameters())
    with torch.no_grad():
        params["output_weight"].copy_(torch.tensor([0.3, -0.2, 0.1]))
        params["mean_weight"].copy_(torch.linspace(-0.5, 0.5, len(layer.pool)))
    x = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(1))

    def run(x, *values):
        return functional_call(layer, dict(zip(names, values, strict=True)), (x,))

    inputs = (x.requires_grad_(), *(params[n].detach().clone().requires_grad_() for n in names))
    assert torch.autograd.gradcheck(run, inputs, fast_mode=True)


@pytest.mark.parametrize("kind", ["2d", "tokens"])
@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e30])
def test_mixed_output_never_nan(kind, scale):
    layer = _sn(kind, POOL_2D if kind == "2d" else POOL_TOKENS)
    x = (_input(kind) * scale).requires_grad_()
    y = layer(x)
    y.square().sum().backward()  # 1e30 ** 2 overflows to inf: gradients may be inf, never NaN
    for t in (y, x.grad, layer.output_weight.grad, layer.dyt_alpha.grad):
        assert not torch.isnan(t).any()
    assert torch.isfinite(layer(torch.zeros_like(x))).all()


def test_fixed_pointwise_output_computes_no_statistics():
    layer = _sn("2d", POOL_2D).train()
    layer.fix(output="dyt")
    layer(_input("2d"))
    assert int(layer.num_batches_tracked) == 0 and layer.running_mean.abs().sum() == 0
    layer.fix(output="norm")
    layer(_input("2d"))
    assert int(layer.num_batches_tracked) == 1


def test_fix_validates_and_survives_state_dict():
    layer = _sn("2d", POOL_2D)
    with pytest.raises(ValueError, match="output 'rms' is not one of"):
        layer.fix(output="rms")
    with pytest.raises(ValueError, match="out of range"):
        layer.fix(output=3)
    layer.fix(output="none")
    fresh = SwitchNorm2d(6, pool=POOL_2D, dtype=F64)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.fixed_output == 2
    x = _input("2d")
    assert_close(fresh(x), x, rtol=0, atol=0)
    fresh.unfix()
    assert fresh.fixed_output is None and not torch.equal(fresh(x), x)


def test_pool_of_pointwise_members_only_is_refused():
    with pytest.raises(ValueError, match="point-wise members only"):
        SwitchNorm2d(4, pool=("dyt", "none"))
    with pytest.raises(ValueError, match="unknown token normalizer"):
        SwitchNormTokens(4, pool=("ln", "gn"))


# ---------------------------------------------------------------------------------- tokens
def test_tokens_mixed_output_with_padding_mask():
    """Padded tokens stay out of the BN statistics of a mixed output; a fixed DyT output needs
    no statistics and ignores the mask (point-wise)."""
    layer = _sn("tokens", POOL_TOKENS).train()
    x = _input("tokens")
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[1, 3:] = mask[3, 1:] = True
    y = layer(x, padding_mask=mask)
    changed = x.clone()
    changed[mask] = 1e6  # padding values must not matter at the valid positions
    y_changed = layer(changed, padding_mask=mask)
    assert_close(y[~mask], y_changed[~mask], rtol=1e-12, atol=1e-12)
    layer.fix(output="dyt")
    reference = DynamicTanh(6, 0.7, dtype=F64)
    with torch.no_grad():
        reference.weight.copy_(layer.weight)
        reference.bias.copy_(layer.bias)
    assert_close(layer(x, padding_mask=mask), reference(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="padding_mask must be a bool"):
        layer(x, padding_mask=mask.float())


# -------------------------------------------------------------------------------- reading
def test_switch_ratios_and_ratio_parameters_cover_the_output():
    layer = _sn("2d", POOL_2D)
    entry = switch_ratios(layer)[""]
    assert list(entry["output"]) == ["norm", "dyt", "none"]
    assert entry["output"]["norm"] == pytest.approx(1 / 3)
    assert entry["entropy"]["output"] == pytest.approx(torch.log(torch.tensor(3.0)).item())
    assert entry["margin"]["output"] == pytest.approx(0.0)
    assert entry["fixed"]["output"] is False and entry["dyt_alpha"] == pytest.approx(0.7)
    assert any(p is layer.output_weight for p in ratio_parameters(layer))
    assert not any(p is layer.dyt_alpha for p in ratio_parameters(layer))
    layer.fix(output="dyt")
    entry = switch_ratios(layer)[""]
    assert entry["output"] == {"norm": 0.0, "dyt": 1.0, "none": 0.0}
    assert entry["fixed"]["output"] is True and entry["margin"]["output"] == 1.0


@pytest.mark.parametrize("method", ["sparsestmax", "temperature"])
def test_sparsity_anneals_output_ratios_to_onehot(method):
    torch.manual_seed(0)
    model = nn.Sequential(
        SwitchNorm1d(4, pool=("ln", "bn", "dyt", "none")), SwitchNorm1d(4, pool=("ln", "dyt"))
    ).double()
    with torch.no_grad():
        model[0].output_weight.copy_(torch.tensor([0.1, 0.5, -0.3]))
        model[1].output_weight.copy_(torch.tensor([0.1, 0.4]))
    controller = SparsityController(model, method=method, end=0.5)
    assert controller.status().total == 6  # mean, var and output per layer
    newly = []
    if method == "sparsestmax":  # each ratio vector gets the radius of its own K
        newly += controller.step(0.5 - 1e-9).newly_fixed
        for layer in model:
            output = layer.soft_output_ratios().detach()
            assert float(output.max()) == pytest.approx(1.0, abs=1e-6)
    for progress in (0.25, 0.5, 1.0):
        newly += controller.step(progress).newly_fixed
    assert controller.status().all_fixed
    assert ("0", "output", "dyt") in newly and ("1", "output", "dyt") in newly
    for layer in model:
        assert layer.output_choices[layer.fixed_output] == "dyt"
        assert_close(layer.output_ratios().sum(), torch.tensor(1.0, dtype=F64))


# ------------------------------------------------------------------ plans, finalize, files
def _model() -> nn.Module:
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 1),
        SwitchNorm2d(6, pool=POOL_2D),
        nn.Conv2d(6, 6, 1),
        SwitchNorm2d(6, pool=POOL_2D),
        nn.Conv2d(6, 6, 1),
        SwitchNorm2d(6, pool=("in", "bn", "dyt")),
    ).double()
    for i, output in ((1, "dyt"), (3, "none"), (5, "norm")):
        _randomize(model[i], seed=i)
        model[i].fix("bn", "bn", output=output)
    return model.eval()


def test_plan_round_trip_and_old_plans():
    plan = plan_from_model(_model())
    assert [(c.output, c.choice) for c in plan] == [
        ("dyt", "dyt"), ("none", "none"), ("norm", "bn/bn")
    ]  # fmt: skip
    first = plan.layers[0]
    assert first.dyt_alpha == pytest.approx(0.7) and first.members == POOL_2D
    assert first.output_ratios == {"norm": 0.0, "dyt": 1.0, "none": 0.0}
    assert NormalizerPlan.from_json(plan.to_json()) == plan
    assert NormalizerPlan.from_yaml(plan.to_yaml()) == plan
    old = {k: v for k, v in first.to_dict().items() if k not in ("output", "output_ratios")}
    del old["dyt_alpha"]
    assert LayerChoice.from_dict(old).output == "norm"  # plans without outputs still load
    assert "output" not in LayerChoice("a", "bn", "bn", 4).to_dict()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"output": "relu"}, "unknown output 'relu'"),
        ({"output_ratios": {"norm": 1.0}}, "at least one point-wise member"),
        ({"output_ratios": {"norm": 0.5, "tanh": 0.5}}, "unknown output"),
        ({"output_ratios": {"norm": 0.5, "dyt": 0.6}}, "must sum to 1"),
        ({"output": "none", "output_ratios": {"norm": 0.5, "dyt": 0.5}}, "not among"),
        ({"output": "dyt", "dyt_alpha": None}, "needs dyt_alpha"),
        ({"dyt_alpha": "big"}, "dyt_alpha must be a finite number"),
    ],
)
def test_bad_output_fields_name_the_problem(changes, message):
    base = {
        "name": "a", "mean": "bn", "var": "bn", "num_features": 4, "pool": ("in", "bn"),
        "output": "dyt", "output_ratios": {"norm": 0.2, "dyt": 0.8}, "dyt_alpha": 0.5,
    }  # fmt: skip
    with pytest.raises(ValueError, match=message):
        LayerChoice(**{**base, **changes})


def test_finalize_pointwise_outputs_exactly():
    model = _model()
    final = finalize(model)
    types = [type(final[i]) for i in (1, 3, 5)]
    assert types == [DynamicTanh, nn.Identity, nn.BatchNorm2d]
    assert final[1].alpha.item() == pytest.approx(0.7) and not final[1].channels_last
    x = _input("2d")[:, :3]
    assert_close(final(x), model(x), rtol=0, atol=1e-12)
    plan = plan_from_model(model)
    words = plan_torch_layers(plan)
    assert words == {c.name: describe_norm(final[int(c.name)]) for c in plan}
    assert words["1"] == "DynamicTanh(6)" and words["3"] == "Identity"
    applied = apply_plan(model, plan)
    assert [type(applied[i]) for i in (1, 3, 5)] == types
    assert list(applied.state_dict()) == list(final.state_dict())
    assert applied[1].alpha.item() == pytest.approx(0.7)  # fresh, alpha0 from the plan


def test_finalize_tokens_dyt_and_surgery_passes_alpha0():
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 6), nn.RMSNorm(6))
    model = convert_to_switchnorm(model.double(), token_pool=("ln", "rms", "dyt"), dyt_alpha0=0.2)
    assert [model[i].dyt_alpha.item() for i in (1, 3)] == [0.2, 0.2]
    assert model[3].bias is None  # from nn.RMSNorm
    for i in (1, 3):
        model[i].fix(output="dyt")
    final = finalize(model)
    assert isinstance(final[3], DynamicTanh) and final[3].bias is None and final[3].channels_last
    x = torch.randn(2, 5, 4, dtype=F64)
    assert_close(final(x), model(x), rtol=0, atol=0)
    converted = convert_to_switchnorm(nn.BatchNorm2d(4), pool=("bn", "none"), dyt_alpha0=0.3)
    assert converted.pointwise == ("none",) and converted.dyt_alpha is None


@pytest.mark.parametrize("name", ["ckpt", "ckpt.zip"])
def test_checkpoint_round_trip_with_pointwise_outputs(tmp_path, name):
    spec = {"arch": "mlp", "num_classes": 3, "in_channels": 1, "kwargs": {"input_size": 8}}
    torch.manual_seed(6)
    model = build_model("mlp", num_classes=3, in_channels=1, input_size=8).double()
    model = convert_to_switchnorm(model, pool=("ln", "bn", "dyt", "none"))
    layers = [m for m in model.modules() if isinstance(m, SwitchNorm1d)]
    for layer, output in zip(layers, ("dyt", "none"), strict=True):
        _randomize(layer)
        layer.fix("ln", "ln", output=output)
    model.eval()
    plan = plan_from_model(model)
    path = save_finalized(finalize(model), plan, spec, tmp_path / name)
    loaded, loaded_plan, _ = load_finalized(path, roots=[tmp_path])
    assert loaded_plan == plan
    x = torch.randn(5, 1, 8, dtype=F64)
    assert_close(loaded(x), model(x), rtol=0, atol=1e-12)
