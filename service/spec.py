"""The job spec: what a user submits (versioned, shared by the API and the worker).

Pure pydantic; no torch. A spec with only ``model`` and ``dataset`` is complete: every other field
has a default that runs a sensible search. ``JobSpec.model_json_schema()`` is the schema the UI
and the docs use (``job_spec_schema()``).
"""

from __future__ import annotations

import copy
import math
from importlib.metadata import entry_points
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from sn_core.vocabulary import (
    DEFAULT_DYT_ALPHA0,
    POINTWISE_MEMBERS,
    POOL_MEMBERS,
    STATISTIC_MEMBERS,
)

SPEC_VERSION = 1

# The model zoo's built-in architectures (sn_core.zoo; a test keeps the two in sync). Plug-ins
# registered under the ``normsearch.models`` entry-point group are accepted too: their names are
# read from package metadata, without importing torch.
BUILTIN_ARCHS = (
    "char_lm",
    "cnn1d",
    "mlp",
    "mobilenetv2",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet50",
    "resnet56",
    "vgg11",
    "vgg_small",
    "vit",
)
# What a spec's search.pool and verify.baselines may name (sn_core.vocabulary.POOL_MEMBERS):
# statistics members (in, ln, bn, gn, rms) and point-wise members (dyt, none).
PoolMember = Literal[POOL_MEMBERS]  # type: ignore[valid-type]
# The pool members each layout's SN layers can compute. "channels": (N, C, *) activations of
# CNNs and MLPs; "tokens": (N, T, C) activations whose norms are LayerNorm/RMSNorm, where group
# statistics over C have no counterpart (no gn).
LAYOUT_MEMBERS: dict[str, tuple[str, ...]] = {
    "channels": POOL_MEMBERS,
    "tokens": tuple(member for member in POOL_MEMBERS if member != "gn"),
}
# The layout of each built-in architecture's norms; a token model (ViT, a character LM) adds
# itself here as "tokens". A plug-in (not listed) is checked by the worker, when it builds it.
ARCH_LAYOUTS: dict[str, str] = {arch: "channels" for arch in BUILTIN_ARCHS}
ARCH_LAYOUTS.update({"vit": "tokens", "char_lm": "tokens"})
# What a spec that leaves them out gets, by its model's layout, as (section, field) -> value.
# CNNs verify against all-BN and all-GN (VerifySpec's default). Token models search their
# per-token statistics, tied (a token layer finalizes to one normalizer for both ratios:
# nn.LayerNorm or nn.RMSNorm, never a mixed pair), and verify against all-LN and all-RMS (their
# practice; the CNN defaults have no token form).
LAYOUT_DEFAULTS: dict[str, dict[tuple[str, str], Any]] = {
    "channels": {("verify", "baselines"): ["bn", "gn"]},
    "tokens": {
        ("search", "pool"): ["ln", "rms"],
        ("search", "tied"): True,
        ("verify", "baselines"): ["ln", "rms"],
    },
}
FILE_DATASETS = ("image_folder", "cifar", "npz")
# Kinds that may read a file from the data roots; ``text`` reads its built-in corpus without one.
PATH_DATASETS = (*FILE_DATASETS, "text")
# Character-level text (``worker.data.text``): windows of ``context_length`` characters; with no
# path, the Python standard library's own sources (the built-in corpus, on every machine).
TEXT_MAX_CONTEXT = 4096
TEXT_DEFAULT_CONTEXT = 64
TEXT_DEFAULT_MAX_CHARS = 1_000_000
TEXT_MAX_CHARS = 20_000_000
# Language models: the architectures whose output is a next-token distribution at every position
# (their jobs measure validation perplexity), and the token normalizers a job may mix in each
# transformer: the per-token ones, LN and RMS. A causal model can compute nothing else (BN and IN
# over tokens would let later tokens leak into earlier ones); a ViT computes BN and IN over tokens
# too (``token_pool_members`` of the zoo model), but no torch layer is what a token layer fixed to
# them finalizes to (``sn_core.finalize.token_norm``), so a job could not verify or export them.
LANGUAGE_MODELS = ("char_lm",)


def metric_of(arch: str) -> str:
    """What a job of model ``arch`` is judged by: "perplexity" (lower is better) for a language
    model, "accuracy" (higher is better) for a classifier (``service.metrics``). A function of the
    arch alone, so that a stored spec's ``model.arch`` says it without validating the spec."""
    return "perplexity" if arch in LANGUAGE_MODELS else "accuracy"


TOKEN_POOL_MEMBERS: dict[str, tuple[str, ...]] = {
    "vit": ("ln", "rms", *POINTWISE_MEMBERS),
    "char_lm": ("ln", "rms", *POINTWISE_MEMBERS),
}
# Generated kinds: samples per kind by default and at most (MNIST-1D is generated in Python, about
# 0.3 ms a sample: the limit keeps a job's data generation under a minute). Its default is the
# size of the published MNIST-1D dataset.
DEFAULT_NUM_SAMPLES = {"synthetic": 2000, "mnist1d": 5000}
MNIST1D_MAX_SAMPLES = 100_000
MNIST1D_CLASSES = 10
# The largest learning rate: of training.lr, and of every trial's effective (batch-scaled) rate.
MAX_LR = 10.0
LrScaling = Literal["linear", "sqrt", "none"]
# Type-level ceilings: what a field could never sensibly hold (a seed numpy cannot take, a count
# no database column stores). The operator's lower bounds are settings (``service.limits``).
MAX_SEED = 2**32 - 1
MAX_LIST = 64
MAX_SIZE = 1 << 20  # the largest width, depth or length a model argument may name
MAX_KWARGS_DEPTH = 4
# model.dyt_alpha0's bounds: DyT's tanh(alpha * x) is linear below the lower one and a step above
# the upper one, for unit-scale activations; past them alpha0 is a typo, not a setting.
DYT_ALPHA0_MIN = 0.01
DYT_ALPHA0_MAX = 10.0

# Strict scalars (a flag is no 1, a width no "8" or 8.5); lists lax, so a tuple is a list.
SizeArg = Annotated[int, Strict(), Field(ge=1, le=MAX_SIZE)]
Flag = Annotated[bool, Strict()]
# The keyword-only arguments of the zoo's built-in builders (beyond num_classes, in_channels and
# norm_layer), with their JSON types: checked here without torch, so an unknown or mistyped
# argument is a 422 at submission. tests/service/test_limits.py keeps it in sync with the
# builders' signatures. A plug-in's arguments are checked by the worker, when it builds the model.
_RESNET_KWARGS = {"small_input": Flag, "width": SizeArg, "zero_init_residual": Flag}
_CIFAR_RESNET_KWARGS = {"zero_init_residual": Flag}
_TRANSFORMER_KWARGS = {
    "dim": Annotated[int, Strict(), Field(ge=1, le=4096)],
    "depth": Annotated[int, Strict(), Field(ge=1, le=64)],
    "heads": Annotated[int, Strict(), Field(ge=1, le=64)],
    "mlp_ratio": Annotated[float, Field(gt=0.0, le=16.0)],
    "qk_norm": Flag,
}
ARCH_KWARGS: dict[str, dict[str, Any]] = {
    "cnn1d": {
        "channels": SizeArg,
        "depth": Annotated[int, Strict(), Field(ge=1, le=1024)],
        "kernel_size": SizeArg,
        "pooled_length": SizeArg,
    },
    "mlp": {
        "hidden": Annotated[list[SizeArg], Field(max_length=MAX_LIST)],
        "input_size": SizeArg,
    },
    "mobilenetv2": {
        "width_mult": Annotated[float, Strict(), Field(gt=0.0, le=1024.0)],
        "small_input": Flag,
        "dropout": Annotated[float, Strict(), Field(ge=0.0, lt=1.0)],
        "zero_init_residual": Flag,
    },
    "resnet18": _RESNET_KWARGS,
    "resnet34": _RESNET_KWARGS,
    "resnet50": _RESNET_KWARGS,
    "resnet20": _CIFAR_RESNET_KWARGS,
    "resnet32": _CIFAR_RESNET_KWARGS,
    "resnet56": _CIFAR_RESNET_KWARGS,
    "vgg11": {"width": SizeArg, "small_input": Flag},
    "vgg_small": {"width": SizeArg},
    "vit": {
        "input_size": Annotated[int, Strict(), Field(ge=1, le=1024)],
        "spatial_dims": Annotated[int, Strict(), Field(ge=1, le=2)],
        "patch_size": Annotated[int, Strict(), Field(ge=1, le=1024)],
        **_TRANSFORMER_KWARGS,
        "pool": Literal["mean", "cls"],
    },
    "char_lm": {
        "context": Annotated[int, Strict(), Field(ge=1, le=TEXT_MAX_CONTEXT)],
        **_TRANSFORMER_KWARGS,
    },
}
_KWARGS_MODELS = {
    arch: create_model(
        f"{arch}_kwargs",
        __config__=ConfigDict(extra="forbid"),
        **{name: (kind, None) for name, kind in fields.items()},
    )
    for arch, fields in ARCH_KWARGS.items()
}


def _located(field: str, message: str, *where: str) -> ValidationError:
    """A ValidationError at ``(*where, field)``: a model validator's plain ValueError would be
    located at the whole model, and the 422 would not name the field."""
    return ValidationError.from_exception_data(
        "JobSpec",
        [
            InitErrorDetails(
                type=PydanticCustomError("invalid_setting", message),
                loc=(*where, field),
                input=None,
            )
        ],
    )


def token_baselines(arch: str) -> tuple[str, ...]:
    """The uniform baselines a transformer builds: the norms with a token form (LN, RMSNorm)
    that the spec's vocabulary names."""
    return tuple(m for m in ("ln", "rms", "dyt") if m in TOKEN_POOL_MEMBERS[arch])


def json_depth(value: Any) -> int:
    """How deeply ``value``'s dicts and lists nest (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            depth += 1
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth) for child in children)
    return deepest


def _no_duplicates(values: list | None, what: str) -> None:
    if values is not None and len(set(values)) != len(values):
        repeated = sorted({v for v in values if values.count(v) > 1})
        raise ValueError(f"{what} {repeated} appear more than once")


def scaled_lr(lr: float, batch_size: int, reference_batch_size: int, scaling: LrScaling) -> float:
    """The learning rate a trial at ``batch_size`` trains with, given the base ``lr`` tuned for
    ``reference_batch_size``: ``linear`` multiplies it by the batch ratio (Goyal et al. 2017),
    ``sqrt`` by its square root, ``none`` leaves it. Scaling keeps a batch-size sweep like for
    like: a small batch takes more steps per epoch, so at an unscaled rate it trains further."""
    ratio = batch_size / reference_batch_size
    if scaling == "linear":
        return lr * ratio
    if scaling == "sqrt":
        return lr * math.sqrt(ratio)
    if scaling == "none":
        return lr
    raise ValueError(f"unknown lr_scaling {scaling!r}")


def known_archs() -> tuple[str, ...]:
    plugins = {ep.name for ep in entry_points(group="normsearch.models")}
    return tuple(sorted(set(BUILTIN_ARCHS) | plugins))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    arch: str = Field(description="Model zoo architecture, e.g. resnet20.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra builder arguments.")
    num_classes: int | None = Field(
        default=None, ge=2, le=100_000, description="Output classes; default: from the dataset."
    )
    in_channels: int | None = Field(
        default=None, ge=1, le=4096, description="Input channels; default: from the dataset."
    )
    dyt_alpha0: float = Field(
        default=DEFAULT_DYT_ALPHA0,
        ge=DYT_ALPHA0_MIN,
        le=DYT_ALPHA0_MAX,
        allow_inf_nan=False,
        description=(
            "Initial alpha of every DyT (gamma * tanh(alpha * x) + beta, alpha learnable): of the "
            "searched model's dyt members, of the all-DyT baseline and of a recommended plan's "
            f"DyT layers. {DYT_ALPHA0_MIN:g} to {DYT_ALPHA0_MAX:g}; default "
            f"{DEFAULT_DYT_ALPHA0:g} (Zhu et al.). It matters at small scale: search it with one "
            "job per value. Unused without dyt in search.pool or verify.baselines."
        ),
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        arch = arch.strip().lower()
        known = known_archs()
        if arch not in known:
            raise ValueError(f"unknown arch {arch!r}; known: {', '.join(known)}")
        return arch

    @field_validator("kwargs", mode="before")
    @classmethod
    def _shallow_kwargs(cls, kwargs: Any) -> Any:
        # Before pydantic walks it: a deeply nested value would fail its serialization later.
        if json_depth(kwargs) > MAX_KWARGS_DEPTH:
            raise ValueError(
                f"nested more than {MAX_KWARGS_DEPTH} levels deep; builder arguments are "
                "numbers, flags and short lists"
            )
        return kwargs

    @field_validator("kwargs")
    @classmethod
    def _no_reserved_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        reserved = {"num_classes", "in_channels", "norm_layer"} & set(kwargs)
        if reserved:
            raise ValueError(f"{sorted(reserved)} are set by the service, not in kwargs")
        return kwargs

    @model_validator(mode="after")
    def _builder_kwargs(self) -> ModelSpec:
        """A built-in's arguments by name and type (``ARCH_KWARGS``); each error located at
        ``kwargs.<name>``, so the 422 names the key."""
        schema = _KWARGS_MODELS.get(self.arch)
        if schema is None:
            return self
        try:
            schema.model_validate(self.kwargs)
        except ValidationError as error:
            known = ", ".join(ARCH_KWARGS[self.arch]) or "none"
            details = []
            for item in error.errors():
                if item["type"] == "extra_forbidden":
                    message = f"{self.arch} takes no argument {item['loc'][0]!r}; it takes: {known}"
                else:
                    message = f"{self.arch} argument: {item['msg']}"
                details.append(
                    InitErrorDetails(
                        type=PydanticCustomError("model_kwargs", message),
                        loc=("kwargs", *item["loc"]),
                        input=item.get("input"),
                    )
                )
            raise ValidationError.from_exception_data(type(self).__name__, details) from None
        return self


class DatasetSpec(_Strict):
    kind: Literal["digits", "synthetic", "mnist1d", "image_folder", "cifar", "npz", "text"]
    path: str | None = Field(
        default=None,
        description=(
            "For image_folder, cifar and npz: inside a configured data root. For text: a UTF-8 "
            "file inside a data root, or none for the built-in corpus (the Python standard "
            "library's sources)."
        ),
    )
    image_size: int | None = Field(
        default=None, ge=4, le=1024, description="Resize images to this side (file datasets)."
    )
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = Field(
        default=0, ge=0, le=MAX_SEED, description="Seed of the train/validation split."
    )
    num_samples: int | None = Field(
        default=None,
        ge=20,
        le=10_000_000,
        description=(
            "synthetic: number of images (default 2000); mnist1d: number of sequences, a multiple "
            f"of 10 up to {MNIST1D_MAX_SAMPLES} (default 5000, the published dataset's size)."
        ),
    )
    num_classes: int = Field(
        default=10, ge=2, le=100_000, description="synthetic: classes (mnist1d: always 10)."
    )
    context_length: int | None = Field(
        default=None,
        ge=1,
        le=TEXT_MAX_CONTEXT,
        description=f"text: characters per training window (default {TEXT_DEFAULT_CONTEXT}).",
    )
    max_chars: int | None = Field(
        default=None,
        ge=1_000,
        le=TEXT_MAX_CHARS,
        description=(
            f"text: characters read at most, from the start (default {TEXT_DEFAULT_MAX_CHARS:,})."
        ),
    )

    @model_validator(mode="after")
    def _path_matches_kind(self) -> DatasetSpec:
        if self.kind in FILE_DATASETS and not self.path:
            raise ValueError(f"dataset kind {self.kind!r} needs a path")
        if self.kind not in PATH_DATASETS and self.path:
            raise ValueError(f"dataset kind {self.kind!r} takes no path")
        return self

    @model_validator(mode="after")
    def _text_settings(self) -> DatasetSpec:
        text = self.kind == "text"
        for name in ("context_length", "max_chars"):
            if not text and getattr(self, name) is not None:
                raise _located(name, f"{name} applies to dataset kind 'text' only")
        if text and self.image_size is not None:
            raise _located("image_size", "dataset kind 'text' holds characters; no image_size")
        if text and self.num_samples is not None:
            raise _located(
                "num_samples", "dataset kind 'text' has as many windows as its text holds"
            )
        return self

    @property
    def context(self) -> int:
        """text: ``context_length`` or its default."""
        return self.context_length or TEXT_DEFAULT_CONTEXT

    @property
    def chars(self) -> int:
        """text: ``max_chars`` or its default."""
        return self.max_chars or TEXT_DEFAULT_MAX_CHARS

    @model_validator(mode="after")
    def _mnist1d_settings(self) -> DatasetSpec:
        if self.kind != "mnist1d":
            return self
        if self.image_size is not None:
            raise ValueError("dataset kind 'mnist1d' has sequences of length 40; no image_size")
        if self.num_classes != MNIST1D_CLASSES:
            raise ValueError(f"dataset kind 'mnist1d' has {MNIST1D_CLASSES} classes")
        n = self.samples
        if n % MNIST1D_CLASSES or n > MNIST1D_MAX_SAMPLES:
            raise ValueError(
                f"mnist1d num_samples must be a multiple of {MNIST1D_CLASSES} (the same number "
                f"per class) and at most {MNIST1D_MAX_SAMPLES}, got {n}"
            )
        return self

    @property
    def samples(self) -> int:
        """``num_samples``, or the kind's default (synthetic 2000, mnist1d 5000)."""
        if self.num_samples is not None:
            return self.num_samples
        return DEFAULT_NUM_SAMPLES.get(self.kind, 2000)


class TrainingSpec(_Strict):
    epochs: int = Field(default=12, ge=1, le=10_000, description="Budget per trial.")
    batch_size: int = Field(default=32, ge=1, le=65_536)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(
        default=0.1, gt=0.0, le=MAX_LR, description="Base learning rate, for batch_size."
    )
    lr_scaling: LrScaling = Field(
        default="linear",
        description=(
            "How a trial's learning rate follows its batch size b: linear, lr * b / batch_size "
            "(Goyal et al. 2017); sqrt, lr * sqrt(b / batch_size); none, lr at every batch size."
        ),
    )
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=5e-4, ge=0.0, le=1.0)
    lr_schedule: Literal["cosine", "onecycle", "step", "constant"] = "onecycle"
    amp: bool = Field(default=False, description="Mixed precision (CUDA only; ignored on CPU).")
    compile: bool = Field(
        default=False,
        description=(
            "Compile each trial's model with torch.compile (inductor). Compilation takes a while "
            "per trial and again when layers become fixed; without a working compiler the trial "
            "trains eagerly and says so."
        ),
    )
    ratio_lr_mult: float = Field(default=1.0, gt=0.0, le=100.0)
    ratio_weight_decay: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Weight decay on SN logits (papers: 0)."
    )
    grad_clip: float | None = Field(
        default=1.0, gt=0.0, description="Gradient-norm clip of the SN logits (SSN: 1)."
    )


class SparsitySpec(_Strict):
    method: Literal["sparsestmax", "temperature", "none"] = "sparsestmax"
    start: float = Field(default=0.0, ge=0.0, le=1.0, description="Fraction of the budget.")
    end: float = Field(default=0.6, gt=0.0, le=1.0, description="All layers one-hot by then.")

    @model_validator(mode="after")
    def _ordered(self) -> SparsitySpec:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        return self


class StopWhenStable(_Strict):
    enabled: bool = True
    patience: int = Field(
        default=2, ge=1, le=10_000, description="Evaluations with every layer fixed and unchanged."
    )


class TrialsSpec(_Strict):
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=MAX_LIST
    )
    batch_sizes: list[int] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_LIST,
        description="Default: [training.batch_size].",
    )
    lrs: list[float] | None = Field(
        default=None, min_length=1, max_length=MAX_LIST, description="Default: [training.lr]."
    )

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, values: list[int]) -> list[int]:
        _no_duplicates(values, "seeds")
        return values

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, values: list[int] | None) -> list[int] | None:
        if values is not None and any(not 1 <= v <= 65_536 for v in values):
            raise ValueError("batch sizes must be between 1 and 65536")
        _no_duplicates(values, "batch sizes")
        return values

    @field_validator("lrs")
    @classmethod
    def _positive_lrs(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and any(not (v > 0 and math.isfinite(v)) for v in values):
            raise ValueError("learning rates must be finite and > 0")
        _no_duplicates(values, "learning rates")
        return values


class SearchSpec(_Strict):
    pool: list[PoolMember] = Field(
        default_factory=lambda: ["in", "ln", "bn"],
        min_length=1,
        description=(
            "The members each SN layer mixes: statistics members in, ln, bn, gn, rms (at least "
            "one) and point-wise members dyt, none (mixed at the output; opt-in: each keeps its "
            "own output per layer). Which ones a model accepts depends on its layout."
        ),
    )
    tied: bool = False
    sparsity: SparsitySpec = Field(default_factory=SparsitySpec)
    stop_when_stable: StopWhenStable = Field(default_factory=StopWhenStable)
    trials: TrialsSpec = Field(default_factory=TrialsSpec)
    scheduler: Literal["none", "asha"] = "none"
    target_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=65_536,
        description="Batch size the recommendation is for (default: largest).",
    )

    @field_validator("pool")
    @classmethod
    def _unique_pool(cls, pool: list[str]) -> list[str]:
        if len(set(pool)) != len(pool):
            raise ValueError(f"pool {pool} names a normalizer twice")
        if not any(member in STATISTIC_MEMBERS for member in pool):
            raise ValueError(
                f"pool {pool} has no statistics member; add one of {list(STATISTIC_MEMBERS)} "
                f"(the point-wise members {list(POINTWISE_MEMBERS)} mix with its output)"
            )
        return pool


class VerifySpec(_Strict):
    enabled: bool = True
    epochs: int | None = Field(
        default=None, ge=1, le=10_000, description="Default: training.epochs."
    )
    baselines: list[PoolMember] = Field(
        default_factory=lambda: ["bn", "gn"],
        description="Uniform models trained against the plan: one member in every norm layer.",
    )

    @field_validator("baselines")
    @classmethod
    def _unique_baselines(cls, baselines: list[str]) -> list[str]:
        _no_duplicates(baselines, "baselines")
        return baselines


class ExportSpec(_Strict):
    """How the job's checkpoint (the configuration the verdict chose) is written."""

    fold_batchnorm: bool = Field(
        default=False,
        strict=True,
        description=(
            "Fold every BatchNorm that directly follows a convolution into it (the inference "
            "form) before saving the checkpoint; its metadata says whether it was folded. A "
            "model torch.fx cannot trace (e.g. mlp) is saved unfolded, with the reason."
        ),
    )


# Ray counts resources in units of 1/10000 (``ray._raylet.RESOURCE_UNIT_SCALING``).
RESOURCE_PRECISION = 1e-4


class ResourcesSpec(_Strict):
    cpus_per_trial: float = Field(default=1.0, gt=0.0, le=256)
    gpus_per_trial: float | None = Field(
        default=None,
        ge=0.0,
        le=16,
        description="GPUs per trial; default: 1 when the Ray cluster has GPUs, else 0. A "
        "fraction packs trials onto one GPU (0.25: four trials share each GPU, 0.5: two); above "
        "1 it must be a whole number (Ray gives a trial either a share of one GPU or whole "
        "GPUs).",
    )

    @field_validator("gpus_per_trial")
    @classmethod
    def _gpus_ray_can_place(cls, value: float | None) -> float | None:
        """What Ray cannot schedule is refused here (a 422 naming the field), not left pending
        forever: 1.5 GPUs (a trial gets a share of one GPU, or whole GPUs), or a share finer
        than Ray's resource unit."""
        if value is None:
            return value
        if value > 1 and not float(value).is_integer():
            raise ValueError(
                f"{value:g} GPUs per trial: above 1 it must be a whole number (a fraction such "
                "as 0.25 or 0.5 shares one GPU between trials)"
            )
        if value < 1 and abs(round(value / RESOURCE_PRECISION) * RESOURCE_PRECISION - value) > (
            RESOURCE_PRECISION / 100
        ):
            raise ValueError(
                f"{value:g} GPUs per trial: a share of a GPU is counted in steps of "
                f"{RESOURCE_PRECISION:g}"
            )
        return value


class JobSpec(_Strict):
    """A normalization-search job."""

    version: Literal[1] = SPEC_VERSION
    model: ModelSpec
    dataset: DatasetSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    verify: VerifySpec = Field(default_factory=VerifySpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @model_validator(mode="before")
    @classmethod
    def _layout_defaults(cls, data: Any) -> Any:
        """The fields a spec leaves out that its model's layout decides (``LAYOUT_DEFAULTS``)."""
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            return data
        arch = data["model"].get("arch")
        layout = ARCH_LAYOUTS.get(arch.strip().lower()) if isinstance(arch, str) else None
        if layout is None:
            return data
        data = dict(data)
        for (section, name), default in LAYOUT_DEFAULTS[layout].items():
            part = data.get(section)
            if part is None or (isinstance(part, dict) and name not in part):
                data[section] = {**(part or {}), name: copy.deepcopy(default)}
        return data

    @model_validator(mode="after")
    def _members_the_layout_computes(self) -> JobSpec:
        """Every pool member and baseline one the model's layout can compute (``ARCH_LAYOUTS``,
        ``LAYOUT_MEMBERS``); each refusal located at its list item, so the 422 names it."""
        layout = ARCH_LAYOUTS.get(self.model.arch)
        if layout is None:
            return self
        allowed = LAYOUT_MEMBERS[layout]
        details = []
        for where, members in (
            (("search", "pool"), self.search.pool),
            (("verify", "baselines"), self.verify.baselines),
        ):
            for index, member in enumerate(members):
                if member in allowed:
                    continue
                message = (
                    f"{self.model.arch} has {layout} layers, which cannot compute {member!r}; "
                    f"choose from {list(allowed)}"
                )
                details.append(
                    InitErrorDetails(
                        type=PydanticCustomError("pool_member_unsupported", message),
                        loc=(*where, index),
                        input=member,
                    )
                )
        if details:
            raise ValidationError.from_exception_data(type(self).__name__, details)
        return self

    @model_validator(mode="after")
    def _model_fits_data(self) -> JobSpec:
        """A language model trains on text and text trains a language model (a classifier has
        no next-character target); a transformer mixes and compares only norms it computes."""
        arch, kind = self.model.arch, self.dataset.kind
        if (arch in LANGUAGE_MODELS) != (kind == "text"):
            raise _located(
                "kind",
                f"model {arch!r} cannot train on dataset kind {kind!r}: the language models "
                f"({', '.join(LANGUAGE_MODELS)}) train on kind 'text', and only they do",
                "dataset",
            )
        context = self.model.kwargs.get("context")
        if arch in LANGUAGE_MODELS and isinstance(context, int) and context < self.dataset.context:
            raise _located(
                "context",
                f"{arch} context {context} is shorter than dataset.context_length "
                f"{self.dataset.context}; leave it out to take the dataset's",
                "model",
                "kwargs",
            )
        members = TOKEN_POOL_MEMBERS.get(arch)
        if members is None:
            return self
        statistics = [m for m in self.search.pool if m in STATISTIC_MEMBERS]
        if not self.search.tied and len(statistics) > 1:
            raise _located(
                "tied",
                f"model {arch!r} mixes {statistics} with untied mean and variance ratios, but a "
                "token layer finalizes only to one normalizer for both (nn.LayerNorm, nn.RMSNorm):"
                " leave search.tied out or set it true",
                "search",
            )
        refused = [m for m in self.search.pool if m not in members]
        if refused:
            why = " (causal: per-token statistics only)" if arch in LANGUAGE_MODELS else ""
            raise _located(
                "pool",
                f"model {arch!r} cannot mix {refused} over its tokens{why}; it takes: "
                f"{', '.join(members)}",
                "search",
            )
        baselines = token_baselines(arch)
        refused = [b for b in self.verify.baselines if b not in baselines]
        if refused:
            raise _located(
                "baselines",
                f"model {arch!r} has no uniform {refused} baseline (no token form); it takes: "
                f"{', '.join(baselines)}",
                "verify",
            )
        return self

    @property
    def metric(self) -> str:
        """What the job's trials are judged by: "perplexity" (lower is better) for a language
        model, "accuracy" (higher is better) for a classifier (``worker.metrics``)."""
        return metric_of(self.model.arch)

    @model_validator(mode="after")
    def _target_batch_in_trials(self) -> JobSpec:
        target = self.search.target_batch_size
        if target is not None and target not in self.batch_sizes:
            raise ValueError(
                f"search.target_batch_size {target} is not among the trial batch sizes "
                f"{self.batch_sizes}"
            )
        return self

    @model_validator(mode="after")
    def _effective_lrs_bounded(self) -> JobSpec:
        """Every trial's effective lr (the verification's are among them: the target batch size
        is a trial batch size) within ``MAX_LR``. The error is located at ``training.lr_scaling``
        (or, unscaled, at the lr that is too large), so the API and the UI name that field."""
        scaling = self.training.lr_scaling
        for batch in self.batch_sizes:
            for lr in self.lrs:
                effective = self.effective_lr(batch, lr)
                if effective <= MAX_LR:
                    continue
                if scaling != "none":
                    loc: tuple[str, ...] = ("training", "lr_scaling")
                    why = (
                        f"training.lr_scaling {scaling!r} relative to training.batch_size "
                        f"{self.training.batch_size}"
                    )
                else:
                    loc = (
                        ("search", "trials", "lrs")
                        if self.search.trials.lrs
                        else ("training", "lr")
                    )
                    why = "training.lr_scaling 'none'"
                message = (
                    f"the trial at batch size {batch} with lr {lr:g} would train with an "
                    f"effective lr of {effective:g} ({why}), above the bound of {MAX_LR:g}; "
                    "lower the lr (training.lr, search.trials.lrs), change the batch sizes "
                    "(search.trials.batch_sizes, training.batch_size) or training.lr_scaling"
                )
                # A ValidationError raised here keeps its location (a ValueError's would be the
                # whole spec's).
                raise ValidationError.from_exception_data(
                    type(self).__name__,
                    [
                        InitErrorDetails(
                            type=PydanticCustomError("effective_lr_too_large", message),
                            loc=loc,
                            input=effective,
                        )
                    ],
                )
        return self

    def effective_lr(self, batch_size: int, lr: float) -> float:
        """The learning rate a trial at ``batch_size`` with base ``lr`` trains with
        (``training.lr_scaling`` relative to ``training.batch_size``)."""
        training = self.training
        return scaled_lr(lr, batch_size, training.batch_size, training.lr_scaling)

    @property
    def batch_sizes(self) -> list[int]:
        return list(self.search.trials.batch_sizes or [self.training.batch_size])

    @property
    def lrs(self) -> list[float]:
        return list(self.search.trials.lrs or [self.training.lr])

    @property
    def search_trial_count(self) -> int:
        """Trials of the search grid: seeds x batch sizes x learning rates."""
        return len(self.search.trials.seeds) * len(self.batch_sizes) * len(self.lrs)

    @property
    def verification_trial_count(self) -> int:
        """Trials of the verification: the plan and each baseline, for every seed (0: off)."""
        if not self.verify.enabled:
            return 0
        return (1 + len(self.verify.baselines)) * len(self.search.trials.seeds)

    @property
    def trial_count(self) -> int:
        return self.search_trial_count + self.verification_trial_count

    @property
    def trial_epochs(self) -> int:
        """Epochs of all trials at most (early stopping only makes it smaller)."""
        return (
            self.search_trial_count * self.training.epochs
            + self.verification_trial_count * self.verify_epochs
        )

    @property
    def target_batch_size(self) -> int:
        return self.search.target_batch_size or max(self.batch_sizes)

    @property
    def verify_epochs(self) -> int:
        return self.verify.epochs or self.training.epochs


# The dataset fields that mean something for some kinds only: the kinds each applies to.
DATASET_FIELD_KINDS: dict[str, tuple[str, ...]] = {
    "path": PATH_DATASETS,
    "context_length": ("text",),
    "max_chars": ("text",),
    "image_size": ("digits", "synthetic", *FILE_DATASETS),  # mnist1d: sequences, no images
    "num_samples": ("synthetic", "mnist1d"),
    "num_classes": ("synthetic",),
}


def applicable_dump(spec: JobSpec) -> dict[str, Any]:
    """The spec with every default filled in (JSON-ready), less the dataset fields that do not
    apply to its kind (a template must not offer a digits job ``num_classes``)."""
    dump = spec.model_dump(mode="json")
    kind = spec.dataset.kind
    for name, kinds in DATASET_FIELD_KINDS.items():
        if kind not in kinds:
            dump["dataset"].pop(name, None)
    return dump


def job_spec_schema() -> dict[str, Any]:
    """JSON Schema of the job spec (for the UI's form and the docs)."""
    return JobSpec.model_json_schema()


# pydantic prefixes the message of a validator's ValueError or assert with the exception's kind;
# a user reads the reason only.
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def error_message(item: dict[str, Any]) -> str:
    """A pydantic error item's message without pydantic's "Value error, " prefix."""
    message = str(item.get("msg", ""))
    for prefix in _PYDANTIC_PREFIXES:
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def format_validation_error(error) -> list[str]:
    """One line per problem of a pydantic ValidationError: ``field.path: reason``."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(spec)"
        lines.append(f"{where}: {error_message(item)}")
    return lines
