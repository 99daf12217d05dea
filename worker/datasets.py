"""Facade of :mod:`worker.data`: load a job's dataset as train/validation tensors.

``load_dataset(spec, data_roots=...)`` returns a :class:`LoadedDataset`; every problem with the
data (missing file, path outside the data roots, malformed arrays, unsafe pickle) raises
:class:`DatasetError`, a ``ValueError`` whose message names the problem and the path or field.
"""

from .data import (
    MAX_ELEMENTS,
    DatasetError,
    LoadedDataset,
    RestrictedUnpickler,
    ensure_inside,
    load_dataset,
    resize_images,
    resolve_data_path,
    restricted_load,
    split_indices,
)

__all__ = [
    "MAX_ELEMENTS",
    "DatasetError",
    "LoadedDataset",
    "RestrictedUnpickler",
    "ensure_inside",
    "load_dataset",
    "resize_images",
    "resolve_data_path",
    "restricted_load",
    "split_indices",
]
