"""Name -> model builder registry, extensible from other packages through entry points.

Builders share one signature, ``(num_classes=10, in_channels=3, norm_layer=None, **arch_kwargs)``,
so a search job can name any architecture and any norm without knowing its module. Third-party
packages add architectures under the entry-point group ``normsearch.models`` (entry-point name =
arch name, object = builder); they are loaded once, on the first lookup that misses.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from sn_core.norms import NormSpec

ENTRY_POINT_GROUP = "normsearch.models"

ModelBuilder = Callable[..., nn.Module]

MODELS: dict[str, ModelBuilder] = {}

_plugins_loaded = False


class UnknownModelError(KeyError, ValueError):
    """No builder under that name; a KeyError for lookups, a ValueError for bad arguments."""

    def __str__(self) -> str:  # KeyError would show the message repr()-quoted.
        return str(self.args[0]) if self.args else ""


def _add(name: str, builder: ModelBuilder) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    key = name.lower()
    if key in MODELS:
        raise ValueError(f"model {key!r} is already registered (by {MODELS[key]!r})")
    MODELS[key] = builder


def register_model(name: str | ModelBuilder | None = None) -> Any:
    """Register a builder: ``@register_model`` (uses the function name) or ``@register_model("x")``.

    Names are stored lowercase; registering a name twice raises ValueError rather than silently
    replacing an architecture that saved jobs may refer to.
    """
    if callable(name):
        _add(name.__name__, name)
        return name

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        _add(name if name is not None else builder.__name__, builder)
        return builder

    return decorator


def _load_plugins() -> None:
    """Register the builders of the ``normsearch.models`` entry points, once per process."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name.lower() in MODELS:
            warnings.warn(
                f"model plug-in {ep.name!r} ({ep.value}) ignored: the name is already registered",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        try:
            builder = ep.load()
        except Exception as exc:
            raise RuntimeError(f"failed to load model plug-in {ep.name!r} ({ep.value})") from exc
        _add(ep.name, builder)


def list_models() -> list[str]:
    """Sorted names of every available architecture, plug-ins included."""
    _load_plugins()
    return sorted(MODELS)


def get_model_builder(name: str) -> ModelBuilder:
    """The builder registered under ``name`` (case-insensitive); plug-ins are tried on a miss."""
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        _load_plugins()
    try:
        return MODELS[key]
    except KeyError:
        known = ", ".join(sorted(MODELS)) or "(none)"
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}") from None


def build_model(
    arch: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    norm_layer: NormSpec = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``arch``; extra keyword arguments go to the architecture (e.g. ``width``)."""
    builder = get_model_builder(arch)
    return builder(
        num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer, **kwargs
    )
