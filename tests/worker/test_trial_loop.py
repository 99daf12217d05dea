"""The trial loop's data placement and its profiler phases (what bench/trial_profile.py sums)."""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from service.spec import JobSpec
from worker import trainable
from worker.data import load_dataset
from worker.trainable import PHASES, TrialTraining, _on_device


def test_a_cpu_trial_keeps_its_tensors_and_a_device_gets_a_copy_that_fits():
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    kept = _on_device(x, y, device=torch.device("cpu"))
    assert kept[0] is x and kept[1] is y  # nothing copied for a CPU trial
    meta = torch.device("meta")  # a device other than the CPU, on any machine
    assert all(t.device == meta for t in _on_device(x, y, device=meta))


def test_a_dataset_over_the_cap_stays_in_host_memory(monkeypatch):
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    monkeypatch.setattr(trainable, "DEVICE_DATA_MAX_BYTES", x.nbytes + y.nbytes - 1)
    kept = _on_device(x, y, device=torch.device("meta"))
    assert kept[0] is x and kept[1] is y


def test_every_phase_of_the_epoch_loop_is_named_for_the_profiler():
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "mlp"},
            "dataset": {"kind": "digits"},
            "training": {"epochs": 1, "batch_size": 256, "lr": 0.05},
            "search": {"pool": ["ln", "bn"]},
        }
    )
    training = TrialTraining(
        spec, load_dataset(spec.dataset), variant="sn", seed=0, batch_size=256, lr=0.05, epochs=1
    )
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        (record,) = list(training.epochs())
    names = {event.key for event in prof.key_averages()}
    assert set(PHASES.values()) <= names, set(PHASES.values()) - names
    assert record["epoch"] == 1 and 0.0 <= record["val_accuracy"] <= 1.0
