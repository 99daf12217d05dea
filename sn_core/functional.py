"""The Switchable Normalization kernel: statistics, mixture and a hand-written backward.

Normalization with mixed statistics is a per-(n, c) affine map (SN_SPEC section 7)::

    y = scale[n, c] * (x - m[n, c]) + centred_shift[n, c]        (m: the per-(n, c) mean)

so the forward is one moments pass over x plus one fused affine pass, and the backward needs only
the per-(n, c) sums of dy and dy * (x - m), then ``dx = scale * dy + P * (x - m) + Q``. Everything
between the per-(n, c) moments and (scale, shift) is O(N * C) work, written out by hand in both
directions (``_Mixture``) because at small feature maps the per-op overhead of a generic autograd
graph would cost more than the passes over x. Only x and the O(N * C) moments are saved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["NORMALIZERS", "MixtureConfig", "mixture_statistics", "switch_norm"]

NORMALIZERS = ("in", "ln", "bn", "gn")


@dataclass(frozen=True)
class MixtureConfig:
    """What a layer's forward mixes. Hashable, so it can ride on the autograd context.

    ``batch_bn``: the BN term comes from the batch (training, or no running statistics) instead of
    the running estimates. ``reference``: the original code's variance conventions (SN_SPEC 4).
    """

    kinds: tuple[str, ...]
    eps: float
    groups: int = 1
    batch_bn: bool = True
    reference: bool = False

    @property
    def needs_moments(self) -> bool:
        return self.batch_bn or any(kind != "bn" for kind in self.kinds)


def _unbias(count: int) -> float:
    return count / (count - 1) if count > 1 else 1.0


# Reduction layout of each sample-based normalizer over an (N, C) grid of cells:
# (view of the grid, dimension to aggregate over).
def _grid(kind: str, shape: tuple[int, int], groups: int) -> tuple[tuple[int, ...], int]:
    n, c = shape
    if kind == "ln":
        return (n, c), 1
    if kind == "bn":
        return (n, c), 0
    return (n, groups, c // groups), 2  # gn


class _Mixture:
    """The O(N * C) part of SN: per-normalizer statistics, their mixture, scale and shift.

    Built from the per-(n, c) moments in the forward; ``backward`` maps the gradients of
    (scale, centred shift) back to the moments, the affine parameters and the ratios.
    """

    def __init__(self, mean, var, length, weight, bias, mean_ratios, var_ratios, rm, rv, config):
        self.config, self.length = config, length
        self.mean, self.weight = mean, weight
        self.var_factor = _unbias(length) if config.reference and length > 1 else 1.0
        var_eff = var * self.var_factor if self.var_factor != 1.0 else var
        self.mean_ratios, self.var_ratios = mean_ratios.unbind(), var_ratios.unbind()
        self.stats: list[tuple[Tensor, Tensor, float]] = []  # (mu, sigma, flat unbias factor)
        self.batch_mean = self.batch_var = None
        mixed_mean = mixed_var = None
        for k, kind in enumerate(config.kinds):
            mu, sigma, factor = self._statistics(kind, mean, var_eff, rm, rv)
            self.stats.append((mu, sigma, factor))
            if kind == "bn" and config.batch_bn:
                self.batch_mean, self.batch_var = mu.view(-1), sigma.view(-1)
            if mixed_mean is None:
                mixed_mean, mixed_var = self.mean_ratios[k] * mu, self.var_ratios[k] * sigma
            else:
                mixed_mean = torch.addcmul(mixed_mean, self.mean_ratios[k], mu)
                mixed_var = torch.addcmul(mixed_var, self.var_ratios[k], sigma)
        self.mixed_mean = mixed_mean.expand_as(mean)
        self.rstd = torch.rsqrt(mixed_var + config.eps).expand_as(mean)
        self.scale = self.rstd * weight if weight is not None else self.rstd
        shift = -self.mixed_mean * self.scale
        self.shift = shift + bias if bias is not None else shift

    def _statistics(self, kind, mean, var, running_mean, running_var):
        """(mean, variance, unbias factor) of one normalizer, broadcastable to (N, C)."""
        if kind == "in":
            return mean, var, 1.0
        if kind == "bn" and not self.config.batch_bn:
            return running_mean.view(1, -1), running_var.view(1, -1), 1.0
        shape, dim = _grid(kind, mean.shape, self.config.groups)
        cells_mean, cells_var = mean.view(shape), var.view(shape)
        mu = cells_mean.mean(dim, keepdim=True)
        sigma = cells_var.mean(dim, keepdim=True) + (cells_mean - mu).square().mean(dim, True)
        # Reference mode on (N, C) inputs: the original's unbiased estimator over the cells.
        factor = _unbias(shape[dim]) if self.config.reference and self.length == 1 else 1.0
        if factor != 1.0:
            sigma = sigma * factor
        if kind == "gn":
            mu, sigma = (
                mu.expand(shape).reshape(mean.shape),
                sigma.expand(shape).reshape(mean.shape),
            )
        return mu, sigma, factor

    def backward(self, sum_dy, sum_dy_xc, want_moments, want_weight, want_bias, want_ratios):
        """Gradients from d/d(scale) = sum(dy * (x - m)) and d/d(centred_shift) = sum(dy).

        Returns (grad_mean, grad_var, grad_weight, grad_bias, grad_mean_ratios, grad_var_ratios)
        with None where not wanted.
        """
        config, mean = self.config, self.mean
        # y = scale * (x - m) + shift + scale * m: the centred form keeps float32 accurate.
        grad_scale = sum_dy_xc - (self.mixed_mean - mean) * sum_dy
        grad_mixed_mean = -self.scale * sum_dy
        grad_bias = sum_dy.sum(0) if want_bias else None
        grad_weight = (grad_scale * self.rstd).sum(0) if want_weight else None
        grad_rstd = grad_scale * self.weight if self.weight is not None else grad_scale
        grad_mixed_var = -0.5 * grad_rstd * self.rstd.pow(3)

        grad_ratios = (None, None)
        if want_ratios:
            grad_ratios = (
                torch.stack([(grad_mixed_mean * mu).sum() for mu, _, _ in self.stats]),
                torch.stack([(grad_mixed_var * sigma).sum() for _, sigma, _ in self.stats]),
            )
        grad_mean = grad_var = None
        if want_moments:
            grad_mean, grad_var = torch.zeros_like(mean), torch.zeros_like(mean)
            for k, kind in enumerate(config.kinds):
                g_mu = self.mean_ratios[k] * grad_mixed_mean
                g_sigma = self.var_ratios[k] * grad_mixed_var
                if kind == "in":
                    grad_mean += g_mu
                    grad_var += g_sigma
                elif kind != "bn" or config.batch_bn:
                    self._aggregate_backward(kind, k, g_mu, g_sigma, grad_mean, grad_var)
            if self.var_factor != 1.0:
                grad_var *= self.var_factor
        return grad_mean, grad_var, grad_weight, grad_bias, *grad_ratios

    def _aggregate_backward(self, kind, k, g_mu, g_sigma, grad_mean, grad_var):
        """Accumulate the moments' gradients of one aggregated normalizer (LN, BN or GN)."""
        mu, _, factor = self.stats[k]
        shape, dim = _grid(kind, grad_mean.shape, self.config.groups)
        count = shape[dim]
        g_mu_total = g_mu.view(shape).sum(dim, keepdim=True)
        g_sigma_total = g_sigma.view(shape).sum(dim, keepdim=True)
        if factor != 1.0:
            g_sigma_total = g_sigma_total * factor
        cells_mean = self.mean.view(shape)
        if kind == "gn":  # stored expanded to (N, C); one value per group suffices
            mu = mu.view(shape)[..., :1]
        # mu = mean(m); sigma = mean(v) + mean((m - mu)^2): the mu path of the second term
        # vanishes because the deviations sum to zero.
        grad_mean.view(shape).add_(
            g_mu_total / count + g_sigma_total * (2.0 / count) * (cells_mean - mu)
        )
        grad_var.view(shape).add_(g_sigma_total / count)


def mixture_statistics(mean, var, length, weight, bias, mean_ratios, var_ratios, rm, rv, config):
    """Per-(n, c) (scale, shift) and batch BN (mean, var) from per-(n, c) moments (differentiable
    with plain autograd; used by tests and the reference path)."""
    mix = _Mixture(mean, var, length, weight, bias, mean_ratios, var_ratios, rm, rv, config)
    return mix.scale, mix.shift, mix.batch_mean, mix.batch_var


# ---------------------------------------------------------------------------- memory passes
# The full passes over x. On CPU they run through ATen's batch-norm and group-norm kernels
# (vectorized, multi-threaded, no full-size temporaries); elsewhere through generic tensor ops.

_MOMENT_CHUNK = 1 << 19  # elements per group-norm call: its (discarded) output stays in cache
_CONSTANTS: dict = {}


def _filled(value: float, size: int, like: Tensor) -> Tensor:
    """A cached read-only vector of ``size`` copies of ``value`` (avoids an allocation per call)."""
    key = (value, like.device, like.dtype)
    cached = _CONSTANTS.get(key)
    if cached is None or cached.numel() < size:
        with torch.inference_mode(False):
            cached = torch.full((max(size, 1024),), value, device=like.device, dtype=like.dtype)
        _CONSTANTS[key] = cached
    return cached[:size]


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) mean and population variance of x (N, C, L), stable for large means.

    ``torch.var_mean`` over the last dimension is ~15x slower on CPU than the vectorized Welford
    moments of the group-norm kernel. With one group per row and eps=0 that kernel returns the
    mean and 1/sqrt(var) (inf for a constant row, which maps back to var = 0). It also writes a
    normalized output we do not need, so rows are processed in cache-sized chunks.
    """
    n, c, length = x.shape
    if x.device.type != "cpu":
        var, mean = torch.var_mean(x, dim=2, correction=0)
        return mean, var
    rows = x.view(n * c, 1, length)
    step = max(1, _MOMENT_CHUNK // max(length, 1))
    means, rstds = [], []
    for start in range(0, n * c, step):
        chunk = rows[start : start + step]
        _, mean, rstd = torch.native_group_norm(
            chunk, None, None, chunk.shape[0], 1, length, 1, 0.0
        )
        means.append(mean)
        rstds.append(rstd)
    mean = means[0] if len(means) == 1 else torch.cat(means)
    rstd = rstds[0] if len(rstds) == 1 else torch.cat(rstds)
    return mean.view(n, c), rstd.view(n, c).square().reciprocal()


def _row_affine(x: Tensor, centre: Tensor | None, scale: Tensor, shift: Tensor | None) -> Tensor:
    """(x - centre[n, c]) * scale[n, c] + shift[n, c] in one pass over x (None: 0).

    The result has x's elements in x's order but not necessarily its shape (on CPU it is
    (1, N*C, L)): callers view it, because a view made inside an autograd Function could not be
    modified in place afterwards (``nn.ReLU(inplace=True)``).
    """
    n, c, length = x.shape
    flat = n * c
    if x.device.type != "cpu":
        if centre is not None:
            shift = -centre * scale if shift is None else shift - centre * scale
        if shift is None:
            return x * scale.unsqueeze(2)
        return torch.addcmul(shift.unsqueeze(2), x, scale.unsqueeze(2))
    # Inference batch norm over N*C channels is the fastest fused per-row affine map on CPU
    # (a broadcasting addcmul is up to 2.5x slower for small maps).
    y = torch.nn.functional.batch_norm(
        x.view(1, flat, length),
        _filled(0.0, flat, x) if centre is None else centre.reshape(flat),
        _filled(1.0, flat, x),
        scale.reshape(flat),
        _filled(0.0, flat, x) if shift is None else shift.reshape(flat),
        False, 0.0, 0.0,
    )  # fmt: skip
    return y


def _grad_sums(grad_y: Tensor, x: Tensor, centre: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) sums of dy and of dy * (x - centre), in one pass."""
    n, c, length = x.shape
    if x.device.type != "cpu":
        sum_dy = grad_y.sum(2)
        return sum_dy, torch.linalg.vecdot(grad_y, x, dim=2) - centre * sum_dy
    flat = n * c
    ones = _filled(1.0, flat, x)
    _, sum_dy_xc, sum_dy = torch.ops.aten.native_batch_norm_backward(
        grad_y.view(1, flat, length), x.view(1, flat, length), ones, None, None,
        centre.reshape(flat), ones, True, 0.0, [False, True, True],
    )  # fmt: skip
    return sum_dy.view(n, c), sum_dy_xc.view(n, c)


def _forward(x, weight, bias, mean_ratios, var_ratios, running_mean, running_var, config):
    length = x.shape[2]
    if config.needs_moments:
        mean, var = _moments(x)
    else:  # evaluation of a pure-BN mixture: the running estimates are all we need
        mean = var = _filled(0.0, x.shape[0] * x.shape[1], x).view(x.shape[:2])
    mix = _Mixture(mean, var, length, weight, bias, mean_ratios, var_ratios,
                   running_mean, running_var, config)  # fmt: skip
    return _row_affine(x, None, mix.scale, mix.shift), mix, var


class _SwitchNormFunction(torch.autograd.Function):
    """y = x * scale + shift with scale, shift from ``_Mixture``; x has shape (N, C, L)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, x, weight, bias, mean_ratios, var_ratios, running_mean, running_var, config):
        y, mix, var = _forward(
            x, weight, bias, mean_ratios, var_ratios, running_mean, running_var, config
        )
        ctx.mix = mix
        ctx.save_for_backward(x, running_mean, running_var)
        if mix.batch_mean is None:
            return y, None, None
        ctx.mark_non_differentiable(mix.batch_mean, mix.batch_var)
        return y, mix.batch_mean, mix.batch_var

    @staticmethod
    @torch.autograd.function.once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_y, _grad_batch_mean, _grad_batch_var):
        x, _, _ = ctx.saved_tensors  # running stats: saved only to detect in-place updates
        mix = ctx.mix
        needs = ctx.needs_input_grad
        grad_y = grad_y.contiguous().view(x.shape)
        sum_dy, sum_dy_xc = _grad_sums(grad_y, x, mix.mean)
        want_moments = needs[0] and mix.config.needs_moments
        grad_mean, grad_var, grad_weight, grad_bias, grad_mr, grad_vr = mix.backward(
            sum_dy, sum_dy_xc, want_moments, needs[1], needs[2], needs[3] or needs[4]
        )
        grad_x = None
        if needs[0]:
            if grad_mean is None:  # BN from running statistics only: a fixed affine map
                grad_x = _row_affine(grad_y, None, mix.scale, None)
            else:
                # dx = scale * dy + (2 / L) * dvar * (x - m) + dmean / L
                grad_x = _row_affine(
                    x, mix.mean, grad_var * (2.0 / mix.length), grad_mean / mix.length
                )
                grad_x = grad_x.view(x.shape).addcmul_(grad_y, mix.scale.unsqueeze(2))
            grad_x = grad_x.view(x.shape)
        return grad_x, grad_weight, grad_bias, grad_mr, grad_vr, None, None, None


def switch_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean_ratios: Tensor,
    var_ratios: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    config: MixtureConfig,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Switchable Normalization of ``x`` (N, C, *). Returns (y, batch BN mean, batch BN var).

    The batch BN statistics (population variance, detached) are returned when the mixture uses
    BN batch statistics, so the caller can update running estimates; otherwise they are None.
    """
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    if not x3.is_contiguous():
        x3 = x3.contiguous()
    inputs = (x3, weight, bias, mean_ratios, var_ratios, running_mean, running_var)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        y, batch_mean, batch_var = _SwitchNormFunction.apply(*inputs, config)
    else:  # inference: no autograd bookkeeping
        y, mix, _ = _forward(*inputs, config)
        batch_mean, batch_var = mix.batch_mean, mix.batch_var
    return y.view(x.shape), batch_mean, batch_var
