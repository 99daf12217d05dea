"""Character-level text: a UTF-8 file from the data roots, or the built-in corpus.

The built-in corpus is the running interpreter's own standard library: its top-level ``*.py``
files (``sysconfig.get_paths()["stdlib"]``) in sorted order, so every machine has it without a
download, and the same Python version gives the same text. The text (its first ``max_chars``
characters) becomes a character vocabulary (sorted distinct characters, ids 0..V-1) and
non-overlapping windows of ``context_length + 1`` characters; each window is one sample, inputs
its first ``context_length`` ids and targets the next character at every position. A seeded
permutation of the windows takes ``round(val_fraction * windows)`` of them for validation: the
same spec gives the same tensors.
"""

from __future__ import annotations

import platform
import sysconfig
from pathlib import Path

import numpy as np
import torch

from service.spec import DatasetSpec

from .base import DatasetError, LoadedDataset, check_size

BUILTIN_CORPUS = "python-stdlib"


def stdlib_files() -> list[Path]:
    """The built-in corpus's files: the standard library's top-level modules, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise DatasetError(
            f"the built-in text corpus found no *.py file in the standard library at {root}",
            field="dataset.path",
        )
    return files


def stdlib_text(max_chars: int) -> str:
    """The first ``max_chars`` characters of the built-in corpus (files joined by a newline)."""
    parts: list[str] = []
    size = 0
    for path in stdlib_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text) + 1
        if size >= max_chars:
            break
    return "\n".join(parts)[:max_chars]


def read_text(path: Path, max_chars: int) -> str:
    """The first ``max_chars`` characters of a UTF-8 file (a DatasetError naming the path if it
    is no such file)."""
    if not path.is_file():
        raise DatasetError(f"text file {path} is not a file", field="dataset.path", path=str(path))
    try:
        with open(path, encoding="utf-8", errors="strict") as file:
            return file.read(max_chars)
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"text file {path} is not UTF-8 ({error.reason} at byte {error.start})",
            field="dataset.path",
            path=str(path),
        ) from None
    except OSError as error:
        raise DatasetError(
            f"text file {path} cannot be read ({error})", field="dataset.path", path=str(path)
        ) from None


def text_windows(
    text: str, context: int, val_fraction: float, seed: int, name: str
) -> LoadedDataset:
    """``text`` as a LoadedDataset of next-character windows (module docstring)."""
    vocab = sorted(set(text))
    if len(vocab) < 2:
        raise DatasetError(f"{name}: the text has {len(vocab)} distinct character(s); need 2")
    windows = (len(text) - 1) // context
    if windows < 2:
        raise DatasetError(
            f"{name}: {len(text)} characters make {windows} window(s) of context_length "
            f"{context}; a train/validation split needs at least 2 (a longer text, a larger "
            "max_chars or a shorter context_length)",
            field="dataset.context_length",
        )
    check_size(windows, 2 * context, name, field="dataset.max_chars")
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = torch.tensor([index[ch] for ch in text[: windows * context + 1]], dtype=torch.int64)
    x = ids[:-1].view(windows, context)
    y = ids[1:].view(windows, context)
    order = torch.from_numpy(np.random.default_rng((seed, 0x7E47)).permutation(windows))
    n_val = min(max(int(np.floor(windows * val_fraction + 0.5)), 1), windows - 1)
    val, train = order[:n_val], order[n_val:]
    return LoadedDataset(
        x_train=x[train].contiguous(),
        y_train=y[train].contiguous(),
        x_val=x[val].contiguous(),
        y_val=y[val].contiguous(),
        num_classes=len(vocab),
        in_channels=1,
        image_size=None,
        name=name,
        class_names=vocab,
    )


def load_text(spec: DatasetSpec, path: Path | None) -> LoadedDataset:
    """The ``text`` kind: ``path`` (already confined to the data roots) or, None, the built-in
    corpus."""
    if path is None:
        text = stdlib_text(spec.chars)
        name = f"text:{BUILTIN_CORPUS}-{platform.python_version()}"
    else:
        text = read_text(path, spec.chars)
        name = f"text:{path.name}"
    return text_windows(text, spec.context, spec.val_fraction, spec.seed, name)
