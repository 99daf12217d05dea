"""A small MLP: the fastest model to search norms on (e.g. 8x8 digits), and the 1d case of the zoo.

Each hidden block's norm sees features shaped (N, C, 1), the (N, C, L) layout that every 1d torch
norm accepts, so BatchNorm1d, GroupNorm and SwitchNorm1d are interchangeable. InstanceNorm has
a single element per channel here, so torch refuses it in training mode, and SN surgery with an
example input gives these layers the pool without IN (``sn_core.surgery.single_element_pool``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sn_core.norms import NormFactory, NormSpec, resolve_norm_layer
from sn_core.zoo.registry import register_model


class MLPBlock(nn.Module):
    """Linear -> norm -> ReLU."""

    def __init__(self, in_features: int, out_features: int, norm_layer: NormFactory) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, out_features, bias=False)
        self.bn = norm_layer(out_features)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.fc(x).unsqueeze(-1)).squeeze(-1))


class MLP(nn.Module):
    """Flatten, ``len(hidden)`` MLPBlocks, then a linear ``head``."""

    def __init__(
        self,
        *,
        in_features: int,
        hidden: Sequence[int] = (256, 128),
        num_classes: int = 10,
        norm_layer: NormSpec = None,
    ) -> None:
        super().__init__()
        norm = resolve_norm_layer(norm_layer, 1)
        self.in_features = in_features
        widths = [in_features, *hidden]
        self.blocks = nn.Sequential(
            *(MLPBlock(a, b, norm) for a, b in zip(widths[:-1], widths[1:], strict=True))
        )
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = torch.flatten(x, 1)
        if flat.shape[1] != self.in_features:
            raise ValueError(
                f"MLP expects {self.in_features} features per sample "
                f"(in_channels * input_size), got input of shape {tuple(x.shape)}"
            )
        return self.head(self.blocks(flat))


@register_model
def mlp(
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormSpec = None,
    *,
    hidden: tuple[int, ...] = (256, 128),
    input_size: int = 8 * 8,
) -> MLP:
    """MLP on ``in_channels * input_size`` features (``input_size`` = pixels per channel)."""
    return MLP(
        in_features=in_channels * input_size,
        hidden=hidden,
        num_classes=num_classes,
        norm_layer=norm_layer,
    )
