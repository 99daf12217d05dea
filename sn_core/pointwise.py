"""Point-wise pool members: Dynamic Tanh and the identity, mixed at a layer's output.

``dynamic_tanh`` is the one function both a mixed SN layer and the finalized ``DynamicTanh``
module call, so a layer fixed to output "dyt" and its finalized module compute the same ops
(exactly equal outputs). DyT is Zhu et al., "Transformers without Normalization" (CVPR 2025):
``weight * tanh(alpha * x) + bias`` with a learnable scalar ``alpha`` (their default 0.5).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .vocabulary import DEFAULT_DYT_ALPHA0

__all__ = ["DEFAULT_DYT_ALPHA0", "DynamicTanh", "dynamic_tanh"]


def _channel_view(t: Tensor, x: Tensor, channels_last: bool) -> Tensor:
    """A per-channel (C,) tensor shaped to broadcast over ``x``'s channel dimension."""
    if channels_last or x.dim() == 2:
        return t
    return t.view(-1, *([1] * (x.dim() - 2)))


def dynamic_tanh(
    x: Tensor,
    alpha: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    *,
    channels_last: bool,
) -> Tensor:
    """``weight[c] * tanh(alpha * x) + bias[c]``; channels on the last dimension or on dim 1.

    ``alpha`` has one element; ``weight``/``bias`` (C,) or None (none: 1 / 0).
    """
    y = torch.tanh(alpha * x)
    if weight is None:
        return y if bias is None else y + _channel_view(bias, x, channels_last)
    w = _channel_view(weight, x, channels_last)
    if bias is None:
        return y * w
    return torch.addcmul(_channel_view(bias, x, channels_last), y, w)


class DynamicTanh(nn.Module):
    """DyT as a layer: what a norm layer one-hot on the point-wise member "dyt" finalizes to.

    Args:
        num_features: channels C.
        alpha0: initial value of the learnable scalar ``alpha``.
        channels_last: channels on the last dimension (token layouts, as ``nn.LayerNorm``);
            False: on dim 1 of an (N, C, *) input (as ``nn.BatchNorm2d``).
        affine: per-channel ``weight`` (init 1) and ``bias`` (init 0); ``bias=False`` keeps
            the weight only (the layer it replaces had no bias, e.g. ``nn.RMSNorm``).
    """

    def __init__(
        self,
        num_features: int,
        alpha0: float = DEFAULT_DYT_ALPHA0,
        *,
        channels_last: bool = True,
        affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if num_features <= 0:
            raise ValueError(f"num_features must be positive, got {num_features}")
        self.num_features = num_features
        self.alpha0 = float(alpha0)
        self.channels_last = channels_last
        self.affine = affine
        self.alpha = nn.Parameter(torch.full((1,), self.alpha0, **factory))
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
        else:
            self.register_parameter("weight", None)
        if affine and bias:
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        dim = -1 if self.channels_last else 1
        if x.dim() < 2 or x.shape[dim] != self.num_features:
            where = "last dimension" if self.channels_last else "dimension 1"
            raise ValueError(
                f"expected {self.num_features} channels on the {where}, got shape {tuple(x.shape)}"
            )
        return dynamic_tanh(x, self.alpha, self.weight, self.bias, channels_last=self.channels_last)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, alpha0={self.alpha0}, channels_last={self.channels_last}"
            + ("" if self.affine else ", affine=False")
            + ("" if self.bias is not None or not self.affine else ", bias=False")
        )
