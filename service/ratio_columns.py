"""Which ``ratio_snapshots`` column holds which ratio, named once for the recorder, the history
reads, the API and the CSV export.

A layer's ratios (``sn_core.switch_ratios`` shape) are ``{"mean": {member: r}, "var": {...},
"output": {choice: r}}``: ``mean_<member>`` / ``var_<member>`` per statistics member
(``STATISTIC_MEMBERS``), ``out_<choice>`` per output choice (``OUTPUT_CHOICES``; only layers
with point-wise members have them). A member outside a layer's pool is NULL.
"""

from __future__ import annotations

from typing import Any

from sn_core.vocabulary import NORMALIZERS, OUTPUT_CHOICES, STATISTIC_MEMBERS

__all__ = [
    "RATIO_COLUMNS",
    "layer_ratios",
    "ratio_columns",
    "ratio_values",
]

PARTS = ("mean", "var")
_ADDED = tuple(member for member in STATISTIC_MEMBERS if member not in NORMALIZERS)
#: Every ratio column, in the CSV's order: the columns from before rms first (mean_in ...
#: var_gn, where positional readers expect them), then mean_rms, var_rms, out_norm, ...
RATIO_COLUMNS: tuple[str, ...] = (
    *(f"{part}_{member}" for part in PARTS for member in NORMALIZERS),
    *(f"{part}_{member}" for part in PARTS for member in _ADDED),
    *(f"out_{choice}" for choice in OUTPUT_CHOICES),
)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def ratio_columns(ratios: dict[str, Any]) -> dict[str, float | None]:
    """The column values of one layer's ratios (missing members: None)."""
    out: dict[str, float | None] = {}
    for part in PARTS:
        values = ratios.get(part) or {}
        for member in STATISTIC_MEMBERS:
            out[f"{part}_{member}"] = _float_or_none(values.get(member))
    output = ratios.get("output") or {}
    for choice in OUTPUT_CHOICES:
        out[f"out_{choice}"] = _float_or_none(output.get(choice))
    return out


def ratio_values(row: Any) -> list[float | None]:
    """A snapshot's ratio columns in ``RATIO_COLUMNS`` order."""
    return [getattr(row, name) for name in RATIO_COLUMNS]


def layer_ratios(row: Any, *, keep_null_normalizers: bool = False) -> dict[str, Any]:
    """A snapshot's ratios as ``{"mean": {...}, "var": {...}}`` plus ``"output"`` when the row
    has output ratios. Members without a value are left out; with ``keep_null_normalizers`` the
    four original normalizers stay as None (the API's shape since before rms)."""
    out: dict[str, Any] = {}
    for part in PARTS:
        values = {}
        for member in STATISTIC_MEMBERS:
            value = getattr(row, f"{part}_{member}")
            if value is not None or (keep_null_normalizers and member in NORMALIZERS):
                values[member] = value
        out[part] = values
    output = {c: getattr(row, f"out_{c}") for c in OUTPUT_CHOICES}
    if any(value is not None for value in output.values()):
        out["output"] = {c: v for c, v in output.items() if v is not None}
    return out
