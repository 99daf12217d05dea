"""Norm-layer specs -> factories, so every model in the zoo can swap all of its norms at once.

A factory is ``f(num_features) -> nn.Module``: the channel count is always the only positional
argument, which is what makes BatchNorm, GroupNorm, InstanceNorm and SwitchNorm interchangeable
(the convention of timm's ``create_norm``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn

NormFactory = Callable[[int], nn.Module]
NormSpec = str | type[nn.Module] | Callable[..., nn.Module] | None

_GROUP_CHOICES = (32, 16, 8, 4, 2, 1)


def _check_dims(dims: int) -> int:
    if dims not in (1, 2, 3):
        raise ValueError(f"dims must be 1, 2 or 3, got {dims!r}")
    return dims


def group_norm(num_features: int) -> nn.GroupNorm:
    """GroupNorm with the largest of 32/16/8/4/2/1 groups that divides ``num_features``.

    32 groups is the default of Wu & He (2018); narrow layers fall back to fewer groups instead
    of failing, so the same spec works for every width.
    """
    groups = next(g for g in _GROUP_CHOICES if num_features % g == 0)
    return nn.GroupNorm(groups, num_features)


def layer_norm(num_features: int) -> nn.GroupNorm:
    """Layer norm over (C, *spatial): GroupNorm with one group, which works for any ``dims``."""
    return nn.GroupNorm(1, num_features)


def _batch_norm(dims: int) -> NormFactory:
    return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]


def _instance_norm(dims: int) -> NormFactory:
    cls = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims]
    return functools.partial(cls, affine=True)


def _switch_norm(dims: int) -> NormFactory:
    # Imported lazily: sn_core.layers is heavier and must not be needed for plain-torch norms.
    from sn_core import layers

    return getattr(layers, f"SwitchNorm{dims}d")


def _group_norm(dims: int) -> NormFactory:
    return group_norm


def _layer_norm(dims: int) -> NormFactory:
    return layer_norm


# name -> builder taking ``dims`` and returning a factory ``f(num_features)``.
NORM_LAYERS: dict[str, Callable[[int], NormFactory]] = {
    "bn": _batch_norm,
    "gn": _group_norm,
    "ln": _layer_norm,
    "in": _instance_norm,
    "sn": _switch_norm,
}


def resolve_norm_layer(norm: NormSpec, dims: int) -> NormFactory:
    """Turn ``norm`` (None, a lowercase name, a class or a callable) into a factory.

    ``None`` means BatchNorm of the given ``dims``; classes and callables (e.g. a
    ``functools.partial``) are returned as they are and must accept ``num_features`` first.
    """
    _check_dims(dims)
    if norm is None:
        return _batch_norm(dims)
    if isinstance(norm, str):
        try:
            builder = NORM_LAYERS[norm.lower()]
        except KeyError:
            known = ", ".join(sorted(NORM_LAYERS))
            raise ValueError(f"unknown norm layer {norm!r}; known names: {known}") from None
        return builder(dims)
    if callable(norm):
        return norm
    raise TypeError(
        f"norm_layer must be None, a name, a class or a callable, got {type(norm).__name__}"
    )
