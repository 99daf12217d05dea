"""``load_dataset``: one entry point from a DatasetSpec to a LoadedDataset, by kind."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from service.spec import DatasetSpec

from .base import DatasetError, LoadedDataset
from .cifar import load_cifar
from .generated import load_digits, load_mnist1d, load_synthetic
from .image_folder import load_image_folder
from .npz import load_npz
from .paths import resolve_data_path, resolved_roots
from .text import load_text

FILE_LOADERS = {"image_folder": load_image_folder, "cifar": load_cifar}


def load_dataset(spec: DatasetSpec, *, data_roots: Sequence[Path] = ()) -> LoadedDataset:
    """Load and split the dataset ``spec`` describes; nothing is ever downloaded.

    File kinds (image_folder, cifar, npz; text with a path) read ``spec.path`` confined to
    ``data_roots`` (given by the caller, from NORMSEARCH_DATA_ROOTS). The train/validation
    split is deterministic (stratified by class for classifiers): the same spec gives identical
    tensors. Raises DatasetError for every problem
    with the data.
    """
    if spec.kind == "digits":
        return load_digits(spec)
    if spec.kind == "synthetic":
        return load_synthetic(spec)
    if spec.kind == "mnist1d":
        return load_mnist1d(spec)
    if spec.kind == "text":
        path = resolve_data_path(spec.path, data_roots) if spec.path else None
        return load_text(spec, path)
    if spec.path is None:
        raise DatasetError(f"dataset kind {spec.kind!r} needs a path", field="dataset.path")
    path = resolve_data_path(spec.path, data_roots)
    if spec.kind == "npz":
        return load_npz(spec, path)
    if spec.kind in FILE_LOADERS:
        return FILE_LOADERS[spec.kind](spec, path, resolved_roots(data_roots))
    raise DatasetError(f"unknown dataset kind {spec.kind!r}", field="dataset.kind")
