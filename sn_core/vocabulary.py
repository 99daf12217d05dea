"""The normalizers Switchable Normalization mixes, named once for every layer of the project.

Torch-free (stdlib only): ``service`` (the job spec, the ratio history) and ``api`` (the UI's
vocabulary) import this module without loading torch, because ``sn_core/__init__`` imports its
torch submodules only when one of their names is first used.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["NORMALIZERS", "NORMALIZER_LABELS", "POOL_MEMBERS", "Normalizer"]

# Instance, layer, batch and group normalization; this order is the order of a layer's ratios.
Normalizer = Literal["in", "ln", "bn", "gn"]
NORMALIZERS: tuple[Normalizer, ...] = get_args(Normalizer)
# How people read them (tables, charts, the UI).
NORMALIZER_LABELS: dict[Normalizer, str] = {name: name.upper() for name in NORMALIZERS}

# What sn_core's layers can mix: the normalizers above plus "rms" (RMSNorm's uncentred statistic,
# per sample over LN's scope). Kept apart from ``Normalizer`` on purpose: the service's job spec
# and its per-normalizer ratio columns know only ``NORMALIZERS``, so a job naming "rms" is still
# refused there until the service supports it.
POOL_MEMBERS: tuple[str, ...] = (*NORMALIZERS, "rms")
