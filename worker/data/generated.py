"""Datasets that need no files: scikit-learn's digits, procedural synthetic images and MNIST-1D."""

from __future__ import annotations

import functools
import math
import random

import numpy as np
import torch

from service.spec import MNIST1D_CLASSES, DatasetSpec

from .base import DatasetError, LoadedDataset, check_size, make_dataset, resize_images

SYNTHETIC_DEFAULT_SIZE = 16
SYNTHETIC_CHANNELS = 3
_CHUNK = 256


def load_digits(spec: DatasetSpec) -> LoadedDataset:
    """scikit-learn's 1797 real handwritten digits (shipped with it): 1x8x8 in [0, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if spec.image_size is not None:
        x = resize_images(x, spec.image_size)
    return make_dataset(
        x,
        np.asarray(data.target),
        num_classes=10,
        val_fraction=spec.val_fraction,
        seed=spec.seed,
        name="digits",
        image_size=int(x.shape[-1]),
        class_names=[str(i) for i in range(10)],
    )


def _class_prototypes(num_classes: int) -> dict[str, np.ndarray]:
    """Per-class parameters, fixed by the class count alone (the task does not change with the
    seed; the seed draws the samples and the split)."""
    rng = np.random.default_rng((num_classes, 0x5EED))
    golden = (math.sqrt(5) - 1) / 2
    return {
        # Orientations spread evenly (golden-ratio sequence), frequencies 1-3 cycles per image.
        "theta": math.pi * ((np.arange(num_classes) * golden) % 1.0),
        "freq": rng.uniform(1.0, 3.0, num_classes),
        "phase": rng.uniform(0.0, 2 * math.pi, num_classes),
        "color": rng.uniform(0.15, 1.0, (num_classes, SYNTHETIC_CHANNELS)),
        "center": rng.uniform(0.25, 0.75, (num_classes, 2)),
    }


def _per_sample(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32).reshape(-1, 1, 1)


def synthetic_images(
    labels: np.ndarray, size: int, rng: np.random.Generator, num_classes: int
) -> np.ndarray:
    """Class-dependent images ``N x 3 x size x size`` in [0, 1]: a tinted oriented grating plus a
    blob, with per-sample phase, position, contrast and brightness jitter and pixel noise."""
    proto = _class_prototypes(num_classes)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    v, u = np.meshgrid(coords, coords, indexing="ij")  # rows, columns in [0, 1)
    out = np.empty((len(labels), SYNTHETIC_CHANNELS, size, size), dtype=np.float32)
    for start in range(0, len(labels), _CHUNK):
        c = labels[start : start + _CHUNK]
        n = len(c)
        theta, freq = _per_sample(proto["theta"][c]), _per_sample(proto["freq"][c])
        phase = _per_sample(proto["phase"][c] + rng.normal(0.0, 0.6, n))
        grating = 0.5 + 0.5 * np.cos(
            2 * math.pi * freq * (u * np.cos(theta) + v * np.sin(theta)) + phase
        )
        cx = _per_sample(proto["center"][c, 0] + rng.normal(0.0, 0.06, n))
        cy = _per_sample(proto["center"][c, 1] + rng.normal(0.0, 0.06, n))
        blob = np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2 * 0.15**2))
        pattern = 0.6 * grating + 0.4 * blob  # n x size x size
        contrast = rng.uniform(0.5, 1.0, (n, 1, 1, 1)).astype(np.float32)
        brightness = rng.uniform(-0.1, 0.2, (n, 1, 1, 1)).astype(np.float32)
        color = proto["color"][c].astype(np.float32)[:, :, None, None]
        images = contrast * color * pattern[:, None] + brightness
        images += rng.normal(0.0, 0.12, images.shape).astype(np.float32)
        out[start : start + n] = np.clip(images, 0.0, 1.0)
    return out


def load_synthetic(spec: DatasetSpec) -> LoadedDataset:
    """``spec.samples`` procedural 3-channel images of ``spec.num_classes`` balanced classes,
    ``image_size`` (default 16) a side; deterministic by ``spec.seed``."""
    size = spec.image_size or SYNTHETIC_DEFAULT_SIZE
    n, k = spec.samples, spec.num_classes
    check_size(n, SYNTHETIC_CHANNELS * size * size, "the synthetic dataset", field="num_samples")
    rng = np.random.default_rng((spec.seed, 0xDA7A))
    labels = rng.permutation(np.arange(n) % k)
    x = torch.from_numpy(synthetic_images(labels, size, rng, k))
    return make_dataset(
        x,
        labels,
        num_classes=k,
        val_fraction=spec.val_fraction,
        seed=spec.seed,
        name="synthetic",
        image_size=size,
    )


MNIST1D_LENGTH = 40


@functools.lru_cache(maxsize=4)
def mnist1d_arrays(num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """``num_samples`` MNIST-1D sequences (float32, N x 40) and labels (int64), read-only.

    Generated offline by the ``mnist1d`` package's ``make_dataset`` with the settings of the
    published dataset (``get_dataset_args()``: its seed 42, templates built into the package,
    ``num_samples / 10`` per class) but no train/test split; its ``get_dataset``, which downloads,
    is never called. ``make_dataset`` seeds NumPy's and Python's global generators: their states
    are restored afterwards. Generation takes about 0.3 ms a sample (1.6 s for 5000 on one core),
    so the arrays are cached in the process.
    """
    try:
        from mnist1d.data import get_dataset_args
        from mnist1d.data import make_dataset as generate
    except ImportError as exc:
        raise DatasetError(
            f"dataset kind 'mnist1d' needs the mnist1d package ({exc}); pip install mnist1d",
            field="dataset.kind",
        ) from exc
    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.train_split = 1.0  # everything in "x"; the caller splits, stratified
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = generate(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    x = np.ascontiguousarray(data["x"], dtype=np.float32)
    y = np.asarray(data["y"], dtype=np.int64)
    if x.shape != (num_samples, MNIST1D_LENGTH) or len(y) != num_samples:
        raise DatasetError(
            f"mnist1d generated inputs of shape {x.shape} and {len(y)} labels; expected "
            f"({num_samples}, {MNIST1D_LENGTH}) (an unsupported mnist1d version?)"
        )
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_mnist1d(spec: DatasetSpec) -> LoadedDataset:
    """MNIST-1D (Greydanus 2020): ``spec.samples`` sequences as float32 N x 1 x 40, 10 classes.

    The samples are the benchmark's (same generator, settings and seed, whatever ``spec.seed``);
    ``spec.seed`` draws the stratified train/validation split.
    """
    x, y = mnist1d_arrays(spec.samples)
    return make_dataset(
        torch.from_numpy(x.copy()).unsqueeze(1),
        y.copy(),
        num_classes=MNIST1D_CLASSES,
        val_fraction=spec.val_fraction,
        seed=spec.seed,
        name="mnist1d",
        image_size=None,
    )
