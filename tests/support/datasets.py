"""Datasets made for a test's purpose from the real ones."""

from __future__ import annotations

import dataclasses

from service.spec import JobSpec
from worker.data import LoadedDataset, load_dataset


def poisoned_digits(index: int = 7) -> LoadedDataset:
    """Digits with one NaN pixel in one training image: the first batch holding it gives a NaN
    loss, whatever the seed's order (every epoch visits every image)."""
    spec = JobSpec.model_validate({"model": {"arch": "mlp"}, "dataset": {"kind": "digits"}})
    data = load_dataset(spec.dataset, data_roots=[])
    x_train = data.x_train.clone()
    x_train[index].view(-1)[3] = float("nan")
    return dataclasses.replace(data, x_train=x_train)
