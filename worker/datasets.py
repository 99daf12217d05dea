"""Facade of :mod:`worker.data`: load a job's dataset as train/validation tensors.

``load_dataset(spec, data_roots=...)`` returns a :class:`LoadedDataset`; every problem with the
data (missing file, path outside the data roots, malformed arrays, unsafe pickle) raises
:class:`DatasetError`, a ``ValueError`` whose message names the problem and the path or field.
"""

from .data import *  # noqa: F403  (the package's public names, listed in its __all__)
from .data import __all__  # noqa: F401
