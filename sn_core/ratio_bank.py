"""Every free SN layer's ratios in one batched call per forward of the model.

A free layer turns its logits into ratios on every forward (sparsestmax: a few dozen small ops on
a 3-vector). At small activations that fixed cost dominates: on resnet20 over 8x8 digits at batch
32 the 21 layers' ratios took about as long, forward and backward, as the rest of the SN
overhead. The ratio functions work row-wise, so a ``RatioBank`` registers a forward pre-hook on
the model that stacks the logits of every free choice with the same ratio function, size, device
and dtype, computes their ratios in one call (radius and temperature per row, in the autograd
graph when gradients are on) and hands each layer its rows.

A layer takes its rows once (a second call of a shared layer in the same forward computes its
own) and only during that forward of the model (a forward hook drops the rows not taken, so no
row outlives the autograd graph it belongs to), and only while they are current: each row is
stamped with its logits' version counter
(an optimizer step or ``load_state_dict`` bumps it), its radius, temperature, ratio function and
whether gradients were on; anything else computes the ratios as before. So the bank changes
where ratios are computed, never their values (tested against the per-layer path). Under
``torch.compile`` it stands aside.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from .sparsity import compute_ratios

__all__ = ["RatioBank", "grouped_ratios", "ratio_stamp", "take_banked"]


def ratio_stamp(layer, which: str) -> tuple:
    """What a ``which`` ("mean", "var", "output") row of ``layer`` was computed from."""
    if which == "output":
        logits, radius = layer.output_weight, layer.output_radius
    else:
        logits = layer.var_logits if which == "var" else layer.mean_weight
        radius = layer.radius
    return (
        logits._version, radius, layer.temperature, layer.ratio_fn, torch.is_grad_enabled()
    )  # fmt: skip


def take_banked(layer, which: str) -> Tensor | None:
    """``layer``'s banked ``which`` row if it is current (then no longer banked), else None."""
    if torch.compiler.is_compiling():
        return None
    banked = layer._banked
    if not banked:
        return None
    entry = banked.get(which)
    if entry is None or entry[1] != ratio_stamp(layer, which):
        return None
    del banked[which]
    return entry[0]


def _free_choices(layer) -> list[str]:
    """The choices of ``layer`` whose ratios come from logits now."""
    choices = []
    mean_fixed, var_fixed = layer.fixed
    if mean_fixed is None:
        choices.append("mean")
    if var_fixed is None and not layer.tied:
        choices.append("var")
    if layer.output_choices and layer.fixed_output is None:
        choices.append("output")
    return choices


def _logits(layer, which: str) -> Tensor:
    """The logits of a ``which`` ("mean", "var", "output"; "tied" reads as "mean") choice."""
    if which == "output":
        return layer.output_weight
    return layer.var_logits if which == "var" else layer.mean_weight


def grouped_ratios(choices: Sequence[tuple[object, str]]) -> Iterator[tuple[list[int], Tensor]]:
    """The ratios of each ``(layer, which)`` choice as its layer's ratio function computes them,
    one call per group of choices with the same ratio function, size, device and dtype (stacked
    logits, radius and temperature per row): yields each group's indices into ``choices`` and
    its ratios, one row per index, in that order. The bank and the ``SparsityController`` read
    ratios through it."""
    groups: dict[tuple, list[int]] = {}
    for i, (layer, which) in enumerate(choices):
        logits = _logits(layer, which)
        key = (layer.ratio_fn, logits.shape[-1], logits.device, logits.dtype)
        groups.setdefault(key, []).append(i)
    for (ratio_fn, _, device, dtype), members in groups.items():
        chosen = [choices[i] for i in members]
        radius = [layer.output_radius if w == "output" else layer.radius for layer, w in chosen]
        temperature = [[layer.temperature] for layer, _ in chosen]
        ratios = compute_ratios(
            ratio_fn,
            torch.stack([_logits(layer, which) for layer, which in chosen]),
            radius=torch.tensor(radius, dtype=dtype, device=device),
            temperature=torch.tensor(temperature, dtype=dtype, device=device),
        )
        yield members, ratios


class RatioBank:
    """Computes the ratios of ``model``'s free SN layers in one call per group before each of its
    forwards (see the module docstring); ``close()`` removes the hook."""

    def __init__(self, model: nn.Module) -> None:
        from .inspect import switch_layers  # it imports the layers, which import this module

        self.layers = [layer for _, layer in switch_layers(model)]
        self._handles = (
            model.register_forward_pre_hook(self._fill),
            model.register_forward_hook(self._drop),
        )

    def __deepcopy__(self, memo) -> RatioBank:
        """A copy of the model (``finalize`` and ``apply_plan`` deep-copy theirs) keeps a bank that
        computes nothing: its SN layers may be replaced by torch layers there, and computing the
        ratios of layers a model no longer holds would only cost time. Only speed is lost."""
        clone = RatioBank.__new__(RatioBank)
        clone.layers, clone._handles = [], ()
        return clone

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._drop()

    def _drop(self, *_) -> None:
        for layer in self.layers:
            if layer._banked is not None:
                layer._banked = None

    def _fill(self, module, args) -> None:
        if torch.compiler.is_compiling():
            return
        choices = [(layer, which) for layer in self.layers for which in _free_choices(layer)]
        for layer in self.layers:
            layer._banked = None
        for members, ratios in grouped_ratios(choices):
            for i, row in zip(members, ratios.unbind(0), strict=True):
                layer, which = choices[i]
                if layer._banked is None:
                    layer._banked = {}
                layer._banked[which] = (row, ratio_stamp(layer, which))
