"""Model surgery: turn the norm layers of an existing network into Switchable Normalization.

``convert_to_switchnorm`` works like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: it takes a
module, replaces its BatchNorm / GroupNorm / InstanceNorm layers in place (recursing over
``named_children()``), copies their parameters under ``no_grad`` and returns the module. With an
example input, layers that see one element per channel (MLPs, after global pooling) get only the
normalizers defined there, so the pool can differ from layer to layer.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .layers import SwitchNorm, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d
from .tokens import DEFAULT_TOKEN_POOL, SwitchNormTokens
from .vocabulary import POINTWISE_MEMBERS

__all__ = [
    "SINGLE_ELEMENT_NORMALIZERS",
    "SOURCE_NORM_TYPES",
    "TOKEN_SOURCE_TYPES",
    "convert_to_switchnorm",
    "single_element_pool",
]

SkipSpec = str | Iterable[str] | Callable[[str, nn.Module], bool] | None

_SWITCH_NORMS: dict[int, type[SwitchNorm]] = {1: SwitchNorm1d, 2: SwitchNorm2d, 3: SwitchNorm3d}

# Source class -> dims (None: the class does not say; GroupNorm and SyncBatchNorm).
_CLASS_DIMS: tuple[tuple[type[nn.Module], int | None], ...] = (
    (nn.BatchNorm1d, 1),
    (nn.BatchNorm2d, 2),
    (nn.BatchNorm3d, 3),
    (nn.SyncBatchNorm, None),
    (nn.InstanceNorm1d, 1),
    (nn.InstanceNorm2d, 2),
    (nn.InstanceNorm3d, 3),
    (nn.GroupNorm, None),
)

#: The layer types that ``convert_to_switchnorm`` replaces (subclasses included).
SOURCE_NORM_TYPES: tuple[type[nn.Module], ...] = tuple(cls for cls, _ in _CLASS_DIMS)

#: Channels-last token norms that become ``SwitchNormTokens`` (normalized_shape of length 1).
TOKEN_SOURCE_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.RMSNorm)
# Constructor arguments of the channel-first layers that a token layer does not take.
_CHANNEL_FIRST_ONLY = ("pool", "groups", "variance")

_GROUP_CHOICES = (32, 16, 8, 4, 2, 1)
_DEFAULT_DIMS = 2

#: The normalizers whose statistics exist when a layer sees one element per channel.
SINGLE_ELEMENT_NORMALIZERS = ("ln", "bn", "gn", "rms")


def _class_dims(module: nn.Module) -> tuple[bool, int | None]:
    """(is a source layer, dims its class implies)."""
    if isinstance(module, SwitchNorm):  # never convert twice
        return False, None
    for cls, dims in _CLASS_DIMS:
        if isinstance(module, cls):
            return True, dims
    return False, None


def _skip_predicate(skip: SkipSpec) -> Callable[[str, nn.Module], bool]:
    if skip is None:
        return lambda name, module: False
    if callable(skip):
        return skip
    patterns = (skip,) if isinstance(skip, str) else tuple(skip)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"skip patterns must be strings, got {pattern!r}")
    return lambda name, module: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _num_features(module: nn.Module) -> int:
    return module.num_channels if isinstance(module, nn.GroupNorm) else module.num_features


def _fit_groups(channels: int, requested: int, min_group_size: int = 1) -> int:
    """``requested`` if it divides ``channels`` into groups of at least ``min_group_size``
    channels, else the largest of 32/16/8/4/2/1 that does (and is not above ``requested``)."""
    if requested > 0 and channels % requested == 0 and channels // requested >= min_group_size:
        return requested
    return next(
        g
        for g in _GROUP_CHOICES
        if g <= max(requested, 1) and channels % g == 0 and channels // g >= min_group_size
    )


def _as_pool(pool: Any) -> tuple[str, ...]:
    return (pool,) if isinstance(pool, str) else tuple(pool)


def single_element_pool(pool: Iterable[str], channels: int) -> tuple[str, ...]:
    """The part of ``pool`` defined for a layer that sees one element per channel.

    IN there normalizes a single value (its output is the bias alone) and is dropped. LN and
    RMS (each sample over its channels) and GN (over groups of at least two channels) need two
    channels or more; BN (over the batch) is always kept. The original SN code's layer for
    (N, C) inputs mixes LN and BN only, for the same reason.

    Point-wise members ("dyt", "none") are defined everywhere and kept, but only next to a
    statistics member: a pool left without one is empty (the layer stays as it is).
    """
    kept = []
    for kind in _as_pool(pool):
        kind = str(kind).lower()
        if kind in POINTWISE_MEMBERS or (
            kind in SINGLE_ELEMENT_NORMALIZERS and (kind == "bn" or channels >= 2)
        ):
            kept.append(kind)
    if all(kind in POINTWISE_MEMBERS for kind in kept):
        return ()
    return tuple(kept)


def _factory(module: nn.Module, observed: dict | None) -> dict[str, Any]:
    """device/dtype of the source layer (its tensors, else the input it was seen with)."""
    for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        if tensor.is_floating_point():
            return {"device": tensor.device, "dtype": tensor.dtype}
    if observed is not None:
        return {"device": observed["device"], "dtype": observed["dtype"]}
    return {"device": None, "dtype": None}


def _record_shapes(model: nn.Module, example_input: Any) -> dict[int, dict]:
    """One eval-mode, no-grad forward; per source layer (by id) its input shapes, dtype, device."""
    seen: dict[int, dict] = {}

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        x = args[0]
        entry = seen.setdefault(id(module), {"shapes": [], "dtype": x.dtype, "device": x.device})
        entry["shapes"].append(tuple(x.shape))

    handles = [m.register_forward_hook(hook) for m in model.modules() if _class_dims(m)[0]]
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, dict):
                model(**example_input)
            elif isinstance(example_input, tuple | list):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in flags.items():
            m.training = training
    return seen


def _single_element(seen: dict | None) -> bool:
    """Whether the example forward fed the layer one element per channel (any of its calls)."""
    return seen is not None and any(math.prod(s[2:]) == 1 for s in seen["shapes"])


def _convert_one(
    module: nn.Module,
    dims: int,
    observed: dict | None,
    layer_kwargs: dict[str, Any],
    *,
    single_element: bool = False,
) -> SwitchNorm:
    channels = _num_features(module)
    kwargs: dict[str, Any] = {"eps": module.eps}
    is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
    if is_bn:
        kwargs["momentum"] = module.momentum
        kwargs["track_running_stats"] = module.track_running_stats
    if isinstance(module, nn.GroupNorm):
        kwargs["groups"] = module.num_groups
    kwargs.update(layer_kwargs)  # explicit keyword arguments win over the source's settings
    pool = _as_pool(kwargs.get("pool", ("in", "ln", "bn")))
    if single_element:
        pool = single_element_pool(pool, channels)
        kwargs["pool"] = pool
    if "gn" in [str(p).lower() for p in pool]:
        min_group_size = 2 if single_element else 1  # a group of one value is IN again
        kwargs["groups"] = _fit_groups(channels, int(kwargs.get("groups", 32)), min_group_size)
    kwargs.update(_factory(module, observed))
    new = _SWITCH_NORMS[dims](channels, **kwargs)
    if len(new.pool) == 1:
        new.fix(0, 0)  # nothing to choose: the layer is its one normalizer from the start

    with torch.no_grad():
        if new.affine and getattr(module, "weight", None) is not None:
            new.weight.copy_(module.weight)
            new.bias.copy_(module.bias)
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        if (
            is_bn
            and new.track_running_stats
            and module.track_running_stats
            and module.running_mean is not None
        ):
            new.running_mean.copy_(module.running_mean)
            new.running_var.copy_(module.running_var)
            new.num_batches_tracked.copy_(module.num_batches_tracked)
    new.train(module.training)
    return new


def _token_source(module: nn.Module) -> bool:
    shape = getattr(module, "normalized_shape", None)
    return isinstance(module, TOKEN_SOURCE_TYPES) and shape is not None and len(shape) == 1


def _convert_token(
    module: nn.Module, pool: Iterable[str], layer_kwargs: dict[str, Any]
) -> SwitchNormTokens:
    """A ``SwitchNormTokens`` from an ``nn.LayerNorm`` / ``nn.RMSNorm`` over the last dim C.

    nn.RMSNorm's ``eps=None`` (the input dtype's machine epsilon at run time) becomes that of
    the source's dtype; it has no bias, so neither has the new layer (nor a bias-less LayerNorm).
    """
    channels = module.normalized_shape[0]
    factory = _factory(module, None)
    eps = module.eps
    if eps is None:
        eps = torch.finfo(factory["dtype"] or torch.get_default_dtype()).eps
    affine = module.elementwise_affine
    has_bias = affine and getattr(module, "bias", None) is not None
    kwargs: dict[str, Any] = {"eps": eps, "affine": affine, "bias": has_bias}
    kwargs.update({k: v for k, v in layer_kwargs.items() if k not in _CHANNEL_FIRST_ONLY})
    new = SwitchNormTokens(channels, pool=_as_pool(pool), **kwargs, **factory)
    if len(new.pool) == 1:
        new.fix(0, 0)
    with torch.no_grad():
        for name in ("weight", "bias"):
            source, target = getattr(module, name, None), getattr(new, name, None)
            if source is not None and target is not None:
                target.copy_(source)
                target.requires_grad_(source.requires_grad)
    new.train(module.training)
    return new


def convert_to_switchnorm(
    model: nn.Module,
    pool: Iterable[str] = ("in", "ln", "bn"),
    skip: SkipSpec = (),
    example_input: Any = None,
    token_pool: Iterable[str] | None = DEFAULT_TOKEN_POOL,
    **layer_kwargs: Any,
) -> nn.Module:
    """Replace every BatchNorm, GroupNorm and InstanceNorm layer of ``model`` by a SwitchNorm,
    and every ``nn.LayerNorm`` / ``nn.RMSNorm`` over the last dimension by a ``SwitchNormTokens``.

    The model is changed in place and returned (a norm layer passed as ``model`` itself is returned
    converted). Each new ``SwitchNorm{1,2,3}d`` takes from its source, under ``no_grad``:

    * ``weight``/``bias`` when the source is affine (a non-affine source, e.g. the default
      ``nn.InstanceNorm2d``, leaves the SN's weight 1 and bias 0);
    * ``running_mean``/``running_var``/``num_batches_tracked`` from a BatchNorm that tracks them,
      when the SN tracks them too ("bn" in ``pool``);
    * ``eps``; from a BatchNorm also ``momentum`` and ``track_running_stats``; from a GroupNorm
      its ``num_groups`` as ``groups``;
    * the source's device and dtype, and its train/eval flag.

    Keyword arguments in ``layer_kwargs`` (``tied``, ``ratio_fn``, ``groups``, ``momentum``, ...)
    go to every new layer and win over the values taken from the source. If "gn" is in ``pool``
    and ``groups`` (default 32) does not divide a layer's channel count, the largest of
    32/16/8/4/2/1 (not above ``groups``) that divides it is used instead.

    Dimensions: a BatchNorm{d}d / InstanceNorm{d}d source gives a SwitchNorm{d}d. GroupNorm (and
    SyncBatchNorm) do not say: with ``example_input`` the observed input rank decides ((N, C) or
    (N, C, L) -> 1d, 4D -> 2d, 5D -> 3d), otherwise (or for a layer the example forward did not
    reach) it is **2d**; pass ``example_input`` for GroupNorm models on 1d or 3d data.

    Args:
        model: the network (or a single norm layer).
        pool: the normalizers every new layer mixes; point-wise members ("dyt", "none") are
            mixed at the output (opt-in; ``dyt_alpha0=`` sets DyT's initial alpha).
        skip: layers to leave alone: a qualified module name or fnmatch pattern (``"layer1.*"``),
            an iterable of them, or a callable ``(name, module) -> bool``. A skipped container is
            not descended into, so ``skip="head"`` keeps every norm inside ``head``.
        token_pool: the normalizers of the token layers, point-wise members allowed (default
            ("ln", "rms"): per-token only;
            "bn" and "in" share statistics across tokens). None leaves LayerNorm and RMSNorm
            alone. A LayerNorm over more than the last dimension is always left alone.
        example_input: optional input for one forward pass (a tensor, a tuple of positional
            arguments or a dict of keyword arguments). It runs in eval mode under ``no_grad``
            (the training flags are restored afterwards) and records each norm layer's input.
            A layer whose per-channel size ``prod(shape[2:])`` is 1 -- 1x1 feature maps, (N, C)
            or (N, C, 1) inputs, e.g. after global pooling or in an MLP -- gets the normalizers
            defined there (``single_element_pool``): ``pool`` without IN, whose statistics over
            one value are degenerate, and with GN groups of at least two channels. A layer left
            with one normalizer is fixed to it from the start (it still appears in plans, with
            a one-entry pool); a layer left with none (``pool=("in",)``) keeps its source layer.
            Without ``example_input`` nothing is known about the inputs and every source layer
            is converted with the full ``pool``.
        **layer_kwargs: further ``SwitchNorm`` constructor arguments.
    """
    layer_kwargs = {**layer_kwargs, "pool": tuple(pool) if not isinstance(pool, str) else pool}
    should_skip = _skip_predicate(skip)
    observed = _record_shapes(model, example_input) if example_input is not None else {}
    converted: dict[int, nn.Module] = {}  # shared layers stay shared

    def convert(module: nn.Module, name: str) -> nn.Module:
        if should_skip(name, module):
            return module
        if id(module) in converted:
            return converted[id(module)]
        if token_pool is not None and _token_source(module):
            result = _convert_token(module, token_pool, layer_kwargs)
            converted[id(module)] = result
            return result
        is_source, dims = _class_dims(module)
        if is_source:
            seen = observed.get(id(module))
            single = _single_element(seen)
            if single and not single_element_pool(layer_kwargs["pool"], _num_features(module)):
                result = module  # no normalizer of the pool is defined here: leave alone
            else:
                if dims is None:
                    ndim = len(seen["shapes"][0]) if seen is not None else _DEFAULT_DIMS + 2
                    dims = min(max(ndim - 2, 1), 3)
                result = _convert_one(module, dims, seen, layer_kwargs, single_element=single)
            converted[id(module)] = result
            return result
        for child_name, child in module.named_children():
            new_child = convert(child, f"{name}.{child_name}" if name else child_name)
            if new_child is not child:
                setattr(module, child_name, new_child)
        converted[id(module)] = module
        return module

    return convert(model, "")
