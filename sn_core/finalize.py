"""From a trained SN network to plain torch layers (docs/sn-spec.md section 6).

* ``concrete_norm``: the layer of one (mean, variance) choice: ``nn.BatchNorm*d`` (bn, bn),
  ``nn.InstanceNorm*d(affine=True)`` (in, in), ``nn.GroupNorm(1, C)`` (ln, ln),
  ``nn.GroupNorm(G, C)`` (gn, gn), else a ``SelectedNorm``.
* ``token_norm``: the same for a ``SwitchNormTokens`` (channels last): ``nn.LayerNorm(C)`` (ln,
  ln), ``nn.RMSNorm(C)`` (rms, rms; ``RMSNormWithBias`` when the layer has a bias).
* ``pointwise_norm``: a layer whose output is a point-wise member: ``DynamicTanh`` ("dyt",
  channels last for token layers, on dim 1 otherwise) or ``nn.Identity`` ("none").
* ``describe_norm`` / ``plan_torch_layers``: that layer in words, e.g. ``BatchNorm2d(64)``
  (reports and the UI show it; they never restate the rule).
* ``finalize``: every ``SwitchNorm`` becomes its concrete layer, keeping the trained affine
  parameters and running statistics; with one-hot ratios the output is unchanged.
* ``apply_plan``: the same layer types, freshly initialised, in any model (e.g. a fresh BN zoo
  model) - the skeleton into which a finalized checkpoint loads.
* ``fold_batchnorm``: eval-mode BatchNorms that directly follow a convolution are folded into it.

All of them return a deep copy and leave the given model untouched; module names never change.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.instancenorm import _InstanceNorm

from .layers import MixtureNorm, SwitchNorm
from .plan import LayerChoice, NormalizerPlan, plan_from_model, sn_dims
from .pointwise import DEFAULT_DYT_ALPHA0, DynamicTanh
from .selected import SelectedNorm
from .tokens import SwitchNormTokens, keep_off_fused_paths

__all__ = [
    "apply_plan",
    "concrete_norm",
    "describe_norm",
    "finalize",
    "fold_batchnorm",
    "plan_torch_layers",
    "pointwise_norm",
    "RMSNormWithBias",
    "token_norm",
]

_BATCH_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE_NORMS = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def concrete_norm(
    choice_mean: str,
    choice_var: str,
    num_features: int,
    *,
    dims: int | None = 2,
    groups: int = 32,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
    affine: bool = True,
    track_running_stats: bool = True,
    variance: str = "population",
    device=None,
    dtype=None,
) -> nn.Module:
    """A freshly initialised layer computing the (``choice_mean``, ``choice_var``) normalizer.

    ``dims`` is the input dimensionality of the SN class it replaces (1, 2, 3, or None when
    unknown: BatchNorm and InstanceNorm then become a ``SelectedNorm``, which takes any input).
    Any mixed pair, (in, in) in 1d (``nn.InstanceNorm1d`` misreads (N, C) input), and every pair
    under ``variance != "population"`` give a ``SelectedNorm``.
    """
    if dims not in (None, 1, 2, 3):
        raise ValueError(f"dims must be 1, 2, 3 or None, got {dims!r}")
    factory = {"device": device, "dtype": dtype}
    if choice_mean == choice_var and variance == "population":
        kind = choice_mean
        if kind == "bn" and dims is not None:
            return _BATCH_NORMS[dims](
                num_features, eps, momentum, affine, track_running_stats, **factory
            )
        if kind == "in" and dims in (2, 3):
            return _INSTANCE_NORMS[dims](
                num_features, eps, momentum, affine, track_running_stats=False, **factory
            )
        if kind == "ln":
            return nn.GroupNorm(1, num_features, eps, affine, **factory)
        if kind == "gn":
            if groups <= 0 or num_features % groups:
                raise ValueError(f"groups={groups} must divide num_features={num_features}")
            return nn.GroupNorm(groups, num_features, eps, affine, **factory)
    return SelectedNorm(
        num_features,
        choice_mean,
        choice_var,
        eps=eps,
        momentum=momentum,
        groups=groups,
        affine=affine,
        track_running_stats=track_running_stats,
        variance=variance,
        **factory,
    )


class RMSNormWithBias(nn.RMSNorm):
    """``nn.RMSNorm`` over the last dimension plus a bias: a token SN layer fixed to "rms" that
    was converted from an ``nn.LayerNorm`` keeps the LayerNorm's bias, which nn.RMSNorm lacks."""

    def __init__(self, num_features: int, eps: float | None = None, device=None, dtype=None):
        super().__init__(num_features, eps, elementwise_affine=True, device=device, dtype=dtype)
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        keep_off_fused_paths(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.bias


def token_norm(
    choice_mean: str,
    choice_var: str,
    num_features: int,
    *,
    eps: float = 1e-5,
    affine: bool = True,
    bias: bool = True,
    device=None,
    dtype=None,
) -> nn.Module:
    """A freshly initialised torch layer over the last dimension for a token layer's choice.

    Only (ln, ln) and (rms, rms) are torch layers in this layout; any other choice (BN or IN
    over tokens, mixed pairs) raises ValueError: keep the fixed ``SwitchNormTokens`` itself.
    RMSNorm layers get ``keep_off_fused_paths`` (nn.TransformerEncoderLayer's fused inference
    path would compute LayerNorm in their place).
    """
    factory = {"device": device, "dtype": dtype}
    if (choice_mean, choice_var) == ("ln", "ln"):
        return nn.LayerNorm(num_features, eps, elementwise_affine=affine, bias=bias, **factory)
    if (choice_mean, choice_var) == ("rms", "rms"):
        if affine and bias:
            return RMSNormWithBias(num_features, eps, **factory)
        rms = nn.RMSNorm(num_features, eps, elementwise_affine=affine, **factory)
        return keep_off_fused_paths(rms)
    raise ValueError(
        f"no torch layer computes ({choice_mean}, {choice_var}) over tokens; only (ln, ln) and "
        "(rms, rms) finalize in the token layout"
    )


def pointwise_norm(
    output: str,
    num_features: int,
    *,
    alpha0: float | None = None,
    channels_last: bool = True,
    affine: bool = True,
    bias: bool = True,
    device=None,
    dtype=None,
) -> nn.Module:
    """The torch layer of a point-wise output: ``DynamicTanh`` for "dyt" (alpha ``alpha0``,
    default 0.5), ``nn.Identity`` for "none"."""
    if output == "none":
        return nn.Identity()
    if output != "dyt":
        raise ValueError(f"output {output!r} is not a point-wise member ('dyt', 'none')")
    return DynamicTanh(
        num_features, DEFAULT_DYT_ALPHA0 if alpha0 is None else alpha0,
        channels_last=channels_last, affine=affine, bias=bias, device=device, dtype=dtype,
    )  # fmt: skip


def describe_norm(module: nn.Module) -> str:
    """A norm layer in short words: ``BatchNorm2d(64)``, ``InstanceNorm2d(64, affine=True)``,
    ``GroupNorm(1, 64)``, ``SelectedNorm(64, mean=bn, var=in)``; any other module: its class."""
    name = type(module).__name__
    if isinstance(module, SelectedNorm):
        return f"{name}({module.num_features}, mean={module.mean}, var={module.var})"
    if isinstance(module, nn.GroupNorm):
        return f"{name}({module.num_groups}, {module.num_channels})"
    if isinstance(module, _InstanceNorm):
        return f"{name}({module.num_features}" + (", affine=True)" if module.affine else ")")
    if isinstance(module, _BatchNorm):
        return f"{name}({module.num_features})"
    if isinstance(module, nn.LayerNorm | nn.RMSNorm):
        return f"{name}({module.normalized_shape[0]})"
    if isinstance(module, DynamicTanh):
        return f"{name}({module.num_features})"
    return name


def plan_torch_layers(
    plan: NormalizerPlan, *, variance: str = "population", model: nn.Module | None = None
) -> dict[str, str]:
    """Per plan layer, the torch layer ``apply_plan`` builds for it, in words (``describe_norm``).

    With ``model`` (the network the plan is for: its plain or SN form), the layers
    ``apply_plan(model, plan)`` builds: a token layer (LayerNorm, RMSNorm, SwitchNormTokens)
    becomes ``token_norm``'s ``LayerNorm(C)`` or ``RMSNorm(C)``, which the plan alone does not
    say. Without one, ``concrete_norm`` with the plan's num_features, dims and groups (a layer
    without ``dims`` as ``concrete_norm(dims=None)`` builds it), as for a convolutional
    network; ``variance`` is that of the SN layers the plan came from (the service trains with
    "population")."""
    if model is not None:
        built = dict(apply_plan(model, plan).named_modules())
        return {layer.name: describe_norm(built[layer.name]) for layer in plan}
    return {
        layer.name: describe_norm(
            concrete_norm(
                layer.mean,
                layer.var,
                layer.num_features,
                dims=layer.dims,
                groups=layer.groups,
                variance=variance,
            )
            if layer.output == "norm"
            else pointwise_norm(layer.output, layer.num_features, alpha0=layer.dyt_alpha)
        )
        for layer in plan
    }


# ------------------------------------------------------------------------------- helpers
def _replace(root: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at qualified ``name`` inside ``root``; returns the (possibly new) root."""
    if name == "":
        return module
    root.set_submodule(name, module)
    return root


def _factory(module: nn.Module) -> dict:
    for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        if tensor.is_floating_point():
            return {"device": tensor.device, "dtype": tensor.dtype}
    return {"device": None, "dtype": None}


def _dims(module: nn.Module) -> int | None:
    if isinstance(module, SwitchNorm):
        return sn_dims(module)
    for table in (_BATCH_NORMS, _INSTANCE_NORMS):
        for dims, cls in table.items():
            if isinstance(module, cls):
                return dims
    return None


def _channels(module: nn.Module) -> int | None:
    return getattr(module, "num_features", getattr(module, "num_channels", None))


def _check_names(plan: NormalizerPlan, modules: dict[str, nn.Module]) -> None:
    unknown = [name for name in plan.names if name not in modules]
    if unknown:
        raise ValueError(f"plan names module(s) not found in the model: {unknown}")


def _check_channels(layer: LayerChoice, module: nn.Module) -> None:
    channels = _channels(module)
    if channels != layer.num_features:
        raise ValueError(
            f"plan layer {layer.name!r} has num_features={layer.num_features}, but the model's "
            f"{type(module).__name__} there has {channels} channels"
        )


# ----------------------------------------------------------------------------- apply_plan
def apply_plan(model: nn.Module, plan: NormalizerPlan) -> nn.Module:
    """Deep copy of ``model`` with each plan layer replaced by a freshly initialised concrete one.

    The module at each plan name may be a ``SwitchNorm``/``SelectedNorm`` or any torch norm
    layer (BatchNorm, InstanceNorm, GroupNorm); a ``SwitchNormTokens``, ``nn.LayerNorm`` or
    ``nn.RMSNorm`` there gets ``token_norm``'s layer. num_features and groups come from the
    plan; eps and dims from the plan where given, else from the existing module, as do
    momentum, affine, variance, device and dtype.
    """
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    _check_names(plan, modules)
    for layer in plan:
        existing = modules[layer.name]
        if layer.output != "norm":
            new = _fresh_pointwise(layer, existing)
            model = _replace(model, layer.name, new.train(existing.training))
            continue
        if isinstance(existing, _TOKEN_LAYERS):
            model = _replace(model, layer.name, _fresh_token_norm(layer, existing))
            continue
        if not isinstance(existing, MixtureNorm | _NormBase | nn.GroupNorm):
            raise ValueError(
                f"plan layer {layer.name!r} is a {type(existing).__name__}, not a norm layer"
            )
        _check_channels(layer, existing)
        tracks = isinstance(existing, MixtureNorm | _BatchNorm)
        new = concrete_norm(
            layer.mean,
            layer.var,
            layer.num_features,
            dims=layer.dims if layer.dims is not None else _dims(existing),
            groups=layer.groups,
            eps=layer.eps if layer.eps is not None else existing.eps,
            momentum=getattr(existing, "momentum", 0.1),
            affine=getattr(existing, "affine", True),
            track_running_stats=existing.track_running_stats if tracks else True,
            variance=getattr(existing, "variance", "population"),
            **_factory(existing),
        )
        new.train(existing.training)
        model = _replace(model, layer.name, new)
    return model


_TOKEN_LAYERS = (SwitchNormTokens, nn.LayerNorm, nn.RMSNorm)


def _fresh_pointwise(layer: LayerChoice, existing: nn.Module) -> nn.Module:
    """``pointwise_norm`` for a plan layer whose output is "dyt" or "none"; the layout (and
    affine, bias) from the module there: a token layer or DynamicTanh(channels_last) gives
    channels last, any other norm layer channels on dim 1."""
    if isinstance(existing, DynamicTanh | nn.Identity):
        channels_last = getattr(existing, "channels_last", True)
    elif isinstance(existing, _TOKEN_LAYERS):
        channels_last = True
    elif isinstance(existing, MixtureNorm | _NormBase | nn.GroupNorm):
        channels_last = False
    else:
        raise ValueError(
            f"plan layer {layer.name!r} is a {type(existing).__name__}, not a norm layer"
        )
    if not isinstance(existing, nn.Identity):
        channels = _channels(existing)
        if channels is None:
            channels = existing.normalized_shape[-1]
        if channels != layer.num_features:
            raise ValueError(
                f"plan layer {layer.name!r} has num_features={layer.num_features}, but the "
                f"model's {type(existing).__name__} there has {channels} channels"
            )
    affine = getattr(existing, "affine", getattr(existing, "elementwise_affine", True))
    return pointwise_norm(
        layer.output, layer.num_features, alpha0=layer.dyt_alpha, channels_last=channels_last,
        affine=affine, bias=getattr(existing, "bias", None) is not None or not affine,
        **_factory(existing),
    )  # fmt: skip


def _fresh_token_norm(layer: LayerChoice, existing: nn.Module) -> nn.Module:
    """``token_norm`` for a plan layer whose module is channels-last (SN tokens, LN, RMSNorm)."""
    channels = _channels(existing)
    if channels is None:  # nn.LayerNorm / nn.RMSNorm
        channels = existing.normalized_shape[-1]
    if channels != layer.num_features:
        raise ValueError(
            f"plan layer {layer.name!r} has num_features={layer.num_features}, but the model's "
            f"{type(existing).__name__} there has {channels} channels"
        )
    affine = getattr(existing, "affine", getattr(existing, "elementwise_affine", True))
    try:
        new = token_norm(
            layer.mean, layer.var, channels,
            eps=layer.eps if layer.eps is not None else existing.eps,
            affine=affine, bias=getattr(existing, "bias", None) is not None,
            **_factory(existing),
        )  # fmt: skip
    except ValueError as error:
        raise ValueError(f"plan layer {layer.name!r}: {error}") from None
    return new.train(existing.training)


# ------------------------------------------------------------------------------- finalize
def finalize(model: nn.Module, plan: NormalizerPlan | None = None) -> nn.Module:
    """Deep copy of ``model`` with every ``SwitchNorm`` replaced by its concrete layer.

    The trained weight, bias and running statistics are kept, so with one-hot (fixed) ratios the
    output in eval mode is unchanged. A layer whose output is "dyt" becomes a ``DynamicTanh``
    with the layer's weight, bias and alpha; "none" an ``nn.Identity``. A ``SwitchNormTokens``
    becomes ``token_norm``'s layer (nn.LayerNorm / nn.RMSNorm); one whose choice has no torch
    layer raises ValueError.
    ``plan`` defaults to ``plan_from_model(model)``; it must name every SwitchNorm of the model
    and nothing else.
    """
    if plan is None:
        plan = plan_from_model(model)
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    _check_names(plan, modules)
    not_sn = [name for name in plan.names if not isinstance(modules[name], SwitchNorm)]
    if not_sn:
        raise ValueError(f"plan layer(s) {not_sn} are not SwitchNorm modules in the model")
    uncovered = [n for n, m in modules.items() if isinstance(m, SwitchNorm) and n not in plan.names]
    if uncovered:
        raise ValueError(f"plan has no choice for SwitchNorm layer(s) {uncovered}")
    for layer in plan:
        sn = modules[layer.name]
        _check_channels(layer, sn)
        if layer.output != "norm":
            new = pointwise_norm(
                layer.output, sn.num_features, alpha0=layer.dyt_alpha,
                channels_last=isinstance(sn, SwitchNormTokens), affine=sn.affine,
                bias=sn.bias is not None or not sn.affine, **_factory(sn),
            )  # fmt: skip
        elif isinstance(sn, SwitchNormTokens):
            try:
                new = token_norm(
                    layer.mean, layer.var, sn.num_features, eps=sn.eps, affine=sn.affine,
                    bias=sn.bias is not None, **_factory(sn),
                )  # fmt: skip
            except ValueError as error:
                raise ValueError(f"layer {layer.name!r}: {error}") from None
        else:
            new = concrete_norm(
                layer.mean,
                layer.var,
                sn.num_features,
                dims=sn_dims(sn),
                groups=sn.groups,
                eps=sn.eps,
                momentum=sn.momentum,
                affine=sn.affine,
                track_running_stats=sn.track_running_stats,
                variance=sn.variance,
                **_factory(sn),
            )
        with torch.no_grad():
            if isinstance(new, DynamicTanh) and sn.dyt_alpha is not None:
                new.alpha.copy_(sn.dyt_alpha)
                new.alpha.requires_grad_(sn.dyt_alpha.requires_grad)
            for key in _STATE:
                source, target = getattr(sn, key, None), getattr(new, key, None)
                if source is not None and target is not None:
                    target.copy_(source)
                    if isinstance(target, nn.Parameter):
                        target.requires_grad_(source.requires_grad)
        new.train(sn.training)
        model = _replace(model, layer.name, new)
    return model


# ------------------------------------------------------------------------- fold_batchnorm
class _NormLeafTracer(fx.Tracer):
    """Treats every SN-kernel layer as a leaf: its forward has Python control flow on shapes."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, MixtureNorm) or super().is_leaf_module(module, qualified_name)


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    try:
        graph = _NormLeafTracer().trace(model)
    except Exception as exc:
        raise ValueError(
            f"fold_batchnorm: torch.fx cannot trace {type(model).__name__} "
            f"({type(exc).__name__}: {exc}); fold its BatchNorms by hand"
        ) from exc
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or node.kwargs or len(node.args) != 1:
            continue
        bn = model.get_submodule(node.target)
        source = node.args[0]
        if not (
            isinstance(bn, _BatchNorm)
            and not bn.training
            and bn.running_mean is not None
            and isinstance(source, fx.Node)
            and source.op == "call_module"
            and len(source.users) == 1
            and calls[node.target] == 1
            and calls[source.target] == 1
        ):
            continue
        conv = model.get_submodule(source.target)
        if isinstance(conv, _CONVS) and conv.out_channels == bn.num_features:
            pairs.append((source.target, node.target))
    return pairs


@torch.no_grad()
def _fold(conv: nn.Module, bn: _BatchNorm) -> None:
    weight = conv.weight.detach().double()
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(shift)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    dtype = conv.weight.dtype
    requires_grad = conv.weight.requires_grad
    conv.weight = nn.Parameter((weight * scale.view(shape)).to(dtype), requires_grad)
    conv.bias = nn.Parameter((bias * scale + shift).to(dtype), requires_grad)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` with every eval-mode BatchNorm that directly follows a conv folded.

    A (Conv1d/2d/3d, BatchNorm) pair is folded when the BatchNorm is in eval mode with running
    statistics, its only input is the conv's output, that output has no other user, and each
    module is called once. The conv gets the folded weight and a bias; the BatchNorm becomes
    ``nn.Identity``. Pairs are found by ``torch.fx`` symbolic tracing; a model that cannot be
    traced raises ValueError.
    """
    model = copy.deepcopy(model)
    for conv_name, bn_name in _conv_bn_pairs(model):
        _fold(model.get_submodule(conv_name), model.get_submodule(bn_name))
        model = _replace(model, bn_name, nn.Identity())
    return model
