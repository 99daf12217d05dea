"""Path confinement for the dataset readers: ``service.paths`` with its errors raised as
``DatasetError`` (the worker's user-facing dataset error)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from service import paths
from service.errors import InvalidInput

from .base import DatasetError

ROOTS_SETTING = paths.ROOTS_SETTING


@contextmanager
def _as_dataset_error():
    try:
        yield
    except InvalidInput as error:
        raise DatasetError(error.message, field=error.field, path=error.path) from None


def resolved_roots(data_roots: Sequence[Path | str]) -> list[Path]:
    with _as_dataset_error():
        return paths.resolved_roots(data_roots)


def ensure_inside(path: Path, roots: list[Path], shown: str | None = None) -> Path:
    with _as_dataset_error():
        return paths.ensure_inside(path, roots, shown)


def resolve_data_path(path: str, data_roots: Sequence[Path | str]) -> Path:
    with _as_dataset_error():
        return paths.resolve_data_path(path, data_roots)
