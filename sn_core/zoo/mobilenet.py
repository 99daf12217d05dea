"""MobileNetV2 (Sandler et al. 2018) with a swappable norm layer.

Included because depthwise convs see one channel each, so per-channel statistics behave very
differently from those of dense convs: a useful case for normalizer search. The torchvision
layout is kept; ``small_input`` follows the common CIFAR adaptation (stride-1 stem and first
strided stage, total stride 8) so that small images keep some spatial extent.
"""

from __future__ import annotations

import torch
from torch import nn

from sn_core.norms import NormFactory, NormSpec, resolve_norm_layer
from sn_core.zoo.registry import register_model
from sn_core.zoo.resnet import zero_norm_weight_

# (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of ``divisor`` without going more than 10% below ``value``."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class ConvNormAct(nn.Module):
    """Conv -> norm -> ReLU6, the stem and the last 1x1 conv."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int, norm_layer: NormFactory
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = norm_layer(out_ch)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; residual when shapes match."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, expand_ratio: int, norm_layer: NormFactory
    ) -> None:
        super().__init__()
        hidden = round(in_ch * expand_ratio)
        self.use_res_connect = stride == 1 and in_ch == out_ch
        self.conv_pw = nn.Conv2d(in_ch, hidden, 1, bias=False) if expand_ratio != 1 else None
        self.bn1 = norm_layer(hidden) if expand_ratio != 1 else None
        self.conv_dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = norm_layer(hidden)
        self.conv_pwl = nn.Conv2d(hidden, out_ch, 1, bias=False)
        self.bn3 = norm_layer(out_ch)
        self.act = nn.ReLU6(inplace=True)

    def zero_init_last(self) -> None:
        if self.use_res_connect:
            zero_norm_weight_(self.bn3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.conv_pw is not None:
            out = self.act(self.bn1(self.conv_pw(out)))
        out = self.act(self.bn2(self.conv_dw(out)))
        out = self.bn3(self.conv_pwl(out))
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """``features`` (stem, inverted residuals, 1x1 conv), global pool, ``classifier``."""

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        norm_layer: NormSpec = None,
        width_mult: float = 1.0,
        small_input: bool = False,
        dropout: float = 0.2,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        norm = resolve_norm_layer(norm_layer, 2)
        channels = make_divisible(32 * width_mult)
        last_channels = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [
            ConvNormAct(in_channels, channels, 3, 1 if small_input else 2, norm)
        ]
        for i, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
            out = make_divisible(c * width_mult)
            stride = 1 if small_input and i == 1 else s
            for j in range(n):
                layers.append(InvertedResidual(channels, out, stride if j == 0 else 1, t, norm))
                channels = out
        layers.append(ConvNormAct(channels, last_channels, 1, 1, norm))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, InvertedResidual):
                    m.zero_init_last()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


@register_model
def mobilenetv2(
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormSpec = None,
    *,
    width_mult: float = 1.0,
    small_input: bool = False,
    dropout: float = 0.2,
    zero_init_residual: bool = False,
) -> MobileNetV2:
    """MobileNetV2; ``width_mult`` scales every layer's channels (rounded to multiples of 8)."""
    return MobileNetV2(
        num_classes=num_classes,
        in_channels=in_channels,
        norm_layer=norm_layer,
        width_mult=width_mult,
        small_input=small_input,
        dropout=dropout,
        zero_init_residual=zero_init_residual,
    )
