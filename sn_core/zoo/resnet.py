"""ResNet (He et al. 2016) with a swappable norm layer.

One ``ResNet`` class serves both the ImageNet layout (four stages, 7x7 stride-2 stem + maxpool)
and the CIFAR layout in ``resnet_cifar`` (three narrow stages, 3x3 stride-1 stem): the two differ
only in stage widths, depths and stem, so sharing the class keeps norm handling in one place.
Module names follow torchvision (conv1/bn1, layerN, downsample, fc).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sn_core.norms import NormFactory, NormSpec, resolve_norm_layer
from sn_core.zoo.registry import register_model


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)


def zero_norm_weight_(norm: nn.Module) -> None:
    """Zero a norm's scale so its residual branch starts as zero (Goyal et al. 2017)."""
    weight = getattr(norm, "weight", None)
    if weight is not None:
        nn.init.zeros_(weight)


class BasicBlock(nn.Module):
    """Two 3x3 convs; the residual branch of ResNet-18/34 and of the CIFAR ResNets."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        zero_norm_weight_(self.bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 with 4x expansion; stride on the 3x3 conv (torchvision's "v1.5")."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        zero_norm_weight_(self.bn3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem, one stage per entry of ``layers`` (stride 1 first, then 2), global pool, linear.

    ``small_input`` swaps the 7x7 stride-2 stem and maxpool for a 3x3 stride-1 conv, so that
    8x8..32x32 images are not reduced to nothing before the last stage. Shortcuts that change
    shape are 1x1 conv + norm projections (option B).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        *,
        widths: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        norm_layer: NormSpec = None,
        small_input: bool = False,
        stem_width: int | None = None,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"layers {tuple(layers)} and widths {tuple(widths)} differ in length")
        self._norm_layer = resolve_norm_layer(norm_layer, 2)
        self.inplanes = stem_width if stem_width is not None else widths[0]
        if small_input:
            self.conv1 = conv3x3(in_channels, self.inplanes)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, 7, 2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = self._norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        for i, (depth, width) in enumerate(zip(layers, widths, strict=True)):
            stage = self._make_layer(block, width, depth, stride=1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", stage)
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    m.zero_init_last()

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, depth: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                self._norm_layer(planes * block.expansion),
            )
        blocks = [block(self.inplanes, planes, stride, downsample, self._norm_layer)]
        self.inplanes = planes * block.expansion
        blocks += [
            block(self.inplanes, planes, norm_layer=self._norm_layer) for _ in range(1, depth)
        ]
        return nn.Sequential(*blocks)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def _widths(width: int) -> list[int]:
    return [width * 2**i for i in range(4)]


@register_model
def resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormSpec = None,
    *,
    small_input: bool = False,
    width: int = 64,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-18: BasicBlock x (2, 2, 2, 2), stage widths width * (1, 2, 4, 8)."""
    return ResNet(
        BasicBlock,
        (2, 2, 2, 2),
        widths=_widths(width),
        num_classes=num_classes,
        in_channels=in_channels,
        norm_layer=norm_layer,
        small_input=small_input,
        zero_init_residual=zero_init_residual,
    )


@register_model
def resnet34(
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormSpec = None,
    *,
    small_input: bool = False,
    width: int = 64,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-34: BasicBlock x (3, 4, 6, 3)."""
    return ResNet(
        BasicBlock,
        (3, 4, 6, 3),
        widths=_widths(width),
        num_classes=num_classes,
        in_channels=in_channels,
        norm_layer=norm_layer,
        small_input=small_input,
        zero_init_residual=zero_init_residual,
    )


@register_model
def resnet50(
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormSpec = None,
    *,
    small_input: bool = False,
    width: int = 64,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-50: Bottleneck x (3, 4, 6, 3); the last stage outputs 32 * width channels."""
    return ResNet(
        Bottleneck,
        (3, 4, 6, 3),
        widths=_widths(width),
        num_classes=num_classes,
        in_channels=in_channels,
        norm_layer=norm_layer,
        small_input=small_input,
        zero_init_residual=zero_init_residual,
    )
