"""CIFAR-10/100 in their *python version* layout, read without torchvision.

The batches are pickles, so they are read with a restricted unpickler that resolves only the
globals a NumPy array needs; anything else (``os.system``, ``builtins.exec``, ...) is refused
before it can be called. Only the training batches are read: they are split into train/val by
``val_fraction``; the test batch stays held out (the search never sees it).
"""

from __future__ import annotations

import codecs
import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.spec import DatasetSpec

from .base import DatasetError, LoadedDataset, make_dataset, resize_images
from .paths import ensure_inside

try:  # NumPy 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
SIDE = 32
PIXELS = 3 * SIDE * SIDE


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as pickled bytes use it (Latin-1 only, no other codec)."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"unexpected _codecs.encode({type(text).__name__}, ...)")
    return text.encode("latin1")


# (module, name) -> object: exactly what pickled NumPy arrays reference. ``_reconstruct`` builds an
# empty array (protocols 0-4), ``_frombuffer`` wraps in-band bytes (protocol 5, Python's default),
# ``_codecs.encode`` turns text back into bytes (protocols 0-2 written by Python 3). The objects
# are returned from this table: no module is ever imported on the pickle's behalf.
SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only SAFE_GLOBALS (NumPy arrays, dicts, lists, numbers, bytes)."""

    def __init__(self, file: io.BufferedIOBase, *, source: str):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetError(
                f"refusing to unpickle {module}.{name} from {self.source}: CIFAR batches may "
                "only hold NumPy arrays, lists, numbers and bytes",
                field="dataset.path",
                path=self.source,
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DatasetError(
            f"refusing to unpickle a persistent reference from {self.source}",
            field="dataset.path",
            path=self.source,
        )


def restricted_load(path: Path) -> Any:
    """Unpickle ``path`` with RestrictedUnpickler; every failure is a DatasetError."""
    try:
        with open(path, "rb") as file:
            return RestrictedUnpickler(file, source=str(path)).load()
    except DatasetError:
        raise
    except MemoryError:
        raise DatasetError(f"CIFAR batch {path} is too large to load", path=str(path)) from None
    except Exception as error:  # malformed pickles raise many types; none may escape raw
        raise DatasetError(
            f"cannot read CIFAR batch {path}: {type(error).__name__}: {error}",
            field="dataset.path",
            path=str(path),
        ) from None


def _get(batch: dict, key: str, path: Path) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DatasetError(f"CIFAR batch {path} has no {key!r} entry", path=str(path))


def read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch as ``(uint8 N x 3 x 32 x 32, int64 labels)``, validated."""
    batch = restricted_load(path)
    if not isinstance(batch, dict):
        raise DatasetError(
            f"CIFAR batch {path} holds a {type(batch).__name__}, expected a dict", path=str(path)
        )
    data = _get(batch, "data", path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise DatasetError(
            f"CIFAR batch {path}: 'data' must be a uint8 N x {PIXELS} array", path=str(path)
        )
    if data.shape[1] != PIXELS:
        raise DatasetError(
            f"CIFAR batch {path}: 'data' is {data.shape[0]} x {data.shape[1]}, expected "
            f"N x {PIXELS} (3 x 32 x 32 images)",
            path=str(path),
        )
    raw_labels = _get(batch, label_key, path)
    try:
        labels = np.asarray(raw_labels)
    except (TypeError, ValueError):
        labels = np.asarray([], dtype=object)
    if labels.dtype.kind not in "iu" or labels.shape != (len(data),):
        raise DatasetError(
            f"CIFAR batch {path}: {label_key!r} must be {len(data)} integer labels", path=str(path)
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"CIFAR batch {path}: {label_key!r} must lie in 0..{num_classes - 1}, found "
            f"{labels.min()}..{labels.max()}",
            path=str(path),
        )
    return data.reshape(-1, 3, SIDE, SIDE), labels.astype(np.int64)


def _class_names(path: Path, key: str, num_classes: int, roots: list[Path]) -> list[str]:
    """Label names from the meta file when present (validated), else the class indices."""
    if not path.is_file():
        return [str(i) for i in range(num_classes)]
    meta = restricted_load(ensure_inside(path, roots))
    names = meta.get(key.encode(), meta.get(key)) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != num_classes:
        raise DatasetError(f"CIFAR meta file {path} has no {num_classes} {key!r}", path=str(path))
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


def find_layout(folder: Path) -> tuple[str, Path]:
    """``("cifar10" | "cifar100", directory)`` for the batches directory or its parent."""
    if not folder.is_dir():
        raise DatasetError(
            f"cifar path {folder} is not a directory", field="dataset.path", path=str(folder)
        )
    if any(re.fullmatch(r"data_batch_\d+", p.name) for p in folder.iterdir()):
        return "cifar10", folder
    if (folder / "train").is_file():
        return "cifar100", folder
    found = [
        (kind, folder / d)
        for kind, d in (("cifar10", CIFAR10_DIR), ("cifar100", CIFAR100_DIR))
        if (folder / d).is_dir()
    ]
    if len(found) == 1:
        return find_layout(found[0][1])
    if len(found) > 1:
        raise DatasetError(
            f"cifar path {folder} holds both {CIFAR10_DIR} and {CIFAR100_DIR}; point "
            "dataset.path at one of them",
            field="dataset.path",
            path=str(folder),
        )
    raise DatasetError(
        f"no CIFAR python layout in {folder}: expected data_batch_1..5 ({CIFAR10_DIR}) or "
        f"train ({CIFAR100_DIR})",
        field="dataset.path",
        path=str(folder),
    )


def load_cifar(spec: DatasetSpec, folder: Path, roots: list[Path]) -> LoadedDataset:
    """CIFAR-10 (data_batch_1..5, 'labels') or CIFAR-100 (train, 'fine_labels') training data."""
    kind, folder = find_layout(folder)
    if kind == "cifar10":
        files, label_key, num_classes = CIFAR10_TRAIN, "labels", 10
        names = _class_names(folder / "batches.meta", "label_names", 10, roots)
    else:
        files, label_key, num_classes = ("train",), "fine_labels", 100
        names = _class_names(folder / "meta", "fine_label_names", 100, roots)
    images, labels = [], []
    for file in files:
        path = folder / file
        if not path.is_file():
            raise DatasetError(
                f"CIFAR batch {path} is missing ({kind} needs {', '.join(files)})",
                field="dataset.path",
                path=str(path),
            )
        data, y = read_batch(ensure_inside(path, roots, str(path)), label_key, num_classes)
        images.append(data)
        labels.append(y)
    x = torch.from_numpy(np.concatenate(images)).float().div_(255.0)
    if spec.image_size is not None:
        x = resize_images(x, spec.image_size)
    return make_dataset(
        x,
        np.concatenate(labels),
        num_classes=num_classes,
        val_fraction=spec.val_fraction,
        seed=spec.seed,
        name=kind,
        image_size=int(x.shape[-1]),
        class_names=names,
    )
