"""SwitchNormTokens on (N, T, C): exact one-hot layers, masked statistics, surgery, finalize."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sn_core import (
    RMSNormWithBias,
    SwitchNormTokens,
    apply_plan,
    convert_to_switchnorm,
    finalize,
    padding_mask,
    plan_from_model,
)

F64 = torch.float64
POOL = ("in", "ln", "bn", "rms")


def _layer(kind: str, fixed: bool, **kwargs) -> SwitchNormTokens:
    """A float64 token layer that is one-hot on ``kind``: fixed, or by its soft ratios."""
    layer = SwitchNormTokens(6, pool=POOL, dtype=F64, **kwargs)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(6, generator=gen, dtype=F64))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(6, generator=gen, dtype=F64))
        if fixed:
            layer.fix(kind, kind)
        else:
            logits = torch.tensor([0.0 if k == kind else -1e4 for k in POOL], dtype=F64)
            layer.mean_weight.copy_(logits)
            layer.var_weight.copy_(logits)
    return layer


def _inputs(seed: int = 0, shape=(4, 5, 6)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=F64) * 2 + 1


def _compare(layer, reference, x, mask=None, select=None, tol=1e-10):
    """Outputs and gradients (x, weight, bias) of ``layer`` and ``reference`` (a callable on
    (x, weight, bias)), over the positions ``select`` (a bool (N, T) mask) or all of them."""
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    b = None if layer.bias is None else layer.bias.detach().clone().requires_grad_()
    y1 = layer(x1, padding_mask=mask)
    y2 = reference(x2, w, b)
    keep = torch.ones(x.shape[:2], dtype=torch.bool) if select is None else select
    torch.testing.assert_close(y1[keep], y2[keep], rtol=tol, atol=tol)
    grad = torch.randn_like(y1) * keep.unsqueeze(-1)  # downstream ignores the others
    (y1 * grad).sum().backward()
    (y2 * grad).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(layer.weight.grad, w.grad, rtol=tol, atol=tol)
    if b is not None:
        torch.testing.assert_close(layer.bias.grad, b.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("fixed", [True, False])
def test_ln_equals_layernorm(fixed):
    layer = _layer("ln", fixed)
    _compare(layer, lambda x, w, b: nn.functional.layer_norm(x, (6,), w, b, layer.eps), _inputs())


@pytest.mark.parametrize("fixed", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_rms_equals_rmsnorm(fixed, bias):
    layer = _layer("rms", fixed, bias=bias)
    assert (layer.bias is None) == (not bias)

    def reference(x, w, b):
        y = nn.functional.rms_norm(x, (6,), w, layer.eps)
        return y if b is None else y + b

    _compare(layer, reference, _inputs(1))


def _mask(seed: int = 5, shape=(4, 5)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=gen) < 0.4
    mask[0] = False  # one full sample
    mask[1, 1:] = True  # one sample with a single token
    return mask


@pytest.mark.parametrize("fixed", [True, False])
@pytest.mark.parametrize("masked", [True, False])
def test_bn_equals_batchnorm1d_over_the_valid_tokens(fixed, masked):
    layer = _layer("bn", fixed).train()
    mask = _mask() if masked else None
    valid = torch.ones(4, 5, dtype=torch.bool) if mask is None else ~mask
    reference_bn = nn.BatchNorm1d(6, dtype=F64).train()

    def reference(x, w, b):
        with torch.no_grad():
            reference_bn.weight.copy_(w)
            reference_bn.bias.copy_(b)
        flat = x[valid]  # (tokens, C): BatchNorm1d's (N, C) case
        y_valid = nn.functional.batch_norm(
            flat, reference_bn.running_mean, reference_bn.running_var, w, b, True, 0.1, layer.eps
        )
        return torch.zeros_like(x).index_put((valid,), y_valid)

    x = _inputs(2)
    if masked:
        x[mask] = 1e6  # padded values never reach the statistics
    _compare(layer, reference, x, mask=mask, select=valid)
    torch.testing.assert_close(layer.running_mean, reference_bn.running_mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(layer.running_var, reference_bn.running_var, rtol=1e-12, atol=0)
    assert int(layer.num_batches_tracked) == 1
    layer.eval()  # evaluation: the running statistics, as BatchNorm1d
    reference_bn.eval()
    x = _inputs(3)
    with torch.no_grad():
        expected = reference_bn(x.reshape(-1, 6)).view(x.shape)
        torch.testing.assert_close(layer(x, padding_mask=mask), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fixed", [True, False])
def test_in_equals_instance_norm_over_each_samples_valid_tokens(fixed):
    layer = _layer("in", fixed)
    mask = _mask(7)
    mask[:, 1] = False  # instance_norm needs two tokens per sample
    valid = ~mask

    def reference(x, w, b):
        rows = []
        for n in range(x.shape[0]):
            tokens = x[n][valid[n]]  # (T_n, C)
            y = nn.functional.instance_norm(tokens.T.unsqueeze(0), None, None, w, b, eps=layer.eps)
            rows.append(torch.zeros_like(x[n]).index_put((valid[n],), y[0].T))
        return torch.stack(rows)

    x = _inputs(4)
    x[mask] = 1e30
    _compare(layer, reference, x, mask=mask, select=valid, tol=1e-9)


def test_padding_mask_context_reaches_layers_called_with_x_alone():
    layer = _layer("bn", True)
    x, mask = _inputs(5), _mask(9)
    expected = layer(x.clone(), padding_mask=mask)
    model = nn.Sequential(layer)
    x_padded = x.clone()
    x_padded[mask] = 123.0
    with padding_mask(model, mask):
        got = model(x_padded)
    assert layer.padding_mask is None
    torch.testing.assert_close(got[~mask], expected[~mask], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_free_layer_is_finite_on_zeros_and_all_padding_samples(dtype):
    layer = SwitchNormTokens(6, pool=POOL, dtype=dtype).train()
    x = torch.zeros(3, 4, 6, dtype=dtype, requires_grad=True)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[2] = True  # a sample that is all padding
    y = layer(x, padding_mask=mask)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(layer.mean_weight.grad).all()
    assert torch.isfinite(layer.running_var).all()


def test_bad_inputs_are_refused_clearly():
    layer = SwitchNormTokens(6, pool=("ln", "in"))
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        layer(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="'in' needs"):
        layer(torch.randn(3, 6))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        layer(torch.randn(2, 3, 6), padding_mask=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unknown token normalizer"):
        SwitchNormTokens(6, pool=("ln", "gn"))
    with pytest.raises(ValueError, match="population"):
        layer.variance = "reference"


class _Tiny(nn.Module):
    """A pre-norm transformer block plus an RMSNorm head: both kinds of token norm."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.TransformerEncoderLayer(
            16, 2, dim_feedforward=32, dropout=0.0, batch_first=True, norm_first=True
        )
        self.head_norm = nn.RMSNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.head_norm(self.block(x)))


def _randomise_norms(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm | nn.RMSNorm):
                for p in module.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


def test_surgery_and_finalize_round_trip_a_transformer_block():
    torch.manual_seed(0)
    original = _Tiny().double().eval()
    _randomise_norms(original)
    x = torch.randn(2, 7, 16, dtype=F64)
    with torch.no_grad():
        expected = original(x)
    model = convert_to_switchnorm(_copy(original))
    norms = {n: m for n, m in model.named_modules() if isinstance(m, SwitchNormTokens)}
    assert set(norms) == {"block.norm1", "block.norm2", "head_norm"}
    assert all(m.pool == ("ln", "rms") for m in norms.values())
    assert norms["head_norm"].bias is None  # nn.RMSNorm has none
    assert norms["head_norm"].eps == torch.finfo(F64).eps  # its eps=None, as at run time
    norms["block.norm1"].fix("ln", "ln")
    norms["block.norm2"].fix("ln", "ln")
    norms["head_norm"].fix("rms", "rms")
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    final = finalize(model)
    assert type(final.block.norm1) is nn.LayerNorm and type(final.head_norm) is nn.RMSNorm
    assert final.head_norm.eps == torch.finfo(F64).eps
    with torch.no_grad():
        torch.testing.assert_close(final(x), expected, rtol=1e-12, atol=1e-12)
    # A LayerNorm's layer fixed to rms keeps its bias: RMSNormWithBias, same output as the SN.
    # The module path (grad enabled) is the reference: in eval without grad the block's fused
    # kernel would compute LayerNorm whatever its norm modules are, unless they opt out.
    norms["block.norm2"].fix("rms", "rms")
    sn_out = model(x).detach()
    assert not torch.allclose(sn_out, expected)
    with torch.no_grad():
        torch.testing.assert_close(model(x), sn_out, rtol=1e-12, atol=1e-12)
    final = finalize(model)
    assert type(final.block.norm2) is RMSNormWithBias
    with torch.no_grad():
        torch.testing.assert_close(final(x), sn_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final(x).detach(), sn_out, rtol=1e-12, atol=1e-12)
    plan = plan_from_model(model)
    assert {layer.name: layer.mean for layer in plan} == {
        "block.norm1": "ln", "block.norm2": "rms", "head_norm": "rms"
    }  # fmt: skip
    # The plan applied to a fresh (LayerNorm / RMSNorm) model: the same layer types.
    fresh = apply_plan(_Tiny().double(), plan)
    assert [type(m) for m in (fresh.block.norm1, fresh.block.norm2, fresh.head_norm)] == [
        nn.LayerNorm, RMSNormWithBias, nn.RMSNorm
    ]  # fmt: skip
    fresh.load_state_dict(final.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), sn_out, rtol=1e-12, atol=1e-12)


def _copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


def test_an_rmsnorm_finalized_into_a_transformer_block_stays_rmsnorm_in_fused_inference():
    torch.manual_seed(1)
    model = convert_to_switchnorm(
        nn.TransformerEncoderLayer(16, 2, 32, 0.0, batch_first=True, norm_first=True).eval()
    )
    model.norm1.fix("rms", "rms")
    model.norm2.fix("ln", "ln")
    x = torch.randn(2, 5, 16)
    reference = model(x).detach()  # grad enabled: the module path
    final = finalize(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(final(x), reference, rtol=1e-6, atol=1e-6)


def test_finalize_refuses_a_token_choice_without_a_torch_layer():
    model = nn.Sequential(SwitchNormTokens(8, pool=("ln", "bn")))
    model[0].fix("bn", "bn")
    with pytest.raises(ValueError, match=r"layer '0'.*\(bn, bn\)"):
        finalize(model)


def test_surgery_leaves_multi_dim_layernorm_and_token_pool_none_alone():
    model = nn.Sequential(nn.LayerNorm((4, 8)), nn.LayerNorm(8))
    convert_to_switchnorm(model)
    assert type(model[0]) is nn.LayerNorm and isinstance(model[1], SwitchNormTokens)
    other = nn.Sequential(nn.LayerNorm(8), nn.BatchNorm1d(8))
    convert_to_switchnorm(other, token_pool=None)
    assert type(other[0]) is nn.LayerNorm and not isinstance(other[1], nn.BatchNorm1d)


def test_float32_tokens_with_a_large_mean_normalize_as_accurately_as_torch():
    torch.manual_seed(4)
    x32 = torch.randn(4, 8, 32) + 1e5  # exactly representable in float64 too
    torch_layers = {
        "ln": lambda x: nn.functional.layer_norm(x, (32,)),
        "bn": lambda x: nn.functional.batch_norm(x.reshape(-1, 32), None, None, training=True).view(
            x.shape
        ),
        "in": lambda x: nn.functional.instance_norm(x.transpose(1, 2)).transpose(1, 2),
    }
    for kind, torch_layer in torch_layers.items():
        layer = SwitchNormTokens(32, pool=("ln", "rms", "bn", "in"), affine=False)
        logits = torch.tensor([0.0 if k == kind else -1e4 for k in layer.pool])
        with torch.no_grad():
            layer.mean_weight.copy_(logits)
            layer.var_weight.copy_(logits)
            exact = torch_layer(x32.double())
            error = (layer(x32).double() - exact).abs().max()
            torch_error = (torch_layer(x32).double() - exact).abs().max()
        # centred before scaling: within torch's own error (x * rstd - mean * rstd is not)
        assert error <= torch_error, (kind, float(error), float(torch_error))


def test_soft_token_mixture_matches_its_definition_including_ratio_gradients():
    """All four statistics mixed, masked, float64: outputs and x / ratio-logit gradients against
    the definition written independently (per-sample loops, rms as mean(x^2))."""
    torch.manual_seed(6)
    layer = SwitchNormTokens(6, pool=POOL, dtype=F64).train()
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.2, -0.3, 0.5, 0.1]))
        layer.var_weight.copy_(torch.tensor([-0.1, 0.4, 0.2, 0.6]))
    x, mask = _inputs(8), _mask(10)
    mask[:, 1] = False
    valid = ~mask
    mean_logits = layer.mean_weight.detach().clone().requires_grad_()
    var_logits = layer.var_weight.detach().clone().requires_grad_()

    def reference(x):
        w_mu, w_var = mean_logits.softmax(0), var_logits.softmax(0)
        tokens = x[valid]
        bn_mean, bn_var = tokens.mean(0), tokens.var(0, unbiased=False)
        out = []
        for n in range(x.shape[0]):
            xs = x[n]
            own = xs[valid[n]]
            in_mean, in_var = own.mean(0), own.var(0, unbiased=False)
            ln_mean = xs.mean(1, keepdim=True)
            ln_var = xs.var(1, unbiased=False, keepdim=True)
            rms_var = (xs * xs).mean(1, keepdim=True)
            mean = w_mu[0] * in_mean + w_mu[1] * ln_mean + w_mu[2] * bn_mean
            var = w_var[0] * in_var + w_var[1] * ln_var + w_var[2] * bn_var + w_var[3] * rms_var
            out.append((xs - mean) / torch.sqrt(var + layer.eps))
        return torch.stack(out)

    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = layer(x1, padding_mask=mask), reference(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(y1)
    (y1 * grad).sum().backward()
    (y2 * grad).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.mean_weight.grad, mean_logits.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.var_weight.grad, var_logits.grad, rtol=1e-9, atol=1e-9)


def test_plan_torch_layers_in_a_model_names_the_token_layers_apply_plan_builds():
    """The plan alone describes an (ln, ln) choice as a convolutional network's GroupNorm(1, C);
    in the network it is for, a token layer's is the LayerNorm apply_plan builds there."""
    from sn_core import LayerChoice, NormalizerPlan, plan_torch_layers

    model = nn.Sequential(nn.LayerNorm(8), nn.LayerNorm(8), nn.BatchNorm1d(8))
    plan = NormalizerPlan(
        [
            LayerChoice(name="0", mean="ln", var="ln", num_features=8, pool=("ln", "rms")),
            LayerChoice(name="1", mean="rms", var="rms", num_features=8, pool=("ln", "rms")),
            LayerChoice(name="2", mean="ln", var="ln", num_features=8, pool=("bn", "ln")),
        ]
    )
    described = plan_torch_layers(plan, model=model)
    assert described == {"0": "LayerNorm(8)", "1": "RMSNormWithBias(8)", "2": "GroupNorm(1, 8)"}
    assert plan_torch_layers(plan)["0"] == "GroupNorm(1, 8)"  # without the model: conv layout
    assert type(model[0]) is nn.LayerNorm  # the model itself is left as it was
