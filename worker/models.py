"""Building the networks a search trains: the SN model, a recommended plan, or a baseline.

One function per variant so the trainable, the verification and the driver (which rebuilds the
best trial's model from its checkpoint) construct exactly the same module tree.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import sn_core
from service.spec import JobSpec

SN_VARIANT = "sn"  # the searched model; plan and baseline variants are named below
PLAN_VARIANT = "plan"


def zoo_model(spec: JobSpec, num_classes: int, in_channels: int, norm_layer=None) -> nn.Module:
    """The spec's zoo model with its plain norms (``norm_layer``: the builder's default)."""
    return sn_core.build_model(
        spec.model.arch,
        num_classes=spec.model.num_classes or num_classes,
        in_channels=spec.model.in_channels or in_channels,
        norm_layer=norm_layer,
        **spec.model.kwargs,
    )


def build_variant(
    spec: JobSpec,
    variant: str,
    *,
    num_classes: int,
    in_channels: int,
    example_input: torch.Tensor,
    plan: dict[str, Any] | None = None,
) -> nn.Module:
    """``variant``: "sn" (every norm -> SwitchNorm over the spec's pool), "plan" (the given
    NormalizerPlan applied to a fresh model) or a baseline norm name ("bn", "gn", "ln", "in")."""
    if variant == SN_VARIANT:
        model = zoo_model(spec, num_classes, in_channels)
        return sn_core.convert_to_switchnorm(
            model,
            pool=tuple(spec.search.pool),
            tied=spec.search.tied,
            example_input=example_input,
            # LayerNorm/RMSNorm stay as they are: the service's pools and ratio history cover
            # the channel-first members only (token layers are sn_core's, not yet the service's)
            token_pool=None,
        )
    if variant == PLAN_VARIANT:
        if plan is None:
            raise ValueError("the plan variant needs a plan")
        model = zoo_model(spec, num_classes, in_channels)
        return sn_core.apply_plan(model, sn_core.NormalizerPlan.from_dict(plan))
    return zoo_model(spec, num_classes, in_channels, norm_layer=variant)


def build_for_data(spec: JobSpec, variant: str, data, plan: dict[str, Any] | None = None):
    """``build_variant`` for a loaded dataset (its classes, channels and a few example inputs)."""
    return build_variant(
        spec,
        variant,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        example_input=data.x_train[: min(8, len(data.x_train))],
        plan=plan,
    )


def model_spec(spec: JobSpec, *, num_classes: int, in_channels: int) -> dict[str, Any]:
    """The zoo spec stored beside finalized checkpoints (``sn_core.load_finalized``)."""
    return {
        "arch": spec.model.arch,
        "num_classes": spec.model.num_classes or num_classes,
        "in_channels": spec.model.in_channels or in_channels,
        "kwargs": dict(spec.model.kwargs),
    }
