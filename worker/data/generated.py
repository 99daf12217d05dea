"""Datasets that need no files: scikit-learn's digits and procedural synthetic images."""

from __future__ import annotations

import math

import numpy as np
import torch

from service.spec import DatasetSpec

from .base import LoadedDataset, check_size, make_dataset, resize_images

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
    """``spec.num_samples`` procedural 3-channel images of ``spec.num_classes`` balanced classes,
    ``image_size`` (default 16) a side; deterministic by ``spec.seed``."""
    size = spec.image_size or SYNTHETIC_DEFAULT_SIZE
    n, k = spec.num_samples, spec.num_classes
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
