"""The Switchable Normalization kernel: statistics, mixture and a hand-written backward.

Normalization with mixed statistics is a per-(n, c) affine map (SN_SPEC section 7)::

    y = x * scale[n, c] + shift[n, c]

so the forward is one moments pass over x plus one fused ``addcmul`` pass, and the backward needs
only the per-(n, c) sums of dy and dy * x, then ``dx = scale * dy + P * x + Q``. Everything between
the per-(n, c) moments and (scale, shift) is O(N * C) work (``mixture_affine``); the backward
differentiates that small graph with autograd, so the formulas exist exactly once. Only x and the
O(N * C) moments are saved for backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["NORMALIZERS", "MixtureConfig", "mixture_affine", "switch_norm"]

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


def _aggregate(mean: Tensor, var: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Mean and variance over ``dim`` of cells with moments (mean, var): law of total variance."""
    agg_mean = mean.mean(dim, keepdim=True)
    agg_var = var.mean(dim, keepdim=True) + (mean - agg_mean).square().mean(dim, keepdim=True)
    return agg_mean, agg_var


def _statistics(
    kind: str,
    mean: Tensor,
    var: Tensor,
    length: int,
    config: MixtureConfig,
    running_mean: Tensor | None,
    running_var: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """(mean, variance) of one normalizer, broadcastable to (N, C)."""
    n, c = mean.shape
    # Reference mode, (N, C) inputs: the original normalizes over C (LN) or N (BN) with the
    # unbiased estimator; for L > 1 it uses the unbiased IN variance inside the aggregates.
    flat = config.reference and length == 1
    if kind == "in":
        return mean, var
    if kind == "ln":
        mu, sigma = _aggregate(mean, var, 1)
        return mu, sigma * _unbias(c) if flat else sigma
    if kind == "bn":
        if not config.batch_bn:
            return running_mean.unsqueeze(0), running_var.unsqueeze(0)
        mu, sigma = _aggregate(mean, var, 0)
        return mu, sigma * _unbias(n) if flat else sigma
    if kind == "gn":
        g = config.groups
        mu, sigma = _aggregate(mean.view(n, g, c // g), var.view(n, g, c // g), 2)
        if flat:
            sigma = sigma * _unbias(c // g)
        return mu.expand(n, g, c // g).reshape(n, c), sigma.expand(n, g, c // g).reshape(n, c)
    raise ValueError(f"unknown normalizer {kind!r}; choose from {NORMALIZERS}")


def mixture_affine(
    mean: Tensor,
    var: Tensor,
    length: int,
    weight: Tensor | None,
    bias: Tensor | None,
    mean_ratios: Tensor,
    var_ratios: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    config: MixtureConfig,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Per-(n, c) scale and shift of the normalization, plus the batch BN statistics (or None).

    ``mean`` and ``var`` are the per-(n, c) population moments over the ``length`` spatial
    positions. All work here is O(N * C).
    """
    if config.reference and length > 1:
        var = var * _unbias(length)
    mixed_mean = 0
    mixed_var = 0
    batch_mean = batch_var = None
    for k, kind in enumerate(config.kinds):
        mu, sigma = _statistics(kind, mean, var, length, config, running_mean, running_var)
        if kind == "bn" and config.batch_bn:
            batch_mean, batch_var = mu.squeeze(0), sigma.squeeze(0)
        mixed_mean = mixed_mean + mean_ratios[k] * mu
        mixed_var = mixed_var + var_ratios[k] * sigma
    scale = torch.rsqrt(mixed_var + config.eps)
    if weight is not None:
        scale = scale * weight
    shift = -mixed_mean * scale
    if bias is not None:
        shift = shift + bias
    scale = scale.expand_as(mean)
    shift = shift.expand_as(mean)
    return scale, shift, batch_mean, batch_var


# ---------------------------------------------------------------------------- memory passes
# The four full passes over x. On CPU they run through ATen's batch-norm and group-norm kernels
# (vectorized, multi-threaded, no full-size temporaries); elsewhere through generic tensor ops.

_MOMENT_CHUNK = 1 << 18  # elements per group-norm call: its (discarded) output stays in cache


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


def _row_affine(x: Tensor, centre: Tensor | None, scale: Tensor, shift: Tensor) -> Tensor:
    """(x - centre[n, c]) * scale[n, c] + shift[n, c] in one pass over x (centre None: 0)."""
    n, c, length = x.shape
    if x.device.type != "cpu":
        if centre is not None:
            shift = shift - centre * scale
        return torch.addcmul(shift.unsqueeze(2), x, scale.unsqueeze(2))
    # Inference batch norm over N*C channels is the fastest fused per-row affine map on CPU
    # (a broadcasting addcmul is up to 2.5x slower for small maps).
    flat = n * c
    centre = x.new_zeros(flat) if centre is None else centre.reshape(flat)
    y = torch.nn.functional.batch_norm(
        x.view(1, flat, length), centre, x.new_ones(flat),
        scale.reshape(flat), shift.reshape(flat), False, 0.0, 0.0,
    )  # fmt: skip
    return y.view(n, c, length)


def _grad_sums(grad_y: Tensor, x: Tensor, centre: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) sums of dy and of dy * (x - centre), in one pass."""
    n, c, length = x.shape
    if x.device.type != "cpu":
        return grad_y.sum(2), torch.linalg.vecdot(grad_y, x, dim=2) - centre * grad_y.sum(2)
    flat = n * c
    ones = x.new_ones(flat)
    _, sum_dy_xc, sum_dy = torch.ops.aten.native_batch_norm_backward(
        grad_y.view(1, flat, length), x.view(1, flat, length), ones, None, None,
        centre.reshape(flat), ones, True, 0.0, [False, True, True],
    )  # fmt: skip
    return sum_dy.view(n, c), sum_dy_xc.view(n, c)


class _SwitchNormFunction(torch.autograd.Function):
    """y = x * scale + shift with scale, shift from ``mixture_affine``; x has shape (N, C, L)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, x, weight, bias, mean_ratios, var_ratios, running_mean, running_var, config):
        length = x.shape[2]
        if config.needs_moments:
            mean, var = _moments(x)
        else:  # evaluation of a pure-BN mixture: the running estimates are all we need
            mean = var = x.new_zeros(x.shape[:2])
        scale, shift, batch_mean, batch_var = mixture_affine(
            mean, var, length, weight, bias, mean_ratios, var_ratios,
            running_mean, running_var, config,
        )  # fmt: skip
        y = _row_affine(x, None, scale, shift)
        ctx.config = config
        ctx.length = length
        ctx.save_for_backward(
            x, mean, var, weight, bias, mean_ratios, var_ratios, running_mean, running_var
        )
        if batch_mean is None:
            return y, None, None
        batch_mean, batch_var = batch_mean.detach(), batch_var.detach()
        ctx.mark_non_differentiable(batch_mean, batch_var)
        return y, batch_mean, batch_var

    @staticmethod
    @torch.autograd.function.once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_y, _grad_batch_mean, _grad_batch_var):
        x, mean, var, weight, bias, mean_ratios, var_ratios, running_mean, running_var = (
            ctx.saved_tensors
        )
        config, length = ctx.config, ctx.length
        grad_y = grad_y.contiguous()
        # y = scale * (x - mean) + centred_shift: sums around the per-(n, c) mean keep float32
        # gradients accurate for inputs with a large mean.
        sum_dy, sum_dy_xc = _grad_sums(grad_y, x, mean)

        # Differentiate the O(N*C) graph with autograd: d/d(scale) = sum(dy * (x - mean)),
        # d/d(centred_shift) = sum(dy). ``mean`` enters centred_shift and (x - mean) with
        # opposite signs, so it is detached there and those two paths cancel exactly.
        moments_grad = config.needs_moments and ctx.needs_input_grad[0]
        leaves = [mean, var, weight, bias, mean_ratios, var_ratios]
        wanted = [moments_grad, moments_grad] + [ctx.needs_input_grad[i] for i in (1, 2, 3, 4)]
        with torch.enable_grad():
            inputs = [
                t.detach().requires_grad_(w) if t is not None else None
                for t, w in zip(leaves, wanted, strict=True)
            ]
            scale, shift, _, _ = mixture_affine(
                inputs[0], inputs[1], length, *inputs[2:],
                running_mean, running_var, config,
            )  # fmt: skip
            centred_shift = shift + scale * mean
            objective = (scale * sum_dy_xc).sum() + (centred_shift * sum_dy).sum()
            differentiable = [t for t, w in zip(inputs, wanted, strict=True) if w and t is not None]
            grads = iter(torch.autograd.grad(objective, differentiable, allow_unused=True))
        grad = [next(grads) if w and t is not None else None for t, w in zip(inputs, wanted)]
        grad_mean, grad_var = grad[0], grad[1]

        grad_x = None
        if ctx.needs_input_grad[0]:
            scale = scale.detach()
            if grad_mean is None:  # BN from running statistics only: a fixed affine map
                grad_x = _row_affine(grad_y, None, scale, torch.zeros_like(scale))
            else:
                # dx = scale * dy + (2 / L) * dvar * (x - mean) + dmean / L
                grad_x = _row_affine(x, mean, grad_var * (2.0 / length), grad_mean / length)
                grad_x.addcmul_(grad_y, scale.unsqueeze(2))
        return grad_x, grad[2], grad[3], grad[4], grad[5], None, None, None


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

    The batch BN statistics (population variance) are returned when the mixture uses BN batch
    statistics, so the caller can update running estimates; otherwise they are None.
    """
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    if not x3.is_contiguous():
        x3 = x3.contiguous()
    y, batch_mean, batch_var = _SwitchNormFunction.apply(
        x3, weight, bias, mean_ratios, var_ratios, running_mean, running_var, config
    )
    return y.view(x.shape), batch_mean, batch_var
