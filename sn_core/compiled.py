"""The SN kernel as registered custom ops, the path ``switch_norm`` takes under torch.compile.

The eager kernel (``sn_core.functional``) keeps its O(N*C) mixture, NumPy arrays on CPU, on an
autograd context, which Dynamo cannot trace. Under compilation the same code runs inside two
opaque ops instead: ``normsearch::switch_norm`` (forward) and ``normsearch::switch_norm_backward``.
Dynamo and Inductor see only their shapes (``register_fake``), so an SN model compiles to one graph
and the ops run the eager kernel's code unchanged.

Custom ops take tensors and primitives and return tensors only, so the mixture config rides as
primitive arguments (kinds joined by ","), missing statistics come back as empty tensors and the
backward does not keep the mixture: it rebuilds it from the saved per-(n, c) moments (O(N*C),
small next to the passes over x).
"""

from typing import Optional

import torch
from torch import Tensor

from . import functional as F
from .mixture import MixtureConfig

__all__ = ["switch_norm"]

_NAMESPACE = "normsearch"


def _config(kinds: str, eps: float, groups: int, batch_bn: bool, reference: bool):
    return MixtureConfig(tuple(kinds.split(",")), eps, groups, batch_bn, reference)


def _has_batch_stats(kinds: str, batch_bn: bool) -> bool:
    return batch_bn and "bn" in kinds.split(",")


def _owned(t: Tensor, shape) -> Tensor:
    """Contiguous ``t``'s memory as a tensor of ``shape`` that is not a view: a custom op's
    output may not be one (in-place ops on it, ``nn.ReLU(inplace=True)``, would be refused)."""
    if t.shape == shape and not t._is_view():
        return t
    t = t.contiguous()
    out = t.new_empty(0)
    return out.set_(t.untyped_storage(), t.storage_offset(), shape, _strides(shape))


def _strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


@torch.library.custom_op(f"{_NAMESPACE}::switch_norm", mutates_args=())
def _forward_op(
    x: Tensor,
    weight: Optional[Tensor],  # noqa: UP045 (the schema parser reads typing.Optional)
    bias: Optional[Tensor],  # noqa: UP045
    mean_ratios: Tensor,
    var_ratios: Tensor,
    running_mean: Optional[Tensor],  # noqa: UP045
    running_var: Optional[Tensor],  # noqa: UP045
    kinds: str,
    eps: float,
    groups: int,
    batch_bn: bool,
    reference: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, batch BN mean, batch BN var, per-(n, c) mean, per-(n, c) var) of x (N, C, L).

    The batch statistics are empty when the mixture has none (as ``switch_norm``'s None), the
    moments are saved for the backward.
    """
    config = _config(kinds, eps, groups, batch_bn, reference)
    n, c, length = x.shape
    if config.needs_moments:
        moments = F._moments(x)
        mean, var = moments.mean, moments.var
    else:  # evaluation of a pure-BN mixture reads running statistics only
        mean = var = x.new_zeros(n, c)
        moments = F._Moments(mean, var)
    mix = F._mixture(mean, var, length, weight, bias, mean_ratios, var_ratios,
                     running_mean, running_var, config)  # fmt: skip
    scale = F._as_tensor(mix.scale)
    if moments.normalized is None:
        y = F._row_affine(x, None, scale, F._as_tensor(mix.shift))
    else:
        y = F._affine_in_place(moments.normalized, scale / moments.rstd,
                               F._as_tensor(mix.centred_shift))  # fmt: skip
    y = _owned(y.to(x.dtype), x.shape)
    if mix.batch_mean is None:
        batch_mean, batch_var = x.new_empty(0), x.new_empty(0)
    else:
        batch_mean = F._as_tensor(mix.batch_mean).to(x.dtype).clone()
        batch_var = F._as_tensor(mix.batch_var).to(x.dtype).clone()
    # Outputs may alias neither inputs nor each other (a cached constant, a shared NumPy buffer).
    return y, batch_mean, batch_var, mean.clone(), var.clone()


@_forward_op.register_fake
def _forward_fake(x, weight, bias, mean_ratios, var_ratios, running_mean, running_var,
                  kinds, eps, groups, batch_bn, reference):  # fmt: skip
    n, c, _ = x.shape
    stats = c if _has_batch_stats(kinds, batch_bn) else 0
    return (
        torch.empty_like(x),
        x.new_empty(stats),
        x.new_empty(stats),
        x.new_empty(n, c),
        x.new_empty(n, c),
    )


@torch.library.custom_op(f"{_NAMESPACE}::switch_norm_backward", mutates_args=())
def _backward_op(
    grad_y: Tensor,
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Optional[Tensor],  # noqa: UP045
    bias: Optional[Tensor],  # noqa: UP045
    mean_ratios: Tensor,
    var_ratios: Tensor,
    running_mean: Optional[Tensor],  # noqa: UP045
    running_var: Optional[Tensor],  # noqa: UP045
    kinds: str,
    eps: float,
    groups: int,
    batch_bn: bool,
    reference: bool,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad x, grad weight, grad bias, grad mean ratios, grad var ratios); empty where
    ``needs`` (x, weight, bias, ratios) is False. The eager backward's arithmetic."""
    config = _config(kinds, eps, groups, batch_bn, reference)
    length = x.shape[2]
    mix = F._mixture(mean, var, length, weight, bias, mean_ratios, var_ratios,
                     running_mean, running_var, config)  # fmt: skip
    grad_y = grad_y.contiguous().view(x.shape)
    sum_dy, sum_dy_xc = F._grad_sums(grad_y, x, mean)
    if mix.xp is not torch:
        sum_dy, sum_dy_xc = sum_dy.numpy(), sum_dy_xc.numpy()
    want_x, want_weight, want_bias, want_ratios = needs
    grads = mix.backward(sum_dy, sum_dy_xc, want_x and config.needs_moments, want_weight,
                         want_bias, want_ratios)  # fmt: skip
    grad_mean, grad_var, grad_weight, grad_bias, grad_mr, grad_vr = map(F._as_tensor, grads)
    grad_x = x.new_empty(0)
    if want_x:
        scale = F._as_tensor(mix.scale)
        if grad_mean is None:  # BN from running statistics only: a fixed affine map
            grad_x = _owned(F._row_affine(grad_y, None, scale, None), x.shape)
        else:  # dx = scale * dy + (2 / L) * dvar * (x - m) + dmean / L
            grad_x = F._row_affine(x, mean, grad_var * (2.0 / length), grad_mean / length)
            grad_x = _owned(grad_x, x.shape).addcmul_(grad_y, scale.unsqueeze(2))
        grad_x = grad_x.to(x.dtype)

    def out(grad: Tensor | None, like: Tensor | None) -> Tensor:
        return x.new_empty(0) if grad is None else grad.to(like.dtype).clone()

    return (
        grad_x,
        out(grad_weight, weight),
        out(grad_bias, bias),
        out(grad_mr, mean_ratios),
        out(grad_vr, var_ratios),
    )


@_backward_op.register_fake
def _backward_fake(grad_y, x, mean, var, weight, bias, mean_ratios, var_ratios, running_mean,
                   running_var, kinds, eps, groups, batch_bn, reference, needs):  # fmt: skip
    wanted = zip((x, weight, bias, mean_ratios, var_ratios), (*needs, needs[-1]), strict=True)
    return tuple(torch.empty_like(t) if want else x.new_empty(0) for t, want in wanted)


_CONFIG_ARGS = ("kinds", "eps", "groups", "batch_bn", "reference")


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, mean_ratios, var_ratios, running_mean, running_var = inputs[:7]
    _, _, _, mean, var = output
    ctx.config = inputs[7:]
    ctx.optional = (weight is not None, bias is not None, running_mean is not None)
    saved = [t for t in (weight, bias, running_mean, running_var) if t is not None]
    ctx.save_for_backward(x, mean, var, mean_ratios, var_ratios, *saved)


def _backward(ctx, grad_y, _grad_batch_mean, _grad_batch_var, _grad_mean, _grad_var):
    x, mean, var, mean_ratios, var_ratios, *saved = ctx.saved_tensors
    has_weight, has_bias, has_running = ctx.optional
    weight = saved.pop(0) if has_weight else None
    bias = saved.pop(0) if has_bias else None
    running_mean, running_var = saved if has_running else (None, None)
    need = ctx.needs_input_grad
    needs = [need[0], bool(need[1]), bool(need[2]), need[3] or need[4]]
    grad_x, grad_weight, grad_bias, grad_mr, grad_vr = _backward_op(
        grad_y, x, mean, var, weight, bias, mean_ratios, var_ratios, running_mean, running_var,
        *ctx.config, needs,
    )  # fmt: skip
    return (
        grad_x if needs[0] else None,
        grad_weight if needs[1] else None,
        grad_bias if needs[2] else None,
        grad_mr if need[3] else None,
        grad_vr if need[4] else None,
        None, None, *(None,) * len(_CONFIG_ARGS),
    )  # fmt: skip


_forward_op.register_autograd(_backward, setup_context=_setup_context)
# As the eager Function's custom_fwd: under CUDA autocast the kernel runs in float32.
torch.library.register_autocast(f"{_NAMESPACE}::switch_norm", "cuda", torch.float32)


def switch_norm(x3, weight, bias, mean_ratios, var_ratios, running_mean, running_var, config):
    """``functional.switch_norm`` on the contiguous (N, C, L) view, through the custom op."""
    kinds = ",".join(config.kinds)
    y, batch_mean, batch_var, _, _ = _forward_op(
        x3, weight, bias, mean_ratios, var_ratios, running_mean, running_var,
        kinds, float(config.eps), int(config.groups), bool(config.batch_bn),
        bool(config.reference),
    )  # fmt: skip
    if not _has_batch_stats(kinds, config.batch_bn):
        return y, None, None
    return y, batch_mean, batch_var
