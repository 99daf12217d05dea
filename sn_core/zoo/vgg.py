"""VGG-style plain CNNs (Simonyan & Zisserman 2015) with a norm after every conv.

Plain (non-residual) nets are where the normalizer matters most, so they are a useful contrast
to the ResNets. The 4096-wide FC layers are replaced by global average pooling and one linear
layer: they hold most of VGG's parameters but say nothing about normalization.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sn_core.norms import NormSpec, resolve_norm_layer
from sn_core.zoo.registry import register_model

# Channel multipliers of the base width; "M" is a 2x2 max pool.
VGG11_CFG: tuple[int | str, ...] = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")
VGG_SMALL_CFG: tuple[int | str, ...] = (1, 1, "M", 2, 2, "M")


class VGG(nn.Module):
    """Conv3x3 -> norm -> ReLU stacks and max pools (``features``), then pool + ``classifier``."""

    def __init__(
        self,
        cfg: Sequence[int | str],
        *,
        width: int = 64,
        num_classes: int = 10,
        in_channels: int = 3,
        norm_layer: NormSpec = None,
    ) -> None:
        super().__init__()
        norm = resolve_norm_layer(norm_layer, 2)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out = int(item) * width
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                norm(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def _drop_last_pools(cfg: Sequence[int | str], count: int) -> list[int | str]:
    out = list(cfg)
    for _ in range(count):
        last = max(i for i, item in enumerate(out) if item == "M")
        del out[last]
    return out


@register_model
def vgg11(
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormSpec = None,
    *,
    width: int = 64,
    small_input: bool = False,
) -> VGG:
    """VGG-11 convs (config "A"); ``small_input`` drops the last two pools (total stride 8)."""
    cfg = _drop_last_pools(VGG11_CFG, 2) if small_input else VGG11_CFG
    return VGG(
        cfg, width=width, num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer
    )


@register_model
def vgg_small(
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormSpec = None,
    *,
    width: int = 32,
) -> VGG:
    """Four convs (width, width, pool, 2 * width, 2 * width, pool): quick runs on small images."""
    return VGG(
        VGG_SMALL_CFG,
        width=width,
        num_classes=num_classes,
        in_channels=in_channels,
        norm_layer=norm_layer,
    )
