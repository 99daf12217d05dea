"""sn_core: a fast, exact Switchable Normalization library (pure PyTorch).

Layers (``SwitchNorm1d/2d/3d``, ``SwitchNormTokens`` for (N, T, C)), sparsity (``sparsestmax``,
``SparsityController``), surgery (``convert_to_switchnorm``), inspection (``switch_ratios``,
``ratio_parameters``), plans and finalized checkpoints (``NormalizerPlan``, ``finalize``,
``load_finalized``) and a model zoo (``build_model``). Imports torch and numpy only (plus
safetensors / PyYAML inside the functions that read and write those formats); never reads
environment variables.

The names below are imported on first use (``sn_core.finalize``, ``from sn_core import X``), so
``import sn_core.vocabulary`` (the normalizer names the service and the API share) loads no torch.
"""

import sys as _sys
from importlib import import_module as _import_module
from types import ModuleType as _ModuleType

__version__ = "0.1.0"

# Public name -> the submodule that defines it.
_EXPORTS = {
    "NORMALIZERS": "vocabulary",
    "LayerChoice": "plan",
    "MixtureNorm": "layers",
    "NormalizerPlan": "plan",
    "RadiusSchedule": "schedules",
    "RatioBank": "ratio_bank",
    "SelectedNorm": "selected",
    "SparsityController": "schedules",
    "SparsityStatus": "schedules",
    "SwitchNorm": "layers",
    "SwitchNorm1d": "layers",
    "SwitchNorm2d": "layers",
    "SwitchNorm3d": "layers",
    "SwitchNormTokens": "tokens",
    "POOL_MEMBERS": "vocabulary",
    "STATISTIC_MEMBERS": "vocabulary",
    "POINTWISE_MEMBERS": "vocabulary",
    "OUTPUT_CHOICES": "vocabulary",
    "RMSNormWithBias": "finalize",
    "DynamicTanh": "pointwise",
    "dynamic_tanh": "pointwise",
    "pointwise_norm": "finalize",
    "token_norm": "finalize",
    "padding_mask": "tokens",
    "TemperatureSchedule": "schedules",
    "apply_plan": "finalize",
    "build_model": "zoo",
    "clip_ratio_grad_norm": "inspect",
    "concrete_norm": "finalize",
    "convert_to_switchnorm": "surgery",
    "describe_norm": "finalize",
    "finalize": "finalize",
    "fold_batchnorm": "finalize",
    "fraction_fixed": "schedules",
    "list_models": "zoo",
    "load_finalized": "checkpoint",
    "load_reference_state_dict": "compat",
    "onehot_radius": "sparsity",
    "param_groups": "inspect",
    "plan_from_model": "plan",
    "plan_torch_layers": "finalize",
    "ratio_parameters": "inspect",
    "recompute_batch_statistics": "compat",
    "reference_switchnorm": "compat",
    "register_model": "zoo",
    "resolve_norm_layer": "norms",
    "save_finalized": "checkpoint",
    "sparsemax": "sparsity",
    "sparsestmax": "sparsity",
    "switch_layers": "inspect",
    "switch_norm": "functional",
    "switch_ratios": "inspect",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """A public name (imported from its submodule on first use), or a submodule."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(_import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name.startswith("__"):  # e.g. __wrapped__ probes: never a submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return _import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise  # the submodule exists but something it imports does not
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(_ModuleType):
    """Keeps a public name from being shadowed by the submodule of the same name.

    Importing a submodule sets it as an attribute of the package; ``sn_core.finalize`` must stay
    the function even when ``sn_core.finalize`` the module is first imported by another route
    (e.g. by ``sn_core.checkpoint``). The name then resolves through ``__getattr__``.
    """

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, _ModuleType) and name in _EXPORTS:
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
