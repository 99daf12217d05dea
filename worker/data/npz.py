"""``.npz`` archives with arrays ``x`` and ``y``, loaded with ``allow_pickle=False``.

``x`` layouts: ``N x H x W`` (one channel), ``N x C x H x W``, ``N x H x W x C`` (channels-last:
the last dim is 1, 3 or 4 and dim 1 is not) or ``N x F`` (flat features, kept flat). uint8 ``x``
is scaled to [0, 1]; other numeric types are cast to float32 unchanged. ``y`` holds integer
labels (integral floats are accepted), remapped to ``0..K-1`` in sorted order.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from service.spec import DatasetSpec

from .base import DatasetError, LoadedDataset, check_size, make_dataset, resize_images, square_side

CHANNEL_COUNTS = (1, 3, 4)


def _fail(path: Path, message: str, field: str = "dataset.path") -> DatasetError:
    return DatasetError(f"npz file {path}: {message}", field=field, path=str(path))


def read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of the archive; object arrays and non-archives are refused."""
    try:
        with open(path, "rb") as file:  # ours to close, whatever np.load raises
            return _read_open(np.load(file, allow_pickle=False), path)
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise _fail(path, f"cannot be read as an .npz archive ({error})") from None


def _read_open(archive: object, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _fail(path, "is a single .npy array; expected an .npz archive with arrays x and y")
    with archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            raise _fail(
                path, f"has no array {' or '.join(missing)} (found: {', '.join(archive.files)})"
            )
        arrays = []
        for key in ("x", "y"):
            try:
                arrays.append(archive[key])
            except ValueError as error:
                if "pickle" in str(error).lower():
                    raise _fail(path, f"array {key!r} is an object array; refused") from None
                raise _fail(path, f"array {key!r} cannot be read ({error})") from None
            except (OSError, EOFError, zipfile.BadZipFile) as error:
                raise _fail(path, f"array {key!r} cannot be read ({error})") from None
    return arrays[0], arrays[1]


def to_images(x: np.ndarray, path: Path) -> np.ndarray:
    """``x`` as ``N x C x H x W`` (images) or ``N x F`` (flat), still in its own dtype."""
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[-1] in CHANNEL_COUNTS and x.shape[1] not in CHANNEL_COUNTS:
            return x.transpose(0, 3, 1, 2)
        return x
    raise _fail(
        path,
        f"x has shape {x.shape}; expected N x F, N x H x W, N x C x H x W or N x H x W x C",
    )


def labels_to_classes(y: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(labels 0..K-1, sorted original label values)``."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise _fail(path, f"y has shape {y.shape}; expected N integer labels")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iub":
        raise _fail(path, f"y has dtype {y.dtype}; expected integer class labels")
    values, classes = np.unique(y, return_inverse=True)
    if len(values) < 2:
        raise _fail(path, f"y holds {len(values)} distinct label(s); need at least 2 classes")
    return classes.reshape(-1).astype(np.int64), values


def load_npz(spec: DatasetSpec, path: Path) -> LoadedDataset:
    if not path.is_file():
        raise _fail(path, "is not a file")
    x, y = read_arrays(path)
    if x.dtype.kind not in "iufb":
        raise _fail(path, f"x has dtype {x.dtype}; expected a numeric array")
    x = to_images(x, path)
    if y.shape[:1] != x.shape[:1]:
        raise _fail(path, f"x has {x.shape[0]} samples but y has {y.shape[0] if y.ndim else 0}")
    labels, values = labels_to_classes(y, path)
    check_size(x.shape[0], int(np.prod(x.shape[1:])), f"npz file {path}")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if scale != 1.0:
        tensor.div_(scale)
    if x.dtype.kind == "f" and not bool(torch.isfinite(tensor).all()):
        raise _fail(path, "x holds NaN or infinite values")
    if spec.image_size is not None:
        if tensor.dim() != 4:
            raise _fail(
                path,
                "x is flat (N x F); image_size applies to images only",
                field="dataset.image_size",
            )
        tensor = resize_images(tensor, spec.image_size)
    return make_dataset(
        tensor,
        labels,
        num_classes=len(values),
        val_fraction=spec.val_fraction,
        seed=spec.seed,
        name=f"npz:{path.name}",
        image_size=square_side(tensor),
        class_names=[str(v) for v in values.tolist()],
    )
