"""The normalizers Switchable Normalization mixes, named once for every layer of the project.

Torch-free (stdlib only): ``service`` (the job spec, the ratio history) and ``api`` (the UI's
vocabulary) import this module without loading torch, because ``sn_core/__init__`` imports its
torch submodules only when one of their names is first used.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["NORMALIZERS", "NORMALIZER_LABELS", "Normalizer"]

# Instance, layer, batch and group normalization; this order is the order of a layer's ratios.
Normalizer = Literal["in", "ln", "bn", "gn"]
NORMALIZERS: tuple[Normalizer, ...] = get_args(Normalizer)
# How people read them (tables, charts, the UI).
NORMALIZER_LABELS: dict[Normalizer, str] = {name: name.upper() for name in NORMALIZERS}
