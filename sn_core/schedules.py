"""Sparsity schedules: from soft SN ratios to one normalizer per layer within a training budget.

Every schedule is a function of ``progress``, the fraction of the training budget done (steps done /
total steps, or epochs as a fraction), so the same settings compress to any budget: with
``end=0.6`` every ratio is one-hot and fixed after 60% of the run, whether the run is 300 steps or
300 epochs, and the network then trains with its final choices for the remaining 40%
(docs/sn-spec.md section 5; the original SSN schedule ramped the radius to 1 over the whole run).

``SparsityController`` drives the schedule: it sets each SN layer's ``radius`` (sparsestmax) or
``temperature`` and fixes every choice that has become one-hot, so its logits leave the graph.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .inspect import switch_layers
from .layers import SwitchNorm
from .ratio_bank import RatioBank, grouped_ratios
from .sparsity import onehot_radius

__all__ = [
    "SPARSITY_METHODS",
    "RadiusSchedule",
    "SparsityController",
    "SparsityStatus",
    "TemperatureSchedule",
    "fraction_fixed",
    "linear_ramp",
]

SPARSITY_METHODS = ("sparsestmax", "temperature", "none")

#: Temperature annealing only approaches one-hot: a choice counts as one-hot from this margin.
TEMPERATURE_FIX_THRESHOLD = 1e-3


def _check_window(start: float, end: float) -> None:
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"start and end must be finite, got start={start}, end={end}")
    if end < start:
        raise ValueError(f"end ({end}) must not be before start ({start})")


def linear_ramp(progress: float, start: float, end: float) -> float:
    """0 up to ``start``, 1 from ``end`` on, linear in between (a step at ``start`` if equal)."""
    _check_window(start, end)
    progress = float(progress)
    if progress >= end:
        return 1.0
    if progress <= start:
        return 0.0
    return (progress - start) / (end - start)


@dataclass(frozen=True)
class RadiusSchedule:
    """SparsestMax radius: 0 until ``start``, rising linearly to the final radius at ``end``.

    The final radius defaults to ``onehot_radius(k) + 0.01`` for a pool of ``k`` normalizers, the
    smallest radius (plus a margin) at which every sparsestmax output is one-hot, so all ratios are
    one-hot by ``end``.
    """

    start: float = 0.0
    end: float = 0.6
    final_radius: float | None = None

    def __post_init__(self) -> None:
        _check_window(self.start, self.end)
        if self.final_radius is not None and self.final_radius < 0:
            raise ValueError(f"final_radius must be >= 0, got {self.final_radius}")

    def final(self, k: int) -> float:
        return self.final_radius if self.final_radius is not None else onehot_radius(k) + 0.01

    def radius(self, progress: float, k: int) -> float:
        return linear_ramp(progress, self.start, self.end) * self.final(k)

    __call__ = radius


@dataclass(frozen=True)
class TemperatureSchedule:
    """Softmax temperature: ``initial`` until ``start``, geometric decay to ``final`` at ``end``."""

    start: float = 0.0
    end: float = 0.6
    initial: float = 1.0
    final: float = 0.01

    def __post_init__(self) -> None:
        _check_window(self.start, self.end)
        if not (self.initial > 0 and self.final > 0):
            raise ValueError(
                f"temperatures must be positive, got initial={self.initial}, final={self.final}"
            )

    def temperature(self, progress: float) -> float:
        ramp = linear_ramp(progress, self.start, self.end)
        return self.initial * (self.final / self.initial) ** ramp

    __call__ = temperature


@dataclass
class SparsityStatus:
    """What one ``SparsityController.step`` did.

    ``fixed``/``total`` count choices (a tied layer is one choice, an untied layer two, plus
    one for the output of a layer with point-wise members); ``newly_fixed`` lists ``(layer name,
    "mean" | "var" | "tied" | "output", choice)`` (an output choice: "norm", "dyt" or "none").
    """

    progress: float
    fixed: int
    total: int
    all_fixed: bool
    newly_fixed: list[tuple[str, str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choice_counts(layers: list[tuple[str, SwitchNorm]]) -> tuple[int, int]:
    fixed = total = 0
    for _, layer in layers:
        mean_fixed, var_fixed = layer.fixed
        if layer.tied:
            total += 1
            fixed += mean_fixed is not None
        else:
            total += 2
            fixed += (mean_fixed is not None) + (var_fixed is not None)
        if layer.output_choices:
            total += 1
            fixed += layer.fixed_output is not None
    return fixed, total


def _free(layer: SwitchNorm) -> bool:
    return None in layer.fixed or (bool(layer.output_choices) and layer.fixed_output is None)


def fraction_fixed(model: nn.Module) -> float:
    """Fixed choices over all choices of the model's SN layers (1.0 when there are none)."""
    fixed, total = _choice_counts(switch_layers(model))
    return fixed / total if total else 1.0


def _top_ratios(pending: list[tuple[str, SwitchNorm, str]]) -> list[tuple[float, float]]:
    """(top ratio, argmax) of each pending choice, as its layer's ratio function computes them:
    one ratio call and one host transfer per group of same-sized choices (``grouped_ratios``);
    per layer, their fixed cost (a few dozen small ops each) made the controller a tenth of a
    small search trial."""
    summary: list[tuple[float, float]] = [(0.0, 0.0)] * len(pending)
    for members, ratios in grouped_ratios([(layer, which) for _, layer, which in pending]):
        top, index = ratios.max(-1)
        pairs = torch.stack([top, index.to(ratios.dtype)], dim=-1).to(torch.float64).tolist()
        for i, (top_ratio, argmax) in zip(members, pairs, strict=True):
            summary[i] = (top_ratio, argmax)
    return summary


class SparsityController:
    """Anneals every SN layer of ``model`` to one-hot ratios and fixes the choices.

    Args:
        model: the network (a DistributedDataParallel wrapper is fine). Its SN layers are found
            once, here; build the controller after surgery.
        method: "sparsestmax" (radius from ``RadiusSchedule``), "temperature" (softmax with a
            ``TemperatureSchedule``) or "none" (ratios stay softmax and nothing is fixed; ``step``
            only reports). The constructor sets every layer's ``ratio_fn`` to the method.
        start, end: the window of the schedule as fractions of the budget. From ``end`` on every
            remaining free choice is fixed to its argmax.
        fix_threshold: a free choice is fixed once its top ratio is >= ``1 - fix_threshold``
            (for "temperature" at least 1e-3 is used: softmax never reaches one-hot exactly).
        final_radius, initial_temperature, final_temperature: schedule settings.
        batch_ratios: register a ``RatioBank`` on ``model`` (its free layers' ratios computed
            in one batched call per forward; same values). ``close()`` removes it.

    Call ``step(progress)`` after every optimizer step (``progress`` = steps done / total steps) or
    once per epoch. It reads the ratios of the free layers (one host sync per call; forward itself
    never syncs). Fixed choices live in the layers' buffers, so they survive
    ``model.state_dict()``; the controller's own ``state_dict()`` holds the last progress, from
    which ``load_state_dict`` restores the layers' radius or temperature.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "sparsestmax",
        start: float = 0.0,
        end: float = 0.6,
        fix_threshold: float = 1e-6,
        *,
        final_radius: float | None = None,
        initial_temperature: float = 1.0,
        final_temperature: float = 0.01,
        batch_ratios: bool = True,
    ) -> None:
        if method not in SPARSITY_METHODS:
            raise ValueError(f"method must be one of {SPARSITY_METHODS}, got {method!r}")
        if not 0 <= fix_threshold < 1:
            raise ValueError(f"fix_threshold must be in [0, 1), got {fix_threshold}")
        self.method = method
        self.start = float(start)
        self.end = float(end)
        self.fix_threshold = float(fix_threshold)
        self.radius_schedule = RadiusSchedule(self.start, self.end, final_radius)
        self.temperature_schedule = TemperatureSchedule(
            self.start, self.end, initial_temperature, final_temperature
        )
        self.layers = switch_layers(model)
        # The free layers' ratios in one call per forward of the model (sn_core.ratio_bank).
        self.bank = RatioBank(model) if batch_ratios else None
        self.progress: float | None = None
        if method != "none":
            for _, layer in self.layers:
                layer.ratio_fn = method
            self._apply_schedule(0.0)

    @property
    def threshold(self) -> float:
        """The top ratio from which a choice counts as one-hot."""
        if self.method == "temperature":
            return 1.0 - max(self.fix_threshold, TEMPERATURE_FIX_THRESHOLD)
        return 1.0 - self.fix_threshold

    def _free_layers(self) -> list[tuple[str, SwitchNorm]]:
        return [(n, m) for n, m in self.layers if _free(m)]

    def _apply_schedule(self, progress: float) -> None:
        for _, layer in self._free_layers():
            if self.method == "sparsestmax":
                layer.radius = self.radius_schedule(progress, len(layer.pool))
                if layer.output_choices:  # its own K: one-hot at the same progress
                    layer.output_radius = self.radius_schedule(progress, len(layer.output_choices))
            elif self.method == "temperature":
                layer.temperature = self.temperature_schedule(progress)

    def status(self, newly_fixed: list[tuple[str, str, str]] | None = None) -> SparsityStatus:
        fixed, total = _choice_counts(self.layers)
        return SparsityStatus(
            progress=self.progress if self.progress is not None else 0.0,
            fixed=fixed,
            total=total,
            all_fixed=fixed == total,
            newly_fixed=list(newly_fixed or []),
        )

    @torch.no_grad()
    def step(self, progress: float) -> SparsityStatus:
        """Set the schedule for ``progress`` and fix the choices that are one-hot (all from
        ``end`` on); returns what is fixed now."""
        progress = float(progress)
        if not math.isfinite(progress):
            raise ValueError(f"progress must be finite, got {progress}")
        self.progress = progress
        if self.method == "none":
            return self.status()
        self._apply_schedule(progress)

        pending: list[tuple[str, SwitchNorm, str]] = []
        for name, layer in self._free_layers():
            if layer.output_choices and layer.fixed_output is None:
                pending.append((name, layer, "output"))
            mean_fixed, var_fixed = layer.fixed
            if None not in layer.fixed:
                continue
            if layer.tied:
                pending.append((name, layer, "tied"))
                continue
            if mean_fixed is None:
                pending.append((name, layer, "mean"))
            if var_fixed is None:
                pending.append((name, layer, "var"))
        if not pending:
            return self.status()
        summary = _top_ratios(pending)
        force = progress >= self.end
        newly: list[tuple[str, str, str]] = []
        for (name, layer, which), (top, index) in zip(pending, summary, strict=True):
            if not (force or top >= self.threshold):
                continue
            index = int(index)
            if which == "output":
                layer.fix(output=index)
                newly.append((name, which, layer.output_choices[index]))
                continue
            if which == "var":
                layer.fix(var=index)
            else:
                layer.fix(mean=index)  # tied layers fix both together
            newly.append((name, which, layer.pool[index]))
        return self.status(newly)

    def close(self) -> None:
        """Remove the ratio bank's hooks from the model."""
        if self.bank is not None:
            self.bank.close()
            self.bank = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "start": self.start,
            "end": self.end,
            "progress": self.progress,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the last progress and re-apply its radius/temperature to the free layers (the
        fixed choices come back with the model's own ``load_state_dict``)."""
        if state.get("method", self.method) != self.method:
            raise ValueError(
                f"state is for method {state['method']!r}, this controller uses {self.method!r}"
            )
        progress = state.get("progress")
        self.progress = None if progress is None else float(progress)
        if self.method != "none":
            self._apply_schedule(self.progress if self.progress is not None else 0.0)
