"""Path confinement: dataset files must resolve inside one of the configured data roots.

Shared by the API (which rejects a job whose dataset path is outside the roots before queueing
it) and the worker's dataset readers (which check every file they open). The roots are handed in
by the caller (entry points read NORMSEARCH_DATA_ROOTS from the settings); this module never
reads the environment. Confinement is checked on the real path
(symlinks followed, ``..`` collapsed) before existence, so a job cannot probe for files outside.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from service.errors import InvalidInput

ROOTS_SETTING = "NORMSEARCH_DATA_ROOTS"


def _real(path: Path, shown: str) -> Path:
    try:
        return Path(os.path.realpath(path))
    except (OSError, RuntimeError, ValueError) as error:
        raise InvalidInput(
            f"dataset path {shown!r} cannot be resolved: {error}", field="dataset.path", path=shown
        ) from None


def resolved_roots(data_roots: Sequence[Path | str]) -> list[Path]:
    """The real paths of the configured roots; an empty list is an error."""
    roots = [_real(Path(root), str(root)) for root in data_roots]
    if not roots:
        raise InvalidInput(
            f"no data roots are configured ({ROOTS_SETTING}); file datasets cannot be read",
            field="dataset.path",
        )
    return roots


def _outside(shown: str, roots: list[Path]) -> InvalidInput:
    listed = ", ".join(str(root) for root in roots)
    return InvalidInput(
        f"dataset path {shown!r} is outside the configured data roots ({ROOTS_SETTING}): {listed}",
        field="dataset.path",
        path=shown,
    )


def ensure_inside(path: Path, roots: list[Path], shown: str | None = None) -> Path:
    """The real path of ``path``, which must lie inside one of the (resolved) ``roots``."""
    shown = str(path) if shown is None else shown
    real = _real(path, shown)
    if not any(real.is_relative_to(root) for root in roots):
        raise _outside(shown, roots)
    return real


def resolve_data_path(path: str, data_roots: Sequence[Path | str]) -> Path:
    """Resolve a user-given dataset path to a real path inside the data roots.

    Relative paths are tried against each root in order (the first that exists wins); absolute
    paths are taken as given. Raises InvalidInput (HTTP 422) when the path is empty, resolves
    outside every root (symlinks followed, ``..`` collapsed), or does not exist.
    """
    if not isinstance(path, str) or not path.strip():
        raise InvalidInput("dataset path is empty", field="dataset.path")
    if "\x00" in path:
        raise InvalidInput(f"dataset path {path!r} contains a NUL byte", field="dataset.path")
    roots = resolved_roots(data_roots)
    given = Path(path)
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    for candidate in candidates:
        real = ensure_inside(candidate, roots, path)
        if real.exists():
            return real
    searched = ", ".join(str(candidate) for candidate in candidates)
    raise InvalidInput(
        f"dataset path {path!r} does not exist (looked for: {searched})",
        field="dataset.path",
        path=path,
    )
