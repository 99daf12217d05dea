"""``SelectedNorm``: one fixed (mean, variance) pair of normalizers, e.g. BN mean with LN variance.

A Switchable Normalization layer whose ratios end one-hot on a *mixed* pair is no standard torch
layer (docs/sn-spec.md section 6). ``SelectedNorm`` is that layer on its own: the same kernel,
affine parameters and running statistics as ``SwitchNorm``, but no logits; it computes only the
one or two statistics it needs. With population variance, ``SelectedNorm(C, mean=k, var=k)``
equals the torch layer of ``k`` (``nn.BatchNorm*``, ``nn.InstanceNorm*(affine=True)``,
``nn.GroupNorm``), and runs that layer's kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .layers import MixtureNorm, normalize_pool
from .vocabulary import STATISTIC_MEMBERS

__all__ = ["SelectedNorm"]


def _check_kind(role: str, kind: str) -> str:
    if not isinstance(kind, str):
        raise ValueError(f"unknown {role} normalizer {kind!r}; choose from {STATISTIC_MEMBERS}")
    try:
        return normalize_pool((kind,))[0]
    except ValueError:
        raise ValueError(
            f"unknown {role} normalizer {kind!r}; choose from {STATISTIC_MEMBERS}"
        ) from None


class SelectedNorm(MixtureNorm):
    """Normalize with the mean of one normalizer and the variance of another (or the same).

    Args:
        num_features: channels C of an (N, C, *) input.
        mean, var: normalizer names from {"in", "ln", "bn", "gn"}.
        eps, momentum, affine, track_running_stats: as ``nn.BatchNorm2d`` (running statistics
            exist only when "bn" is one of the pair).
        groups: groups of the "gn" normalizer.
        variance: "population" or "reference" (the original SN code's estimators).

    The constant one-hot ratios are non-persistent buffers: they follow ``.to()`` and never
    appear in the state dict, so the parameters are only ``weight`` and ``bias``.
    """

    def __init__(
        self,
        num_features: int,
        mean: str = "bn",
        var: str = "ln",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        groups: int = 32,
        affine: bool = True,
        track_running_stats: bool = True,
        variance: str = "population",
        device=None,
        dtype=None,
    ) -> None:
        mean = _check_kind("mean", mean)
        var = _check_kind("variance", var)
        kinds = tuple(dict.fromkeys((mean, var)))
        super().__init__(
            num_features,
            kinds,
            eps=eps,
            momentum=momentum,
            groups=groups,
            affine=affine,
            track_running_stats=track_running_stats,
            variance=variance,
            device=device,
            dtype=dtype,
        )
        self.mean = mean
        self.var = var
        factory = {"device": device, "dtype": dtype}
        mean_ratios = torch.tensor([float(k == mean) for k in kinds], **factory)
        var_ratios = torch.tensor([float(k == var) for k in kinds], **factory)
        self.register_buffer("mean_ratios", mean_ratios, persistent=False)
        self.register_buffer("var_ratios", var_ratios, persistent=False)
        self.reset_parameters()
        self._refresh()

    @property
    def choice(self) -> tuple[str, str]:
        """The (mean, variance) normalizer names."""
        return self.mean, self.var

    def _path(self) -> tuple[tuple[str, ...], str | None]:
        return self.kinds, self.mean if self.mean == self.var else None

    def _mixture(self) -> tuple[Tensor, Tensor]:
        return self.mean_ratios, self.var_ratios

    def extra_repr(self) -> str:
        return self._repr(f"mean={self.mean!r}, var={self.var!r}")
