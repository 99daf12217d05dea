"""Dataset loading for the worker: DatasetSpec -> LoadedDataset (train/val tensors).

Kinds: ``digits`` (scikit-learn), ``synthetic`` (procedural), ``mnist1d`` (the ``mnist1d``
package's generator, offline), ``image_folder`` (Pillow), ``cifar`` (python-version pickles,
restricted unpickler), ``npz`` (``allow_pickle=False``) and ``text`` (the characters of a
UTF-8 file or of the built-in corpus, the Python standard library's sources).
File paths are confined to the caller's data roots. Every user-facing problem is a DatasetError.
"""

from .base import MAX_ELEMENTS, DatasetError, LoadedDataset, resize_images, split_indices
from .cifar import RestrictedUnpickler, restricted_load
from .loader import load_dataset
from .paths import ensure_inside, resolve_data_path

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
