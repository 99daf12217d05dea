"""The O(N * C) part of Switchable Normalization, forward and backward, written out by hand.

From the per-(n, c) moments (mean m, population variance v) of the input, every normalizer's
statistics are exact aggregates (law of total variance, docs/sn-spec.md section 1); their
ratio-weighted mixture gives the per-(n, c) ``scale`` and ``shift`` of ``y = scale * x + shift``.

The code is written against an array namespace ``xp`` (NumPy or torch): on CPU the kernel runs
it on NumPy views of the tensors, whose per-operation overhead is ~4x lower than torch's, which
matters because these arrays are tiny while a layer runs thousands of times; on other devices it
runs on torch tensors. Only operators and functions the two share are used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .vocabulary import NORMALIZERS, POOL_MEMBERS, STATISTIC_MEMBERS

__all__ = ["NORMALIZERS", "POOL_MEMBERS", "Mixture", "MixtureConfig"]


@dataclass(frozen=True)
class MixtureConfig:
    """What a layer's forward mixes. Hashable, so it can ride on the autograd context.

    ``batch_bn``: the BN term comes from the batch (training, or no running statistics) instead of
    the running estimates. ``reference``: the original code's variance conventions
    (docs/sn-spec.md section 4).
    """

    kinds: tuple[str, ...]
    eps: float
    groups: int = 1
    batch_bn: bool = True
    reference: bool = False
    # Derived in __post_init__ (a plain field: functools.cached_property takes a lock, which
    # torch.compile cannot trace).
    needs_moments: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.kinds if kind not in STATISTIC_MEMBERS]
        if unknown:
            raise ValueError(f"unknown normalizer(s) {unknown}; choose from {STATISTIC_MEMBERS}")
        needs = self.batch_bn or any(kind != "bn" for kind in self.kinds)
        object.__setattr__(self, "needs_moments", needs)


def _unbias(count: int) -> float:
    return count / (count - 1) if count > 1 else 1.0


def _grid(kind: str, shape: tuple[int, int], groups: int) -> tuple[tuple[int, ...], int]:
    """How an aggregated normalizer sees the (N, C) cells: (view shape, axis to reduce)."""
    n, c = shape
    if kind in ("ln", "rms"):
        return (n, c), 1
    if kind == "bn":
        return (n, c), 0
    return (n, groups, c // groups), 2  # gn


def _mean(a, axis: int):
    return a.sum(axis=axis, keepdims=True) * (1.0 / a.shape[axis])


class Mixture:
    """Statistics, mixture, scale and shift of one SN forward; ``backward`` inverts it.

    Arguments are ``xp`` arrays: ``mean``/``var`` (N, C) moments over ``length`` positions,
    ``weight``/``bias`` (C,) or None, ``mean_ratios``/``var_ratios`` sequences of K scalars in
    ``config.kinds`` order, running statistics (C,) (read only when BN uses them).
    """

    def __init__(
        self, xp, mean, var, length, weight, bias, mean_ratios, var_ratios, rm, rv, config
    ):
        self.xp, self.config, self.length = xp, config, length
        self.mean, self.weight, self.bias = mean, weight, bias
        self.mean_ratios, self.var_ratios = mean_ratios, var_ratios
        self.var_factor = _unbias(length) if config.reference and length > 1 else 1.0
        var_eff = var * self.var_factor if self.var_factor != 1.0 else var
        self.stats = []  # per kind: (mu, sigma, unbias factor of the aggregate)
        self.batch_mean = self.batch_var = None
        mixed_mean = mixed_var = 0.0
        for k, kind in enumerate(config.kinds):
            mu, sigma, factor = self._statistics(kind, mean, var_eff, rm, rv)
            self.stats.append((mu, sigma, factor))
            if kind == "bn" and config.batch_bn:
                self.batch_mean, self.batch_var = mu.reshape(-1), sigma.reshape(-1)
            mixed_mean = mixed_mean + mean_ratios[k] * mu
            mixed_var = mixed_var + var_ratios[k] * sigma
        shape = mean.shape
        self.mixed_mean = xp.broadcast_to(mixed_mean, shape)
        self.rstd = xp.broadcast_to(1.0 / xp.sqrt(mixed_var + config.eps), shape)
        self.scale = self.rstd * weight if weight is not None else self.rstd
        self.shift = (
            bias - self.mixed_mean * self.scale
            if bias is not None
            else (-self.mixed_mean * self.scale)
        )

    @property
    def centred_shift(self):
        """shift + scale * m: ``y = scale * (x - m) + centred_shift`` avoids cancelling terms."""
        shift = -(self.mixed_mean - self.mean) * self.scale
        return shift + self.bias if self.bias is not None else shift

    def _statistics(self, kind, mean, var, running_mean, running_var):
        """(mean, variance, unbias factor) of one normalizer, broadcastable to (N, C)."""
        if kind == "in":
            return mean, var, 1.0
        if kind == "bn" and not self.config.batch_bn:
            return running_mean.reshape(1, -1), running_var.reshape(1, -1), 1.0
        if kind == "rms":  # uncentred: mean 0, variance E[x^2] = mean over C of (v + m^2)
            second = _mean(var + mean * mean, 1)
            return self.xp.zeros_like(second), second, 1.0
        shape, axis = _grid(kind, mean.shape, self.config.groups)
        cells_mean = mean.reshape(shape)
        mu = _mean(cells_mean, axis)
        deviation = cells_mean - mu
        sigma = _mean(var.reshape(shape) + deviation * deviation, axis)
        # Reference mode on (N, C) inputs: the original's unbiased estimator over the cells.
        factor = _unbias(shape[axis]) if self.config.reference and self.length == 1 else 1.0
        if factor != 1.0:
            sigma = sigma * factor
        if kind == "gn":
            broadcast = self.xp.broadcast_to
            mu = broadcast(mu, shape).reshape(mean.shape)
            sigma = broadcast(sigma, shape).reshape(mean.shape)
        return mu, sigma, factor

    def backward(self, sum_dy, sum_dy_xc, want_moments, want_weight, want_bias, want_ratios):
        """Gradients from d/d(scale) = sum(dy * (x - m)) and d/d(centred shift) = sum(dy).

        Returns (grad_mean, grad_var, grad_weight, grad_bias, grad_mean_ratios, grad_var_ratios),
        None where not wanted.
        """
        xp, config = self.xp, self.config
        # y = scale * (x - m) + (shift + scale * m): sums around m keep float32 accurate.
        grad_scale = sum_dy_xc - (self.mixed_mean - self.mean) * sum_dy
        grad_mixed_mean = -self.scale * sum_dy
        grad_bias = sum_dy.sum(axis=0) if want_bias else None
        grad_weight = (grad_scale * self.rstd).sum(axis=0) if want_weight else None
        grad_rstd = grad_scale * self.weight if self.weight is not None else grad_scale
        grad_mixed_var = (-0.5 * grad_rstd) * (self.rstd * self.rstd * self.rstd)

        grad_ratios = (None, None)
        if want_ratios:
            grad_ratios = (
                xp.stack([(grad_mixed_mean * mu).sum() for mu, _, _ in self.stats]),
                xp.stack([(grad_mixed_var * sigma).sum() for _, sigma, _ in self.stats]),
            )
        grad_mean = grad_var = None
        if want_moments:
            grad_mean, grad_var = xp.zeros_like(self.mean), xp.zeros_like(self.mean)
            for k, kind in enumerate(config.kinds):
                g_mu = self.mean_ratios[k] * grad_mixed_mean
                g_sigma = self.var_ratios[k] * grad_mixed_var
                if kind == "in":
                    grad_mean += g_mu
                    grad_var += g_sigma
                elif kind == "rms":  # sigma = mean_c(v + m^2); its mean is a constant 0
                    g_total = g_sigma.sum(axis=1, keepdims=True) * (1.0 / self.mean.shape[1])
                    grad_mean += (2.0 * g_total) * self.mean
                    grad_var += g_total
                elif kind != "bn" or config.batch_bn:
                    self._aggregate_backward(kind, k, g_mu, g_sigma, grad_mean, grad_var)
            if self.var_factor != 1.0:
                grad_var *= self.var_factor
        return grad_mean, grad_var, grad_weight, grad_bias, *grad_ratios

    def _aggregate_backward(self, kind, k, g_mu, g_sigma, grad_mean, grad_var):
        """Accumulate the moments' gradients of one aggregated normalizer (LN, BN or GN)."""
        mu, _, factor = self.stats[k]
        shape, axis = _grid(kind, grad_mean.shape, self.config.groups)
        count = shape[axis]
        g_mu_total = g_mu.reshape(shape).sum(axis=axis, keepdims=True) * (1.0 / count)
        g_sigma_total = g_sigma.reshape(shape).sum(axis=axis, keepdims=True) * (factor / count)
        if kind == "gn":  # stored broadcast to (N, C); one value per group suffices
            mu = mu.reshape(shape)[..., :1]
        # mu = mean(m); sigma = mean(v) + mean((m - mu)^2): the mu path of the second term
        # vanishes because the deviations sum to zero.
        mean_view = grad_mean.reshape(shape)
        mean_view += g_mu_total + (2.0 * g_sigma_total) * (self.mean.reshape(shape) - mu)
        var_view = grad_var.reshape(shape)
        var_view += g_sigma_total
