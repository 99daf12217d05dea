"""A small Vision Transformer (Dosovitskiy et al. 2021) for tiny images and 1-D sequences.

Patches come from a strided convolution (2-D for images, 1-D for sequences such as MNIST-1D), get
a learned position embedding, go through ``depth`` pre-norm blocks (``sn_core.zoo.transformer``)
and a final norm; the head reads the mean of the tokens or a CLS token. Every norm, QK-norm
included, is ``norm_layer`` over the last dimension (default ``nn.LayerNorm``).
"""

from __future__ import annotations

import torch
from torch import nn

from sn_core.norms import NormSpec
from sn_core.zoo.registry import register_model
from sn_core.zoo.transformer import blocks, check_transformer_sizes
from sn_core.zoo.transformer import resolve_token_norm as _token_norm

POOLS = ("mean", "cls")


class ViT(nn.Module):
    """Patch embedding, position embedding, blocks, final norm, linear head."""

    # The token normalizers a search may mix in this model (all of SwitchNormTokens': nothing
    # is causal here, so batch and instance statistics over tokens are fair).
    token_pool_members = ("in", "ln", "bn", "rms")

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 1,
        norm_layer: NormSpec = None,
        input_size: int = 8,
        spatial_dims: int = 2,
        patch_size: int = 2,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        qk_norm: bool = False,
        pool: str = "mean",
    ) -> None:
        super().__init__()
        check_transformer_sizes(dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio)
        if spatial_dims not in (1, 2):
            raise ValueError(
                f"spatial_dims must be 1 (sequences) or 2 (images), got {spatial_dims}"
            )
        if patch_size < 1 or input_size % patch_size:
            raise ValueError(
                f"patch_size ({patch_size}) must be >= 1 and divide input_size ({input_size})"
            )
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        norm = _token_norm(norm_layer)
        self.input_size, self.spatial_dims, self.pool = input_size, spatial_dims, pool
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv1d
        self.patch = conv(in_channels, dim, patch_size, stride=patch_size)
        tokens = (input_size // patch_size) ** spatial_dims
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos = nn.Parameter(torch.zeros(1, tokens + (pool == "cls"), dim))
        self.blocks = blocks(dim, depth, heads, mlp_ratio, norm, causal=False, qk_norm=qk_norm)
        self.norm = norm(dim)
        self.head = nn.Linear(dim, num_classes)
        # torch's default init elsewhere: at this size and a few hundred steps it learns faster
        # than ViT's truncated-normal(0.02) (digits, 3 epochs: 36% against 23%)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.input_size,) * self.spatial_dims
        if x.dim() != 2 + self.spatial_dims or tuple(x.shape[2:]) != expected:
            layout = "(N, C, H, W)" if self.spatial_dims == 2 else "(N, C, L)"
            raise ValueError(
                f"vit expects {layout} input of size {expected} (input_size, spatial_dims), "
                f"got shape {tuple(x.shape)}"
            )
        x = self.patch(x).flatten(2).transpose(1, 2)  # (N, T, dim)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)
        x = self.norm(self.blocks(x + self.pos))
        return self.head(x[:, 0] if self.cls is not None else x.mean(dim=1))


@register_model
def vit(
    num_classes: int = 10,
    in_channels: int = 1,
    norm_layer: NormSpec = None,
    *,
    input_size: int = 8,
    spatial_dims: int = 2,
    patch_size: int = 2,
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    qk_norm: bool = False,
    pool: str = "mean",
) -> ViT:
    """Small ViT: 8x8 images by default; ``spatial_dims=1, input_size=40`` for MNIST-1D."""
    return ViT(
        num_classes=num_classes,
        in_channels=in_channels,
        norm_layer=norm_layer,
        input_size=input_size,
        spatial_dims=spatial_dims,
        patch_size=patch_size,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_ratio=mlp_ratio,
        qk_norm=qk_norm,
        pool=pool,
    )
