"""The Switchable Normalization kernel: two passes over x forward, three backward.

Normalization with mixed statistics is a per-(n, c) affine map (docs/sn-spec.md section 7)::

    y = scale[n, c] * (x - m[n, c]) + centred_shift[n, c]        (m: the per-(n, c) mean)

so the forward is one moments pass over x plus one fused affine pass, and the backward needs only
the per-(n, c) sums of dy and dy * (x - m), then ``dx = scale * dy + P * (x - m) + Q``. Everything
between the per-(n, c) moments and (scale, shift) is O(N * C) work done by
``sn_core.mixture.Mixture``, by hand in both directions, because at small feature maps the per-op
overhead of a generic autograd graph would cost more than the passes over x. Only x and the
O(N * C) moments are saved for backward.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import native
from .mixture import NORMALIZERS, Mixture, MixtureConfig

__all__ = ["KERNELS", "NORMALIZERS", "MixtureConfig", "kernel", "switch_norm", "use_kernel"]

# ---------------------------------------------------------------------------- backend choice
# "native": the compiled CPU kernel (sn_core/native.py), which must be built; "python": the
# passes below with the NumPy/torch mixture; "auto" (default): native when it loads, else python.
KERNELS = ("auto", "native", "python")
_KERNEL = {"name": "auto"}


def use_kernel(name: str) -> str:
    """Select the CPU backend of the mixture layers; returns the previous choice.

    ``"native"`` raises RuntimeError when the compiled kernel is not built or fails to load.
    """
    if name not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {name!r}")
    if name == "native" and not native.load():
        raise RuntimeError("the native SN kernel is not available: run `python -m sn_core.native`")
    previous, _KERNEL["name"] = _KERNEL["name"], name
    return previous


def kernel() -> str:
    """The backend CPU calls use now: "native" or "python"."""
    name = _KERNEL["name"]
    if name == "auto":
        return "native" if native.load() else "python"
    return name


# ---------------------------------------------------------------------------- memory passes
# The full passes over x. On CPU they run through ATen's batch-norm and group-norm kernels
# (vectorized, multi-threaded, no full-size temporaries); elsewhere through generic tensor ops.


def _cpu_kernels(t: Tensor) -> bool:
    """Whether the CPU fast paths apply (tests switch them off to cover the generic paths)."""
    return t.device.type == "cpu"


_CONSTANTS: dict = {}


def _filled(value: float, size: int, like: Tensor) -> Tensor:
    """A cached read-only vector of ``size`` copies of ``value`` (avoids an allocation per call)."""
    key = (value, like.device, like.dtype)
    cached = _CONSTANTS.get(key)
    if cached is None or cached.numel() < size:
        with torch.inference_mode(False):
            cached = torch.full((max(size, 1024),), value, device=like.device, dtype=like.dtype)
        _CONSTANTS[key] = cached
    return cached[:size]


class _Moments(NamedTuple):
    mean: Tensor  # (N, C)
    var: Tensor  # (N, C), population
    # CPU only: (x - mean) * rstd as (N*C, 1, L); the forward turns it into its output in place.
    normalized: Tensor | None = None
    rstd: Tensor | None = None  # (N, C), 1 / sqrt(var + tiny)


def _moments(x: Tensor) -> _Moments:
    """Per-(n, c) mean and population variance of x (N, C, L), stable for large means.

    ``torch.var_mean`` over the last dimension is ~15x slower on CPU than the vectorized Welford
    moments of the group-norm kernel. With one group per row and eps = the dtype's smallest
    normal number, that kernel returns the mean and 1/sqrt(var + tiny) (finite even for constant
    rows) and the normalized rows, which become the output buffer: one allocation, as in BN.
    """
    n, c, length = x.shape
    if not _cpu_kernels(x):
        var, mean = torch.var_mean(x, dim=2, correction=0)
        return _Moments(mean, var)
    tiny = torch.finfo(x.dtype).tiny
    normalized, mean, rstd = torch.native_group_norm(
        x.view(n * c, 1, length), None, None, n * c, 1, length, 1, tiny
    )
    rstd = rstd.view(n, c)
    var = torch.clamp(rstd.square().reciprocal() - tiny, min=0.0)
    return _Moments(mean.view(n, c), var, normalized, rstd)


def _affine_in_place(rows: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """rows (N*C, 1, L) <- rows * scale[n, c] + shift[n, c], one pass, returned (CPU only)."""
    flat, _, length = rows.shape
    view = rows.view(1, flat, length)
    empty = rows.new_empty(0)  # the kernel's saved statistics are empty in inference mode
    # The inference batch-norm kernel over N*C channels is elementwise, so writing into its own
    # input is safe; it is the fastest fused per-row affine map on CPU.
    torch.ops.aten.native_batch_norm.out(
        view, scale.reshape(flat), shift.reshape(flat), _filled(0.0, flat, rows),
        _filled(1.0, flat, rows), False, 0.0, 0.0, out=view, save_mean=empty, save_invstd=empty,
    )  # fmt: skip
    return rows


def _row_affine(x: Tensor, centre: Tensor | None, scale: Tensor, shift: Tensor | None) -> Tensor:
    """(x - centre[n, c]) * scale[n, c] + shift[n, c] in one pass over x (None: 0).

    The result has x's elements in x's order but not necessarily its shape (on CPU it is
    (1, N*C, L)): callers view it, because a view made inside an autograd Function could not be
    modified in place afterwards (``nn.ReLU(inplace=True)``).
    """
    n, c, length = x.shape
    flat = n * c
    if not _cpu_kernels(x):
        if centre is not None:
            shift = -centre * scale if shift is None else shift - centre * scale
        if shift is None:
            return x * scale.unsqueeze(2)
        return torch.addcmul(shift.unsqueeze(2), x, scale.unsqueeze(2))
    # Inference batch norm over N*C channels is the fastest fused per-row affine map on CPU
    # (a broadcasting addcmul is up to 2.5x slower for small maps).
    y = torch.nn.functional.batch_norm(
        x.view(1, flat, length),
        _filled(0.0, flat, x) if centre is None else centre.reshape(flat),
        _filled(1.0, flat, x),
        scale.reshape(flat),
        _filled(0.0, flat, x) if shift is None else shift.reshape(flat),
        False, 0.0, 0.0,
    )  # fmt: skip
    return y


def _grad_sums(grad_y: Tensor, x: Tensor, centre: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) sums of dy and of dy * (x - centre), in one pass."""
    n, c, length = x.shape
    if not _cpu_kernels(x):
        sum_dy = grad_y.sum(2)
        return sum_dy, torch.linalg.vecdot(grad_y, x, dim=2) - centre * sum_dy
    flat = n * c
    ones = _filled(1.0, flat, x)
    _, sum_dy_xc, sum_dy = torch.ops.aten.native_batch_norm_backward(
        grad_y.view(1, flat, length), x.view(1, flat, length), ones, None, None,
        centre.reshape(flat), ones, True, 0.0, [False, True, True],
    )  # fmt: skip
    return sum_dy.view(n, c), sum_dy_xc.view(n, c)


_NUMPY_DTYPES = (torch.float32, torch.float64)


def _native_applies(x: Tensor) -> bool:
    """Whether this call runs the compiled kernel (CPU float32/float64, backend selected)."""
    if not (_cpu_kernels(x) and x.dtype in _NUMPY_DTYPES):
        return False
    name = _KERNEL["name"]
    return name == "native" or (name == "auto" and native.load())


class _NativeState(NamedTuple):
    """What the compiled forward hands to backward: the (2, N, C) float64 moments."""

    moments: Tensor
    batch_mean: Tensor | None
    batch_var: Tensor | None


_KIND_CODES: dict[tuple[str, ...], list[int]] = {}


def _kind_codes(kinds: tuple[str, ...]) -> list[int]:
    codes = _KIND_CODES.get(kinds)
    if codes is None:
        codes = _KIND_CODES[kinds] = [native.KIND_CODES[kind] for kind in kinds]
    return codes


def _native_forward(x, weight, bias, mean_ratios, var_ratios, running_mean, running_var, config):
    y, batch_mean, batch_var, moments = torch.ops.normsearch_cpu.forward(
        x, weight, bias, mean_ratios, var_ratios, running_mean, running_var,
        _kind_codes(config.kinds), config.eps, config.groups, config.batch_bn, config.reference,
    )  # fmt: skip
    return y, _NativeState(moments, batch_mean, batch_var), None


def _as_array(t: Tensor | None):
    return None if t is None else t.detach().numpy()


def _as_tensor(a) -> Tensor | None:
    if a is None or isinstance(a, Tensor):
        return a
    if not (a.flags.writeable and a.flags.c_contiguous):  # broadcast views are read-only
        a = np.array(a)
    return torch.from_numpy(a)


def _mixture(mean, var, length, weight, bias, mean_ratios, var_ratios, rm, rv, config) -> Mixture:
    """The O(N*C) mixture on NumPy views for CPU tensors (lower per-op overhead), else torch."""
    if _cpu_kernels(mean) and mean.dtype in _NUMPY_DTYPES:
        args = [_as_array(t) for t in (mean, var, weight, bias, mean_ratios, var_ratios, rm, rv)]
        mean, var, weight, bias, mean_ratios, var_ratios, rm, rv = args
        return Mixture(np, mean, var, length, weight, bias, list(mean_ratios), list(var_ratios),
                       rm, rv, config)  # fmt: skip
    return Mixture(torch, mean, var, length, weight, bias, mean_ratios.unbind(),
                   var_ratios.unbind(), rm, rv, config)  # fmt: skip


def _forward(x, weight, bias, mean_ratios, var_ratios, running_mean, running_var, config):
    """(y, mixture, per-(n, c) mean as a tensor) for x of shape (N, C, L).

    With the compiled kernel the mixture is a ``_NativeState`` and the mean None.
    """
    if _native_applies(x):
        return _native_forward(
            x, weight, bias, mean_ratios, var_ratios, running_mean, running_var, config
        )
    length = x.shape[2]
    if config.needs_moments:
        moments = _moments(x)
    else:  # evaluation of a pure-BN mixture: the running estimates are all we need
        zeros = _filled(0.0, x.shape[0] * x.shape[1], x).view(x.shape[:2])
        moments = _Moments(zeros, zeros)
    mix = _mixture(moments.mean, moments.var, length, weight, bias, mean_ratios, var_ratios,
                   running_mean, running_var, config)  # fmt: skip
    scale = _as_tensor(mix.scale)
    if moments.normalized is None:
        y = _row_affine(x, None, scale, _as_tensor(mix.shift))
    else:  # y = scale * (x - m) + centred shift, written over the normalized rows
        centred_shift = _as_tensor(mix.centred_shift)
        y = _affine_in_place(moments.normalized, scale / moments.rstd, centred_shift)
    return y, mix, moments.mean


class _SwitchNormFunction(torch.autograd.Function):
    """y = x * scale + shift with scale, shift from ``Mixture``; x has shape (N, C, L)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, x, weight, bias, mean_ratios, var_ratios, running_mean, running_var, config):
        y, mix, mean = _forward(
            x, weight, bias, mean_ratios, var_ratios, running_mean, running_var, config
        )
        ctx.mix, ctx.mean, ctx.config = mix, mean, config
        if isinstance(mix, _NativeState):  # the compiled backward recomputes the mixture
            saved = (x, running_mean, running_var, weight, bias, mean_ratios, var_ratios)
            ctx.save_for_backward(*saved)
        else:
            ctx.save_for_backward(x, running_mean, running_var)
        if mix.batch_mean is None:
            return y, None, None
        batch_mean, batch_var = _as_tensor(mix.batch_mean), _as_tensor(mix.batch_var)
        ctx.mark_non_differentiable(batch_mean, batch_var)
        return y, batch_mean, batch_var

    @staticmethod
    @torch.autograd.function.once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_y, _grad_batch_mean, _grad_batch_var):
        if isinstance(ctx.mix, _NativeState):
            return _native_backward(ctx, grad_y)
        x, _, _ = ctx.saved_tensors  # running stats: saved only to detect in-place updates
        mix, mean, needs = ctx.mix, ctx.mean, ctx.needs_input_grad
        grad_y = grad_y.contiguous().view(x.shape)
        sum_dy, sum_dy_xc = _grad_sums(grad_y, x, mean)
        if mix.xp is np:
            sum_dy, sum_dy_xc = sum_dy.numpy(), sum_dy_xc.numpy()
        want_moments = needs[0] and mix.config.needs_moments
        grads = mix.backward(
            sum_dy, sum_dy_xc, want_moments, needs[1], needs[2], needs[3] or needs[4]
        )
        grad_mean, grad_var, grad_weight, grad_bias, grad_mr, grad_vr = map(_as_tensor, grads)
        grad_x = None
        if needs[0]:
            scale = _as_tensor(mix.scale)
            if grad_mean is None:  # BN from running statistics only: a fixed affine map
                grad_x = _row_affine(grad_y, None, scale, None)
            else:
                # dx = scale * dy + (2 / L) * dvar * (x - m) + dmean / L
                grad_x = _row_affine(x, mean, grad_var * (2.0 / mix.length), grad_mean / mix.length)
                grad_x = grad_x.view(x.shape).addcmul_(grad_y, scale.unsqueeze(2))
            grad_x = grad_x.view(x.shape)
        return grad_x, grad_weight, grad_bias, grad_mr, grad_vr, None, None, None


def _native_backward(ctx, grad_y):
    x, running_mean, running_var, weight, bias, mean_ratios, var_ratios = ctx.saved_tensors
    config, needs = ctx.config, ctx.needs_input_grad
    grad_x, grad_weight, grad_bias, grad_mr, grad_vr = torch.ops.normsearch_cpu.backward(
        grad_y, x, ctx.mix.moments, weight, bias, mean_ratios, var_ratios, running_mean,
        running_var, _kind_codes(config.kinds), config.eps, config.groups, config.batch_bn,
        config.reference, [needs[0], needs[1], needs[2], needs[3] or needs[4]],
    )  # fmt: skip
    return grad_x, grad_weight, grad_bias, grad_mr, grad_vr, None, None, None


def switch_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean_ratios: Tensor,
    var_ratios: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    config: MixtureConfig,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Switchable Normalization of ``x`` (N, C, *). Returns (y, batch BN mean, batch BN var).

    The batch BN statistics (population variance, detached) are returned when the mixture uses
    BN batch statistics, so the caller can update running estimates; otherwise they are None.

    Under torch.compile the same kernel runs as the custom op ``normsearch::switch_norm``
    (``sn_core.compiled``): the autograd function keeps its O(N*C) mixture, NumPy arrays on CPU,
    on the autograd context, which Dynamo cannot trace.
    """
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    if not x3.is_contiguous():
        x3 = x3.contiguous()
    inputs = (x3, weight, bias, mean_ratios, var_ratios, running_mean, running_var)
    if torch.compiler.is_compiling():
        y, batch_mean, batch_var = _compiled.switch_norm(*inputs, config)
        return y.view(x.shape), batch_mean, batch_var
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        y, batch_mean, batch_var = _SwitchNormFunction.apply(*inputs, config)
    else:  # inference: no autograd bookkeeping
        y, mix, _ = _forward(*inputs, config)
        batch_mean, batch_var = _as_tensor(mix.batch_mean), _as_tensor(mix.batch_var)
    return y.view(x.shape), batch_mean, batch_var


from . import compiled as _compiled  # noqa: E402 (it builds on this module's kernel)
