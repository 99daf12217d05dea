"""``SwitchNormTokens``: Switchable Normalization of token sequences (N, T, C), channels last.

Transformers normalize each token over its C features (``nn.LayerNorm``, ``nn.RMSNorm``); the
channel-first kernel of ``sn_core.functional`` reduces over (N, C, *) cells and has no per-token
view, so this layer computes its statistics with plain torch ops (autograd does the backward) and,
when fixed to one normalizer, runs torch's own kernel (docs/sn-spec.md section 8):

* ``ln``: per token over C (``layer_norm``); ``rms``: per token, mean 0 and E[x^2] over C
  (``rms_norm``);
* ``bn``: per channel over every valid token of the batch (``batch_norm`` on (N*T, C) when no
  token is padded), with running statistics as ``nn.BatchNorm1d``;
* ``in``: per sample and channel over its valid tokens (needs (N, T, C) input).

A padding mask is a bool (N, T) tensor, True where a token is padding (torch's
``key_padding_mask`` convention). Padded tokens take no part in the BN / IN statistics (running
ones included) but are normalized with the same statistics as their neighbours, so the output
keeps its shape and LN / RMS outputs equal torch's at every position. Pass it to ``forward`` or
set it for a whole model with ``padding_mask(model, mask)`` (a layer inside
``nn.TransformerEncoderLayer`` is called with x alone).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layers import MixtureNorm, SwitchNorm
from .pointwise import DEFAULT_DYT_ALPHA0
from .token_kernel import PER_TOKEN_KINDS, native_token_kernel_applies, per_token_mixture
from .vocabulary import POINTWISE_MEMBERS

__all__ = [
    "DEFAULT_TOKEN_POOL",
    "TOKEN_POOL_MEMBERS",
    "SwitchNormTokens",
    "keep_off_fused_paths",
    "padding_mask",
]

# GN over channel groups of a token is left out until a model needs it.
TOKEN_POOL_MEMBERS = ("in", "ln", "bn", "rms")
# Per-token normalizers only: BN and IN mix statistics across tokens (and so leak future tokens
# into a causal model's past); they are opt-in.
DEFAULT_TOKEN_POOL = ("ln", "rms")


def _no_op_hook(module: nn.Module, args: tuple) -> None:
    return None


def keep_off_fused_paths(module: nn.Module) -> nn.Module:
    """Give ``module`` a no-op forward pre-hook, and return it.

    In eval mode without grad, ``nn.TransformerEncoderLayer`` runs one fused kernel that reads
    ``norm1/norm2.weight``, ``.bias`` and ``.eps`` and computes LayerNorm whatever the norm
    modules are: it would silently turn an SN or RMSNorm into LayerNorm. Torch skips that path
    when a submodule has hooks; this hook is the switch (a module-level function, so deep copies
    and pickles keep it).
    """
    if _no_op_hook not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_no_op_hook)
    return module


class SwitchNormTokens(SwitchNorm):
    """SN over (*, C) token activations; ``in`` and a padding mask need (N, T, C).

    Args as ``SwitchNorm`` (``pool`` from ``TOKEN_POOL_MEMBERS`` plus the point-wise members
    "dyt" and "none"), plus ``bias``: False gives a weight without a bias, as ``nn.RMSNorm`` and
    ``nn.LayerNorm(bias=False)``. Only population variance exists in this layout (the original
    SN code has none).
    """

    _channels_last = True

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        pool: Sequence[str] = DEFAULT_TOKEN_POOL,
        tied: bool = False,
        ratio_fn: str = "softmax",
        affine: bool = True,
        bias: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        dyt_alpha0: float = DEFAULT_DYT_ALPHA0,
    ) -> None:
        kinds = (pool,) if isinstance(pool, str) else tuple(pool)
        allowed = (*TOKEN_POOL_MEMBERS, *POINTWISE_MEMBERS)
        unknown = [k for k in kinds if str(k).lower() not in allowed]
        if unknown:
            raise ValueError(
                f"unknown token normalizer(s) {unknown} in pool; choose from {allowed}"
            )
        super().__init__(
            num_features, eps, momentum, kinds, 1, tied, ratio_fn, affine,
            track_running_stats, "population", device, dtype, dyt_alpha0=dyt_alpha0,
        )  # fmt: skip
        if affine and not bias:
            self.register_parameter("bias", None)
        self.padding_mask: Tensor | None = None
        keep_off_fused_paths(self)

    def __setattr__(self, name: str, value) -> None:
        if name == "variance" and value != "population":
            raise ValueError("SwitchNormTokens supports variance='population' only")
        super().__setattr__(name, value)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if x.dim() < 2 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"expected (..., {self.num_features}) token input, got shape {tuple(x.shape)}"
            )
        mask = self.padding_mask if padding_mask is None else padding_mask
        mode = self._output_mode
        if mode is None:
            return self._normalized(x, mask)
        if mask is not None:
            _check_mask(x, mask, ())
        return self._output_forward(x, mode, lambda: self._normalized(x, mask))

    def _normalized(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """The statistics mixture (or the torch kernel of a fixed choice)."""
        kinds, native = self._path()
        if mask is not None or "in" in kinds:
            _check_mask(x, mask, kinds)
        if native == "ln":
            return F.layer_norm(x, (self.num_features,), self.weight, self.bias, self.eps)
        if native == "rms":
            if native_token_kernel_applies(x, self.weight, self.bias):
                # torch's CPU rms_norm is a composite of several passes: the kernel is one
                mean, var = self._fixed_ratios
                return per_token_mixture(x, self.weight, self.bias, mean, var, kinds, self.eps)
            y = F.rms_norm(x, (self.num_features,), self.weight, self.eps)
            return y if self.bias is None else y + self.bias
        if native == "bn" and mask is None:
            y = MixtureNorm._native_forward(self, x.reshape(-1, self.num_features))
            if y is not None:
                return y.view(x.shape)
        return self._mixture_forward(x, kinds, mask)

    def _mixture_forward(self, x: Tensor, kinds: tuple[str, ...], mask: Tensor | None) -> Tensor:
        if PER_TOKEN_KINDS.issuperset(kinds):  # ln, rms: the hand-written kernel
            temperature = self._softmax_temperature()
            if temperature is not None:  # the kernel takes the logits' softmax itself
                mean, var = self.mean_weight, self.var_logits
            else:
                mean, var = self._mixture()
            return per_token_mixture(
                x, self.weight, self.bias, mean, var, kinds, self.eps, temperature
            )
        return self._generic_mixture_forward(x, kinds, mask)

    def _softmax_temperature(self) -> float | None:
        """The temperature when both ratio vectors are a plain softmax of the logits (free,
        softmax or temperature ratio function, no rows banked, not compiling); else None."""
        if self._fixed != (None, None) or self._banked or torch.compiler.is_compiling():
            return None
        if self.ratio_fn == "softmax":
            return 1.0
        return self.temperature if self.ratio_fn == "temperature" else None

    def _generic_mixture_forward(
        self, x: Tensor, kinds: tuple[str, ...], mask: Tensor | None
    ) -> Tensor:
        """Any token pool, with plain torch ops and autograd (BN and IN need the mask)."""
        mean_ratios, var_ratios = self._mixture()
        valid = None if mask is None else ~mask.unsqueeze(-1)  # (N, T, 1)
        mean: Tensor | float = 0.0
        var: Tensor | float = 0.0
        batch = None
        if "ln" in kinds or "rms" in kinds:  # one pass gives both: E[x^2] = v + m^2 per token
            token_var, token_mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
        for k, kind in enumerate(kinds):
            m = None
            if kind == "ln":
                v, m = token_var, token_mean
            elif kind == "rms":
                v = token_var + token_mean.square()
            elif kind == "bn" and (self.training or not self._tracking):
                m, v, count = _moments(x, valid, tuple(range(x.dim() - 1)))
                batch = (m, v, count)
            elif kind == "bn":
                m, v = self.running_mean, self.running_var
            else:  # in: over the tokens of each sample
                m, v, _ = _moments(x, valid, (1,))
            if m is not None:
                mean = mean + mean_ratios[k] * m
            var = var + var_ratios[k] * v
        # Centred before scaling (x * rstd - mean * rstd would cancel for large means), then
        # the affine map in one fused pass.
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight if self.bias is None else torch.addcmul(self.bias, y, self.weight)
        if batch is not None and self.training and self._tracking:
            m, v, count = batch
            m, v = m.detach().reshape(-1), v.detach().reshape(-1)
            if isinstance(count, Tensor) and torch.compiler.is_compiling():
                self._masked_update_without_sync(m, v, count)
                return y
            count = int(count)  # a host sync only with a mask (else a Python int already)
            if count > 0:  # an all-padding batch says nothing about the data
                self._update_running_stats(m, v, count)
        return y

    @torch.no_grad()
    def _masked_update_without_sync(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        """``_update_running_stats`` with the valid-token count a tensor (under torch.compile,
        where ``int(count)`` would break the graph): an all-padding batch changes nothing."""
        valid = count > 0
        self.num_batches_tracked.add_(valid.to(self.num_batches_tracked.dtype))
        if self.momentum is not None:
            factor = torch.where(valid, self.momentum, 0.0)
        else:
            tracked = self.num_batches_tracked.clamp(min=1).to(self.running_mean.dtype)
            factor = torch.where(valid, tracked.reciprocal(), 0.0)
        factor = factor.to(self.running_mean.dtype)
        unbias = torch.where(count > 1, count / (count - 1).clamp(min=1), 1.0)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_((var * unbias).to(self.running_var.dtype), factor)

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            "" if self.bias is not None or not self.affine else ", bias=False"
        )


def _check_mask(x: Tensor, mask: Tensor | None, kinds: tuple[str, ...]) -> None:
    if x.dim() != 3:
        what = "a padding mask" if mask is not None else "'in'"
        raise ValueError(f"{what} needs (N, T, C) input, got shape {tuple(x.shape)}")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != x.shape[:2]):
        raise ValueError(
            f"padding_mask must be a bool tensor of shape {tuple(x.shape[:2])} (True = padding), "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )


def _moments(x: Tensor, valid: Tensor | None, dims: tuple[int, ...]):
    """(mean, population variance, count) over ``dims`` of the valid tokens, two-pass (stable).

    A reduction with no valid token gives mean 0 and variance 0 (its output is then bias-only
    for IN, as for a constant input), never NaN.
    """
    if valid is None:
        v, m = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
        count = 1
        for d in dims:
            count *= x.shape[d]
        return m, v, count
    xv = torch.where(valid, x, 0.0)  # padded values (even inf/NaN) never reach the sums
    count = valid.sum(dim=dims, keepdim=True).to(x.dtype)
    m = xv.sum(dim=dims, keepdim=True) / count.clamp(min=1)
    centred = torch.where(valid, x - m, 0.0)
    v = centred.square().sum(dim=dims, keepdim=True) / count.clamp(min=1)
    return m, v, count.sum() if len(dims) > 1 else count


@contextmanager
def padding_mask(model: nn.Module, mask: Tensor | None) -> Iterator[None]:
    """Within the block every ``SwitchNormTokens`` of ``model`` uses ``mask`` (bool (N, T), True
    = padding) when called without one; the previous masks are restored on exit."""
    layers = [m for m in model.modules() if isinstance(m, SwitchNormTokens)]
    previous = [layer.padding_mask for layer in layers]
    for layer in layers:
        layer.padding_mask = mask
    try:
        yield
    finally:
        for layer, old in zip(layers, previous, strict=True):
            layer.padding_mask = old
