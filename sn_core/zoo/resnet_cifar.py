"""CIFAR ResNets of He et al. (2016, section 4.2): depth 6n + 2, three stages of 16/32/64 channels.

These are the small, well-studied nets on which normalizer choice is usually compared. Unlike the
paper's option A (zero-padded identity), shortcuts that change shape are 1x1 conv + norm
projections (option B), so that every shortcut norm is swappable too.
"""

from __future__ import annotations

from sn_core.norms import NormSpec
from sn_core.zoo.registry import register_model
from sn_core.zoo.resnet import BasicBlock, ResNet

CIFAR_WIDTHS = (16, 32, 64)


def cifar_resnet(
    depth: int,
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormSpec = None,
    *,
    zero_init_residual: bool = False,
) -> ResNet:
    """A CIFAR ResNet of ``depth`` = 6n + 2 layers (n BasicBlocks per stage)."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    n = (depth - 2) // 6
    return ResNet(
        BasicBlock,
        (n, n, n),
        widths=CIFAR_WIDTHS,
        num_classes=num_classes,
        in_channels=in_channels,
        norm_layer=norm_layer,
        small_input=True,
        zero_init_residual=zero_init_residual,
    )


@register_model
def resnet20(
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormSpec = None,
    *,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-20 (n = 3)."""
    return cifar_resnet(
        20, num_classes, in_channels, norm_layer, zero_init_residual=zero_init_residual
    )


@register_model
def resnet32(
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormSpec = None,
    *,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-32 (n = 5)."""
    return cifar_resnet(
        32, num_classes, in_channels, norm_layer, zero_init_residual=zero_init_residual
    )


@register_model
def resnet56(
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormSpec = None,
    *,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-56 (n = 9)."""
    return cifar_resnet(
        56, num_classes, in_channels, norm_layer, zero_init_residual=zero_init_residual
    )
