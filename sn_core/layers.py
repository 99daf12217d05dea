"""Switchable Normalization layers: ``SwitchNorm1d``, ``SwitchNorm2d``, ``SwitchNorm3d``.

Structure follows ``torch.nn.modules.batchnorm``: ``MixtureNorm`` owns the affine parameters, the
running statistics (``nn.BatchNorm2d`` conventions exactly) and the forward through the fused
kernel; ``SwitchNorm`` adds the learnable ratios; the 1d/2d/3d classes differ only in the input
check. ``SelectedNorm`` (a fixed mean/variance pair) lives in ``sn_core.selected``.

A choice that has become one-hot is *fixed*: it is kept in the ``mean_choice`` / ``var_choice``
buffers (-1 while free) and mirrored in a Python attribute so that forward can leave the logits out
of the graph without a host sync. Fixed logits then get no gradient at all (``grad`` stays None), so
momentum and weight decay cannot move them. Nothing in forward mutates a parameter. Under
DistributedDataParallel pass ``find_unused_parameters=True`` (fixed logits are unused).

A layer whose mean and variance are fixed to the same normalizer (population variance) *is* a
torch layer (docs/sn-spec.md section 4), so its forward calls torch's own kernel: batch norm for
"bn", group norm with C, 1 or G groups for "in", "ln", "gn". Which path a forward takes, and the
kernel configuration of the mixture path, are decided when they can change (construction,
``fix``/``unfix``, ``load_state_dict``, ``.to()``, assigning ``eps``/``groups``/``variance``/
``track_running_stats``), not per call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .functional import MixtureConfig, switch_norm
from .pointwise import DEFAULT_DYT_ALPHA0, dynamic_tanh
from .ratio_bank import take_banked
from .sparsity import RATIO_FUNCTIONS, compute_ratios
from .vocabulary import POINTWISE_MEMBERS, POOL_MEMBERS, STATISTIC_MEMBERS

__all__ = ["MixtureNorm", "SwitchNorm", "SwitchNorm1d", "SwitchNorm2d", "SwitchNorm3d"]

VARIANCE_MODES = ("population", "reference")
# Attributes the cached forward plan depends on: assigning one rebuilds it.
_PLAN_ATTRIBUTES = frozenset({"eps", "groups", "variance", "track_running_stats"})
# Float attributes a schedule sets (sn_core.schedules.SparsityController).
_SCHEDULE_ATTRIBUTES = ("radius", "temperature", "output_radius")


def normalize_pool(pool: Sequence[str] | str) -> tuple[str, ...]:
    """Validate a pool of normalizer names and return it as a tuple in the given order."""
    if isinstance(pool, str):
        pool = (pool,)
    pool = tuple(str(kind).lower() for kind in pool)
    if not pool:
        raise ValueError("pool must name at least one normalizer")
    unknown = [kind for kind in pool if kind not in STATISTIC_MEMBERS]
    if unknown:
        choices = STATISTIC_MEMBERS
        raise ValueError(f"unknown normalizer(s) {unknown} in pool; choose from {choices}")
    if len(set(pool)) != len(pool):
        raise ValueError(f"pool {pool} names a normalizer twice")
    return pool


def split_pool(pool: Sequence[str] | str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(statistics members, point-wise members) of a pool, each in the given order.

    At least one statistics member is required: the output mixture's first entry is the
    normalized output (docs/sn-spec.md section 9).
    """
    if isinstance(pool, str):
        pool = (pool,)
    names = tuple(str(kind).lower() for kind in pool)
    unknown = [kind for kind in names if kind not in POOL_MEMBERS]
    if unknown:
        raise ValueError(f"unknown normalizer(s) {unknown} in pool; choose from {POOL_MEMBERS}")
    if len(set(names)) != len(names):
        raise ValueError(f"pool {names} names a normalizer twice")
    statistics = tuple(kind for kind in names if kind in STATISTIC_MEMBERS)
    pointwise = tuple(kind for kind in names if kind in POINTWISE_MEMBERS)
    if pointwise and not statistics:
        raise ValueError(
            f"pool {names} has point-wise members only; add a statistics member "
            f"({', '.join(STATISTIC_MEMBERS)})"
        )
    return normalize_pool(statistics), pointwise


class MixtureNorm(nn.Module):
    """Base of every layer computed by the SN kernel: affine parameters and running statistics.

    Running statistics exist when ``track_running_stats`` and "bn" is among ``kinds``; they follow
    ``nn.BatchNorm2d``: ``running = (1 - momentum) * running + momentum * batch`` with the unbiased
    batch variance (``momentum=None``: cumulative average), ``running_var`` starting at 1. In
    "reference" variance mode they follow the original SN code instead
    (docs/sn-spec.md section 4).
    """

    _version = 1

    def __init__(
        self,
        num_features: int,
        kinds: Sequence[str],
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        groups: int = 32,
        affine: bool = True,
        track_running_stats: bool = True,
        variance: str = "population",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        kinds = normalize_pool(kinds)
        if num_features <= 0:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if "gn" in kinds and (groups <= 0 or num_features % groups):
            raise ValueError(f"groups={groups} must divide num_features={num_features} for 'gn'")
        if variance not in VARIANCE_MODES:
            raise ValueError(f"variance must be one of {VARIANCE_MODES}, got {variance!r}")
        self.num_features = num_features
        self.kinds = kinds  # every normalizer this layer can compute
        self.eps = eps
        self.momentum = momentum
        self.groups = groups
        self.affine = affine
        self.variance = variance
        self.track_running_stats = track_running_stats and "bn" in kinds
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked",
                torch.tensor(0, dtype=torch.long, device=device),
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            # The original code starts its running variance at 0; torch's BatchNorm at 1.
            self.running_var.fill_(0.0 if self.variance == "reference" else 1.0)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:  # a token layer may have a weight only (as nn.RMSNorm)
            nn.init.zeros_(self.bias)

    def _repr(self, choice: str) -> str:
        """extra_repr text: the channels, ``choice`` (what the subclass mixes), then settings."""
        return (
            f"{self.num_features}, {choice}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
            + (f", groups={self.groups}" if "gn" in self.kinds else "")
            + (f", variance={self.variance!r}" if self.variance != "population" else "")
        )

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {x.dim()}D")

    def _path(self) -> tuple[tuple[str, ...], str | None]:
        """The normalizers the mixture computes now, and the one whose torch kernel the layer
        equals (None: it does not equal one)."""
        raise NotImplementedError

    def _mixture(self) -> tuple[Tensor, Tensor]:
        """(mean, variance) ratios over the kinds of ``_path()``, for the mixture path."""
        raise NotImplementedError

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name in _PLAN_ATTRIBUTES and "_configs" in self.__dict__:
            self._refresh()

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self._refresh()  # cached constants follow the parameters' device and dtype
        return result

    def _refresh(self) -> None:
        """Rebuild the forward plan: the native kernel, if any, and the mixture's two configs."""
        kinds, native = self._path()
        reference = self.variance == "reference"
        tracking = bool(self.track_running_stats) and "bn" in kinds
        self._tracking = tracking
        # Indexed by self.training: evaluation reads running statistics when they are tracked.
        self._configs = tuple(
            MixtureConfig(kinds, self.eps, self.groups, batch_bn, reference)
            for batch_bn in (not tracking, True)
        )
        # Only population variance is torch's; the original code's estimators are not. A layer
        # fixed to "rms" stays on the mixture path: on CPU torch.rms_norm over (C, *) plus the
        # per-channel affine map measured slower than the mixture (docs/sn-spec.md section 8).
        self._native = None if reference or native == "rms" else native
        self._native_groups = {"in": self.num_features, "ln": 1, "gn": self.groups}.get(native, 0)

    def _check_input(self, x: Tensor) -> None:
        self._check_input_dim(x)
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"expected {self.num_features} channels, got input of shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if self._native is not None:
            y = self._native_forward(x)
            if y is not None:
                return y
        mean_ratios, var_ratios = self._mixture()
        config = self._configs[self.training]
        use_running = not config.batch_bn  # saved for backward only when read
        y, batch_mean, batch_var = switch_norm(
            x, self.weight, self.bias, mean_ratios, var_ratios,
            self.running_mean if use_running else None,
            self.running_var if use_running else None,
            config,
        )  # fmt: skip
        if self.training and self._tracking and batch_mean is not None:
            self._update_running_stats(batch_mean, batch_var, x.numel() // x.shape[1])
        return y

    def _native_forward(self, x: Tensor) -> Tensor | None:
        """torch's kernel for the layer's single normalizer; None where it would differ.

        The running-statistics update is nn.BatchNorm's (unbiased batch variance, momentum None =
        cumulative average), which ``_update_running_stats`` reproduces on the mixture path.
        """
        cudnn = torch.backends.cudnn.enabled
        if self._native != "bn":
            return torch.group_norm(x, self._native_groups, self.weight, self.bias, self.eps, cudnn)
        if self.training or not self._tracking:
            # One value per channel: torch's unbiased variance would be 0/0; the mixture is finite.
            if x.numel() <= x.shape[1]:
                return None
            if self.training and self._tracking:
                if self.momentum is None and torch.compiler.is_compiling():
                    return self._compiled_cumulative_batch_norm(x, cudnn)
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    momentum = 1.0 / float(self.num_batches_tracked)
                else:
                    momentum = self.momentum
                return torch.batch_norm(
                    x, self.weight, self.bias, self.running_mean, self.running_var,
                    True, momentum, self.eps, cudnn,
                )  # fmt: skip
            return torch.batch_norm(
                x, self.weight, self.bias, None, None, True, 0.0, self.eps, cudnn
            )
        return torch.batch_norm(
            x, self.weight, self.bias, self.running_mean, self.running_var,
            False, 0.0, self.eps, cudnn,
        )  # fmt: skip

    def _compiled_cumulative_batch_norm(self, x: Tensor, cudnn: bool) -> Tensor:
        """Training BN with momentum None under torch.compile: the factor 1 / num_batches_tracked
        stays a tensor (eager reads it as a float, a host sync that would break the graph)."""
        y = torch.batch_norm(x, self.weight, self.bias, None, None, True, 0.0, self.eps, cudnn)
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x.detach(), dim=dims, correction=0)
        self._update_running_stats(mean, var, x.numel() // x.shape[1])
        return y

    @torch.no_grad()
    def _update_running_stats(self, batch_mean: Tensor, batch_var: Tensor, count: int) -> None:
        self.num_batches_tracked.add_(1)
        # momentum None: cumulative moving average, as nn.BatchNorm
        momentum = self.momentum
        if momentum is not None:
            factor = momentum
        elif torch.compiler.is_compiling():  # no host sync in a compiled graph
            factor = self.num_batches_tracked.to(self.running_mean.dtype).reciprocal()
        else:
            factor = 1.0 / float(self.num_batches_tracked)
        if self.variance == "population":
            batch_var = batch_var * (count / (count - 1) if count > 1 else 1.0)
        self.running_mean.lerp_(batch_mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(batch_var.to(self.running_var.dtype), factor)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args, **kwargs):
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 1) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args, **kwargs)
        self._refresh()


class SwitchNorm(MixtureNorm):
    """Switchable Normalization: learns softmax-like ratios over IN, LN, BN (and GN) statistics.

    Args:
        num_features: channels C of an (N, C, *) input.
        eps, momentum: as ``nn.BatchNorm2d``.
        pool: the normalizers to mix, in logit order; any non-empty subset of
            {"in", "ln", "bn", "gn", "rms"} (``sn_core.vocabulary.STATISTIC_MEMBERS``).
        groups: groups of the "gn" normalizer.
        tied: one logit vector for both mean and variance (the paper reports it is worse).
        ratio_fn: "softmax", "sparsestmax" (uses ``self.radius``) or "temperature" (uses
            ``self.temperature``); the radius and temperature are set by a schedule
            (``sn_core.schedules.SparsityController``).
        affine, track_running_stats: as ``nn.BatchNorm2d``.
        variance: "population" (ours: one-hot layers equal torch's norm layers) or "reference"
            (the original code's estimators, for ``sn_core.compat``).
        dyt_alpha0: initial value of DyT's learnable scalar alpha (a "dyt" pool member).

    Point-wise pool members ("dyt", "none"; ``sn_core.vocabulary.POINTWISE_MEMBERS``) are not
    statistics: they are mixed at the output, ``y = r_norm * SN(x) + r_dyt * DyT(x) + r_none *
    x``, by a third logit vector ``output_weight`` over ``output_choices`` ("norm", then the
    point-wise members in pool order). DyT shares the layer's ``weight`` and ``bias``
    (``weight * tanh(dyt_alpha * x) + bias``). ``pool`` keeps the statistics members (the
    mean/variance logit order), ``pointwise`` the others; a layer without point-wise members has
    none of these parameters (same state_dict, same forward as before).
    """

    #: Channels on the last dimension (token layouts): how DyT's per-channel affine broadcasts.
    _channels_last = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        pool: Sequence[str] = ("in", "ln", "bn"),
        groups: int = 32,
        tied: bool = False,
        ratio_fn: str = "softmax",
        affine: bool = True,
        track_running_stats: bool = True,
        variance: str = "population",
        device=None,
        dtype=None,
        *,
        dyt_alpha0: float = DEFAULT_DYT_ALPHA0,
    ) -> None:
        statistics, pointwise = split_pool(pool)
        super().__init__(
            num_features,
            statistics,
            eps=eps,
            momentum=momentum,
            groups=groups,
            affine=affine,
            track_running_stats=track_running_stats,
            variance=variance,
            device=device,
            dtype=dtype,
        )
        if ratio_fn not in RATIO_FUNCTIONS:
            raise ValueError(
                f"unknown ratio_fn {ratio_fn!r}; choose one of {sorted(RATIO_FUNCTIONS)}"
            )
        self.pool = self.kinds  # logit order
        self.tied = tied
        self.ratio_fn = ratio_fn
        # 0-dim mirrors of radius and temperature, read under torch.compile: a Python float
        # there would be a guarded constant, and every schedule step would recompile.
        for name in _SCHEDULE_ATTRIBUTES:
            value = torch.zeros((), device=device, dtype=dtype)
            self.register_buffer(f"_{name}_tensor", value, persistent=False)
        self.radius = 0.0
        self.temperature = 1.0
        k = len(self.pool)
        self.mean_weight = nn.Parameter(torch.ones(k, device=device, dtype=dtype))
        if tied:
            self.register_parameter("var_weight", None)
        else:
            self.var_weight = nn.Parameter(torch.ones(k, device=device, dtype=dtype))
        self.register_buffer("mean_choice", torch.tensor(-1, dtype=torch.long, device=device))
        self.register_buffer("var_choice", torch.tensor(-1, dtype=torch.long, device=device))
        self._fixed: tuple[int | None, int | None] = (None, None)
        self._onehot_cache: dict = {}
        self._banked: dict | None = None  # rows a RatioBank computed for this forward
        self._init_output(pointwise, dyt_alpha0, device, dtype)
        self.reset_parameters()

    def _init_output(self, pointwise: tuple[str, ...], alpha0: float, device, dtype) -> None:
        """The output mixture's parameters; all None (no state_dict keys) without point-wise
        members."""
        self.pointwise = pointwise
        self.output_choices = ("norm", *pointwise) if pointwise else ()
        self.dyt_alpha0 = float(alpha0)
        self.output_radius = 0.0  # sparsestmax radius of the output ratios (K may differ)
        self._fixed_output: int | None = None
        factory = {"device": device, "dtype": dtype}
        if pointwise:
            k = len(self.output_choices)
            self.output_weight = nn.Parameter(torch.ones(k, **factory))
            self.register_buffer("output_choice", torch.tensor(-1, dtype=torch.long, device=device))
        else:
            self.register_parameter("output_weight", None)
            self.register_buffer("output_choice", None)
        if "dyt" in pointwise:
            self.dyt_alpha = nn.Parameter(torch.full((1,), self.dyt_alpha0, **factory))
        else:
            self.register_parameter("dyt_alpha", None)

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name in _SCHEDULE_ATTRIBUTES:
            with torch.no_grad():
                getattr(self, f"_{name}_tensor").fill_(value)

    def _schedule_values(self, radius: str = "radius") -> dict:
        """The ratio function's radius (``radius`` names which: the statistics' or the output
        ratios') and temperature: tensors under torch.compile."""
        if torch.compiler.is_compiling():
            return {"radius": getattr(self, f"_{radius}_tensor"),
                    "temperature": self._temperature_tensor}  # fmt: skip
        return {"radius": getattr(self, radius), "temperature": self.temperature}

    # ----------------------------------------------------------------------------- ratios
    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.ones_(self.mean_weight)
        if self.var_weight is not None:
            nn.init.ones_(self.var_weight)
        if self.output_weight is not None:
            nn.init.ones_(self.output_weight)
        if self.dyt_alpha is not None:
            nn.init.constant_(self.dyt_alpha, self.dyt_alpha0)
        self.unfix()

    @property
    def var_logits(self) -> nn.Parameter:
        return self.mean_weight if self.tied else self.var_weight

    @property
    def fixed(self) -> tuple[int | None, int | None]:
        """Fixed (mean, variance) choice as pool indices, None where still free."""
        return self._fixed

    @property
    def fixed_output(self) -> int | None:
        """Fixed output choice as an index into ``output_choices``; None while free (and for a
        layer without point-wise members)."""
        return self._fixed_output

    @property
    def members(self) -> tuple[str, ...]:
        """The whole pool: statistics members, then point-wise members."""
        return (*self.pool, *self.pointwise)

    def soft_output_ratios(self) -> Tensor | None:
        """Output ratios over ``output_choices`` from their logits, ignoring a fixed choice."""
        if self.output_weight is None:
            return None
        banked = take_banked(self, "output")
        if banked is not None:
            return banked
        return compute_ratios(
            self.ratio_fn, self.output_weight, **self._schedule_values("output_radius"),
        )  # fmt: skip

    def output_ratios(self) -> Tensor | None:
        """Output ratios as forward uses them: one-hot where fixed; None without point-wise
        members."""
        if self._fixed_output is None:
            return self.soft_output_ratios()
        return self._output_onehot(self._fixed_output)

    def _output_onehot(self, index: int) -> Tensor:
        key = ("output", index, self.output_weight.device, self.output_weight.dtype)
        cached = self._onehot_cache.get(key)
        if cached is None:
            values = [float(i == index) for i in range(len(self.output_choices))]
            cached = torch.tensor(values, device=key[2], dtype=key[3])
            self._onehot_cache[key] = cached
        return cached

    def soft_ratios(self) -> tuple[Tensor, Tensor]:
        """Ratios from the logits under the current ratio function, ignoring fixed choices."""
        mean = take_banked(self, "mean")  # computed with every layer's by a RatioBank
        if mean is not None:
            var = mean if self.tied else take_banked(self, "var")
            if var is not None:
                return mean, var
        kw = self._schedule_values()
        if self.tied:
            mean = compute_ratios(self.ratio_fn, self.mean_weight, **kw)
            return mean, mean
        if self.ratio_fn == "sparsestmax":
            # One call for both vectors: it works row-wise, and its fixed per-call cost (a few
            # dozen small ops) dominates for K <= 4. A softmax is cheaper called twice.
            logits = torch.stack((self.mean_weight, self.var_weight))
            both = compute_ratios(self.ratio_fn, logits, **kw)
            return both[0], both[1]
        mean = compute_ratios(self.ratio_fn, self.mean_weight, **kw)
        return mean, compute_ratios(self.ratio_fn, self.var_weight, **kw)

    def ratios(self) -> tuple[Tensor, Tensor]:
        """(mean, variance) ratios over ``pool`` as used by forward: one-hot where fixed."""
        mean_fixed, var_fixed = self._fixed
        if mean_fixed is None and var_fixed is None:
            return self.soft_ratios()
        # A fixed vector's logits must stay out of the graph (no gradient, not even zeros).
        kw = self._schedule_values()
        if mean_fixed is None:
            mean = compute_ratios(self.ratio_fn, self.mean_weight, **kw)
        else:
            mean = self._onehot(mean_fixed)
        if var_fixed is None:
            var = compute_ratios(self.ratio_fn, self.var_logits, **kw)
        else:
            var = self._onehot(var_fixed)
        return mean, var

    def _onehot(self, index: int, kinds: tuple[str, ...] | None = None) -> Tensor:
        kinds = kinds or self.pool
        target = self.pool[index]
        key = (kinds, target, self.mean_weight.device, self.mean_weight.dtype)
        cached = self._onehot_cache.get(key)
        if cached is None:
            values = [1.0 if kind == target else 0.0 for kind in kinds]
            cached = torch.tensor(values, device=key[2], dtype=key[3])
            self._onehot_cache[key] = cached
        return cached

    def _path(self) -> tuple[tuple[str, ...], str | None]:
        mean_fixed, var_fixed = self._fixed
        if mean_fixed is None or var_fixed is None:
            return self.pool, None
        # Both fixed: compute only the statistics the choice needs.
        mean, var = self.pool[mean_fixed], self.pool[var_fixed]
        return tuple(dict.fromkeys((mean, var))), mean if mean == var else None

    def _refresh(self) -> None:
        super()._refresh()
        # None: the normalized output alone (no point-wise members, or output fixed to "norm").
        fixed_output = getattr(self, "_fixed_output", None)
        if not getattr(self, "pointwise", ()) or fixed_output == 0:
            self._output_mode = None
        elif fixed_output is None:
            self._output_mode = "mix"
        else:
            self._output_mode = self.output_choices[fixed_output]
        mean_fixed, var_fixed = self._fixed
        kinds = self._configs[0].kinds
        self._fixed_ratios = (
            None if mean_fixed is None else self._onehot(mean_fixed, kinds),
            None if var_fixed is None else self._onehot(var_fixed, kinds),
        )

    def _mixture(self) -> tuple[Tensor, Tensor]:
        mean, var = self._fixed_ratios
        if mean is None and var is None:
            return self.soft_ratios()
        kw = self._schedule_values()
        if mean is None:
            mean = take_banked(self, "mean")
            if mean is None:
                mean = compute_ratios(self.ratio_fn, self.mean_weight, **kw)
        if var is None:
            var = take_banked(self, "var")
            if var is None:
                var = compute_ratios(self.ratio_fn, self.var_logits, **kw)
        return mean, var

    # ------------------------------------------------------------------------------ output
    def forward(self, x: Tensor) -> Tensor:
        mode = self._output_mode
        if mode is None:
            return MixtureNorm.forward(self, x)
        self._check_input(x)
        return self._output_forward(x, mode, lambda: MixtureNorm.forward(self, x))

    def _dyt(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        return dynamic_tanh(x, self.dyt_alpha, weight, bias, channels_last=self._channels_last)

    def _output_forward(self, x: Tensor, mode: str, normalized) -> Tensor:
        """The output mixture; ``normalized()`` computes SN(x) (not called when the output is
        fixed to a point-wise member: no statistics, no running-statistics update)."""
        if mode == "dyt":
            return self._dyt(x, self.weight, self.bias)
        if mode == "none":
            return x
        ratios = self.output_ratios()
        y = normalized() * ratios[0]
        for k, member in enumerate(self.pointwise, start=1):
            r = ratios[k]
            if member == "none":
                y = torch.addcmul(y, x, r)
                continue
            # r * (w * tanh + b) with r folded into the affine: autograd keeps tanh(alpha x)
            # only, not the DyT output as well.
            weight = r.expand(self.num_features) if self.weight is None else self.weight * r
            bias = None if self.bias is None else self.bias * r
            y = y + self._dyt(x, weight, bias)
        return y

    # ------------------------------------------------------------------------------ fixing
    def _index(self, choice: int | str) -> int:
        if isinstance(choice, str):
            if choice not in self.pool:
                raise ValueError(f"{choice!r} is not in this layer's pool {self.pool}")
            return self.pool.index(choice)
        if not 0 <= int(choice) < len(self.pool):
            raise ValueError(f"choice index {choice} out of range for pool {self.pool}")
        return int(choice)

    def _output_index(self, choice: int | str) -> int:
        choices = self.output_choices
        if not choices:
            raise ValueError(f"this layer has no point-wise members (pool {self.pool})")
        if isinstance(choice, str):
            if choice not in choices:
                raise ValueError(f"output {choice!r} is not one of this layer's {choices}")
            return choices.index(choice)
        if not 0 <= int(choice) < len(choices):
            raise ValueError(f"output index {choice} out of range for {choices}")
        return int(choice)

    @torch.no_grad()
    def fix(
        self,
        mean: int | str | None = None,
        var: int | str | None = None,
        output: int | str | None = None,
    ) -> None:
        """Fix the mean and/or variance choice (tied layers fix both together) and/or the output
        choice ("norm" or a point-wise member, by name or index into ``output_choices``)."""
        if output is not None:
            self._fixed_output = self._output_index(output)
            self.output_choice.fill_(self._fixed_output)
        if self.tied:
            choice = mean if mean is not None else var
            mean = var = choice
        mean_fixed, var_fixed = self._fixed
        if mean is not None:
            mean_fixed = self._index(mean)
            self.mean_choice.fill_(mean_fixed)
        if var is not None:
            var_fixed = self._index(var)
            self.var_choice.fill_(var_fixed)
        self._fixed = (mean_fixed, var_fixed)
        self._refresh()

    @torch.no_grad()
    def unfix(self) -> None:
        self.mean_choice.fill_(-1)
        self.var_choice.fill_(-1)
        self._fixed = (None, None)
        if self.output_choice is not None:
            self.output_choice.fill_(-1)
        self._fixed_output = None
        self._refresh()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        mean, var = int(self.mean_choice), int(self.var_choice)
        self._fixed = (mean if mean >= 0 else None, var if var >= 0 else None)
        if self.output_choice is not None:
            output = int(self.output_choice)
            self._fixed_output = output if output >= 0 else None
        self._refresh()

    def extra_repr(self) -> str:
        pointwise = f", pointwise={self.pointwise}" if self.pointwise else ""
        return self._repr(
            f"pool={self.pool}{pointwise}, ratio_fn={self.ratio_fn!r}, tied={self.tied}"
        )


class SwitchNorm1d(SwitchNorm):
    """SN over (N, C) or (N, C, L) inputs."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {x.dim()}D input)")


class SwitchNorm2d(SwitchNorm):
    """SN over (N, C, H, W) inputs."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")


class SwitchNorm3d(SwitchNorm):
    """SN over (N, C, D, H, W) inputs."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(f"expected 5D input (got {x.dim()}D input)")
