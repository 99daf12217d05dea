"""A small 1D CNN for (N, C, L) sequences, e.g. MNIST-1D (Greydanus 2020): the 1d case of convs.

The MNIST-1D paper's CNN (three convs of 25 channels, then a linear layer) with a norm after each
conv, as BatchNorm1d by default: with BatchNorm it reaches about 98% on MNIST-1D, without any
normalizer about 70%, so the normalizer matters here. Each conv halves the length (kernel 5,
stride 2, padding 2: 40 -> 20 -> 10 -> 5); an adaptive average pool to ``pooled_length`` keeps the
head's size fixed for any input length (the identity at length 40), so positions are not pooled
away as a global pool would.
"""

from __future__ import annotations

import torch
from torch import nn

from sn_core.norms import NormFactory, NormSpec, resolve_norm_layer
from sn_core.zoo.registry import register_model


class ConvBlock1d(nn.Module):
    """Conv1d -> norm -> ReLU."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int, norm_layer: NormFactory
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = norm_layer(out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class CNN1d(nn.Module):
    """``features`` (``depth`` ConvBlock1d), adaptive pool to ``pooled_length``, linear ``head``."""

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 1,
        norm_layer: NormSpec = None,
        channels: int = 25,
        depth: int = 3,
        kernel_size: int = 5,
        pooled_length: int = 5,
    ) -> None:
        super().__init__()
        if depth < 1 or channels < 1 or kernel_size < 1 or pooled_length < 1:
            raise ValueError(
                "cnn1d needs depth, channels, kernel_size and pooled_length >= 1, got "
                f"{depth}, {channels}, {kernel_size}, {pooled_length}"
            )
        norm = resolve_norm_layer(norm_layer, 1)
        widths = [in_channels] + [channels] * depth
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.features = nn.Sequential(*(ConvBlock1d(a, b, kernel_size, 2, norm) for a, b in pairs))
        self.pool = nn.AdaptiveAvgPool1d(pooled_length)
        self.head = nn.Linear(channels * pooled_length, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(
                f"cnn1d expects (N, C, L) sequences, got input of shape {tuple(x.shape)}"
            )
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def cnn1d(
    num_classes: int = 10,
    in_channels: int = 1,
    norm_layer: NormSpec = None,
    *,
    channels: int = 25,
    depth: int = 3,
    kernel_size: int = 5,
    pooled_length: int = 5,
) -> CNN1d:
    """The MNIST-1D CNN: ``depth`` stride-2 convs of ``channels``, a norm after each."""
    return CNN1d(
        num_classes=num_classes,
        in_channels=in_channels,
        norm_layer=norm_layer,
        channels=channels,
        depth=depth,
        kernel_size=kernel_size,
        pooled_length=pooled_length,
    )
