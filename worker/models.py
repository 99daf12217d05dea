"""Building the networks a search trains: the SN model, a recommended plan, or a baseline.

One function per variant so the trainable, the verification and the driver (which rebuilds the
best trial's model from its checkpoint) construct exactly the same module tree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

import sn_core
from service.spec import LANGUAGE_MODELS, JobSpec
from sn_core.vocabulary import POINTWISE_MEMBERS, STATISTIC_MEMBERS

SN_VARIANT = "sn"  # the searched model; plan and baseline variants are named below
PLAN_VARIANT = "plan"
# Baselines the zoo builds directly (``norm_layer=<name>``: one plain torch layer everywhere).
# Any other pool member (rms; dyt, none) is a uniform plan applied to the default model
# (``baseline_plan``).
NORM_LAYER_BASELINES = ("bn", "gn", "ln", "in")
# The statistics a point-wise baseline's plan names (unused: its output replaces the norm).
POINTWISE_STATISTIC = "ln"


def zoo_model(spec: JobSpec, num_classes: int, in_channels: int, norm_layer=None) -> nn.Module:
    """The spec's zoo model with its plain norms (``norm_layer``: the builder's default). A
    language model's context defaults to the text dataset's ``context_length``."""
    return sn_core.build_model(
        spec.model.arch,
        num_classes=spec.model.num_classes or num_classes,
        in_channels=spec.model.in_channels or in_channels,
        norm_layer=norm_layer,
        **model_kwargs(spec),
    )


def model_kwargs(spec: JobSpec) -> dict[str, Any]:
    """The builder's keyword arguments: ``spec.model.kwargs`` plus the defaults the data sets."""
    kwargs = dict(spec.model.kwargs)
    if spec.model.arch in LANGUAGE_MODELS:
        kwargs.setdefault("context", spec.dataset.context)
    return kwargs


def token_pool(spec: JobSpec, model: nn.Module) -> tuple[str, ...] | None:
    """The normalizers the token layers (LayerNorm, RMSNorm) of ``model`` mix: the spec's pool
    for a model that names the token members it can mix (``token_pool_members``: the zoo's
    transformers); None, which leaves them plain, for any other model (a plug-in's LayerNorm
    stays as it is)."""
    members = getattr(model, "token_pool_members", None)
    if members is None:
        return None
    pool = tuple(m for m in spec.search.pool if m in members or m in POINTWISE_MEMBERS)
    if len(pool) != len(spec.search.pool):
        raise ValueError(
            f"search.pool {list(spec.search.pool)}: {spec.model.arch} mixes only "
            f"{', '.join(members)} over its tokens"
        )
    return pool


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
    NormalizerPlan applied to a fresh model) or a baseline: a norm name the zoo builds ("bn",
    "gn", "ln", "in") or another pool member's uniform plan (``baseline_plan``)."""
    if variant == SN_VARIANT:
        model = zoo_model(spec, num_classes, in_channels)
        return sn_core.convert_to_switchnorm(
            model,
            pool=tuple(spec.search.pool),
            tied=spec.search.tied,
            example_input=example_input,
            token_pool=token_pool(spec, model),
            dyt_alpha0=spec.model.dyt_alpha0,
        )
    if variant == PLAN_VARIANT:
        if plan is None:
            raise ValueError("the plan variant needs a plan")
        model = zoo_model(spec, num_classes, in_channels)
        return sn_core.apply_plan(model, sn_core.NormalizerPlan.from_dict(plan))
    if variant in NORM_LAYER_BASELINES:
        return zoo_model(spec, num_classes, in_channels, norm_layer=variant)
    uniform = baseline_plan(
        spec, variant, num_classes=num_classes, in_channels=in_channels, example_input=example_input
    )
    return sn_core.apply_plan(zoo_model(spec, num_classes, in_channels), uniform)


def baseline_plan(
    spec: JobSpec,
    member: str,
    *,
    num_classes: int,
    in_channels: int,
    example_input: torch.Tensor,
    metadata: dict[str, Any] | None = None,
) -> sn_core.NormalizerPlan:
    """The uniform plan of ``member`` over the norm layers the search converts: (rms, rms)
    everywhere for "rms" (a SelectedNorm in channel layouts, nn.RMSNorm in token ones); for a
    point-wise member (dyt, none) a plan whose every output is that member (DyT's alpha starting at
    ``model.dyt_alpha0``). Raises ValueError
    for a member sn_core cannot plan."""
    point_wise = member in POINTWISE_MEMBERS
    statistic = POINTWISE_STATISTIC if point_wise else member
    if statistic not in STATISTIC_MEMBERS:
        raise ValueError(f"unknown baseline {member!r}")
    model = zoo_model(spec, num_classes, in_channels)
    converts_tokens = getattr(model, "token_pool_members", None) is not None
    searched = sn_core.convert_to_switchnorm(
        model,
        pool=(statistic,),
        tied=spec.search.tied,
        example_input=example_input,
        # as the search's model (build_variant): a transformer's token layers, a plug-in's not
        token_pool=(statistic,) if converts_tokens else None,
    )
    plan = sn_core.plan_from_model(searched, metadata=metadata)
    if not point_wise:
        return plan
    alpha = spec.model.dyt_alpha0 if member == "dyt" else None
    layers = tuple(dataclasses.replace(layer, output=member, dyt_alpha=alpha) for layer in plan)
    extra = {"dyt_alpha0": alpha} if alpha is not None else {}
    return sn_core.NormalizerPlan(layers, {**plan.metadata, **extra})


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
        "kwargs": model_kwargs(spec),
    }
