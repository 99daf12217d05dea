"""A small decoder-only character language model (GPT-style) for norm searches on text.

Token and learned position embeddings, ``depth`` pre-norm causal blocks (``sn_core.zoo.
transformer``: causal ``scaled_dot_product_attention``, optional QK-norm), a final norm and a
linear head to the vocabulary. Input: (N, T) int64 character ids; output: (N, T, vocab) logits
for the next character at every position. Every norm is ``norm_layer`` (default ``nn.LayerNorm``).
"""

from __future__ import annotations

import torch
from torch import nn

from sn_core.norms import NormSpec
from sn_core.zoo.registry import register_model
from sn_core.zoo.transformer import (
    PER_TOKEN_MEMBERS,
    blocks,
    check_transformer_sizes,
    init_weights,
    resolve_token_norm,
)


class CharLM(nn.Module):
    """Embeddings, causal pre-norm blocks, final norm, linear head over ``vocab_size``."""

    # Causal: per-token statistics only (BN and IN over tokens would see the future).
    token_pool_members = PER_TOKEN_MEMBERS

    def __init__(
        self,
        *,
        vocab_size: int,
        norm_layer: NormSpec = None,
        context: int = 64,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        check_transformer_sizes(dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio)
        if vocab_size < 2 or context < 1:
            raise ValueError(
                f"vocab_size must be >= 2 and context >= 1, got {vocab_size}, {context}"
            )
        norm = resolve_token_norm(norm_layer)
        self.context = context
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, context, dim))
        self.blocks = blocks(dim, depth, heads, mlp_ratio, norm, causal=True, qk_norm=qk_norm)
        self.norm = norm(dim)
        self.head = nn.Linear(dim, vocab_size)
        init_weights(self)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] > self.context or x.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"char_lm expects (N, T) integer character ids with T <= context "
                f"({self.context}), got {x.dtype} input of shape {tuple(x.shape)}"
            )
        h = self.embed(x) + self.pos[:, : x.shape[1]]
        return self.head(self.norm(self.blocks(h)))


@register_model
def char_lm(
    num_classes: int = 96,
    in_channels: int = 1,
    norm_layer: NormSpec = None,
    *,
    context: int = 64,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    mlp_ratio: float = 4.0,
    qk_norm: bool = False,
) -> CharLM:
    """Character LM: ``num_classes`` is the vocabulary size (the text dataset's characters);
    ``in_channels`` is unused (one id per position), accepted for the zoo's common signature."""
    return CharLM(
        vocab_size=num_classes,
        norm_layer=norm_layer,
        context=context,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_ratio=mlp_ratio,
        qk_norm=qk_norm,
    )
