"""Normalizer plans: which (mean, variance) normalizer each layer uses, as versioned JSON/YAML.

A plan is what a search recommends and what ``sn_core.finalize`` applies. Schema, version 1::

    {"format": "normsearch.plan", "version": 1,
     "layers": [{"name": "layer1.0.bn1", "mean": "bn", "var": "bn",
                 "mean_ratios": {"in": 0.01, "ln": 0.02, "bn": 0.97}, "var_ratios": {...},
                 "confidence": 0.95, "pool": ["in", "ln", "bn"], "groups": 32,
                 "num_features": 16, "dims": 2, "eps": 1e-05}],
     "metadata": {...}}

``dims`` (1/2/3, the SN class) and ``eps`` may be null or absent; every other layer field is
required. A layer whose pool had point-wise members ("dyt", "none") also carries ``"output"``
(the chosen output: "norm", "dyt" or "none"), ``"output_ratios"`` (over "norm" and the
point-wise members) and ``"dyt_alpha"`` (DyT's learned alpha, null without "dyt"); a layer
without them omits the three (``output`` is then "norm"), so older plans load unchanged.
Unknown fields, names or versions are rejected with a ValueError that says which.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .layers import SwitchNorm, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d
from .vocabulary import OUTPUT_CHOICES, STATISTIC_MEMBERS

__all__ = [
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "LayerChoice",
    "NormalizerPlan",
    "plan_from_model",
]

PLAN_FORMAT = "normsearch.plan"
PLAN_VERSION = 1

_REQUIRED_LAYER_FIELDS = (
    "name",
    "mean",
    "var",
    "mean_ratios",
    "var_ratios",
    "confidence",
    "pool",
    "groups",
    "num_features",
)
_OPTIONAL_LAYER_FIELDS = ("dims", "eps", "output", "output_ratios", "dyt_alpha")
_RATIO_SUM_TOLERANCE = 1e-4


def _kind(where: str, value: Any) -> str:
    if not isinstance(value, str) or value not in STATISTIC_MEMBERS:
        raise ValueError(f"{where}: unknown normalizer {value!r}; choose from {STATISTIC_MEMBERS}")
    return value


def _int(where: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _float(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _ratios(
    where: str, value: Any, pool: tuple[str, ...], *, what: str = "normalizer"
) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping {what} -> ratio, got {value!r}")
    if what == "normalizer":
        for key in value:
            _kind(f"{where} key", key)
    if set(value) != set(pool):
        raise ValueError(f"{where} must have one ratio per pool entry {pool}, got {sorted(value)}")
    ratios = {kind: _float(f"{where}[{kind!r}]", value[kind]) for kind in pool}
    if any(r < 0.0 or r > 1.0 + _RATIO_SUM_TOLERANCE for r in ratios.values()):
        raise ValueError(f"{where}: ratios must lie in [0, 1], got {ratios}")
    if abs(sum(ratios.values()) - 1.0) > _RATIO_SUM_TOLERANCE:
        raise ValueError(f"{where}: ratios must sum to 1, got {ratios}")
    return ratios


def _output_ratios(where: str, value: Any, output: str) -> dict[str, float] | None:
    """Validated output ratios (keys "norm" then point-wise members, in OUTPUT_CHOICES order);
    without them a point-wise ``output`` gets one-hot ratios over ("norm", output)."""
    if value is None:
        return None if output == "norm" else {"norm": 0.0, output: 1.0}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping output -> ratio, got {value!r}")
    unknown = [key for key in value if key not in OUTPUT_CHOICES]
    if unknown:
        raise ValueError(f"{where}: unknown output(s) {unknown}; choose from {OUTPUT_CHOICES}")
    if "norm" not in value or len(value) < 2:
        raise ValueError(
            f"{where} must have 'norm' and at least one point-wise member, got {sorted(value)}"
        )
    choices = tuple(key for key in OUTPUT_CHOICES if key in value)
    return _ratios(where, {key: value[key] for key in choices}, choices, what="output")


def _onehot(choice: str, pool: tuple[str, ...]) -> dict[str, float]:
    return {kind: float(kind == choice) for kind in pool}


@dataclass(frozen=True)
class LayerChoice:
    """The recommended normalizer of one layer, by its qualified module name.

    ``mean`` and ``var`` are the chosen normalizers; ``mean_ratios`` / ``var_ratios`` the ratios
    over ``pool`` they were read from (default: one-hot on the choice); ``confidence`` the smaller
    of the two margins top ratio - second ratio (1.0 for one-hot ratios).

    ``output`` is what the layer outputs: "norm" (the normalizer above) or a point-wise member,
    "dyt" (``sn_core.DynamicTanh`` with alpha ``dyt_alpha``) or "none" (the identity);
    ``output_ratios`` are the output ratios over "norm" and the layer's point-wise members (None
    for a layer without any; the output margin then joins ``confidence``). ``pool`` holds the
    statistics members only; ``members`` adds the point-wise ones.
    """

    name: str
    mean: str
    var: str
    num_features: int
    mean_ratios: dict[str, float] | None = None
    var_ratios: dict[str, float] | None = None
    confidence: float = 1.0
    pool: tuple[str, ...] = ("in", "ln", "bn")
    groups: int = 32
    dims: int | None = None
    eps: float | None = None
    output: str = "norm"
    output_ratios: dict[str, float] | None = None
    dyt_alpha: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"layer name must be a string, got {self.name!r}")
        where = f"layer {self.name!r}"
        pool = self.pool
        if isinstance(pool, str) or not isinstance(pool, Sequence) or not pool:
            raise ValueError(f"{where}: pool must be a non-empty list of names, got {pool!r}")
        pool = tuple(_kind(f"{where} pool", kind) for kind in pool)
        if len(set(pool)) != len(pool):
            raise ValueError(f"{where}: pool {pool} names a normalizer twice")
        mean = _kind(f"{where} mean", self.mean)
        var = _kind(f"{where} var", self.var)
        for role, kind in (("mean", mean), ("var", var)):
            if kind not in pool:
                raise ValueError(f"{where}: {role} choice {kind!r} is not in pool {pool}")
        num_features = _int(f"{where} num_features", self.num_features)
        groups = _int(f"{where} groups", self.groups)
        if "gn" in (mean, var) and num_features % groups:
            raise ValueError(
                f"{where}: groups={groups} must divide num_features={num_features} for 'gn'"
            )
        confidence = _float(f"{where} confidence", self.confidence)
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"{where}: confidence must lie in [0, 1], got {confidence}")
        mean_ratios = self.mean_ratios if self.mean_ratios is not None else _onehot(mean, pool)
        var_ratios = self.var_ratios if self.var_ratios is not None else _onehot(var, pool)
        if self.dims is not None and self.dims not in (1, 2, 3):
            raise ValueError(f"{where}: dims must be 1, 2, 3 or null, got {self.dims!r}")
        eps = None if self.eps is None else _float(f"{where} eps", self.eps)
        if eps is not None and eps < 0:
            raise ValueError(f"{where}: eps must be >= 0, got {eps}")
        output = self.output
        if not isinstance(output, str) or output not in OUTPUT_CHOICES:
            raise ValueError(f"{where}: unknown output {output!r}; choose from {OUTPUT_CHOICES}")
        output_ratios = _output_ratios(f"{where} output_ratios", self.output_ratios, output)
        if output_ratios is not None and output not in output_ratios:
            raise ValueError(
                f"{where}: output {output!r} is not among output_ratios {sorted(output_ratios)}"
            )
        dyt_alpha = None if self.dyt_alpha is None else _float(f"{where} dyt_alpha", self.dyt_alpha)
        if output == "dyt" and dyt_alpha is None:
            raise ValueError(f"{where}: output 'dyt' needs dyt_alpha (DyT's alpha)")
        set_ = object.__setattr__  # normalized values on a frozen dataclass
        set_(self, "output_ratios", output_ratios)
        set_(self, "dyt_alpha", dyt_alpha)
        set_(self, "pool", pool)
        set_(self, "mean_ratios", _ratios(f"{where} mean_ratios", mean_ratios, pool))
        set_(self, "var_ratios", _ratios(f"{where} var_ratios", var_ratios, pool))
        set_(self, "confidence", confidence)
        set_(self, "eps", eps)

    @property
    def choice(self) -> str:
        """The pair as "mean/var", e.g. "bn/ln"; a point-wise output by its name ("dyt")."""
        return f"{self.mean}/{self.var}" if self.output == "norm" else self.output

    @property
    def pointwise(self) -> tuple[str, ...]:
        """The layer's point-wise members (from ``output_ratios``)."""
        return tuple(k for k in self.output_ratios or () if k != "norm")

    @property
    def members(self) -> tuple[str, ...]:
        """The whole pool: statistics members, then point-wise members."""
        return (*self.pool, *self.pointwise)

    def to_dict(self) -> dict[str, Any]:
        data = self._statistics_dict()
        if self.output_ratios is not None:
            data["output"] = self.output
            data["output_ratios"] = dict(self.output_ratios)
            data["dyt_alpha"] = self.dyt_alpha
        return data

    def _statistics_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mean": self.mean,
            "var": self.var,
            "mean_ratios": dict(self.mean_ratios),
            "var_ratios": dict(self.var_ratios),
            "confidence": self.confidence,
            "pool": list(self.pool),
            "groups": self.groups,
            "num_features": self.num_features,
            "dims": self.dims,
            "eps": self.eps,
        }

    @classmethod
    def from_dict(cls, data: Any, *, index: int | None = None) -> LayerChoice:
        where = "plan layer" if index is None else f"plan layer #{index}"
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
        if isinstance(data.get("name"), str):
            where = f"{where} ({data['name']!r})"
        missing = [key for key in _REQUIRED_LAYER_FIELDS if key not in data]
        if missing:
            raise ValueError(f"{where} is missing field(s) {missing}")
        unknown = sorted(set(data) - set(_REQUIRED_LAYER_FIELDS) - set(_OPTIONAL_LAYER_FIELDS))
        if unknown:
            raise ValueError(f"{where} has unknown field(s) {unknown}")
        for key in ("mean_ratios", "var_ratios"):
            if not isinstance(data[key], Mapping):
                raise ValueError(f"{where}: {key} must be a mapping, got {data[key]!r}")
        return cls(**{key: data[key] for key in data})


@dataclass(frozen=True)
class NormalizerPlan:
    """One ``LayerChoice`` per normalization layer, plus free-form JSON ``metadata``."""

    layers: tuple[LayerChoice, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        for layer in layers:
            if not isinstance(layer, LayerChoice):
                raise ValueError(f"plan layers must be LayerChoice, got {type(layer).__name__}")
        duplicates = sorted(name for name, n in Counter(x.name for x in layers).items() if n > 1)
        if duplicates:
            raise ValueError(f"plan names layer(s) {duplicates} more than once")
        if not isinstance(self.metadata, Mapping):
            raise ValueError(f"plan metadata must be a mapping, got {self.metadata!r}")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "metadata", dict(self.metadata))

    # ------------------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerChoice]:
        return iter(self.layers)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def layer(self, name: str) -> LayerChoice:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in the plan")

    def counts(self) -> dict[str, int]:
        """How many layers use each pair, e.g. {"bn/bn": 12, "in/ln": 3}, most frequent first."""
        counts = Counter(layer.choice for layer in self.layers)
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    # ------------------------------------------------------------------------ dict / JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "layers": [layer.to_dict() for layer in self.layers],
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Any) -> NormalizerPlan:
        if not isinstance(data, Mapping):
            raise ValueError(f"a plan must be a mapping, got {type(data).__name__}")
        if data.get("format") != PLAN_FORMAT:
            found = data.get("format")
            raise ValueError(f"not a normalizer plan: format {found!r}, expected {PLAN_FORMAT!r}")
        version = data.get("version")
        if version != PLAN_VERSION or isinstance(version, bool):
            raise ValueError(
                f"unsupported plan version {version!r}; this library reads version {PLAN_VERSION}"
            )
        missing = [key for key in ("layers",) if key not in data]
        if missing:
            raise ValueError(f"plan is missing field(s) {missing}")
        unknown = sorted(set(data) - {"format", "version", "layers", "metadata"})
        if unknown:
            raise ValueError(f"plan has unknown field(s) {unknown}")
        layers = data["layers"]
        if not isinstance(layers, list):
            raise ValueError(f"plan 'layers' must be a list, got {type(layers).__name__}")
        metadata = data.get("metadata") or {}
        return cls(
            layers=tuple(LayerChoice.from_dict(item, index=i) for i, item in enumerate(layers)),
            metadata=metadata,
        )

    def to_json(self, *, indent: int | None = 2) -> str:
        try:
            return json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"plan metadata is not JSON-serializable: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> NormalizerPlan:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"invalid plan JSON: {exc}") from exc
        return cls.from_dict(data)

    # -------------------------------------------------------------------------------- YAML
    def to_yaml(self) -> str:
        import yaml

        self.to_json()  # same serializability rules as JSON
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str | bytes) -> NormalizerPlan:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"invalid plan YAML: {exc}") from exc
        return cls.from_dict(data)

    # ------------------------------------------------------------------------------- files
    @staticmethod
    def _suffix(path: str | Path) -> str:
        suffix = Path(path).suffix.lower()
        if suffix not in (".json", ".yaml", ".yml"):
            raise ValueError(f"plan file must end in .json, .yaml or .yml, got {str(path)!r}")
        return suffix

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        text = self.to_json() + "\n" if self._suffix(path) == ".json" else self.to_yaml()
        path.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> NormalizerPlan:
        suffix = cls._suffix(path)
        text = Path(path).read_text(encoding="utf-8")
        return cls.from_json(text) if suffix == ".json" else cls.from_yaml(text)


# ---------------------------------------------------------------------------------- models
def _margin(ratios: list[float]) -> float:
    if len(ratios) < 2:
        return 1.0
    top, second = sorted(ratios, reverse=True)[:2]
    return top - second


def sn_dims(module: nn.Module) -> int | None:
    """1, 2 or 3 for SwitchNorm1d/2d/3d; None for a SwitchNorm of no fixed dimensionality."""
    for dims, cls in ((1, SwitchNorm1d), (2, SwitchNorm2d), (3, SwitchNorm3d)):
        if isinstance(module, cls):
            return dims
    return None


def plan_from_model(
    model: nn.Module, *, metadata: Mapping[str, Any] | None = None
) -> NormalizerPlan:
    """One ``LayerChoice`` per ``SwitchNorm`` of ``model``, in ``named_modules()`` order.

    The choice is the fixed one where a layer is fixed, else the argmax of its current ratios
    (the first in pool order on a tie); ``confidence`` is min over mean, variance (and output)
    of top ratio - second ratio.
    """
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, SwitchNorm):
            continue
        with torch.no_grad():
            mean_t, var_t = module.ratios()
        mean_r = [float(r) for r in mean_t.detach().cpu().double()]
        var_r = [float(r) for r in var_t.detach().cpu().double()]
        mean_fixed, var_fixed = module.fixed
        mean_i = mean_fixed if mean_fixed is not None else mean_r.index(max(mean_r))
        var_i = var_fixed if var_fixed is not None else var_r.index(max(var_r))
        pool = module.pool
        margins = [_margin(mean_r), _margin(var_r)]
        output: dict[str, Any] = {}
        if module.output_choices:
            with torch.no_grad():
                out_r = [float(r) for r in module.output_ratios().detach().cpu().double()]
            fixed = module.fixed_output
            out_i = fixed if fixed is not None else out_r.index(max(out_r))
            margins.append(_margin(out_r))
            alpha = module.dyt_alpha
            output = {
                "output": module.output_choices[out_i],
                "output_ratios": dict(zip(module.output_choices, out_r, strict=True)),
                "dyt_alpha": None if alpha is None else float(alpha.detach().cpu().double()[0]),
            }
        layers.append(
            LayerChoice(
                name=name,
                mean=pool[mean_i],
                var=pool[var_i],
                num_features=module.num_features,
                mean_ratios=dict(zip(pool, mean_r, strict=True)),
                var_ratios=dict(zip(pool, var_r, strict=True)),
                confidence=min(1.0, max(0.0, min(margins))),
                pool=pool,
                groups=module.groups,
                dims=sn_dims(module),
                eps=module.eps,
                **output,
            )
        )
    return NormalizerPlan(layers=tuple(layers), metadata=dict(metadata or {}))
