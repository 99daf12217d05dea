"""A hand-written autograd function for token layers whose pool is per token (ln, rms).

Every statistic of LN and RMS is per token over C, so the mixture is a per-token affine map of
the token's moments (m, v): ``t = (x - M) * R`` with ``M = r_ln * m`` (RMS's mean is 0) and
``R = 1 / sqrt(r'_ln * v + r'_rms * (v + m^2) + eps)``, then ``y = t * weight + bias``. The
forward is torch's fused layer-norm kernel (moments and the centred rows) plus two elementwise
passes; the backward is written out from the per-token sums ``sum_c(g)`` and ``sum_c(g * t)``
(``g = dy * weight``) and needs only ``t``: ``x - m = t / R + (M - m)``. Autograd of the
generic graph keeps three full-size tensors and runs many more passes
(docs/sn-spec.md section 8).

On CPU (float32, float64) with the native kernel selected (``sn_core.functional.kernel()``) the
layer is one C++ op whose autograd node is C++ too (``torch.ops.normsearch_cpu.token_mixture``,
sn_core/csrc/token_norm.cpp): the moments and the output in two passes over x, the two row sums
and dx in two more, x and four doubles per token saved; given logits and a temperature it takes
the ratios' softmax itself. Under ``torch.compile`` the torch version below runs (Dynamo traces
it; the C++ op has no fake kernel).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional

__all__ = ["PER_TOKEN_KINDS", "native_token_kernel_applies", "per_token_mixture"]

PER_TOKEN_KINDS = frozenset({"ln", "rms"})


def _forward(x, weight, bias, mean_ratios, var_ratios, kinds, eps):
    channels = x.shape[-1]
    tiny = torch.finfo(x.dtype).tiny
    centred, m, rstd = torch.native_layer_norm(x, (channels,), None, None, tiny)
    v = torch.clamp(rstd.square().reciprocal() - tiny, min=0.0)
    mixed_mean = torch.zeros_like(m)
    mixed_var = torch.zeros_like(m)
    for k, kind in enumerate(kinds):
        if kind == "ln":
            mixed_mean = mixed_mean + mean_ratios[k] * m
            mixed_var = mixed_var + var_ratios[k] * v
        else:  # rms: mean 0, variance E[x^2]
            mixed_var = mixed_var + var_ratios[k] * (v + m * m)
    r = torch.rsqrt(mixed_var + eps)
    # t = (x - M) * R = centred * (R / rstd) + (m - M) * R; centred = (x - m) * rstd
    t = torch.addcmul((m - mixed_mean) * r, centred, r / rstd)
    if weight is None:
        y = t if bias is None else t + bias
    elif bias is None:
        y = t * weight
    else:
        y = torch.addcmul(bias, t, weight)
    return y, t, m, v, mixed_mean, r


class _PerTokenMixture(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, mean_ratios, var_ratios, kinds, eps):
        y, t, m, v, mixed_mean, r = _forward(x, weight, bias, mean_ratios, var_ratios, kinds, eps)
        ctx.kinds = kinds
        ctx.save_for_backward(t, weight, m, v, mixed_mean, r, mean_ratios, var_ratios)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        t, weight, m, v, mixed_mean, r, mean_ratios, var_ratios = ctx.saved_tensors
        needs = ctx.needs_input_grad
        channels = t.shape[-1]
        dy = dy.contiguous()
        g = dy if weight is None else dy * weight
        sum_g = g.sum(-1, keepdim=True)
        sum_gt = torch.linalg.vecdot(g, t, dim=-1).unsqueeze(-1)
        grad_mixed_mean = -r * sum_g
        grad_mixed_var = (-0.5 * r * r) * sum_gt  # dL/dR * dR/dV, dL/dR = sum(g * t) / R
        grad_m = torch.zeros_like(m)
        grad_v = torch.zeros_like(m)
        grad_mr = grad_vr = None
        want_ratios = needs[3] or needs[4]
        mean_parts, var_parts = [], []
        for k, kind in enumerate(ctx.kinds):
            if kind == "ln":
                grad_m = grad_m + mean_ratios[k] * grad_mixed_mean
                grad_v = grad_v + var_ratios[k] * grad_mixed_var
                mu, sigma = m, v
            else:
                grad_v = grad_v + var_ratios[k] * grad_mixed_var
                grad_m = grad_m + (2.0 * var_ratios[k]) * grad_mixed_var * m
                mu, sigma = None, v + m * m
            if want_ratios:
                mean_parts.append(
                    (grad_mixed_mean * mu).sum() if mu is not None else grad_m.new_zeros(())
                )
                var_parts.append((grad_mixed_var * sigma).sum())
        if want_ratios:
            grad_mr, grad_vr = torch.stack(mean_parts), torch.stack(var_parts)
        grad_x = None
        if needs[0]:
            # dx = R g + dL/dm / C + (2 / C) dL/dv (x - m), with x - m = t / R + (M - m)
            scale_t = (2.0 / channels) * grad_v / r
            shift = grad_m / channels + (2.0 / channels) * grad_v * (mixed_mean - m)
            grad_x = torch.addcmul(shift, t, scale_t).addcmul_(g, r)
        rows = t.reshape(-1, channels)
        grad_weight = grad_bias = None
        if weight is not None and needs[1]:
            grad_weight = torch.linalg.vecdot(dy.reshape(-1, channels), rows, dim=0)
        if ctx.has_bias and needs[2]:
            grad_bias = dy.reshape(-1, channels).sum(0)
        return grad_x, grad_weight, grad_bias, grad_mr, grad_vr, None, None


def native_token_kernel_applies(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> bool:
    """Where the channel-first kernel would run (``functional._native_applies``), with the
    affine parameters in x's dtype, and not while being compiled (the op has no fake kernel)."""
    if not functional._native_applies(x) or torch.compiler.is_compiling():
        return False
    return all(p is None or p.dtype == x.dtype for p in (weight, bias))


def per_token_mixture(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean_ratios: Tensor,
    var_ratios: Tensor,
    kinds: tuple[str, ...],
    eps: float,
    temperature: float | None = None,
) -> Tensor:
    """SN over the last dimension of ``x`` for a pool of per-token kinds (``PER_TOKEN_KINDS``).

    With ``temperature`` the two ratio arguments are logits and the ratios are
    ``softmax(logits / temperature)``: the native op takes that softmax inside its own node.
    """
    x = x.contiguous()
    if native_token_kernel_applies(x, weight, bias):
        codes = functional._kind_codes(kinds)
        return torch.ops.normsearch_cpu.token_mixture(
            x, weight, bias, mean_ratios, var_ratios, codes, eps, temperature
        )
    if temperature is not None:
        mean_ratios = torch.softmax(mean_ratios / temperature, dim=-1)
        var_ratios = torch.softmax(var_ratios / temperature, dim=-1)
    inputs = (x, weight, bias, mean_ratios, var_ratios)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _PerTokenMixture.apply(*inputs, kinds, eps)
    return _forward(*inputs, kinds, eps)[0]
