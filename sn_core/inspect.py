"""Finding and reading the Switchable Normalization layers of a model.

Layers and their ratio logits are found by module type (``isinstance(m, SwitchNorm)``), never by
parameter name: the original code took every parameter whose name ends in ``_weight``, which also
catches unrelated parameters of user models (docs/sn-spec.md section 5).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .layers import SwitchNorm

__all__ = [
    "RATIO_EPS",
    "clip_ratio_grad_norm",
    "param_groups",
    "ratio_parameters",
    "switch_layers",
    "switch_ratios",
]

#: Ratios are clamped to at least this before taking logarithms in ``switch_ratios``.
RATIO_EPS = 1e-8


def switch_layers(model: nn.Module) -> list[tuple[str, SwitchNorm]]:
    """(qualified name, layer) of every SwitchNorm in ``model``, in module order, each once."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SwitchNorm)]


def ratio_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The ratio logits of every SwitchNorm layer (``mean_weight``, unless tied ``var_weight``,
    and ``output_weight`` where the pool has point-wise members), each parameter once, in module
    order. DyT's ``dyt_alpha`` is a network parameter, not a ratio logit.

    Fixed choices keep their logits in this list; they simply never get a gradient.
    """
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for _, layer in switch_layers(model):
        for param in (layer.mean_weight, layer.var_weight, layer.output_weight):
            if param is not None and id(param) not in seen:
                seen.add(id(param))
                params.append(param)
    return params


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    ratio_lr_mult: float = 1.0,
    ratio_weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Two optimizer parameter groups: every other parameter, then the SN ratio logits.

    The papers' recipes train the logits with weight decay 0 (decay pulls every layer back to
    uniform ratios) and SSN with one tenth of the learning rate (``ratio_lr_mult=0.1``). Each
    group carries a ``"name"`` ("params" / "ratios"); the ratio group may be empty.
    ``torch.optim.SGD(param_groups(model, lr=0.1, weight_decay=5e-4), lr=0.1, momentum=0.9)``.
    """
    ratios = ratio_parameters(model)
    ratio_ids = {id(p) for p in ratios}
    others = [p for p in model.parameters() if id(p) not in ratio_ids]
    return [
        {"params": others, "lr": lr, "weight_decay": weight_decay, "name": "params"},
        {
            "params": ratios,
            "lr": lr * ratio_lr_mult,
            "weight_decay": ratio_weight_decay,
            "name": "ratios",
        },
    ]


def clip_ratio_grad_norm(model: nn.Module, max_norm: float, norm_type: float = 2.0) -> Tensor:
    """Clip the gradient norm of the ratio logits only (SSN clipped it to 1); returns the total
    norm before clipping, as ``torch.nn.utils.clip_grad_norm_``. Logits without a gradient
    (fixed choices) are ignored."""
    return torch.nn.utils.clip_grad_norm_(ratio_parameters(model), max_norm, norm_type=norm_type)


def _entropy(p: Tensor) -> Tensor:
    return -torch.special.xlogy(p, p).sum()


def _margin(p: Tensor) -> Tensor:
    if p.numel() == 1:
        return p[0]
    top2 = torch.topk(p, 2).values
    return top2[0] - top2[1]


def switch_ratios(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per SN layer (by qualified name) its current ratios and summary statistics.

    Every entry is::

        {"mean": {norm: ratio}, "var": {norm: ratio},          # as forward uses them
         "fixed": {"mean": bool, "var": bool},
         "divergence": D, "entropy": {"mean": H, "var": H}, "margin": {"mean": m, "var": m}}

    ``divergence`` is the paper's D, the symmetric KL divergence ``KL(p||q) + KL(q||p)`` between
    the mean ratios p and the variance ratios q, computed with both clamped to at least
    ``RATIO_EPS`` (1e-8): sparse or one-hot ratios that disagree give a large but finite value
    (about 37 for two different one-hot choices) instead of infinity. ``entropy`` is in nats
    (0 for one-hot); ``margin`` is the top ratio minus the second (1 for one-hot). Ratios are
    ``layer.ratios()``: one-hot where a choice is fixed. All values are Python floats.

    A layer with point-wise members ("dyt", "none") also has ``"output": {choice: ratio}`` over
    ``layer.output_choices`` ("norm" first), ``"output"`` entries in ``fixed``, ``entropy`` and
    ``margin``, and ``"dyt_alpha"`` (DyT's alpha) when "dyt" is among them.
    """
    result: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for name, layer in switch_layers(model):
            mean, var = (r.detach().to(device="cpu", dtype=torch.float64) for r in layer.ratios())
            p = mean.clamp(min=RATIO_EPS)
            q = var.clamp(min=RATIO_EPS)
            divergence = ((p - q) * (p.log() - q.log())).sum()
            mean_fixed, var_fixed = layer.fixed
            result[name] = {
                "mean": dict(zip(layer.pool, mean.tolist(), strict=True)),
                "var": dict(zip(layer.pool, var.tolist(), strict=True)),
                "fixed": {"mean": mean_fixed is not None, "var": var_fixed is not None},
                "divergence": float(divergence),
                "entropy": {"mean": float(_entropy(mean)), "var": float(_entropy(var))},
                "margin": {"mean": float(_margin(mean)), "var": float(_margin(var))},
            }
            output = layer.output_ratios()
            if output is not None:
                _add_output(result[name], layer, output.detach().to("cpu", torch.float64))
    return result


def _add_output(entry: dict[str, Any], layer: SwitchNorm, output: Tensor) -> None:
    """The output mixture's part of a ``switch_ratios`` entry."""
    entry["output"] = dict(zip(layer.output_choices, output.tolist(), strict=True))
    entry["fixed"]["output"] = layer.fixed_output is not None
    entry["entropy"]["output"] = float(_entropy(output))
    entry["margin"]["output"] = float(_margin(output))
    if layer.dyt_alpha is not None:
        entry["dyt_alpha"] = float(layer.dyt_alpha.detach().cpu().double()[0])
