"""A deliberately naive Switchable Normalization: the baseline for tests and benchmarks.

``ReferenceSwitchNorm`` computes docs/sn-spec.md sections 1-3 (population variances,
``nn.BatchNorm2d`` running statistics) in the most straightforward way, with plain autograd:
every normalizer's statistics come from their own reduction over x, the ratios are a softmax of
the logits, and the output is ``(x - mu) / sqrt(var + eps) * weight + bias``. Like the original SN
code it therefore keeps full-size temporaries (``x - mu`` and the normalized x) alive for
backward, and it is several times slower than ``sn_core.layers.SwitchNorm2d``. Do not use it in
models: it exists so the fast kernel has an independent, obviously correct implementation to
agree with.

Parameter and buffer names match ``SwitchNorm`` (``weight``, ``bias``, ``mean_weight``,
``var_weight``, ``running_mean``, ``running_var``, ``num_batches_tracked``), so state dicts load
both ways; ``SwitchNorm`` additionally has the buffers ``mean_choice`` and ``var_choice``, so load
with ``strict=False`` (or copy them). Only the softmax ratio function and untied logits are
supported, and any (N, C, *) input is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .vocabulary import NORMALIZERS

__all__ = ["ReferenceSwitchNorm"]


class ReferenceSwitchNorm(nn.Module):
    """Plain-autograd Switchable Normalization over (N, C, *) inputs (tests/benchmarks only).

    Args:
        num_features: channels C.
        eps, momentum: as ``nn.BatchNorm2d`` (``momentum=None``: cumulative average).
        pool: normalizers to mix, in logit order; a non-empty subset of {"in", "ln", "bn", "gn"}.
        groups: groups of the "gn" normalizer (must divide C when "gn" is in the pool).
        affine, track_running_stats: as ``nn.BatchNorm2d``; running statistics exist only when
            "bn" is in the pool.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        pool: Sequence[str] = ("in", "ln", "bn"),
        groups: int = 32,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        pool = (pool,) if isinstance(pool, str) else tuple(str(k).lower() for k in pool)
        if not pool or len(set(pool)) != len(pool) or any(k not in NORMALIZERS for k in pool):
            raise ValueError(f"pool must be distinct names from {NORMALIZERS}, got {pool}")
        if "gn" in pool and (groups <= 0 or num_features % groups):
            raise ValueError(f"groups={groups} must divide num_features={num_features} for 'gn'")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.pool = pool
        self.groups = groups
        self.affine = affine
        self.track_running_stats = track_running_stats and "bn" in pool
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.mean_weight = nn.Parameter(torch.ones(len(pool)))
        self.var_weight = nn.Parameter(torch.ones(len(pool)))
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def _statistics(self, kind: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, population variance) of one normalizer for x (N, C, L), broadcastable to x."""
        n, c, length = x.shape
        if kind == "in":
            dims = (2,)
        elif kind == "ln":
            dims = (1, 2)
        elif kind == "bn":
            if not self.training and self.track_running_stats:
                return self.running_mean.view(1, c, 1), self.running_var.view(1, c, 1)
            dims = (0, 2)
        else:  # "gn": groups of C / G consecutive channels
            grouped = x.reshape(n, self.groups, (c // self.groups) * length)
            mean = grouped.mean(2, keepdim=True)
            var = grouped.var(2, unbiased=False, keepdim=True)
            per_channel = (n, self.groups, c // self.groups)
            return (
                mean.expand(per_channel).reshape(n, c, 1),
                var.expand(per_channel).reshape(n, c, 1),
            )
        return x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: int) -> None:
        self.num_batches_tracked += 1
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / (count - 1)) if count > 1 else var
        self.running_mean.mul_(1 - factor).add_(factor * mean.flatten())
        self.running_var.mul_(1 - factor).add_(factor * unbiased.flatten())

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected (N, {self.num_features}, *) input, got {tuple(x.shape)}")
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)
        mean_ratios = torch.softmax(self.mean_weight, 0)
        var_ratios = torch.softmax(self.var_weight, 0)
        mu = 0
        var = 0
        for k, kind in enumerate(self.pool):
            mean_k, var_k = self._statistics(kind, x3)
            if kind == "bn" and self.training and self.track_running_stats:
                self._update_running_stats(mean_k.detach(), var_k.detach(), n * x3.shape[2])
            mu = mu + mean_ratios[k] * mean_k
            var = var + var_ratios[k] * var_k
        centred = x3 - mu
        normalized = centred / torch.sqrt(var + self.eps)
        if self.affine:
            normalized = normalized * self.weight.view(1, c, 1) + self.bias.view(1, c, 1)
        return normalized.reshape(x.shape)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, pool={self.pool}, "
            f"groups={self.groups}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )
