"""The normalizers Switchable Normalization mixes, named once for every layer of the project.

Torch-free (stdlib only): ``service`` (the job spec, the ratio history) and ``api`` (the UI's
vocabulary) import this module without loading torch, because ``sn_core/__init__`` imports its
torch submodules only when one of their names is first used.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "DEFAULT_DYT_ALPHA0",
    "MEMBER_LABELS",
    "NORMALIZERS",
    "NORMALIZER_LABELS",
    "OUTPUT_CHOICES",
    "POINTWISE_MEMBERS",
    "POOL_MEMBERS",
    "STATISTIC_MEMBERS",
    "Normalizer",
]

# Instance, layer, batch and group normalization; this order is the order of a layer's ratios.
Normalizer = Literal["in", "ln", "bn", "gn"]
NORMALIZERS: tuple[Normalizer, ...] = get_args(Normalizer)
# How people read them (tables, charts, the UI).
NORMALIZER_LABELS: dict[Normalizer, str] = {name: name.upper() for name in NORMALIZERS}

# What sn_core's layers can mix. Statistics members are normalizers whose mean and variance a
# layer mixes (its ``mean`` and ``var`` ratios): the four above plus "rms" (RMSNorm's uncentred
# statistic, per sample over LN's scope). Point-wise members are output functions mixed with the
# normalized output by a layer's third ratio vector, ``output``, over ``OUTPUT_CHOICES``
# ("norm": the statistics mixture, then each point-wise member in the pool): "dyt" is Dynamic
# Tanh, gamma * tanh(alpha * x) + beta; "none" is the identity. Kept apart from ``Normalizer``
# on purpose: the service's job spec knows which members each model family can compute.
STATISTIC_MEMBERS: tuple[str, ...] = (*NORMALIZERS, "rms")
POINTWISE_MEMBERS: tuple[str, ...] = ("dyt", "none")
POOL_MEMBERS: tuple[str, ...] = (*STATISTIC_MEMBERS, *POINTWISE_MEMBERS)
# DyT's initial alpha when a job does not set one (``model.dyt_alpha0``): Zhu et al.'s default.
# Here, torch-free, so the job spec's field defaults to the value sn_core's layers use.
DEFAULT_DYT_ALPHA0 = 0.5
#: The output ratios' names: the normalized output first, then the point-wise members.
OUTPUT_CHOICES: tuple[str, ...] = ("norm", *POINTWISE_MEMBERS)
MEMBER_LABELS: dict[str, str] = {
    **NORMALIZER_LABELS, "rms": "RMS", "dyt": "DyT", "none": "none", "norm": "norm",
}  # fmt: skip
