"""The size of the model a job would train, measured before anything is allocated.

The API cannot import torch, so it checks the builder's argument names and types only; here the
model is built on torch's ``meta`` device (shapes without storage: a 40000 x 40000 MLP costs
nothing) and run once on a meta batch of the dataset's input shape at the job's largest batch
size. Its parameter count is exact; its activation memory is an estimate: the float32 outputs of
every leaf module but the in-place ones (what autograd keeps for the backward pass, which
dominates a training step's memory). Switchable Normalization mixes the normalizers' statistics,
not their outputs, so a norm layer counts once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from service.limits import ModelLimits, env_var
from service.spec import JobSpec

from .models import zoo_model

BYTES_PER_VALUE = 4  # float32
MIB = 1 << 20


@dataclass(frozen=True)
class ModelSize:
    params: int
    activation_bytes: int | None  # None: the model does not run on the meta device
    batch_size: int

    @property
    def activation_mib(self) -> float | None:
        return None if self.activation_bytes is None else self.activation_bytes / MIB


def measure_model(
    spec: JobSpec,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    in_channels: int,
    input_dtype: torch.dtype = torch.float32,
) -> ModelSize:
    """Parameters and estimated activation memory of one training step of ``spec``'s model at
    its largest batch size (``input_dtype``: int64 for a language model's character ids).
    Raises what the builder or the forward pass raises (a bad argument, an input the model does
    not take)."""
    batch = max(spec.batch_sizes)
    with torch.device("meta"):
        model = zoo_model(spec, num_classes, in_channels)
    params = sum(p.numel() for p in model.parameters())
    return ModelSize(params, _activation_bytes(model, batch, input_shape, input_dtype), batch)


def _activation_bytes(
    model: nn.Module,
    batch: int,
    input_shape: tuple[int, ...],
    input_dtype: torch.dtype = torch.float32,
) -> int | None:
    """Bytes of the estimate in the module docstring; None when the model does not run on the
    meta device (an operation without a meta kernel): the real build then says what is wrong,
    or the model trains unmeasured."""
    values = 0

    def count(_module: nn.Module, _inputs, output) -> None:
        nonlocal values
        outputs = output if isinstance(output, tuple | list) else (output,)
        values += sum(o.numel() for o in outputs if isinstance(o, torch.Tensor))

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves if not getattr(m, "inplace", False)]
    try:
        model.train()
        model(torch.empty((batch, *input_shape), device="meta", dtype=input_dtype))
    except Exception:  # noqa: BLE001 - an estimate only: the real build reports the error
        return None
    finally:
        for hook in hooks:
            hook.remove()
    return values * BYTES_PER_VALUE


def size_problems(size: ModelSize, limits: ModelLimits) -> list[str]:
    """Each bound of ``limits`` that ``size`` exceeds, as a sentence naming its variable."""
    problems = []
    if size.params > limits.max_params:
        problems.append(
            f"it has {size.params:,} parameters, over the limit of {limits.max_params:,} "
            f"({env_var('max_model_params')})"
        )
    mib = size.activation_mib
    if mib is not None and mib > limits.max_activation_mib:
        problems.append(
            f"one training step at batch size {size.batch_size} needs about "
            f"{mib:,.0f} MiB of activations, over the limit of "
            f"{limits.max_activation_mib:,} MiB ({env_var('max_activation_mib')})"
        )
    return problems
