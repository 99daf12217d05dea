"""The parts the zoo's transformers share: token norms, attention with optional QK-norm, blocks.

Every norm position is built from one factory ``f(num_features)`` over the last dimension of a
(N, T, C) tensor, so ``nn.LayerNorm``, ``nn.RMSNorm`` and ``sn_core.SwitchNormTokens`` (what
surgery turns the first two into) are interchangeable, like the CNNs' channel norms. Blocks are
pre-norm (``x + attn(norm1(x))``, ``x + mlp(norm2(x))``); QK-norm (Dehghani et al. 2023) applies
a norm over each head's features to queries and keys before the dot product.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sn_core.norms import NormFactory, NormSpec

# The norms a token model builds by name; "sn" is Switchable Normalization over tokens.
TOKEN_NORM_NAMES = ("ln", "rms", "sn")
# Token normalizers whose statistics stay inside one token: the only ones a causal model may
# use (BN and IN pool statistics over tokens, so later tokens would leak into earlier ones).
PER_TOKEN_MEMBERS = ("ln", "rms")


def resolve_token_norm(norm: NormSpec) -> NormFactory:
    """``norm`` as a factory over the last dimension: None or "ln" -> ``nn.LayerNorm``, "rms"
    -> ``nn.RMSNorm``, "sn" -> ``SwitchNormTokens``; classes and callables as they are."""
    if norm is None:
        return nn.LayerNorm
    if isinstance(norm, str):
        key = norm.lower()
        if key == "ln":
            return nn.LayerNorm
        if key == "rms":
            return nn.RMSNorm
        if key == "sn":
            from sn_core.tokens import SwitchNormTokens  # lazily, as sn_core.norms does

            return SwitchNormTokens
        raise ValueError(
            f"norm layer {norm!r} has no token (channels-last) form in a transformer; known "
            f"names: {', '.join(TOKEN_NORM_NAMES)} (or pass a class / callable)"
        )
    if callable(norm):
        return norm
    raise TypeError(
        f"norm_layer must be None, a name, a class or a callable, got {type(norm).__name__}"
    )


def check_transformer_sizes(*, dim: int, depth: int, heads: int, mlp_ratio: float) -> None:
    if dim < 1 or depth < 1 or heads < 1:
        raise ValueError(f"dim, depth and heads must be >= 1, got {dim}, {depth}, {heads}")
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
    if not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(
        self, dim: int, heads: int, norm: NormFactory, *, causal: bool, qk_norm: bool
    ) -> None:
        super().__init__()
        self.heads, self.head_dim, self.causal = heads, dim // heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = norm(self.head_dim) if qk_norm else None
        self.k_norm = norm(self.head_dim) if qk_norm else None

    def _head_norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # (N, H, T, d) -> (N*H, T, d): every token norm takes (N, T, C); heads are samples here.
        n, h, t, d = x.shape
        return norm(x.reshape(n * h, t, d)).view(n, h, t, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self._head_norm(self.q_norm, q), self._head_norm(self.k_norm, k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(n, t, c))


class Block(nn.Module):
    """Pre-norm transformer block: attention and a GELU MLP, each behind its own norm."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        norm: NormFactory,
        *,
        causal: bool,
        qk_norm: bool,
    ) -> None:
        super().__init__()
        hidden = max(1, round(dim * mlp_ratio))
        self.norm1 = norm(dim)
        self.attn = Attention(dim, heads, norm, causal=causal, qk_norm=qk_norm)
        self.norm2 = norm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def blocks(
    dim: int, depth: int, heads: int, mlp_ratio: float, norm: NormFactory, **kw: bool
) -> nn.Sequential:
    return nn.Sequential(*(Block(dim, heads, mlp_ratio, norm, **kw) for _ in range(depth)))


def init_weights(model: nn.Module) -> None:
    """Truncated-normal linear and embedding weights (std 0.02, as ViT and GPT-2), zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
