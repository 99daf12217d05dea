"""sn_core: a fast, exact Switchable Normalization library (pure PyTorch).

Layers (``SwitchNorm1d/2d/3d``), sparsity (``sparsestmax``, ``SparsityController``), surgery
(``convert_to_switchnorm``), inspection (``switch_ratios``, ``ratio_parameters``), plans and
finalized checkpoints (``NormalizerPlan``, ``finalize``, ``load_finalized``) and a model zoo
(``build_model``). Imports torch and numpy only (plus safetensors / PyYAML inside the functions
that read and write those formats); never reads environment variables.
"""

from .checkpoint import load_finalized, save_finalized
from .compat import load_reference_state_dict, recompute_batch_statistics, reference_switchnorm
from .finalize import apply_plan, concrete_norm, finalize, fold_batchnorm
from .functional import NORMALIZERS, switch_norm
from .inspect import (
    clip_ratio_grad_norm,
    param_groups,
    ratio_parameters,
    switch_layers,
    switch_ratios,
)
from .layers import MixtureNorm, SwitchNorm, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d
from .norms import resolve_norm_layer
from .plan import LayerChoice, NormalizerPlan, plan_from_model
from .schedules import (
    RadiusSchedule,
    SparsityController,
    SparsityStatus,
    TemperatureSchedule,
    fraction_fixed,
)
from .selected import SelectedNorm
from .sparsity import onehot_radius, sparsemax, sparsestmax
from .surgery import convert_to_switchnorm
from .zoo import build_model, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "NORMALIZERS",
    "LayerChoice",
    "MixtureNorm",
    "NormalizerPlan",
    "RadiusSchedule",
    "SelectedNorm",
    "SparsityController",
    "SparsityStatus",
    "SwitchNorm",
    "SwitchNorm1d",
    "SwitchNorm2d",
    "SwitchNorm3d",
    "TemperatureSchedule",
    "apply_plan",
    "build_model",
    "clip_ratio_grad_norm",
    "concrete_norm",
    "convert_to_switchnorm",
    "finalize",
    "fold_batchnorm",
    "fraction_fixed",
    "list_models",
    "load_finalized",
    "load_reference_state_dict",
    "onehot_radius",
    "param_groups",
    "plan_from_model",
    "ratio_parameters",
    "recompute_batch_statistics",
    "reference_switchnorm",
    "register_model",
    "resolve_norm_layer",
    "save_finalized",
    "sparsemax",
    "sparsestmax",
    "switch_layers",
    "switch_norm",
    "switch_ratios",
]
