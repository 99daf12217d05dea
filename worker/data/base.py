"""What every dataset kind shares: the error type, the loaded dataset, the split and resizing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Refuse datasets whose float32 tensors would exceed this many elements (8 GiB): a clear error
# beats an out-of-memory kill of the worker (e.g. CIFAR resized to 1024 pixels a side).
MAX_ELEMENTS = 2**31


class DatasetError(ValueError):
    """A user-facing dataset problem: the message names the problem and the path or field.

    ``field`` is the job-spec field at fault (e.g. ``dataset.path``) and ``path`` the offending
    file or folder as the user wrote it or as found under it, when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None, path: str | None = None):
        super().__init__(message)
        self.field = field
        self.path = path


@dataclass
class LoadedDataset:
    """A train/validation split held as tensors, ready for the trainable.

    Images are float32 ``N x C x H x W``; sequences (MNIST-1D) float32 ``N x C x L`` and flat
    feature data float32 ``N x F``, both with ``image_size is None`` (flat data: ``in_channels``
    1). Labels are int64 in ``0..num_classes-1``. Text (``worker.data.text``) is int64 ``N x T``
    character ids with int64 ``N x T`` targets (the next character at every position), and
    ``num_classes`` the vocabulary size.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int | None
    name: str
    class_names: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Sizes, classes and input shape, JSON-ready (for job records and logs)."""
        return {
            "name": self.name,
            "num_train": len(self.x_train),
            "num_val": len(self.x_val),
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "input_shape": list(self.x_train.shape[1:]),
        }


def check_size(count: int, per_item: int, what: str, *, field: str | None = None) -> None:
    """Raise DatasetError if ``count * per_item`` float32 values would exceed MAX_ELEMENTS."""
    total = int(count) * int(per_item)
    if total > MAX_ELEMENTS:
        raise DatasetError(
            f"{what} would need {total:,} float32 values ({total * 4 / 2**30:.1f} GiB), more than "
            f"the limit of {MAX_ELEMENTS:,}; use a smaller image_size or fewer samples",
            field=field,
        )


def resize_images(x: torch.Tensor, size: int, *, chunk: int = 1024) -> torch.Tensor:
    """Resize float ``N x C x H x W`` images to ``size x size`` (bilinear, antialiased)."""
    if x.shape[-2:] == (size, size):
        return x
    check_size(len(x), x.shape[1] * size * size, f"resizing to {size}x{size}", field="image_size")
    out = torch.empty((len(x), x.shape[1], size, size), dtype=torch.float32)
    for start in range(0, len(x), chunk):
        out[start : start + chunk] = F.interpolate(
            x[start : start + chunk].float(),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    return out


def split_indices(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train/validation split: ``(train_idx, val_idx)``, each shuffled.

    The validation set holds ``round(N * val_fraction)`` samples (at least one, and at least one
    sample stays for training); each class contributes its share, the remainders going by the
    largest fractional part (ties broken by the seed). Same ``(y, val_fraction, seed)``, same split.
    """
    n = len(y)
    if n < 2:
        raise DatasetError(f"dataset has {n} sample(s); a train/validation split needs at least 2")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    classes, class_of, counts = np.unique(y, return_inverse=True, return_counts=True)
    target = min(max(int(np.floor(n * val_fraction + 0.5)), 1), n - 1)
    quota = counts * val_fraction
    take = np.floor(quota).astype(np.int64)
    remaining = target - int(take.sum())
    if remaining > 0:
        tiebreak = rng.random(len(classes))
        take[np.lexsort((tiebreak, -(quota - take)))[:remaining]] += 1
    # Rank of each permuted sample within its class: the first take[c] of class c go to val.
    permuted_class = class_of[order]
    grouped = np.argsort(permuted_class, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(n, dtype=np.int64)
    rank[grouped] = np.arange(n) - np.repeat(starts, counts)
    is_val = rank < take[permuted_class]
    return order[~is_val], order[is_val]


def make_dataset(
    x: torch.Tensor,
    y: np.ndarray,
    *,
    num_classes: int,
    val_fraction: float,
    seed: int,
    name: str,
    image_size: int | None,
    class_names: list[str] | None = None,
) -> LoadedDataset:
    """Split ``x`` (float32) and integer labels ``y`` (0..num_classes-1) into a LoadedDataset."""
    y = np.asarray(y, dtype=np.int64)
    if len(y) != len(x):
        raise DatasetError(f"{name}: {len(x)} inputs but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetError(
            f"{name}: labels must lie in 0..{num_classes - 1}, found {y.min()}..{y.max()}"
        )
    train_idx, val_idx = split_indices(y, val_fraction, seed)
    labels = torch.from_numpy(y)
    x = x.float().contiguous()
    train_t, val_t = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return LoadedDataset(
        x_train=x[train_t].contiguous(),
        y_train=labels[train_t].contiguous(),
        x_val=x[val_t].contiguous(),
        y_val=labels[val_t].contiguous(),
        num_classes=int(num_classes),
        in_channels=int(x.shape[1]) if x.dim() >= 3 else 1,
        image_size=image_size,
        name=name,
        class_names=list(class_names) if class_names else [str(i) for i in range(num_classes)],
    )


def square_side(x: torch.Tensor) -> int | None:
    """The side of square ``N x C x S x S`` images, else None (flat or non-square data)."""
    if x.dim() == 4 and x.shape[-1] == x.shape[-2]:
        return int(x.shape[-1])
    return None
