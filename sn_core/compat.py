"""Compatibility with the original public Switchable Normalization code.

Its numerical conventions, and what reproducing them takes, are docs/sn-spec.md section 4.

* ``reference_switchnorm`` builds a ``SwitchNorm{1,2,3}d`` that reproduces the original layer's
  numerics (unbiased instance variance, the hybrid LN/BN variances, running statistics starting at
  0 and stored without correction), so networks trained with the original code keep their outputs.
* ``load_reference_state_dict`` loads a checkpoint saved by the original code (parameter shapes
  ``(1, C, 1, 1)``, running statistics ``(1, C, 1)``, optionally under DataParallel's
  ``module.`` prefix) into a model built with such layers (or any ``SwitchNorm``).
* ``recompute_batch_statistics`` is the "batch average" alternative to running statistics: it sets
  every SN layer's running statistics to the pooled mean and variance over a set of batches.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from .layers import SwitchNorm, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d

__all__ = ["load_reference_state_dict", "recompute_batch_statistics", "reference_switchnorm"]

_LAYERS = {1: SwitchNorm1d, 2: SwitchNorm2d, 3: SwitchNorm3d}
_DP_PREFIX = "module."


def reference_switchnorm(
    dims: int,
    num_features: int,
    eps: float = 1e-5,
    momentum: float = 0.997,
    using_moving_average: bool = True,
    using_bn: bool = True,
    *,
    last_gamma: bool = False,
    device=None,
    dtype=None,
) -> SwitchNorm:
    """A ``SwitchNorm{dims}d`` with the original code's arguments and numerics.

    Args:
        dims: 1 (inputs (N, C)), 2 (N, C, H, W) or 3 (N, C, D, H, W).
        num_features, eps: as the original ``SwitchNorm{dims}d``.
        momentum: the original's m, with ``running = m * running + (1 - m) * batch`` (0.997 by
            default, 0.9 in a later version); converted to our ``momentum = 1 - m``.
        using_moving_average: False reproduces no mode of the original faithfully: the original
            then added raw per-batch sums (mean and second moment) into its buffers and left the
            division to the user, which is easy to leave half-finished. Here it gives
            ``momentum=None``, a cumulative average of the batch statistics (``nn.BatchNorm``
            semantics). To set the running statistics to the pooled statistics of chosen batches
            after training, use ``recompute_batch_statistics``.
        using_bn: False drops the BN term: pool [IN, LN] (1d: [LN]) and no running buffers.
        last_gamma: the original's option to initialise the weight (gamma) to 0.

    The logits follow the original order: [IN, LN, BN] for 2d/3d, [LN, BN] for 1d. The 1d layer
    matches the original on (N, C) inputs (the only ones the original accepts).
    """
    if dims not in _LAYERS:
        raise ValueError(f"dims must be 1, 2 or 3, got {dims!r}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum (the original's m) must lie in [0, 1], got {momentum}")
    pool: tuple[str, ...] = ("ln", "bn") if dims == 1 else ("in", "ln", "bn")
    if not using_bn:
        pool = tuple(kind for kind in pool if kind != "bn")
    layer = _LAYERS[dims](
        num_features,
        eps=eps,
        momentum=(1.0 - momentum) if using_moving_average else None,
        pool=pool,
        ratio_fn="softmax",
        affine=True,
        track_running_stats=using_bn,
        variance="reference",
        device=device,
        dtype=dtype,
    )
    # The constructor already knows variance="reference"; resetting again makes the original's
    # initial state (running_var == 0, weight 1 or 0, bias 0, equal logits) explicit.
    layer.reset_parameters()
    if last_gamma:
        with torch.no_grad():
            layer.weight.zero_()
    return layer


# --------------------------------------------------------------------------- checkpoints
def _pool_hint(module: SwitchNorm) -> str:
    names = ", ".join(kind.upper() for kind in module.pool)
    return f"[{names}]"


def load_reference_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], strict=True):
    """Load a checkpoint saved by the original SN code into ``model``.

    For every ``SwitchNorm`` in ``model``: weight/bias ``(1, C, 1, 1)`` or ``(1, C)`` and running
    statistics ``(1, C, 1)`` or ``(1, C)`` become ``(C,)``; the logits are kept as they are (their
    length must equal the layer's pool size); ``num_batches_tracked``, ``mean_choice`` and
    ``var_choice``, which the original does not have, are taken from the layer's current buffers.
    Other keys pass through unchanged. A leading ``module.`` (``nn.DataParallel``) is stripped when
    ``model``'s own keys have none. Returns the result of ``model.load_state_dict``.
    """
    own_keys = model.state_dict().keys()
    strip = not any(key.startswith(_DP_PREFIX) for key in own_keys)
    converted: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in state_dict.items():
        if strip and key.startswith(_DP_PREFIX):
            key = key[len(_DP_PREFIX) :]
        converted[key] = value
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        new_metadata = OrderedDict()
        for key, value in metadata.items():
            if strip and (key == "module" or key.startswith(_DP_PREFIX)):
                key = key[len(_DP_PREFIX) :]
            new_metadata[key] = value
        converted._metadata = new_metadata  # type: ignore[attr-defined]

    for name, module in model.named_modules():
        if not isinstance(module, SwitchNorm):
            continue
        prefix = f"{name}." if name else ""
        channels = module.num_features
        for attr in ("weight", "bias", "running_mean", "running_var"):
            key = prefix + attr
            value = converted.get(key)
            if value is None or getattr(module, attr, None) is None or value.dim() <= 1:
                continue
            if value.numel() != channels or value.shape[1] != channels:
                raise ValueError(
                    f"{key}: checkpoint shape {tuple(value.shape)} does not hold the "
                    f"{channels} channels of this layer"
                )
            converted[key] = value.reshape(channels)
        k = len(module.pool)
        for attr in ("mean_weight", "var_weight"):
            key = prefix + attr
            value = converted.get(key)
            if value is None or getattr(module, attr, None) is None:
                continue
            if tuple(value.shape) != (k,):
                raise ValueError(
                    f"{key}: checkpoint has logits of shape {tuple(value.shape)}, but this layer "
                    f"mixes {k} normalizers {_pool_hint(module)} in that order. The original "
                    "code saves 3 logits [IN, LN, BN] for 2d/3d layers with using_bn=True, "
                    "2 logits [IN, LN] with using_bn=False and 2 logits [LN, BN] for 1d "
                    "layers; build the layer with reference_switchnorm and matching arguments."
                )
        for attr in ("num_batches_tracked", "mean_choice", "var_choice"):
            key = prefix + attr
            buffer = getattr(module, attr, None)
            if buffer is not None and key not in converted:
                converted[key] = buffer.detach().clone()
    return model.load_state_dict(converted, strict=strict)


# --------------------------------------------------------------------- batch statistics
def _batch_moments(module: SwitchNorm, x: Tensor) -> tuple[Tensor, Tensor, int]:
    """Per-channel BN mean and variance of one input, as the layer's BN term computes them.

    The variance is the population variance over N and the spatial positions ("population"
    mode) or the original code's estimator ("reference" mode). Returned in float64 (computed in
    at least float32, without a float64 copy of x), with the element count per channel.
    """
    n, c = x.shape[:2]
    x3 = x.detach().reshape(n, c, -1)
    if x3.dtype in (torch.float16, torch.bfloat16):
        x3 = x3.float()
    length = x3.shape[2]
    if module.variance == "reference" and length == 1:  # (N, C): unbiased over N
        var, mean = torch.var_mean(x3[:, :, 0], dim=0, correction=1 if n > 1 else 0)
    elif module.variance == "reference":  # mean_n(unbiased var_in + mu_in^2) - mu^2, stably
        var_in, mu_in = torch.var_mean(x3, dim=2, correction=1)
        mean = mu_in.mean(0)
        var = var_in.mean(0) + (mu_in - mean).square().mean(0)
    else:
        var, mean = torch.var_mean(x3, dim=(0, 2), correction=0)
    return mean.double(), var.double(), n * length


class _Pooled:
    """Count-weighted pooling of per-batch means and variances (law of total variance)."""

    def __init__(self) -> None:
        self.count = 0
        self.sum = None  # sum of count * mean
        self.sum_sq = None  # sum of count * (var + mean^2), shifted by the first batch mean
        self.shift = None

    def add(self, mean: Tensor, var: Tensor, count: int) -> None:
        if self.shift is None:  # shift by the first mean keeps large-mean channels accurate
            self.shift = mean.clone()
            self.sum = torch.zeros_like(mean)
            self.sum_sq = torch.zeros_like(mean)
        centred = mean - self.shift
        self.sum += count * centred
        self.sum_sq += count * (var + centred.square())
        self.count += count

    def result(self) -> tuple[Tensor, Tensor]:
        centred = self.sum / self.count
        var = (self.sum_sq / self.count - centred.square()).clamp_(min=0)
        return self.shift + centred, var


def _call(model: nn.Module, batch, device: torch.device | None):
    def move(t):
        return t.to(device) if isinstance(t, Tensor) and device is not None else t

    if isinstance(batch, Tensor):
        return model(move(batch))
    if isinstance(batch, Mapping):
        return model(**{key: move(value) for key, value in batch.items()})
    if isinstance(batch, (tuple, list)):  # (inputs, targets, ...) as a DataLoader yields them
        return model(move(batch[0]))
    raise TypeError(f"batches must yield tensors, (inputs, ...) tuples or dicts, got {type(batch)}")


def recompute_batch_statistics(
    model: nn.Module, batches: Iterable, max_batches: int | None = None
) -> int:
    """Set each SN layer's running statistics to its pooled BN statistics over ``batches``.

    The "batch average" alternative to moving averages (docs/sn-spec.md section 3): the model
    runs in training mode under ``torch.no_grad`` over the batches (at most ``max_batches``); a
    forward pre-hook on every ``SwitchNorm`` with running statistics records the per-channel BN
    mean and variance of the layer's input, computed with the layer's own variance rules.
    Afterwards each layer's ``running_mean`` is the pooled mean and its ``running_var`` the pooled
    (population-combined) variance, made unbiased in "population" mode as ``nn.BatchNorm`` stores
    it, and kept as it is in "reference" mode as the original code stores it.

    ``batches`` yields input tensors, ``(inputs, ...)`` tuples (only ``inputs`` is passed to the
    model) or dicts of keyword arguments; tensors are moved to the model's device. Every module's
    training flag and every other buffer (including other layers' running statistics and the SN
    layers' ``num_batches_tracked``) are restored. A layer that saw no input keeps its running
    statistics. Returns the number of batches used.
    """
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be positive, got {max_batches}")
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, SwitchNorm) and module.running_mean is not None
    }
    if not layers:
        return 0
    pooled = {name: _Pooled() for name in layers}

    def make_hook(name: str):
        def hook(module: SwitchNorm, args) -> None:
            pooled[name].add(*_batch_moments(module, args[0]))

        return hook

    first = next(model.parameters(), None)
    device = first.device if first is not None else None
    flags = {module: module.training for module in model.modules()}
    saved = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    handles = [module.register_forward_pre_hook(make_hook(name)) for name, module in layers.items()]
    used = 0
    try:
        model.train()
        with torch.no_grad():
            for batch in batches:
                if max_batches is not None and used >= max_batches:
                    break
                _call(model, batch, device)
                used += 1
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags.items():
            module.training = flag
        with torch.no_grad():
            buffers = dict(model.named_buffers())
            for name, value in saved.items():
                buffers[name].copy_(value)
    if used == 0:
        raise ValueError("recompute_batch_statistics needs at least one batch")
    with torch.no_grad():
        for name, module in layers.items():
            stats = pooled[name]
            if stats.count == 0:
                continue
            mean, var = stats.result()
            if module.variance == "population" and stats.count > 1:
                var = var * (stats.count / (stats.count - 1))
            module.running_mean.copy_(mean.to(module.running_mean.dtype))
            module.running_var.copy_(var.to(module.running_var.dtype))
    return used
